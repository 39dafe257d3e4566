// A real OpenID provider for the tests: npm's `oidc-provider` (the certified implementation) on
// 127.0.0.1, a free port, plain HTTP, with its development login page.
//
//   node provider.mjs <install dir> <config.json>
//
// <install dir> holds node_modules/oidc-provider (tests/run.sh installs it). The configuration:
//
//   {
//     "clients": [{"client_id", "client_secret", "redirect_uris": [...],
//                  "backchannel_logout_uri", "backchannel_logout_session_required": true}],
//     "accounts": {"<login name>": {"sub"?, "email", "email_verified", "name",
//                  "preferred_username", "groups", "amr"}},
//     "tls_ca_file": "<PEM file>"   (optional: roots for the back-channel calls, read at each call)
//   }
//
// Any login name signs in at the development login page (any password); a name listed under
// "accounts" gets its claims, and its "amr" (default ["pwd"]) as the authentication methods.
// When ready, prints one JSON line {"issuer": "http://127.0.0.1:<port>"}; exits when stdin closes
// or on SIGTERM.
//
// Test-only endpoints under /test/ (no real provider has them; they exist so that the tests can
// produce what a compliant provider never would):
//   POST /test/logout-token {"claims": {...}, "header"?: {...}, "key"?: "foreign" | {"secret"}}
//        -> {"token": "<JWT>"}: a logout token with exactly these claims, signed by the provider's
//        key (or, with "key": "foreign", by another key under the same kid; with {"secret": s}
//        and an `HS…` alg in "header", an HMAC with s; with alg "none", unsigned).
//   POST /test/tamper {"claims"?: {...}, "header"?: {...}, "key"?: as above} -> 204: the next ID
//        token the token endpoint issues is re-signed with these claims and header fields changed
//        (a null value removes a claim).
//   POST /test/code-ttl {"seconds": n} -> 204: authorization codes issued from now live n seconds.
//   POST /test/account {"login": "...", "claims": {...}} -> 204: sets an account's claims.
//   GET  /test/id-tokens -> the claims of every ID token issued so far, oldest first.
//   GET  /test/backchannel -> every back-channel logout delivery so far, oldest first.

import { createServer } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { request as httpRequest } from 'node:http';
import { createHmac, generateKeyPairSync, randomUUID, sign as cryptoSign } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const [installDir, configFile] = process.argv.slice(2);
if (!installDir || !configFile) {
  console.error('usage: node provider.mjs <install dir> <config.json>');
  process.exit(2);
}
function rsaKey(kid) {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { privateKey, jwk: { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' } };
}
// Both keys before oidc-provider is loaded: an RSA key generated after that sometimes never
// comes (node 20's key generation blocks for good).
const kid = randomUUID();
const signing = rsaKey(kid);
// Another key under the same kid: what it signs does not verify with the published key.
const foreign = rsaKey(kid);
const packageDir = join(installDir, 'node_modules', 'oidc-provider');
const { main = 'lib/index.js' } = JSON.parse(readFileSync(join(packageDir, 'package.json'), 'utf8'));
const { default: Provider } = await import(pathToFileURL(join(packageDir, main)).href);

const config = JSON.parse(readFileSync(configFile, 'utf8'));
const accounts = new Map(Object.entries(config.accounts ?? {}));

// The key a test asks for: the provider's own, "foreign", or {"secret": s} for an HMAC.
const signingKey = (key) => {
  if (key === 'foreign') return foreign.privateKey;
  if (typeof key?.secret === 'string') return key.secret;
  return signing.privateKey;
};

const b64 = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
// `alg` "none" is left unsigned, an `HS…` one is an HMAC with `key` (a string: a shared secret).
function signJwt(header, claims, key) {
  const input = `${b64(header)}.${b64(claims)}`;
  if (header.alg === 'none') {
    return `${input}.`;
  }
  if (/^HS(256|384|512)$/.test(header.alg ?? '')) {
    const hash = `sha${header.alg.slice(2)}`;
    return `${input}.${createHmac(hash, key).update(input).digest('base64url')}`;
  }
  const signature = cryptoSign('RSA-SHA256', Buffer.from(input), key).toString('base64url');
  return `${input}.${signature}`;
}
const jwtClaims = (jwt) => JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString('utf8'));
const jwtHeader = (jwt) => JSON.parse(Buffer.from(jwt.split('.')[0], 'base64url').toString('utf8'));

// Back-channel logout calls: plain node:http(s), trusting `tls_ca_file` when given (the tests'
// gatehouse has a self-signed certificate made when it starts, after this provider). Answers the
// subset of `fetch` the provider uses for them (`status`).
function postForm(url, options) {
  const target = new URL(url);
  const body = options.body?.toString() ?? '';
  const headers = Object.fromEntries(new Headers(options.headers).entries());
  headers['content-length'] = Buffer.byteLength(body);
  const tls = target.protocol === 'https:';
  const ca = tls && config.tls_ca_file ? readFileSync(config.tls_ca_file) : undefined;
  return new Promise((resolve, reject) => {
    const req = (tls ? httpsRequest : httpRequest)(target, {
      method: options.method ?? 'GET', headers, ca, signal: options.signal,
    }, (res) => {
      res.resume();
      res.on('end', () => resolve(new Response(null, { status: res.statusCode })));
    });
    req.on('error', reject);
    req.end(body);
  });
}

const server = createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

let codeTtl = 60;
const provider = new Provider(issuer, {
  clients: (config.clients ?? []).map((c) => ({
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    ...c,
  })),
  jwks: { keys: [signing.jwk] },
  cookies: { keys: [randomUUID()] },
  scopes: ['openid', 'email', 'profile', 'groups'],
  claims: {
    openid: ['sub', 'amr', 'auth_time'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  // The scopes' claims in the ID token itself, as most providers do, not only at userinfo.
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  ttl: { AuthorizationCode: () => codeTtl },
  features: {
    devInteractions: { enabled: true },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: { enabled: true },
  },
  fetch: postForm,
  async findAccount(_ctx, id) {
    const { amr: _amr, sub: _sub, ...claims } = accounts.get(id) ?? {};
    return {
      accountId: id,
      async claims() {
        return { ...claims, sub: id };
      },
    };
  },
});

const idTokens = [];
const deliveries = [];
let tamper;
provider.on('backchannel.success', (_ctx, client, accountId, sid) => {
  deliveries.push({ client_id: client.clientId, sub: accountId, sid, ok: true });
});
provider.on('backchannel.error', (_ctx, error, client, accountId, sid) => {
  deliveries.push({ client_id: client.clientId, sub: accountId, sid, ok: false, error: String(error) });
  console.error(`back-channel logout to ${client.clientId} failed: ${error}`);
});

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString('utf8');
  return text ? JSON.parse(text) : {};
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Object.fromEntries(new URLSearchParams(Buffer.concat(chunks).toString('utf8')));
}

// The test-only endpoints.
provider.use(async (ctx, next) => {
  if (!ctx.path.startsWith('/test/')) {
    return next();
  }
  const route = `${ctx.method} ${ctx.path}`;
  const body = ctx.method === 'POST' ? await readJson(ctx.req) : {};
  switch (route) {
    case 'POST /test/logout-token': {
      const header = { alg: 'RS256', typ: 'logout+jwt', kid, ...body.header };
      ctx.body = { token: signJwt(header, body.claims ?? {}, signingKey(body.key)) };
      return undefined;
    }
    case 'POST /test/tamper':
      tamper = { claims: body.claims ?? {}, header: body.header ?? {}, key: body.key };
      ctx.status = 204;
      return undefined;
    case 'POST /test/code-ttl':
      codeTtl = body.seconds;
      ctx.status = 204;
      return undefined;
    case 'POST /test/account':
      accounts.set(body.login, body.claims ?? {});
      ctx.status = 204;
      return undefined;
    case 'GET /test/id-tokens':
      ctx.body = idTokens;
      return undefined;
    case 'GET /test/backchannel':
      ctx.body = deliveries;
      return undefined;
    default:
      ctx.status = 404;
      ctx.body = { error: `no test endpoint ${route}` };
      return undefined;
  }
});

// The development login page with the account's authentication methods: the login form is
// answered here as the built-in one would, plus `amr`.
provider.use(async (ctx, next) => {
  if (ctx.method !== 'POST' || !/^\/interaction\/[^/]+$/.test(ctx.path)) {
    return next();
  }
  const form = await readForm(ctx.req);
  if (form.prompt !== 'login') {
    ctx.req.body = form;
    return next();
  }
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (details.prompt.name !== 'login' || !form.login) {
    ctx.status = 400;
    ctx.body = 'not a login prompt';
    return undefined;
  }
  const amr = accounts.get(form.login)?.amr ?? ['pwd'];
  ctx.respond = false;
  return provider.interactionFinished(ctx.req, ctx.res, {
    login: { accountId: form.login, amr },
  }, { mergeWithLastSubmission: false });
});

// Records every ID token issued, and re-signs the next one when /test/tamper asked for it.
provider.use(async (ctx, next) => {
  await next();
  if (ctx.method !== 'POST' || ctx.path !== '/token' || typeof ctx.body?.id_token !== 'string') {
    return;
  }
  if (tamper) {
    const { claims, header: changedHeader, key } = tamper;
    tamper = undefined;
    const changed = { ...jwtClaims(ctx.body.id_token), ...claims };
    for (const [name, value] of Object.entries(claims)) {
      if (value === null) delete changed[name];
    }
    const header = { ...jwtHeader(ctx.body.id_token), ...changedHeader };
    ctx.body = { ...ctx.body, id_token: signJwt(header, changed, signingKey(key)) };
  }
  idTokens.push(jwtClaims(ctx.body.id_token));
});

provider.on('server_error', (_ctx, error) => console.error('server_error', error));

server.on('request', provider.callback());

const stop = () => {
  server.closeAllConnections?.();
  server.close();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.on('close', stop);
process.stdin.resume();

console.log(JSON.stringify({ issuer }));
