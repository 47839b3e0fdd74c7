// Interop harness: runs a real third-party OAuth2/OIDC issuer (oauth2-mock-server)
// on 127.0.0.1 with a free port, mints one RS256 access token via the
// client_credentials grant, registers one random opaque token, prints one JSON
// line to stdout, then waits.
//
// stdout: exactly one line:
//   {"issuer":"http://127.0.0.1:PORT","jwks_uri":"...","token":"<JWT>",
//    "introspection_endpoint":"http://127.0.0.1:PORT/introspect","opaque_token":"<32 hex>"}
// Stops (exit 0) when stdin closes or on SIGTERM/SIGINT. With --no-stdin it
// ignores stdin and stops on SIGTERM/SIGINT only. Errors go to stderr, exit 1.
//
// The introspection endpoint (the library's own /introspect route) answers per
// RFC 7662 through the library's `beforeIntrospect` hook; see README.md.
import { randomBytes } from 'node:crypto';
import { HttpServer, OAuth2Issuer, OAuth2Service } from 'oauth2-mock-server';

const CLIENT_ID = 'interop-client';
const CLIENT_SECRET = 'x';
const INTROSPECT_PATH = '/introspect';
const MAX_FORM_BYTES = 64 * 1024;
const watchStdin = !process.argv.includes('--no-stdin');

// RFC 6749 §2.3.1: Basic credentials are form-urlencoded before base64.
function formDecode(s) {
  try {
    return decodeURIComponent(s.replace(/\+/g, ' '));
  } catch {
    return undefined;
  }
}

function basicCredentials(header) {
  const m = /^Basic\s+(\S+)\s*$/i.exec(header ?? '');
  if (!m) return undefined;
  const decoded = Buffer.from(m[1], 'base64').toString('utf8');
  const i = decoded.indexOf(':');
  if (i < 0) return undefined;
  const id = formDecode(decoded.slice(0, i));
  const secret = formDecode(decoded.slice(i + 1));
  return id === undefined || secret === undefined ? undefined : { id, secret };
}

function clientIdFromBasicAuth(header) {
  return basicCredentials(header)?.id;
}

function jwtPayload(token) {
  const parts = token.split('.');
  if (parts.length !== 3) return undefined;
  try {
    const payload = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
    return payload !== null && typeof payload === 'object' && !Array.isArray(payload)
      ? payload
      : undefined;
  } catch {
    return undefined;
  }
}

const nowSecs = () => Math.floor(Date.now() / 1000);

// oauth2-mock-server 8.2.3 registers its /introspect route without a form body
// parser (only the global JSON parser runs), and `beforeIntrospect` fires
// synchronously before the body has been read, so `req.body` is undefined for an
// application/x-www-form-urlencoded POST. The library exports its request handler
// and HttpServer, so wrap the handler: read and parse the form body of POSTs to
// the introspection path first, then hand the request to the library unchanged.
const introspectionForms = new WeakMap(); // req -> URLSearchParams

function withIntrospectionForm(handler) {
  return (req, res) => {
    const path = (req.url ?? '').split('?')[0];
    const contentType = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
    if (
      req.method !== 'POST' ||
      path !== INTROSPECT_PATH ||
      contentType !== 'application/x-www-form-urlencoded'
    ) {
      handler(req, res);
      return;
    }
    const chunks = [];
    let size = 0;
    let failed = false;
    const fail = (status, error) => {
      if (failed) return;
      failed = true;
      res.statusCode = status;
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ error }));
      req.resume();
    };
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_FORM_BYTES) fail(413, 'invalid_request');
      else if (!failed) chunks.push(chunk);
    });
    req.on('error', () => fail(400, 'invalid_request'));
    req.on('end', () => {
      if (failed) return;
      introspectionForms.set(req, new URLSearchParams(Buffer.concat(chunks).toString('utf8')));
      // The stream is now consumed, so the library's body parser skips it.
      handler(req, res);
    });
  };
}

const issuerState = new OAuth2Issuer();
const service = new OAuth2Service(issuerState, { introspect: INTROSPECT_PATH });
const server = new HttpServer(withIntrospectionForm(service.requestHandler));
await issuerState.keys.generate('RS256');

service.on('beforeTokenSigning', (token, req) => {
  const body = req.body ?? {};
  token.payload.aud = 'api';
  token.payload.scope =
    typeof body.scope === 'string' && body.scope.trim() !== '' ? body.scope : 'api';
  if (token.payload.client_id === undefined) {
    token.payload.client_id =
      clientIdFromBasicAuth(req.headers?.authorization) ??
      (typeof body.client_id === 'string' ? body.client_id : CLIENT_ID);
  }
});

// Every access token this server hands out at its token endpoint.
const issuedAccessTokens = new Set();
service.on('beforeResponse', (response) => {
  const accessToken = response.body?.access_token;
  if (response.statusCode === 200 && typeof accessToken === 'string') {
    issuedAccessTokens.add(accessToken);
  }
});

await server.start(0, '127.0.0.1');
const { port } = server.address();
// Pin the issuer to 127.0.0.1 (the library would say localhost) so the printed
// issuer, the tokens' `iss` and the discovery `issuer` are all identical.
issuerState.url = `http://127.0.0.1:${port}`;
const issuer = issuerState.url;

// One opaque token, active for an hour from start-up.
const opaqueToken = randomBytes(16).toString('hex');
const opaqueIat = nowSecs();
const opaqueClaims = {
  scope: 'api',
  client_id: CLIENT_ID,
  sub: 'opaque-user',
  iss: issuer,
  aud: 'api',
  exp: opaqueIat + 3600,
  iat: opaqueIat,
  token_type: 'Bearer',
};

// RFC 7662 §2: the caller authenticates with client_secret_basic; the form field
// `token` (exactly once) is the token; unknown, expired or malformed tokens are
// simply inactive.
function introspect(req) {
  const creds = basicCredentials(req.headers.authorization);
  if (creds?.id !== CLIENT_ID || creds.secret !== CLIENT_SECRET) {
    return { status: 401, body: { error: 'invalid_client' } };
  }
  const form = introspectionForms.get(req);
  const tokens = form?.getAll('token') ?? [];
  if (tokens.length !== 1 || tokens[0] === '') {
    return { status: 400, body: { error: 'invalid_request' } };
  }
  const [token] = tokens;
  if (token === opaqueToken) {
    return { status: 200, body: { active: true, ...opaqueClaims } };
  }
  if (issuedAccessTokens.has(token)) {
    const payload = jwtPayload(token);
    if (payload && !(typeof payload.exp === 'number' && payload.exp <= nowSecs())) {
      const { active: _ignored, ...claims } = payload;
      return { status: 200, body: { active: true, ...claims, token_type: 'Bearer' } };
    }
  }
  return { status: 200, body: { active: false } };
}

let introspectionCalls = 0;
service.on('beforeIntrospect', (response, req) => {
  introspectionCalls += 1;
  const { status, body } = introspect(req);
  response.statusCode = status;
  response.body = body;
  if (status === 401) {
    // RFC 6749 §5.2; the hook cannot set headers, but express exposes req.res.
    req.res?.setHeader('WWW-Authenticate', 'Basic realm="mock-issuer"');
  }
  req.res?.setHeader('Cache-Control', 'no-store');
  const outcome = status === 200 ? `active=${body.active}` : `error=${body.error} status=${status}`;
  process.stderr.write(`mock-issuer: introspect ${outcome} n=${introspectionCalls}\n`);
});

let stopping = false;
async function shutdown(code) {
  if (stopping) return;
  stopping = true;
  try {
    await server.stop();
  } catch (err) {
    process.stderr.write(`mock-issuer: stop failed: ${err?.stack ?? err}\n`);
  }
  process.exit(code);
}

try {
  const discovery = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
  if (discovery.issuer !== issuer) {
    throw new Error(`discovery issuer ${discovery.issuer} != ${issuer}`);
  }
  const introspectionEndpoint = discovery.introspection_endpoint;
  if (introspectionEndpoint !== `${issuer}${INTROSPECT_PATH}`) {
    throw new Error(`discovery introspection_endpoint ${introspectionEndpoint} != ${issuer}${INTROSPECT_PATH}`);
  }
  const res = await fetch(discovery.token_endpoint, {
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from(`${CLIENT_ID}:${CLIENT_SECRET}`).toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: new URLSearchParams({ grant_type: 'client_credentials', scope: 'api' }),
  });
  if (!res.ok) throw new Error(`token endpoint answered ${res.status}: ${await res.text()}`);
  const { access_token: token } = await res.json();
  if (typeof token !== 'string') throw new Error('no access_token in token response');
  // Normally recorded by the beforeResponse hook already; make sure.
  issuedAccessTokens.add(token);

  process.stdout.write(
    `${JSON.stringify({
      issuer,
      jwks_uri: discovery.jwks_uri,
      token,
      introspection_endpoint: introspectionEndpoint,
      opaque_token: opaqueToken,
    })}\n`,
  );
} catch (err) {
  process.stderr.write(`mock-issuer: ${err?.stack ?? err}\n`);
  await shutdown(1);
}

process.on('SIGTERM', () => shutdown(0));
process.on('SIGINT', () => shutdown(0));
if (watchStdin) {
  process.stdin.on('end', () => shutdown(0));
  process.stdin.on('close', () => shutdown(0));
  process.stdin.on('error', () => shutdown(0));
  process.stdin.resume();
}
