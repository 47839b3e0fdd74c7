//! The pipeline's branches, driven by plain calls of [`Gateway::handle`] (no client socket):
//! each test builds a request value, hands it to the gateway and reads the answer, the
//! upstream's own record of what reached it, and the metrics.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt as _, Full};
use serde_json::json;
use tokio::net::TcpListener;

use super::{Conn, Gateway};
use crate::demo::keys::{self, SigningKey};
use crate::metrics::Metrics;
use crate::testing::Chunks;
use crate::{proxy, Body};

/// What the upstream saw: the number of requests and the last request's head.
#[derive(Default)]
struct Seen {
    calls: AtomicU64,
    last: Mutex<Option<(String, HeaderMap)>>,
}

/// An issuer (its JWKS), an upstream that records what reaches it, and a started gateway.
struct Bench {
    gateway: Gateway,
    key: SigningKey,
    issuer: String,
    seen: Arc<Seen>,
    _stop: tokio::sync::watch::Sender<bool>,
}

/// Serves `respond` on a fresh loopback port until `stop` turns true.
async fn serve<F>(stop: &tokio::sync::watch::Sender<bool>, respond: F) -> SocketAddr
where
    F: Fn(Request<hyper::body::Incoming>) -> Response<Body> + Clone + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rx = stop.subscribe();
    tokio::spawn(crate::server::serve(
        listener,
        rx,
        Duration::from_secs(1),
        move |req, _| {
            let respond = respond.clone();
            async move { respond(req) }
        },
    ));
    addr
}

impl Bench {
    /// The gateway of `routes` (TOML after the issuer and the upstream `erp`).
    async fn start(upstream_extra: &str, routes: &str) -> Bench {
        let (stop, _) = tokio::sync::watch::channel(false);
        let key = SigningKey::rsa("k1", jsonwebtoken::Algorithm::RS256).unwrap();
        let jwks = keys::jwks(&[&key]);
        let idp = serve(&stop, move |_| proxy::json_response(StatusCode::OK, &jwks)).await;
        let seen = Arc::new(Seen::default());
        let record = seen.clone();
        let upstream = serve(&stop, move |req| {
            record.calls.fetch_add(1, Ordering::SeqCst);
            *record.last.lock().unwrap() = Some((req.uri().to_string(), req.headers().clone()));
            proxy::json_response(StatusCode::OK, &json!({"ok": true}))
        })
        .await;
        let issuer = format!("http://{idp}");
        let toml = format!(
            r#"
[server]
realm = "unit"

[[issuer]]
id = "erp"
issuer = "{issuer}"
jwks_uri = "{issuer}/jwks"
audiences = ["api"]
algorithms = ["RS256"]

[[upstream]]
id = "erp"
url = "http://{upstream}"
timeout = "2s"
{upstream_extra}

{routes}
"#
        );
        let config = crate::config::from_toml_str(&toml).unwrap();
        let gateway = Gateway::new(&config, Metrics::new().unwrap()).unwrap();
        gateway.start();
        for _ in 0..500 {
            if gateway.is_ready() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(gateway.is_ready(), "the issuer's keys never loaded");
        Bench {
            gateway,
            key,
            issuer,
            seen,
            _stop: stop,
        }
    }

    fn token(&self, scope: &str) -> String {
        let now = crate::auth::jwt::now_unix();
        self.key
            .sign(&json!({
                "iss": self.issuer, "aud": "api", "sub": "alice", "client_id": "app",
                "scope": scope, "exp": now + 300, "iat": now, "grant_id": "g-1",
            }))
            .unwrap()
    }

    /// Hands `req` to the pipeline as a client would send it: an HTTP/1.1 request with its
    /// `Host` (one is added when the test gave none).
    async fn call<B>(&self, mut req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<crate::BoxError>,
    {
        if req.version() == http::Version::HTTP_11 && req.uri().authority().is_none() {
            req.headers_mut()
                .entry(header::HOST)
                .or_insert(http::HeaderValue::from_static("gateway.test"));
        }
        let conn = Conn {
            remote: "127.0.0.1:4000".parse().unwrap(),
            tls: false,
        };
        self.gateway.clone().handle(req, conn).await
    }

    fn calls(&self) -> u64 {
        self.seen.calls.load(Ordering::SeqCst)
    }

    fn metrics(&self) -> String {
        String::from_utf8(self.gateway.metrics().render()).unwrap()
    }
}

const ROUTES: &str = r#"
[[route]]
id = "read"
prefix = "/entity/"
methods = ["GET"]
upstream = "erp"
scopes = ["api"]
[route.headers]
"X-Auth-Subject" = "sub"

[[route]]
id = "write"
prefix = "/entity/"
methods = ["POST"]
upstream = "erp"
scopes = ["api", "erp:write"]
max_body = "16"

[[route]]
id = "public"
prefix = "/public/"
upstream = "erp"
auth = "none"
"#;

fn get(path: &str, token: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::get(path).header(header::HOST, "gw.example");
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

async fn json_of(resp: Response<Body>) -> serde_json::Value {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn refused_requests_send_nothing_upstream_and_answer_from_the_table() {
    let b = Bench::start("", ROUTES).await;

    let r = b.call(get("/nowhere", None)).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let r = b.call(get("/entity/x", None)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers()[header::WWW_AUTHENTICATE],
        "Bearer realm=\"unit\""
    );

    let r = b.call(get("/entity/x", Some("not-a-jwt"))).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let challenge = r.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
    assert!(challenge.starts_with("Bearer realm=\"unit\", error=\"invalid_token\""));
    assert!(r.headers().contains_key("x-request-id"));

    let mut post = get("/entity/x", Some(&b.token("api")));
    *post.method_mut() = Method::POST;
    let r = b.call(post).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(json_of(r).await["error"], "insufficient_scope");

    let r = b.call(get("/entity/%zz", None)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    assert_eq!(b.calls(), 0, "no refused request reached the upstream");
    let m = b.metrics();
    for decision in ["missing_token", "invalid_token", "insufficient_scope"] {
        assert!(
            m.contains(&format!("decision=\"{decision}\"")),
            "{decision} recorded"
        );
    }
    assert!(
        m.contains(r#"tollgate_requests_total{method="GET",route="none",status="404"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn a_permitted_request_reaches_the_upstream_once_with_its_identity() {
    let b = Bench::start("", ROUTES).await;
    let mut req = get("/entity/orders?top=1", Some(&b.token("api")));
    req.headers_mut()
        .insert("x-auth-subject", "mallory".parse().unwrap());
    let r = b.call(req).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().contains_key("x-request-id"));
    assert_eq!(b.calls(), 1);
    let (uri, headers) = b.seen.last.lock().unwrap().clone().unwrap();
    assert_eq!(uri, "/entity/orders?top=1");
    assert_eq!(
        headers["x-auth-subject"], "alice",
        "the claim, never the client's"
    );
    assert!(
        !headers.contains_key(header::AUTHORIZATION),
        "the token stays at the gateway"
    );
    let m = b.metrics();
    assert!(m.contains(r#"tollgate_upstream_duration_seconds_count{upstream="erp"} 1"#));
    assert!(m.contains(r#"tollgate_requests_total{method="GET",route="read",status="200"} 1"#));
}

#[tokio::test]
async fn body_limits_answer_413_and_close_an_unread_http1_body() {
    let b = Bench::start("", ROUTES).await;
    let token = b.token("api erp:write");
    let declared = |version| {
        Request::post("/entity/x")
            .version(version)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_LENGTH, "17")
            .body(Full::new(Bytes::from_static(b"0123456789abcdefg")))
            .unwrap()
    };
    let r = b.call(declared(Version::HTTP_11)).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.headers()[header::CONNECTION], "close");
    let r = b.call(declared(Version::HTTP_2)).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(!r.headers().contains_key(header::CONNECTION));
    assert_eq!(
        b.calls(),
        0,
        "a declared length over the limit is never forwarded"
    );

    // No declared length: the body is cut off at the limit while it streams.
    let streamed = Request::post("/entity/x")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::TRANSFER_ENCODING, "chunked")
        .body(Chunks(vec![Bytes::from_static(b"0123456789"); 4]))
        .unwrap();
    let r = b.call(streamed).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

const SESSION: &str = r#"
[upstream.session]
max_upstream_sessions = 2
[upstream.session.credentials]
name = "admin"
password = "123"
"#;

const SESSION_ROUTES: &str = r#"
[[route]]
id = "entity"
prefix = "/entity/"
upstream = "erp"
scopes = ["api"]

[[route]]
id = "public"
prefix = "/"
upstream = "erp"
auth = "none"
"#;

#[tokio::test]
async fn the_session_layer_answers_login_and_logout_calls_itself() {
    let b = Bench::start(SESSION, SESSION_ROUTES).await;
    let token = b.token("api");
    let call = |path: &str, token: Option<&str>| {
        let mut req = get(path, token);
        *req.method_mut() = Method::POST;
        req
    };
    let r = b.call(call("/entity/Auth/Login/", Some(&token))).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["tollgate-login"], "managed");

    // Another spelling misses the protected route and lands on the public catch-all: still the
    // logout call, still never forwarded.
    let r = b.call(call("/ENTITY/auth/logout", None)).await;
    assert_eq!(
        r.status(),
        StatusCode::NO_CONTENT,
        "a public route's logout"
    );

    let r = b.call(call("/entity/auth/logout;x=1", Some(&token))).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(b.calls(), 0, "neither call was forwarded");
    assert!(b
        .metrics()
        .contains(r#"tollgate_requests_total{method="POST",route="public",status="204"} 1"#));
}

#[tokio::test]
async fn a_passive_login_needs_a_grant() {
    let passive = SESSION.replace(
        "[upstream.session]",
        "[upstream.session]\ncreation = \"passive\"",
    );
    let passive = passive.replace(
        "[upstream.session.credentials]\nname = \"admin\"\npassword = \"123\"\n",
        "",
    );
    let b = Bench::start(&passive, SESSION_ROUTES).await;
    let mut req = get("/ENTITY/auth/login", None);
    *req.method_mut() = Method::POST;
    let r = b.call(req).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers()[header::WWW_AUTHENTICATE],
        "Bearer realm=\"unit\""
    );
    assert_eq!(b.calls(), 0);
}

#[tokio::test]
async fn a_public_route_on_a_session_upstream_passes_no_cookie() {
    let b = Bench::start(SESSION, SESSION_ROUTES).await;
    let mut req = get("/status", None);
    req.headers_mut()
        .insert(header::COOKIE, "ASP.NET_SessionId=stolen".parse().unwrap());
    let r = b.call(req).await;
    assert_eq!(r.status(), StatusCode::OK);
    let (_, headers) = b.seen.last.lock().unwrap().clone().unwrap();
    assert!(!headers.contains_key(header::COOKIE));
}
