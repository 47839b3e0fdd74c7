// Interop harness: runs a real third-party OAuth2/OIDC issuer (oauth2-mock-server)
// on 127.0.0.1 with a free port, mints one RS256 access token via the
// client_credentials grant, prints one JSON line to stdout, then waits.
//
// stdout: exactly one line: {"issuer":"http://127.0.0.1:PORT","jwks_uri":"...","token":"..."}
// Stops (exit 0) when stdin closes or on SIGTERM/SIGINT. With --no-stdin it
// ignores stdin and stops on SIGTERM/SIGINT only. Errors go to stderr, exit 1.
import { OAuth2Server } from 'oauth2-mock-server';

const CLIENT_ID = 'interop-client';
const CLIENT_SECRET = 'x';
const watchStdin = !process.argv.includes('--no-stdin');

function clientIdFromBasicAuth(header) {
  const m = /^Basic\s+(\S+)$/i.exec(header ?? '');
  if (!m) return undefined;
  const decoded = Buffer.from(m[1], 'base64').toString('utf8');
  const i = decoded.indexOf(':');
  return i < 0 ? undefined : decodeURIComponent(decoded.slice(0, i));
}

const server = new OAuth2Server();
await server.issuer.keys.generate('RS256');

server.service.on('beforeTokenSigning', (token, req) => {
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

await server.start(0, '127.0.0.1');
const { port } = server.address();
// The library would report http://localhost:PORT for 127.0.0.1; pin it so the
// printed issuer, the tokens' `iss` and the discovery `issuer` are all identical.
server.issuer.url = `http://127.0.0.1:${port}`;
const issuer = server.issuer.url;

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

  process.stdout.write(`${JSON.stringify({ issuer, jwks_uri: discovery.jwks_uri, token })}\n`);
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
