// oidc-provider as a PKCE-unaware upstream for pkce-proxy's interop tests.
//
//   node provider.mjs --port PORT --issuer http://127.0.0.1:PROXY_PORT
//
// The issuer is the proxy's URL: clients only ever see the proxy. A small
// Koa middleware in front of oidc-provider makes it blind to PKCE and
// observable:
// - it removes `code_challenge_methods_supported` from discovery, so a
//   client that finds it through the proxy found what the proxy added;
// - it counts every request that reaches the provider, token requests by
//   grant_type and outcome, and any PKCE parameter it sees (the proxy runs
//   with --strip-pkce-params, so that count must stay 0);
// - it serves the counters as JSON at GET /__interop/counters, which the
//   tests read from this port directly, never through the proxy.
// It logs one line per request to stderr: method, path and status, never a
// query string or a body (they hold codes, verifiers and tokens). It also
// prints oidc-provider's own warnings about its development-only defaults.

import Provider from 'oidc-provider';

import {
  CONFIDENTIAL_CLIENT, COUNTERS_PATH, PUBLIC_CLIENT, REDIRECT_URI,
  requiredOptions,
} from './shared.mjs';

const PKCE_PARAMS = ['code_challenge', 'code_challenge_method', 'code_verifier'];
const DISCOVERY_PATH = '/.well-known/openid-configuration';

const args = requiredOptions('provider.mjs', ['port', 'issuer']);

const counters = {
  // Every request that reached the provider.
  requests: 0,
  // Authorization requests (GET or POST /auth, not the /auth/:uid resume).
  authorization_requests: 0,
  // POST /token that reached the provider, by grant_type.
  token_requests: {},
  // ...and those the provider answered 200, by grant_type.
  tokens_issued: {},
  // Requests that carried any PKCE parameter, in the query or the body.
  pkce_params_seen: 0,
  // Which PKCE parameter names were seen (must stay empty).
  pkce_param_names: [],
};

function bump(map, key) {
  map[key] = (map[key] ?? 0) + 1;
}

function notePkce(params) {
  const found = PKCE_PARAMS.filter((name) => params.has(name));
  if (found.length) {
    counters.pkce_params_seen += 1;
    for (const name of found) {
      if (!counters.pkce_param_names.includes(name)) counters.pkce_param_names.push(name);
    }
  }
}

// Reads a form body so that it can be inspected. oidc-provider then takes
// the body from `req.body`, as it does behind any body-parsing middleware.
async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const body = Buffer.concat(chunks);
  req.body = body;
  return new URLSearchParams(body.toString('utf8'));
}

const provider = new Provider(args.issuer, {
  clients: [
    {
      ...PUBLIC_CLIENT,
      redirect_uris: [REDIRECT_URI],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
    },
    {
      ...CONFIDENTIAL_CLIENT,
      redirect_uris: [REDIRECT_URI],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
    },
  ],
  // The upstream does not do PKCE: the proxy does.
  pkce: { required: () => false },
  // A refresh token with every code, without the offline_access dance.
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  cookies: { keys: ['interop-cookie-signing-key'] },
  ttl: {
    AccessToken: 600,
    AuthorizationCode: 60,
    Grant: 3600,
    IdToken: 600,
    Interaction: 600,
    RefreshToken: 3600,
    Session: 3600,
  },
  // devInteractions (on by default): the built-in login and consent forms.
  features: { devInteractions: { enabled: true } },
  findAccount: async (_ctx, sub) => ({
    accountId: sub,
    claims: async () => ({ sub }),
  }),
});
// Trust X-Forwarded-Host and -Proto from the proxy in front.
provider.proxy = true;

provider.use(async (ctx, next) => {
  const { path, method } = ctx;
  if (method === 'GET' && path === COUNTERS_PATH) {
    ctx.body = counters;
    return;
  }
  counters.requests += 1;
  notePkce(new URLSearchParams(ctx.querystring));
  let grantType;
  if (method === 'POST' && ctx.is('application/x-www-form-urlencoded')) {
    const form = await readForm(ctx.req);
    notePkce(form);
    if (path === '/token') {
      grantType = form.get('grant_type') ?? '(none)';
      bump(counters.token_requests, grantType);
    }
  }
  if (path === '/auth') counters.authorization_requests += 1;

  await next();

  if (grantType && ctx.status === 200) bump(counters.tokens_issued, grantType);
  if (path === DISCOVERY_PATH && ctx.body && typeof ctx.body === 'object') {
    delete ctx.body.code_challenge_methods_supported;
  }
  // Interaction ids stay out of the log too.
  const shown = path.replace(/^\/(interaction|auth)\/[^/]+/, '/$1/:uid');
  console.error(`provider: ${method} ${shown} -> ${ctx.status}`);
});

const server = provider.listen(Number(args.port), '127.0.0.1', () => {
  console.error(`provider: listening on 127.0.0.1:${args.port}, issuer ${args.issuer}`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
