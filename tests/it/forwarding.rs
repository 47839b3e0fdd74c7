//! What reaches the upstream, and what comes back: the normalised path with the original query,
//! header surgery, identity headers that cannot be spoofed, request ids, route choice, streaming.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::json;

use crate::support::gateway::config;
use crate::support::{get, request, FakeIdp, RecordingUpstream, TestGateway};

async fn setup(extra: &str) -> (FakeIdp, RecordingUpstream, TestGateway) {
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let gw = TestGateway::start(&config(&idp.issuer, &upstream.url(), extra), true).await;
    (idp, upstream, gw)
}

#[tokio::test]
async fn dot_segments_cannot_slip_past_a_route() {
    let (idp, upstream, gw) = setup("").await;
    // Through a public prefix into a protected one: normalised first, so the protected route
    // applies and no token means 401.
    for path in [
        "/public/../entity/Default/24.200.001/Customer",
        "/public/%2e%2e/entity/Default/x",
        "/public/.%2E/entity/Default/x",
        "/public//..//entity/Default/x",
    ] {
        let r = get(&gw.url(path), &[]).await;
        assert_eq!(r.status, 401, "{path}");
    }
    // Out of a protected prefix to a path no route serves: 404, nothing forwarded.
    let auth = format!("Bearer {}", idp.token(json!({})));
    let r = get(
        &gw.url("/entity/Default/../../admin"),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, 404);
    // A broken escape next to a decoded one must not assemble a new escape (`%2%65` → `%2e`)
    // that the upstream would decode into a dot segment.
    let r = get(&gw.url("/public/%2%65%2%65/entity/Default/x"), &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_request");
    // Backslashes (IIS treats them as '/') are refused.
    let r = get(&gw.url("/public/..%5Centity%5CDefault"), &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(upstream.count(), 0);

    // The upstream receives the normalised path and the original query.
    let r = get(
        &gw.url("/entity/Default/./24.200.001//Customer/%7Ex?$filter=Name%20eq%20'A'&$top=5"),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        upstream.last().uri,
        "/entity/Default/24.200.001/Customer/~x?$filter=Name%20eq%20'A'&$top=5"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn prefixes_match_whole_segments() {
    let (idp, upstream, gw) = setup("").await;
    let auth = format!("Bearer {}", idp.token(json!({})));
    assert_eq!(
        get(&gw.url("/entity/DefaultX/y"), &[("authorization", &auth)])
            .await
            .status,
        404
    );
    assert_eq!(
        get(&gw.url("/entity/Default"), &[("authorization", &auth)])
            .await
            .status,
        200
    );
    assert_eq!(
        get(&gw.url("/healthz"), &[]).await.status,
        404,
        "exact /health does not match /healthz"
    );
    assert_eq!(upstream.count(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn route_choice_exact_then_longest_prefix_then_file_order_and_host() {
    let extra = r#"
[[route]]
id = "deep"
prefix = "/entity/Default/24.200.001/Public"
upstream = "erp"
auth = "none"

[[route]]
id = "exact-public"
exact = "/entity/Default/open"
upstream = "erp"
auth = "none"

[[route]]
id = "host-bound"
host = "admin.example.com"
prefix = "/public/"
upstream = "erp"
scopes = ["admin"]
"#;
    let (_idp, upstream, gw) = setup(extra).await;
    // Longer prefix (public) beats the shorter protected one.
    assert_eq!(
        get(&gw.url("/entity/Default/24.200.001/Public/x"), &[])
            .await
            .status,
        200
    );
    // Exact beats every prefix.
    assert_eq!(get(&gw.url("/entity/Default/open"), &[]).await.status, 200);
    assert_eq!(
        get(&gw.url("/entity/Default/open/x"), &[]).await.status,
        401
    );
    // A host-bound route wins for its host only.
    assert_eq!(get(&gw.url("/public/x"), &[]).await.status, 200);
    assert_eq!(
        get(&gw.url("/public/x"), &[("host", "ADMIN.example.com:8443")])
            .await
            .status,
        401
    );
    let m = gw.metrics().await;
    let routes = m.label_values("route");
    for route in ["deep", "exact-public", "host-bound"] {
        assert!(routes.contains(route), "no route=\"{route}\" in:\n{m:?}");
    }
    assert_eq!(upstream.count(), 3);
    gw.shutdown().await;
}

#[tokio::test]
async fn headers_are_cleaned_and_identity_cannot_be_spoofed() {
    let (idp, upstream, gw) = setup("").await;
    let token = idp.token(
        json!({"scope": "reports", "tenant": "MyStore", "sub": "alice", "client_id": "app-1"}),
    );
    let req = Request::get(gw.url("/reports/daily?x=1"))
        .header("authorization", format!("Bearer {token}"))
        .header("x-auth-subject", "admin")
        .header("x-auth-client", "spoofed")
        .header("connection", "x-hop-secret")
        .header("x-hop-secret", "1")
        .header("proxy-authorization", "Basic abc")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-request-id", "client-req-42")
        .header("cookie", "a=b")
        .header("host", "api.example.com")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = request(req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = upstream.last();
    let h = &seen.headers;
    assert_eq!(h["x-auth-subject"], "alice");
    assert_eq!(h["x-auth-client"], "app-1");
    assert_eq!(h.get_all("x-auth-subject").iter().count(), 1);
    assert!(h.get("authorization").is_none(), "bearer forwarded");
    assert!(h.get("x-hop-secret").is_none());
    assert!(h.get("proxy-authorization").is_none());
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "api.example.com");
    assert_eq!(h["host"], upstream.addr.to_string().as_str());
    assert_eq!(h["x-request-id"], "client-req-42");
    assert_eq!(r.header("x-request-id"), Some("client-req-42"));
    // The upstream's hop-by-hop response headers are removed; end-to-end ones kept.
    assert_eq!(r.header("x-upstream-hop"), None);
    assert_eq!(r.header("keep-alive"), None);
    assert_eq!(r.header("x-upstream-end"), Some("kept"));

    // A token without the claim: the spoofed header is still removed.
    let no_client = idp.token(json!({"scope": "reports", "tenant": "MyStore", "client_id": null}));
    let r = get(
        &gw.url("/reports/x"),
        &[
            ("authorization", &format!("Bearer {no_client}")),
            ("x-auth-client", "spoofed"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(upstream.last().headers.get("x-auth-client").is_none());
    gw.shutdown().await;
}

/// The forwarding headers a client can send to mislead the upstream about its address, or (IIS,
/// ASP.NET) about the URL it asked for, without `trust_forwarded_headers`.
const MISLEADING: [(&str, &str); 8] = [
    ("forwarded", "for=6.6.6.6;host=evil"),
    ("x-real-ip", "6.6.6.6"),
    ("true-client-ip", "6.6.6.6"),
    ("x-forwarded-port", "8443"),
    ("x-forwarded-prefix", "/admin"),
    ("x-original-url", "/admin/users/delete"),
    ("x-original-host", "evil"),
    ("x-rewrite-url", "/admin/users/delete"),
];

#[tokio::test]
async fn untrusted_forwarding_headers_never_reach_the_upstream() {
    let (_idp, upstream, gw) = setup("").await;
    let mut headers = MISLEADING.to_vec();
    headers.push(("host", "api.example.com"));
    let r = get(&gw.url("/public/x"), &headers).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let h = &upstream.last().headers;
    for (name, _) in MISLEADING {
        if name != "forwarded" {
            assert!(h.get(name).is_none(), "{name} reached the upstream");
        }
    }
    assert_eq!(h.get_all("forwarded").iter().count(), 1);
    assert_eq!(
        h["forwarded"],
        "for=127.0.0.1;proto=http;host=\"api.example.com\""
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn trusted_forwarding_headers_are_kept_and_appended_to() {
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let toml = config(&idp.issuer, &upstream.url(), "").replacen(
        "realm = \"tollgate\"",
        "realm = \"tollgate\"\ntrust_forwarded_headers = true",
        1,
    );
    let gw = TestGateway::start(&toml, true).await;
    let r = get(
        &gw.url("/public/x"),
        &[
            ("forwarded", "for=192.0.2.7;proto=https"),
            ("x-forwarded-for", "192.0.2.7"),
            ("x-real-ip", "192.0.2.7"),
            ("x-original-url", "/public/x"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let h = &upstream.last().headers;
    assert_eq!(
        h["forwarded"].to_str().unwrap(),
        format!(
            "for=192.0.2.7;proto=https, for=127.0.0.1;proto=http;host=\"{}\"",
            gw.base.trim_start_matches("http://")
        )
    );
    assert_eq!(h["x-forwarded-for"], "192.0.2.7, 127.0.0.1");
    assert_eq!(h["x-real-ip"], "192.0.2.7");
    assert_eq!(h["x-original-url"], "/public/x");
    gw.shutdown().await;
}

#[tokio::test]
async fn request_ids_are_generated_when_absent_or_insane() {
    let (_idp, upstream, gw) = setup("").await;
    let r = get(&gw.url("/health"), &[("x-request-id", "bad id\twith tab")]).await;
    let id = r.header("x-request-id").unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(upstream.last().headers["x-request-id"], id.as_str());
    let r2 = get(&gw.url("/health"), &[]).await;
    assert_ne!(r2.header("x-request-id").unwrap(), id);
    gw.shutdown().await;
}

#[tokio::test]
async fn authorization_is_forwarded_only_when_configured() {
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let cfg = config(&idp.issuer, &upstream.url(), "").replace(
        "connect_timeout = \"1s\"\ntimeout = \"2s\"",
        "connect_timeout = \"1s\"\ntimeout = \"2s\"\nforward_authorization = true",
    );
    let gw = TestGateway::start(&cfg, true).await;
    let auth = format!("Bearer {}", idp.token(json!({})));
    assert_eq!(
        get(&gw.url("/entity/Default/x"), &[("authorization", &auth)])
            .await
            .status,
        200
    );
    assert_eq!(upstream.last().headers["authorization"], auth.as_str());
    gw.shutdown().await;
}

#[tokio::test]
async fn bodies_stream_through_both_ways() {
    let (idp, upstream, gw) = setup("").await;
    let token = idp.token(json!({"scope": "api erp:write"}));
    let body = Bytes::from(vec![b'x'; 8 * 1024 * 1024]);
    let req = Request::put(gw.url("/entity/Default/24.200.001/Customer"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/octet-stream")
        .body(Full::new(body))
        .unwrap();
    let r = request(req).await;
    assert_eq!(r.status, 200);
    assert_eq!(upstream.last().body_len, 8 * 1024 * 1024);
    assert_eq!(r.json()["body_len"], 8 * 1024 * 1024);
    gw.shutdown().await;
}

#[tokio::test]
async fn http2_clients_are_served() {
    // HTTP/2 without TLS (prior knowledge) only when http2_cleartext is on.
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let cfg = config(&idp.issuer, &upstream.url(), "")
        .replace("[server]\n", "[server]\nhttp2_cleartext = true\n");
    let gw = TestGateway::start(&cfg, true).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let req = Request::get(gw.url("/entity/Default/x"))
        .header("authorization", format!("Bearer {}", idp.token(json!({}))))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(upstream.count(), 1);
    gw.shutdown().await;
}
