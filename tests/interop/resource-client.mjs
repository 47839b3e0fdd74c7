// Interop client: a real OAuth client library (oauth4webapi) meets tollgate as a protected
// resource, the RFC 9728 way. Given the URL of a protected API call, it:
//
//  1. calls it with a token tollgate cannot accept and reads the 401's WWW-Authenticate with the
//     library's challenge parser (WWWAuthenticateChallengeError);
//  2. fetches the protected resource metadata from the challenge's `resource_metadata` and
//     validates it with processResourceDiscoveryResponse, against the resource identifier the
//     well-known URL was made from (RFC 9728 §3.3);
//  3. fetches it again the library's own way (resourceDiscoveryRequest builds the §3.1 URL from
//     the resource identifier) and checks that it is the same document;
//  4. discovers the first authorization server it names (discoveryRequest /
//     processDiscoveryResponse) and gets a token there (client_credentials, interop-client / x,
//     the first scope of scopes_supported that the route needs, "api");
//  5. calls the API again with that token;
//  6. when a step-up URL is given, calls it with the same token and reads the RFC 9470
//     challenge.
//
// Usage: node resource-client.mjs <api-url> [<step-up-url>]
// stdout: exactly one line of JSON with what it found (see tests/it/interop.rs).
// Errors go to stderr, with exit code 1.
import * as oauth from 'oauth4webapi';

const WELL_KNOWN = '/.well-known/oauth-protected-resource';
// Everything runs on 127.0.0.1 over plain http.
const insecure = { [oauth.allowInsecureRequests]: true };

function bearerChallenge(err) {
  if (!(err instanceof oauth.WWWAuthenticateChallengeError)) throw err;
  const challenge = err.cause.find((c) => c.scheme === 'bearer');
  if (!challenge) throw new Error(`no Bearer challenge in ${JSON.stringify(err.cause)}`);
  return { status: err.status, parameters: challenge.parameters };
}

async function challengeOf(token, url) {
  try {
    const response = await oauth.protectedResourceRequest(token, 'GET', url, undefined, null, insecure);
    throw new Error(`expected a challenge from ${url}, got ${response.status}`);
  } catch (err) {
    return bearerChallenge(err);
  }
}

// RFC 9728 §3.3: the resource identifier into which the well-known suffix was inserted.
function resourceOfMetadataUrl(metadataUrl) {
  const u = new URL(metadataUrl);
  if (!u.pathname.startsWith(WELL_KNOWN)) throw new Error(`not a well-known URL: ${metadataUrl}`);
  const path = u.pathname.slice(WELL_KNOWN.length);
  return new URL(`${u.origin}${path || '/'}`);
}

async function main() {
  const [apiArg, stepUpArg] = process.argv.slice(2);
  if (!apiArg) throw new Error('usage: node resource-client.mjs <api-url> [<step-up-url>]');
  const api = new URL(apiArg);

  const unauthorized = await challengeOf('not-a-token-tollgate-knows', api);
  const metadataUrl = unauthorized.parameters.resource_metadata;
  if (!metadataUrl) throw new Error(`no resource_metadata in ${JSON.stringify(unauthorized)}`);

  const expected = resourceOfMetadataUrl(metadataUrl);
  const metadata = await oauth.processResourceDiscoveryResponse(expected, await fetch(metadataUrl));
  const again = await oauth.processResourceDiscoveryResponse(
    new URL(metadata.resource),
    await oauth.resourceDiscoveryRequest(new URL(metadata.resource), insecure),
  );
  if (JSON.stringify(again) !== JSON.stringify(metadata)) {
    throw new Error(`the library's §3.1 URL serves another document: ${JSON.stringify(again)}`);
  }

  const issuer = new URL(metadata.authorization_servers[0]);
  const as = await oauth.processDiscoveryResponse(issuer, await oauth.discoveryRequest(issuer, insecure));
  const client = { client_id: 'interop-client' };
  const scope = metadata.scopes_supported.includes('api') ? 'api' : metadata.scopes_supported[0];
  const tokens = await oauth.processClientCredentialsResponse(
    as,
    client,
    await oauth.clientCredentialsGrantRequest(as, client, oauth.ClientSecretBasic('x'), { scope }, insecure),
  );
  const ok = await oauth.protectedResourceRequest(tokens.access_token, 'GET', api, undefined, null, insecure);

  const report = {
    challenge: unauthorized,
    metadata_url: metadataUrl,
    metadata,
    authorization_server: { issuer: as.issuer, token_endpoint: as.token_endpoint },
    scope,
    status_with_token: ok.status,
  };
  if (stepUpArg) {
    report.step_up = await challengeOf(tokens.access_token, new URL(stepUpArg));
  }
  process.stdout.write(`${JSON.stringify(report)}\n`);
}

try {
  await main();
} catch (err) {
  process.stderr.write(`resource-client: ${err?.stack ?? err}\n`);
  process.exit(1);
}
