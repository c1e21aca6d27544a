// openid-client against oidc-provider through pkce-proxy.
//
//   node client.mjs --proxy http://127.0.0.1:P --provider http://127.0.0.1:U
//
// The client and its scripted user agent talk only to the proxy; the
// provider's URL is used to read its discovery document and its counters
// directly. For each registered client the script runs the code flow with
// PKCE, then checks that a wrong verifier, a missing verifier and a replayed
// code get `invalid_grant` from the proxy without reaching the provider, and
// that a refresh-token grant still works. Then it runs the flow again with
// response_mode=form_post.
//
// It prints one JSON line with what each check saw and exits 0, or prints
// the failed check to stderr and exits 1. Codes, verifiers and tokens are
// never printed.

import { readFileSync } from 'node:fs';
import { isDeepStrictEqual } from 'node:util';
import * as client from 'openid-client';

import {
  CONFIDENTIAL_CLIENT, COUNTERS_PATH, PUBLIC_CLIENT, REDIRECT_URI,
  requiredOptions,
} from './shared.mjs';

class CheckFailed extends Error {}

function check(ok, what) {
  if (!ok) throw new CheckFailed(what);
}

const args = requiredOptions('client.mjs', ['proxy', 'provider']);
const proxy = new URL(args.proxy);
const provider = new URL(args.provider);

function version(name) {
  const file = new URL(`./node_modules/${name}/package.json`, import.meta.url);
  return JSON.parse(readFileSync(file, 'utf8')).version;
}

async function counters() {
  const response = await fetch(new URL(COUNTERS_PATH, provider));
  check(response.ok, `the provider's counters answered ${response.status}`);
  return response.json();
}

function sum(map) {
  return Object.values(map).reduce((a, b) => a + b, 0);
}

// A cookie jar for one host: cookies are kept by name and path, sent to
// the paths below their own, and dropped when they expire.
class CookieJar {
  #cookies = new Map();

  store(url, response) {
    for (const line of response.headers.getSetCookie()) {
      const [pair, ...attributes] = line.split(';');
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      let path = '/';
      let expired = false;
      for (const attribute of attributes) {
        const [key, ...rest] = attribute.split('=');
        const v = rest.join('=').trim();
        switch (key.trim().toLowerCase()) {
          case 'path': path = v || '/'; break;
          case 'max-age': expired ||= Number(v) <= 0; break;
          case 'expires': expired ||= Date.parse(v) <= Date.now(); break;
          default: break;
        }
      }
      const id = `${name};${path}`;
      if (expired) this.#cookies.delete(id);
      else this.#cookies.set(id, { name, value, path });
    }
  }

  header(url) {
    const { pathname } = new URL(url);
    return [...this.#cookies.values()]
      .filter(({ path }) => pathname === path
        || pathname.startsWith(path.endsWith('/') ? path : `${path}/`))
      .map(({ name, value }) => `${name}=${value}`)
      .join('; ');
  }
}

function unescapeHtml(s) {
  return s.replace(/&quot;/g, '"').replace(/&#39;/g, "'").replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>').replace(/&amp;/g, '&');
}

// A browser with a user who signs in as `login` and consents to everything
// asked: follows redirects and fills oidc-provider's devInteractions forms,
// until the provider sends the user to the client's redirect_uri, by a
// redirect (`callback`, a URL) or by a form_post page (`form`, its fields).
// Every request must stay on the proxy's origin.
async function userAgent(authorizationUrl, login) {
  const jar = new CookieJar();
  const seen = { pages: [] };
  let url = authorizationUrl.href;
  let body;
  for (let step = 0; step < 12; step += 1) {
    check(new URL(url).origin === proxy.origin, `the flow left the proxy for ${new URL(url).origin}`);
    const headers = { cookie: jar.header(url) };
    if (body) headers['content-type'] = 'application/x-www-form-urlencoded';
    const response = await fetch(url, {
      method: body ? 'POST' : 'GET', body, headers, redirect: 'manual',
    });
    jar.store(url, response);
    const where = `${body ? 'POST' : 'GET'} ${new URL(url).pathname}`;
    if (response.status >= 300 && response.status < 400) {
      const next = new URL(response.headers.get('location'), url);
      if (next.href.startsWith(REDIRECT_URI)) return { callback: next, seen };
      url = next.href;
      body = undefined;
      continue;
    }
    const html = await response.text();
    check(response.status === 200, `${where} answered ${response.status}: ${html.slice(0, 200)}`);
    const action = html.match(/<form[^>]*\baction="([^"]+)"/);
    check(action, `${where} is neither a redirect nor a form`);
    const target = new URL(unescapeHtml(action[1]), url).href;
    if (target.startsWith(REDIRECT_URI)) {
      const fields = [...html.matchAll(/<input type="hidden" name="(\w+)" value="([^"]*)"/g)];
      return { form: new URLSearchParams(fields.map(([, n, v]) => [n, unescapeHtml(v)])), seen };
    }
    const prompt = html.match(/name="prompt" value="(\w+)"/);
    check(prompt, `${where} is neither a login nor a consent form`);
    seen.pages.push(prompt[1]);
    url = target;
    if (prompt[1] === 'login') {
      body = new URLSearchParams({ prompt: 'login', login, password: 'any' }).toString();
    } else if (prompt[1] === 'consent') {
      body = new URLSearchParams({ prompt: 'consent' }).toString();
    } else {
      throw new CheckFailed(`${where}: unexpected prompt ${prompt[1]}`);
    }
  }
  throw new CheckFailed('no redirect to the client after 12 steps');
}

// Runs `grant`, which must be refused with invalid_grant by the proxy: the
// provider must not see a single token request meanwhile.
async function refused(what, grant, description) {
  const before = await counters();
  let error;
  try {
    await grant();
  } catch (e) {
    error = e;
  }
  const after = await counters();
  check(error, `${what}: tokens were issued`);
  check(error instanceof client.ResponseBodyError, `${what}: ${error}`);
  check(error.status === 400 && error.error === 'invalid_grant',
    `${what}: got ${error.status} ${error.error}, not 400 invalid_grant`);
  // The proxy's own wording; oidc-provider says "grant request is invalid".
  check(description.test(error.error_description ?? ''),
    `${what}: expected the proxy's refusal ${description}, got "${error.error_description}"`);
  const reached = sum(after.token_requests) - sum(before.token_requests);
  check(reached === 0, `${what}: ${reached} token request(s) reached the provider`);
  return {
    status: error.status,
    error: error.error,
    error_description: error.error_description,
    token_requests_reaching_provider: reached,
  };
}

// Starts a sign-in with PKCE: a fresh verifier and state, and the URL.
async function authorization(config, extra = {}) {
  const verifier = client.randomPKCECodeVerifier();
  const state = client.randomState();
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: REDIRECT_URI,
    scope: 'openid',
    state,
    code_challenge: await client.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
    ...extra,
  });
  return { verifier, state, url };
}

// Runs `grant`, and counts the tokens the provider issued meanwhile for
// `grantType`.
async function issued(grantType, grant) {
  const before = await counters();
  const tokens = await grant();
  const after = await counters();
  const count = (after.tokens_issued[grantType] ?? 0) - (before.tokens_issued[grantType] ?? 0);
  return { tokens, count };
}

async function flow(clientMetadata, auth) {
  const id = clientMetadata.client_id;
  const config = await client.discovery(proxy, id, clientMetadata, auth, {
    execute: [client.allowInsecureRequests],
  });
  const metadata = config.serverMetadata();
  check(metadata.issuer === proxy.href.replace(/\/$/, ''), `${id}: issuer is ${metadata.issuer}`);

  const { verifier, state, url } = await authorization(config);
  const { callback, seen } = await userAgent(url, `user-of-${id}`);
  check(callback, `${id}: the code came back in a page, not by redirect`);
  // The proxy replaced state with its handle upstream and put ours back.
  check(callback.searchParams.get('state') === state, `${id}: the callback's state is not ours`);
  check(callback.searchParams.has('code'), `${id}: the callback has no code`);

  const wrongVerifier = await refused(`${id}: wrong verifier`, () => client.authorizationCodeGrant(
    config, callback, { pkceCodeVerifier: client.randomPKCECodeVerifier(), expectedState: state },
  ), /does not match/);
  const missingVerifier = await refused(`${id}: missing verifier`, () => client.authorizationCodeGrant(
    config, callback, { expectedState: state },
  ), /code_verifier is required/);

  const { tokens, count: codeGrants } = await issued('authorization_code', () => client
    .authorizationCodeGrant(config, callback, { pkceCodeVerifier: verifier, expectedState: state }));
  check(tokens.access_token && tokens.refresh_token && tokens.id_token,
    `${id}: the token response lacks an access, refresh or ID token`);
  const claims = tokens.claims();
  check(claims.sub === `user-of-${id}`, `${id}: the ID token is for ${claims.sub}`);
  check(codeGrants === 1, `${id}: the provider issued ${codeGrants} tokens for the code`);

  const replayedCode = await refused(`${id}: replayed code`, () => client.authorizationCodeGrant(
    config, callback, { pkceCodeVerifier: verifier, expectedState: state },
  ), /already been used|not issued with PKCE/);

  const { tokens: refreshed, count: refreshGrants } = await issued('refresh_token',
    () => client.refreshTokenGrant(config, tokens.refresh_token));
  check(refreshed.access_token && refreshed.access_token !== tokens.access_token,
    `${id}: the refresh grant gave no new access token`);
  check(refreshGrants === 1, `${id}: the provider issued ${refreshGrants} refresh grants`);

  return {
    auth: clientMetadata.token_endpoint_auth_method,
    interaction_pages: seen.pages,
    code_grant: {
      token_types: ['access_token', 'refresh_token', 'id_token'].filter((t) => tokens[t]),
      id_token_iss: claims.iss,
      provider_code_grants: codeGrants,
    },
    wrong_verifier: wrongVerifier,
    missing_verifier: missingVerifier,
    replayed_code: replayedCode,
    refresh: { ok: true, provider_refresh_grants: refreshGrants },
    form_post: await formPostFlow(config, id),
  };
}

// The code delivered by response_mode=form_post: oidc-provider serves the
// auto-submitting page on GET /auth/:uid, and the proxy must find the code
// in it, bind it and give the client its state back.
async function formPostFlow(config, id) {
  const { verifier, state, url } = await authorization(config, { response_mode: 'form_post' });
  const { form } = await userAgent(url, `user-of-${id}`);
  check(form, `${id}: form_post: the code came back by redirect`);
  check(form.get('state') === state, `${id}: form_post: the page's state is not ours`);
  // What the browser would post to the client.
  const post = () => new Request(REDIRECT_URI, {
    method: 'POST',
    body: form,
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
  });
  const wrongVerifier = await refused(`${id}: form_post: wrong verifier`, () => client.authorizationCodeGrant(
    config, post(), { pkceCodeVerifier: client.randomPKCECodeVerifier(), expectedState: state },
  ), /does not match/);
  const { tokens, count: codeGrants } = await issued('authorization_code', () => client
    .authorizationCodeGrant(config, post(), { pkceCodeVerifier: verifier, expectedState: state }));
  check(tokens.access_token, `${id}: form_post: no access token`);
  check(codeGrants === 1, `${id}: form_post: the provider issued ${codeGrants} tokens for the code`);
  return { wrong_verifier: wrongVerifier, provider_code_grants: codeGrants };
}

async function main() {
  const direct = await (await fetch(new URL('/.well-known/openid-configuration', provider))).json();
  check(!('code_challenge_methods_supported' in direct),
    'the provider itself advertises code_challenge_methods_supported');
  const viaProxy = await (await fetch(new URL('/.well-known/openid-configuration', proxy))).json();
  check(isDeepStrictEqual(viaProxy.code_challenge_methods_supported, ['S256']),
    `through the proxy, code_challenge_methods_supported is ${JSON.stringify(viaProxy.code_challenge_methods_supported)}`);

  const results = {
    versions: {
      node: process.versions.node,
      'oidc-provider': version('oidc-provider'),
      'openid-client': version('openid-client'),
    },
    discovery: {
      provider_direct: direct.code_challenge_methods_supported ?? null,
      through_proxy: viaProxy.code_challenge_methods_supported,
    },
    clients: {},
  };
  results.clients[PUBLIC_CLIENT.client_id] = await flow(PUBLIC_CLIENT, client.None());
  results.clients[CONFIDENTIAL_CLIENT.client_id] = await flow(
    CONFIDENTIAL_CLIENT, client.ClientSecretBasic(CONFIDENTIAL_CLIENT.client_secret),
  );

  const final = await counters();
  check(final.pkce_params_seen === 0,
    `the provider saw PKCE parameters: ${final.pkce_param_names.join(', ')}`);
  results.provider_counters = final;
  console.log(JSON.stringify(results));
}

main().catch((e) => {
  console.error(`interop check failed: ${e instanceof CheckFailed ? e.message : e.stack}`);
  process.exit(1);
});
