// What provider.mjs and client.mjs share: the registered clients (which
// tests/tests/interop.rs repeats for the Rust client) and option parsing.

import { parseArgs } from 'node:util';

// A public client: no secret, it proves itself only with PKCE.
export const PUBLIC_CLIENT = {
  client_id: 'interop-public',
  token_endpoint_auth_method: 'none',
};

// A confidential client that authenticates with HTTP Basic. A fixed secret
// for a throwaway provider on loopback.
export const CONFIDENTIAL_CLIENT = {
  client_id: 'interop-confidential',
  client_secret: 'interop-confidential-secret-0123456789abcdef',
  token_endpoint_auth_method: 'client_secret_basic',
};

// Never contacted: the scripted user agent stops at the redirect to it.
export const REDIRECT_URI = 'http://127.0.0.1:9/callback';

// Where provider.mjs serves its counters (on its own port).
export const COUNTERS_PATH = '/__interop/counters';

// The `--name URL-or-number` options of a script, all required; a missing
// one prints the usage and exits with 64 (EX_USAGE).
export function requiredOptions(script, names) {
  const options = Object.fromEntries(names.map((n) => [n, { type: 'string' }]));
  const { values } = parseArgs({ options });
  if (names.some((n) => !values[n])) {
    console.error(`usage: node ${script} ${names.map((n) => `--${n} VALUE`).join(' ')}`);
    process.exit(64);
  }
  return values;
}
