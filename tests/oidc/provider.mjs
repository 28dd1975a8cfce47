// A real OpenID Connect provider (panva/oidc-provider) for mayfly's
// integration tests. It stands in for GitHub Actions, GitLab, or a Kubernetes
// issuer: discovery, JWKS, and client_credentials access tokens that are JWTs
// with aud "mayfly", signed with the algorithm each client asks for.
//
// Usage: node tests/oidc/provider.mjs CONFIG.json
//
// CONFIG.json:
//   {
//     "port": 18080,
//     "keys_out": "/tmp/x/keys.json",
//     "access_token_ttl": 300,
//     "clients": [{
//       "client_id": "ci", "client_secret": "s3cret",
//       "alg": "RS256" | "ES256" | "EdDSA",
//       "claims": {"repository": "acme/api"},      (sub defaults to client_id;
//                                                    claims.sub overrides it)
//       "audience": "mayfly",                        (optional)
//       "token_endpoint_auth_method": "client_secret_basic" | "client_secret_post" (optional)
//     }],
//     "people": [{                                   (optional: human clients, e.g.
//       "client_id": "mayfly-console",                 mayfly's web console, using the
//       "client_secret": "s3cret",                     authorization-code flow with PKCE)
//       "redirect_uris": ["http://127.0.0.1:8400/console/callback"]
//     }],
//     "accounts": {                                  (optional: who can log in there,
//       "alice": {"groups": ["sre"], "name": "Alice"}  by login name, with the claims
//     }                                                their ID tokens carry)
//   }
//
// With people configured, the provider shows oidc-provider's development
// login form (a "login" and a "password" field; the password is not
// checked, the login must be one of "accounts") and grants the scopes it
// was asked for without a consent screen.
//
// At start-up it makes one RSA-2048, one EC P-256 and one Ed25519 signing key,
// serves them as its JWKS, and writes their private halves to keys_out as
// [{"kid", "alg", "private_pem"}] (PKCS#8) so tests can forge tokens that the
// real keys signed (expired, wrong audience, ...). keys_out is written
// atomically before the port is opened. When it listens it prints
// "READY <issuer>" on stdout.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync, renameSync } from 'node:fs';
import { dirname, basename, join } from 'node:path';
import { once } from 'node:events';
import { createServer } from 'node:http';

const SUPPORTED_ALGS = new Set(['RS256', 'ES256', 'EdDSA']);
const DEFAULT_RESOURCE = 'https://mayfly.test';

function die(message) {
  process.stderr.write(`provider.mjs: ${message}\n`);
  process.exit(2);
}

function loadConfig(path) {
  if (!path) die('usage: node provider.mjs CONFIG.json');
  let config;
  try {
    config = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    die(`cannot read config ${path}: ${err.message}`);
  }
  if (!Number.isInteger(config.port) || config.port <= 0 || config.port > 65535) {
    die('config.port must be an integer port number');
  }
  if (typeof config.keys_out !== 'string' || !config.keys_out) die('config.keys_out must be a path');
  if (!Array.isArray(config.clients)) die('config.clients must be an array');
  const ttl = config.access_token_ttl ?? 300;
  if (!Number.isInteger(ttl) || ttl <= 0) die('config.access_token_ttl must be a positive integer (seconds)');
  config.access_token_ttl = ttl;
  const seen = new Set();
  for (const c of config.clients) {
    if (typeof c.client_id !== 'string' || !c.client_id) die('every client needs a client_id');
    if (seen.has(c.client_id)) die(`duplicate client_id ${c.client_id}`);
    seen.add(c.client_id);
    if (typeof c.client_secret !== 'string' || !c.client_secret) die(`client ${c.client_id} needs a client_secret`);
    c.alg ??= 'RS256';
    if (!SUPPORTED_ALGS.has(c.alg)) die(`client ${c.client_id}: alg must be one of ${[...SUPPORTED_ALGS].join(', ')}`);
    c.claims ??= {};
    if (typeof c.claims !== 'object' || Array.isArray(c.claims)) die(`client ${c.client_id}: claims must be an object`);
    c.audience ??= 'mayfly';
    c.token_endpoint_auth_method ??= 'client_secret_basic';
  }
  config.people ??= [];
  if (!Array.isArray(config.people)) die('config.people must be an array');
  for (const p of config.people) {
    if (typeof p.client_id !== 'string' || !p.client_id) die('every person client needs a client_id');
    if (seen.has(p.client_id)) die(`duplicate client_id ${p.client_id}`);
    seen.add(p.client_id);
    if (typeof p.client_secret !== 'string' || !p.client_secret) die(`client ${p.client_id} needs a client_secret`);
    if (!Array.isArray(p.redirect_uris) || p.redirect_uris.length === 0) die(`client ${p.client_id} needs redirect_uris`);
  }
  config.accounts ??= {};
  if (typeof config.accounts !== 'object' || Array.isArray(config.accounts)) die('config.accounts must be an object');
  return config;
}

// One key per algorithm, each with its own kid, published with "alg" and
// "use" so that every verifier picks it unambiguously.
function makeKeys() {
  const specs = [
    { alg: 'RS256', type: 'rsa', options: { modulusLength: 2048 } },
    { alg: 'ES256', type: 'ec', options: { namedCurve: 'P-256' } },
    { alg: 'EdDSA', type: 'ed25519', options: {} },
  ];
  return specs.map(({ alg, type, options }) => {
    const { privateKey } = generateKeyPairSync(type, options);
    const kid = `${alg.toLowerCase()}-${randomBytes(6).toString('hex')}`;
    return {
      kid,
      alg,
      jwk: { ...privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' },
      private_pem: privateKey.export({ type: 'pkcs8', format: 'pem' }),
    };
  });
}

// Temp file in the same directory, then rename: a reader never sees half a
// file. No fsync: the harness reads it on this machine after READY, and a
// crash loses the test run anyway, while an fsync can wait behind the disk
// writes of the fuzz build that runs beside the tests.
function writeAtomic(path, contents) {
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`);
  writeFileSync(tmp, contents, { mode: 0o600 });
  renameSync(tmp, path);
}

// oidc-provider 9 uses crypto.hash (Node 20.12+) and the global CryptoKey.
{
  const [major, minor] = process.versions.node.split('.').map(Number);
  if (major < 20 || (major === 20 && minor < 12)) {
    die(`Node.js ${process.versions.node} is too old: oidc-provider 9 needs 20.12 or later (scripts/test.sh can install one)`);
  }
}

// A test that dies without dropping its harness must not leave us running.
{
  const parent = process.ppid;
  setInterval(() => { if (process.ppid !== parent) process.exit(0); }, 500).unref();
}

// Imported only after the version check, so an old Node says why it fails.
const { default: Provider } = await import('oidc-provider');

const config = loadConfig(process.argv[2]);
const issuer = `http://127.0.0.1:${config.port}`;
const keys = makeKeys();
const clientsById = new Map(config.clients.map((c) => [c.client_id, c]));

const provider = new Provider(issuer, {
  clients: [
    ...config.clients.map((c) => ({
      client_id: c.client_id,
      client_secret: c.client_secret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: c.token_endpoint_auth_method,
    })),
    ...config.people.map((p) => ({
      client_id: p.client_id,
      client_secret: p.client_secret,
      grant_types: ['authorization_code'],
      response_types: ['code'],
      redirect_uris: p.redirect_uris,
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: 'RS256',
    })),
  ],
  // People log in by name; the password is not checked (a test provider).
  findAccount: (ctx, id) => {
    const claims = Object.hasOwn(config.accounts, id) ? config.accounts[id] : undefined;
    if (!claims) return undefined;
    return { accountId: id, claims: () => ({ ...claims, sub: id }) };
  },
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email'],
    groups: ['groups'],
  },
  // The claims go into the ID token, where mayfly's console reads them.
  conformIdTokenClaims: false,
  // No consent screen: every scope asked for is granted.
  loadExistingGrant: async (ctx) => {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) {
      const found = await ctx.oidc.provider.Grant.find(grantId);
      if (found) return found;
    }
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope(ctx.oidc.params.scope || 'openid');
    await grant.save();
    return grant;
  },
  jwks: { keys: keys.map((k) => k.jwk) },
  features: {
    devInteractions: { enabled: config.people.length > 0 },
    introspection: { enabled: true },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // A token request without "resource" still gets a JWT for mayfly.
      // People's logins get no access token for mayfly: only their ID token is used.
      defaultResource: (ctx, client) => (clientsById.has(client.clientId) ? DEFAULT_RESOURCE : undefined),
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resourceIndicator, client) => {
        const spec = clientsById.get(client.clientId);
        if (!spec) throw new Error(`client ${client.clientId} gets no access token for ${resourceIndicator}`);
        return {
          scope: '',
          audience: spec.audience,
          accessTokenTTL: config.access_token_ttl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: spec.alg } },
        };
      },
    },
  },
  // The workload claims a CI system would put in its token (repository, ref, ...).
  extraTokenClaims: (ctx, token) => {
    const spec = clientsById.get(token.clientId);
    return spec ? { ...spec.claims } : undefined;
  },
  formats: {
    customizers: {
      // oidc-provider always sets sub = client_id; a client may override it
      // with claims.sub to look like GitHub's "repo:acme/api:ref:refs/heads/main".
      jwt: (ctx, token, jwt) => {
        const spec = clientsById.get(token.clientId);
        if (spec && typeof spec.claims.sub === 'string') jwt.payload.sub = spec.claims.sub;
      },
    },
  },
  ttl: {
    ClientCredentials: () => config.access_token_ttl,
    AccessToken: () => config.access_token_ttl,
  },
  cookies: { keys: [randomBytes(32).toString('hex')] },
});

// Errors go to stderr, which the test harness shows when something fails.
provider.on('server_error', (ctx, err) => {
  process.stderr.write(`provider.mjs: server_error: ${err.stack || err}\n`);
});
provider.on('grant.error', (ctx, err) => {
  process.stderr.write(`provider.mjs: grant.error: ${err.message} ${err.error_description || ''}\n`);
});

writeAtomic(config.keys_out, JSON.stringify(
  keys.map(({ kid, alg, private_pem }) => ({ kid, alg, private_pem })),
  null,
  2,
));

const server = createServer(provider.callback());
server.on('error', (err) => die(`cannot listen on 127.0.0.1:${config.port}: ${err.message}`));
server.listen(config.port, '127.0.0.1');
await once(server, 'listening');
process.stdout.write(`READY ${issuer}\n`);

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    process.exit(0);
  });
}
