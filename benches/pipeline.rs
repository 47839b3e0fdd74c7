//! The request path in process: [`tollgate::Gateway::handle`] called directly, no client socket,
//! with divan counting time and allocations per request.
//!
//! ```text
//! cargo bench --bench pipeline
//! # instructions per request, repeatable on a noisy machine:
//! valgrind --tool=callgrind target/release/deps/pipeline-<hash> --bench refused_403 --sample-count 1000
//! ```
//!
//! A bench's setup (keys, tokens, logins) is counted too. For one iteration's instructions
//! alone, collect only inside `Fixture::handle_on` and take the difference of two sample counts:
//!
//! ```text
//! valgrind --tool=callgrind --toggle-collect='pipeline::Fixture::handle_on' \
//!     target/release/deps/pipeline-<hash> --bench forward_session --sample-count 1000 --sample-size 1
//! # again with --sample-count 3000; (the second total - the first) / 2000
//! ```
//!
//! | bench | what one iteration is |
//! |---|---|
//! | `refused_403` | a cached token refused by a route's scopes: normalize, find, extract, verify (cache hit), authorize, the error table, record; nothing forwarded, no socket at all |
//! | `verify_cached` | the verified-token cache alone: digest and lookup |
//! | `verify_each/<alg>` | one signature check and claims validation (RS256, ES256, EdDSA), no cache |
//! | `signature_only_rs256` | aws-lc's RS256 check alone, key parsed once: `verify_each/RS256` less this is tollgate's own work on a new token |
//! | `forward/public` | a public route, forwarded to an upstream on loopback in this process |
//! | `forward/jwt_cached` | a JWT route with the token cached, forwarded the same way |
//! | `forward_session` | a session route (`mode = "single"`, memory store) in front of the fake legacy API in this process, 100 grants in turn, each logged in before the measured calls |
//! | `forward_legacy` | the same requests on the same route without `[upstream.session]`, each grant's token with the cookies of a session logged in to the fake directly: `forward_session` less this is the session layer |
//!
//! The `forward` rows include the upstream's own cost (it runs on the same thread), so compare
//! them with each other; `refused_403` and `verify_*` have no socket in them. The fake legacy
//! API does more a request than the `forward` rows' upstream, so `forward_session` is for
//! before-and-after comparisons of the session layer, not for a difference with
//! `forward/jwt_cached`.

// A bench that cannot set up has nothing to measure: it stops with the reason.
#![allow(clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Empty, Full};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tollgate::auth::{Kept, Token, Verifier};
use tollgate::demo::keys::{self, SigningKey};
use tollgate::demo::legacy::{FakeLegacy, LegacyOptions};
use tollgate::gateway::Conn;
use tollgate::metrics::Metrics;
use tollgate::Gateway;

#[global_allocator]
static ALLOC: divan::AllocProfiler = divan::AllocProfiler::system();

fn main() {
    divan::main();
}

/// The legacy upstream's `[upstream.session]` in the session gateway's configuration.
const SESSION: &str = r#"
[upstream.session]
mode = "single"
max_upstream_sessions = 200
idle_ttl = "300s"

[upstream.session.credentials]
name = "admin"
password = "123"
tenant = "MyStore"
branch = "HQ"
"#;

/// The legacy rows' path: the fake's echo entity.
const LEGACY_PATH: &str = "/entity/Default/24.200.001/Echo";

/// How many grants (and sessions) the legacy rows cycle through, as in the peers bench.
const GRANTS: usize = 100;

/// The signing keys of the bench's issuer, one per algorithm.
struct Keys {
    rs256: SigningKey,
    es256: SigningKey,
    eddsa: SigningKey,
}

/// An issuer, an upstream, a started gateway in front of them, and tokens for it.
struct Fixture {
    rt: Runtime,
    gateway: Gateway,
    /// The same configuration with no `[upstream.session]`: the legacy route forwards the
    /// client's own cookies.
    sessionless: Gateway,
    /// The `Cookie`s of sessions logged in to the fake directly, for `sessionless`.
    premade: Vec<String>,
    verifier: Verifier,
    keys: Keys,
    issuer: String,
}

async fn serve(body: Bytes) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, rx) = tokio::sync::watch::channel(false);
    std::mem::forget(stop);
    tokio::spawn(tollgate::serve(
        listener,
        rx,
        Duration::from_secs(1),
        move |_, _| {
            let body = body.clone();
            async move { Response::new(Full::new(body).map_err(|never| match never {}).boxed()) }
        },
    ));
    addr
}

impl Fixture {
    fn new() -> Fixture {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let keys = Keys {
            rs256: SigningKey::rsa("rs", jsonwebtoken::Algorithm::RS256).expect("rsa key"),
            es256: SigningKey::ec_p256("es").expect("ec key"),
            eddsa: SigningKey::ed25519("ed").expect("ed25519 key"),
        };
        let jwks = keys::jwks(&[&keys.rs256, &keys.es256, &keys.eddsa]);
        let (gateway, sessionless, premade, verifier, issuer) = rt.block_on(async {
            let idp = serve(Bytes::from(serde_json::to_vec(&jwks).expect("jwks"))).await;
            let upstream = serve(Bytes::from_static(br#"{"ok":true}"#)).await;
            let issuer = format!("http://{idp}");
            // One fake legacy API per gateway: each then holds its row's 100 sessions alone,
            // and the fake's own work a request is the same in both legacy rows.
            let config = |legacy_addr: SocketAddr, session: &str| {
                tollgate::config::from_toml_str(&format!(
                    r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[issuer]]
id = "bench"
issuer = "{issuer}"
jwks_uri = "{issuer}/jwks"
audiences = ["api"]
algorithms = ["RS256", "ES256", "EdDSA"]

[[upstream]]
id = "api"
url = "http://{upstream}"

[[route]]
id = "public"
prefix = "/public"
upstream = "api"
auth = "none"

[[route]]
id = "api"
prefix = "/api"
upstream = "api"
scopes = ["api"]

[[route]]
id = "admin"
prefix = "/admin"
upstream = "api"
scopes = ["admin"]

[[upstream]]
id = "legacy"
url = "http://{legacy_addr}"
{session}
[[route]]
id = "legacy"
prefix = "/entity/Default/"
upstream = "legacy"
scopes = ["api"]
"#
                ))
                .expect("config")
            };
            let config_session = config(fake_legacy().await, SESSION);
            let gateway = start(&config_session).await;
            let plain_legacy = fake_legacy().await;
            let sessionless = start(&config(plain_legacy, "")).await;
            let mut premade = Vec::new();
            for _ in 0..GRANTS {
                premade.push(legacy_login(plain_legacy).await);
            }
            // A verifier of its own, with a cache of one entry: `verify_each` cycles tokens.
            let client = tollgate::auth::fetch::IdpClient::new();
            let verifier = Verifier::new(
                &config_session.issuers,
                (1, Kept::new(["api"], [], false)),
                &client,
                &Metrics::new().expect("metrics"),
                None,
            );
            verifier.prefetch().await;
            (gateway, sessionless, premade, verifier, issuer)
        });
        Fixture {
            rt,
            gateway,
            sessionless,
            premade,
            verifier,
            keys,
            issuer,
        }
    }

    fn token(&self, key: &SigningKey, n: usize) -> String {
        key.sign(&self.claims(n)).expect("sign")
    }

    /// A token of grant `n` (its `grant_id` claim names the grant's upstream session).
    fn grant_token(&self, n: usize) -> String {
        let mut claims = self.claims(n);
        claims["grant_id"] = json!(format!("grant-{n}"));
        self.keys.rs256.sign(&claims).expect("sign")
    }

    fn claims(&self, n: usize) -> serde_json::Value {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        json!({
            "iss": self.issuer, "aud": "api", "sub": format!("user-{n}"), "client_id": "bench",
            "scope": "api", "iat": now, "exp": now + 3600, "jti": format!("bench-{n}"),
        })
    }

    fn handle(&self, path: &str, token: Option<&str>) -> StatusCode {
        self.handle_on(&self.gateway, path, token, None)
    }

    /// One request through `gateway`, with `cookie` as the client's `Cookie` header.
    fn handle_on(
        &self,
        gateway: &Gateway,
        path: &str,
        token: Option<&str>,
        cookie: Option<&str>,
    ) -> StatusCode {
        let mut req = Request::get(path).header("host", "bench");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        let req = req.body(Empty::<Bytes>::new()).expect("request");
        let conn = Conn {
            remote: SocketAddr::from(([127, 0, 0, 1], 40000)),
            tls: false,
        };
        self.rt.block_on(async {
            let resp = gateway.clone().handle(req, conn).await;
            let status = resp.status();
            // The whole answer is read, as a client would.
            let _ = resp.into_body().collect().await;
            status
        })
    }
}

/// A fake legacy API serving in this runtime, with seats for every grant and no `.ASPXAUTH`
/// renewals, as in the load bench.
async fn fake_legacy() -> SocketAddr {
    let legacy = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = legacy.local_addr().expect("local addr");
    std::mem::forget(
        FakeLegacy::new(LegacyOptions {
            max_api_users: 300,
            renew_auth_every: 0,
            ..LegacyOptions::default()
        })
        .spawn(legacy),
    );
    addr
}

/// A started gateway of `config`, once it is ready.
async fn start(config: &tollgate::config::Config) -> Gateway {
    let gateway = Gateway::new(config, Metrics::new().expect("metrics")).expect("gateway");
    gateway.start();
    while !gateway.is_ready() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gateway
}

/// Logs in to the fake legacy API at `addr` directly; returns the new session's `Cookie` value.
async fn legacy_login(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let body = r#"{"name":"admin","password":"123","tenant":"MyStore","branch":"HQ"}"#;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "POST /entity/auth/login HTTP/1.1\r\nHost: legacy\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("login");
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .await
        .expect("login answer");
    assert!(answer.starts_with("HTTP/1.1 204"), "login: {answer}");
    answer
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| name.eq_ignore_ascii_case("set-cookie"))
        .filter_map(|(_, v)| v.trim().split(';').next())
        .collect::<Vec<_>>()
        .join("; ")
}

fn bearer_headers(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header value"),
    );
    h
}

fn extract(headers: &HeaderMap) -> Token<'_> {
    tollgate::auth::bearer::extract(headers).expect("a bearer token")
}

fn fixture() -> &'static Fixture {
    static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    F.get_or_init(Fixture::new)
}

#[divan::bench]
fn refused_403(b: divan::Bencher) {
    let f = fixture();
    let token = f.token(&f.keys.rs256, 0);
    assert_eq!(f.handle("/admin/x", Some(&token)), StatusCode::FORBIDDEN);
    b.bench(|| f.handle("/admin/x", Some(&token)));
}

#[divan::bench]
fn verify_cached(b: divan::Bencher) {
    let f = fixture();
    let token = f.token(&f.keys.rs256, 0);
    let headers = bearer_headers(&token);
    let v = &f.verifier;
    let verify = || {
        f.rt.block_on(async { v.verify(extract(&headers), None).await.is_ok() })
    };
    assert!(verify());
    b.bench(verify);
}

#[divan::bench(args = ["RS256", "ES256", "EdDSA"])]
fn verify_each(b: divan::Bencher, alg: &str) {
    let f = fixture();
    let key = match alg {
        "RS256" => &f.keys.rs256,
        "ES256" => &f.keys.es256,
        _ => &f.keys.eddsa,
    };
    // More distinct tokens than the cache (one entry) holds: every call verifies.
    let bearers: Vec<HeaderMap> = (0..64).map(|n| bearer_headers(&f.token(key, n))).collect();
    let next = AtomicUsize::new(0);
    let verify = || {
        let headers = &bearers[next.fetch_add(1, Ordering::Relaxed) % bearers.len()];
        f.rt.block_on(async { f.verifier.verify(extract(headers), None).await.is_ok() })
    };
    assert!(verify());
    b.bench(verify);
}

#[divan::bench(args = ["public", "jwt_cached"])]
fn forward(b: divan::Bencher, route: &str) {
    let f = fixture();
    let token = f.token(&f.keys.rs256, 0);
    let (path, token) = match route {
        "public" => ("/public/orders/1", None),
        _ => ("/api/orders/1", Some(token.as_str())),
    };
    assert_eq!(f.handle(path, token), StatusCode::OK);
    b.bench(|| f.handle(path, token));
}

#[divan::bench]
fn forward_session(b: divan::Bencher) {
    let f = fixture();
    let tokens: Vec<String> = (0..GRANTS).map(|n| f.grant_token(n)).collect();
    let path = LEGACY_PATH;
    // Every grant logs in (and its token is verified) before the measured calls.
    for token in &tokens {
        assert_eq!(f.handle(path, Some(token)), StatusCode::OK);
    }
    let next = AtomicUsize::new(0);
    b.bench(|| {
        let token = &tokens[next.fetch_add(1, Ordering::Relaxed) % tokens.len()];
        f.handle(path, Some(token))
    });
}

/// `forward_session`'s requests through the same legacy route without `[upstream.session]`,
/// each grant's token with the cookies of a session logged in directly, as the peers bench's
/// row without sessions sends them: `forward_session` less this is the session layer.
#[divan::bench]
fn forward_legacy(b: divan::Bencher) {
    let f = fixture();
    let tokens: Vec<String> = (0..GRANTS).map(|n| f.grant_token(n)).collect();
    let call = |n: usize| {
        let token = &tokens[n % tokens.len()];
        let cookie = &f.premade[n % f.premade.len()];
        f.handle_on(&f.sessionless, LEGACY_PATH, Some(token), Some(cookie))
    };
    for n in 0..GRANTS {
        assert_eq!(call(n), StatusCode::OK);
    }
    let next = AtomicUsize::new(0);
    b.bench(|| call(next.fetch_add(1, Ordering::Relaxed)));
}

/// The signature check alone, in aws-lc with the key parsed once: `verify_each` less this is
/// tollgate's own work on a token it has not seen (parsing, claims, the principal, the cache).
#[divan::bench]
fn signature_only_rs256(b: divan::Bencher) {
    use aws_lc_rs::signature::{RsaPublicKeyComponents, RSA_PKCS1_2048_8192_SHA256};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let f = fixture();
    let jwks = keys::jwks(&[&f.keys.rs256]);
    let component = |name: &str| {
        URL_SAFE_NO_PAD
            .decode(jwks["keys"][0][name].as_str().expect("an RSA JWK"))
            .expect("base64url")
    };
    let (n, e) = (component("n"), component("e"));
    let key = RsaPublicKeyComponents { n: &n, e: &e }
        .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
        .expect("an RSA public key");
    let tokens: Vec<(String, Vec<u8>)> = (0..64)
        .map(|n| {
            let t = f.token(&f.keys.rs256, n);
            let (message, sig) = t.rsplit_once('.').expect("a JWS");
            (
                message.to_owned(),
                URL_SAFE_NO_PAD.decode(sig).expect("base64url"),
            )
        })
        .collect();
    let next = AtomicUsize::new(0);
    let verify = || {
        let (message, sig) = &tokens[next.fetch_add(1, Ordering::Relaxed) % tokens.len()];
        key.verify_sig(message.as_bytes(), sig).is_ok()
    };
    assert!(verify());
    b.bench(verify);
}
