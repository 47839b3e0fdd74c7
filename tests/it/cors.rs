//! CORS per route over real sockets: preflights answered by the gateway (204 or 403, no token,
//! nothing forwarded), CORS headers on every answer of the route, the gateway's own 401, 403, 429
//! and 503 included, the upstream's own CORS headers replaced, and routes without `[route.cors]`
//! unchanged.

use serde_json::json;

use crate::support::gateway::config;
use crate::support::http::Reply;
use crate::support::legacy::{Setup, Store};
use crate::support::{send, FakeIdp, RecordingUpstream, TestGateway};

const APP: &str = "https://app.example.com";

/// The issue's example, on a bearer route of its own.
const BROWSER_ROUTE: &str = r#"
[[route]]
id = "app"
prefix = "/app/"
methods = ["GET", "PUT"]
upstream = "erp"
scopes = ["api"]
[route.cors]
allowed_origins = ["https://app.example.com"]
allowed_methods = ["GET", "PUT"]
allowed_headers = ["Content-Type", "Authorization"]
expose_headers = ["X-Request-Id"]
max_age = "10m"
allow_credentials = false
"#;

fn cors_headers(r: &Reply) -> Vec<(String, String)> {
    r.headers
        .iter()
        .filter(|(n, _)| n.as_str().starts_with("access-control-"))
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
        .collect()
}

/// The headers an answer to the allowed origin carries, whatever its status.
fn assert_readable(r: &Reply) {
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some(APP),
        "{} {:?}",
        r.status,
        r.headers
    );
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("X-Request-Id, WWW-Authenticate, Retry-After")
    );
    assert_eq!(r.header("access-control-allow-credentials"), None);
    assert!(
        r.headers
            .get_all("vary")
            .iter()
            .any(|v| v.to_str().unwrap().contains("Origin")),
        "{:?}",
        r.headers
    );
}

#[tokio::test]
async fn preflights_are_answered_by_the_gateway_without_a_token() {
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let gw = TestGateway::start(&config(&idp.issuer, &upstream.url(), BROWSER_ROUTE), true).await;
    let url = gw.url("/app/orders/1");

    let ok = send(
        "OPTIONS",
        &url,
        &[
            ("origin", APP),
            ("access-control-request-method", "PUT"),
            (
                "access-control-request-headers",
                "authorization,content-type",
            ),
        ],
    )
    .await;
    assert_eq!(ok.status, 204, "{}", ok.text());
    assert_eq!(ok.header("access-control-allow-origin"), Some(APP));
    assert_eq!(ok.header("access-control-allow-methods"), Some("GET, PUT"));
    assert_eq!(
        ok.header("access-control-allow-headers"),
        Some("Content-Type, Authorization")
    );
    assert_eq!(ok.header("access-control-max-age"), Some("600"));
    assert_eq!(ok.header("access-control-allow-credentials"), None);
    assert_eq!(ok.header("vary"), Some("Origin"));

    for (why, headers) in [
        (
            "another origin",
            vec![
                ("origin", "https://evil.example.com"),
                ("access-control-request-method", "GET"),
            ],
        ),
        (
            "another method",
            vec![("origin", APP), ("access-control-request-method", "DELETE")],
        ),
        (
            "another header",
            vec![
                ("origin", APP),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "authorization,x-debug"),
            ],
        ),
    ] {
        let r = send("OPTIONS", &url, &headers).await;
        assert_eq!(r.status, 403, "{why}: {}", r.text());
        assert_eq!(r.json()["error"], "cors_preflight_refused", "{why}");
        assert!(cors_headers(&r).is_empty(), "{why}: {:?}", r.headers);
    }
    assert_eq!(upstream.count(), 0, "no preflight is forwarded");

    let m = gw.metrics().await;
    assert_eq!(
        m.count(r#"tollgate_requests_total{route="app",method="OPTIONS",status="204"}"#),
        1
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn every_answer_to_an_allowed_origin_is_readable_and_the_upstreams_cors_is_replaced() {
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let gw = TestGateway::start(&config(&idp.issuer, &upstream.url(), BROWSER_ROUTE), true).await;
    let url = gw.url("/app/orders/1?upstream_cors");
    let bearer = |t: &str| format!("Bearer {t}");

    // The upstream's answer, with its own any-origin, credentialed CORS headers replaced.
    let api = idp.token(json!({}));
    let ok = send(
        "GET",
        &url,
        &[("origin", APP), ("authorization", &bearer(&api))],
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_readable(&ok);
    let vary: Vec<_> = ok.headers.get_all("vary").iter().collect();
    assert_eq!(vary, ["Accept-Encoding", "Origin"]);

    // The gateway's own refusals: a browser application can read them.
    let missing = send("GET", &url, &[("origin", APP)]).await;
    assert_eq!(missing.status, 401);
    assert_readable(&missing);
    assert_eq!(
        missing.header("www-authenticate"),
        Some("Bearer realm=\"tollgate\"")
    );
    let reports = idp.token(json!({"scope": "reports"}));
    let forbidden = send(
        "PUT",
        &url,
        &[("origin", APP), ("authorization", &bearer(&reports))],
    )
    .await;
    assert_eq!(forbidden.status, 403);
    assert_readable(&forbidden);

    // Another origin gets no CORS headers at all, not even the upstream's: the browser keeps
    // the answer from its page (the request itself is served; CORS is not access control).
    for headers in [
        vec![
            ("origin", "https://evil.example.com"),
            ("authorization", &*bearer(&api)),
        ],
        vec![("authorization", &*bearer(&api))],
    ] {
        let r = send("GET", &url, &headers).await;
        assert_eq!(r.status, 200);
        assert!(cors_headers(&r).is_empty(), "{:?}", r.headers);
    }

    // A route without [route.cors] is as before: OPTIONS needs a token, and the upstream's
    // CORS headers pass.
    let plain = gw.url("/entity/Default/24.200.001/Customer?upstream_cors");
    let pre = send(
        "OPTIONS",
        &plain,
        &[("origin", APP), ("access-control-request-method", "GET")],
    )
    .await;
    assert_eq!(
        pre.status, 404,
        "erp-read takes GET and HEAD only: no route for OPTIONS"
    );
    let r = send(
        "GET",
        &plain,
        &[("origin", APP), ("authorization", &bearer(&api))],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    gw.shutdown().await;
}

#[tokio::test]
async fn on_a_route_of_any_method_without_cors_options_needs_a_token() {
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let gw = TestGateway::start(&config(&idp.issuer, &upstream.url(), ""), true).await;
    // `reports` takes any method and has no [route.cors]: a preflight is an ordinary request.
    let r = send(
        "OPTIONS",
        &gw.url("/reports/x"),
        &[("origin", APP), ("access-control-request-method", "GET")],
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(cors_headers(&r).is_empty());
    assert_eq!(upstream.count(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn an_issuer_outage_503_is_readable() {
    let idp = FakeIdp::start().await;
    idp.set_down(true);
    let upstream = RecordingUpstream::start().await;
    let gw = TestGateway::start(&config(&idp.issuer, &upstream.url(), BROWSER_ROUTE), false).await;
    let token = idp.token(json!({}));
    let r = send(
        "GET",
        &gw.url("/app/orders/1"),
        &[
            ("origin", APP),
            ("authorization", &format!("Bearer {token}")),
        ],
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert_readable(&r);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_session_upstreams_429_is_readable() {
    let e = Setup::new(Store::Memory)
        .session("max_sessions_per_grant = 2\nmax_upstream_sessions = 2")
        .extra(
            r#"
[[route]]
id = "browser"
exact = "/entity/Default/24.200.001/Echo"
upstream = "erp"
scopes = ["api"]
[route.cors]
allowed_origins = ["https://app.example.com"]
expose_headers = ["X-Request-Id"]
"#,
        )
        .start()
        .await;
    let t = e.token("c1", true);
    let echo = e.gw.url(crate::support::legacy::ECHO);
    let auth = format!("Bearer {t}");
    for _ in 0..2 {
        let r = send("GET", &echo, &[("origin", APP), ("authorization", &auth)]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_readable(&r);
    }
    let r = send("GET", &echo, &[("origin", APP), ("authorization", &auth)]).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"], "grant_session_limit");
    assert_readable(&r);
    e.assert_no_leaks();
    e.gw.shutdown().await;
}
