//! The response table of RFC 6750 as tollgate implements it: one row per case, asserting the
//! status, the exact WWW-Authenticate value (or its absence), Retry-After, the JSON error body,
//! `Cache-Control: no-store`, that the token is never echoed, and whether the upstream was reached.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, Header};
use serde_json::json;
use tollgate::demo::keys::SigningKey;

use crate::support::gateway::config;
use crate::support::{request, FakeIdp, RecordingUpstream, TestGateway};

struct Row {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    authorization: Vec<String>,
    status: u16,
    challenge: Option<&'static str>,
    error: &'static str,
    reaches_upstream: bool,
}

fn invalid_token(desc: &str) -> String {
    format!("Bearer realm=\"tollgate\", error=\"invalid_token\", error_description=\"{desc}\"")
}

fn invalid_request(desc: &str) -> String {
    format!("Bearer realm=\"tollgate\", error=\"invalid_request\", error_description=\"{desc}\"")
}

#[tokio::test]
async fn every_row_of_the_response_table() {
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let gw = TestGateway::start(&config(&idp.issuer, &upstream.url(), ""), true).await;

    let valid = idp.token(json!({}));
    let attacker = SigningKey::rsa("k1", Algorithm::RS256).unwrap();
    let forged = attacker.sign(&idp.claims()).unwrap();
    let expired = idp.token(json!({"exp": crate::support::now() - 3600}));
    let future = idp.token(json!({"nbf": crate::support::now() + 3600}));
    let wrong_iss = idp.token(json!({"iss": "https://evil.example.com"}));
    let wrong_aud = idp.token(json!({"aud": "other"}));
    let ps256 = {
        let mut h = Header::new(Algorithm::PS256);
        h.kid = Some("k1".into());
        idp.key("k1").sign_with_header(&h, &idp.claims()).unwrap()
    };
    let unknown_kid = SigningKey::rsa("nobody-knows-me", Algorithm::RS256)
        .unwrap()
        .sign(&idp.claims())
        .unwrap();
    let no_tenant = idp.token(json!({"scope": "reports"}));
    let big = "a".repeat(16 * 1024 + 1);

    let t = |s: &str| vec![format!("Bearer {s}")];
    let rows = vec![
        Row {
            name: "valid token",
            method: "GET",
            path: "/entity/Default/24.200.001/Customer",
            authorization: t(&valid),
            status: 200,
            challenge: None,
            error: "",
            reaches_upstream: true,
        },
        Row {
            name: "public route without token",
            method: "GET",
            path: "/health",
            authorization: vec![],
            status: 200,
            challenge: None,
            error: "",
            reaches_upstream: true,
        },
        Row {
            name: "no Authorization",
            method: "GET",
            path: "/entity/Default/x",
            authorization: vec![],
            status: 401,
            challenge: Some("Bearer realm=\"tollgate\""),
            error: "invalid_token",
            reaches_upstream: false,
        },
        Row {
            name: "non-Bearer scheme",
            method: "GET",
            path: "/entity/Default/x",
            authorization: vec!["Basic dXNlcjpwYXNz".into()],
            status: 401,
            challenge: Some("Bearer realm=\"tollgate\""),
            error: "invalid_token",
            reaches_upstream: false,
        },
        Row {
            name: "two Authorization headers",
            method: "GET",
            path: "/entity/Default/x",
            authorization: vec![format!("Bearer {valid}"), format!("Bearer {valid}")],
            status: 400,
            challenge: None,
            error: "invalid_request",
            reaches_upstream: false,
        },
        Row {
            name: "empty token",
            method: "GET",
            path: "/entity/Default/x",
            authorization: vec!["Bearer".into()],
            status: 400,
            challenge: None,
            error: "invalid_request",
            reaches_upstream: false,
        },
        Row {
            name: "characters outside b64token",
            method: "GET",
            path: "/entity/Default/x",
            authorization: t("abc,def"),
            status: 400,
            challenge: None,
            error: "invalid_request",
            reaches_upstream: false,
        },
        Row {
            name: "token over 16 KiB",
            method: "GET",
            path: "/entity/Default/x",
            authorization: t(&big),
            status: 400,
            challenge: None,
            error: "invalid_request",
            reaches_upstream: false,
        },
        Row {
            name: "bad signature",
            method: "GET",
            path: "/entity/Default/x",
            authorization: t(&forged),
            status: 401,
            challenge: None,
            error: "invalid_token",
            reaches_upstream: false,
        },
        Row {
            name: "expired",
            method: "GET",
            path: "/entity/Default/x",
            authorization: t(&expired),
            status: 401,
            challenge: None,
            error: "invalid_token",
            reaches_upstream: false,
        },
        Row {
            name: "not yet valid",
            method: "GET",
            path: "/entity/Default/x",
            authorization: t(&future),
            status: 401,
            challenge: None,
            error: "invalid_token",
            reaches_upstream: false,
        },
        Row {
            name: "wrong iss",
            method: "GET",
            path: "/entity/Default/x",
            authorization: t(&wrong_iss),
            status: 401,
            challenge: None,
            error: "invalid_token",
            reaches_upstream: false,
        },
        Row {
            name: "wrong aud",
            method: "GET",
            path: "/entity/Default/x",
            authorization: t(&wrong_aud),
            status: 401,
            challenge: None,
            error: "invalid_token",
            reaches_upstream: false,
        },
        Row {
            name: "disallowed alg",
            method: "GET",
            path: "/entity/Default/x",
            authorization: t(&ps256),
            status: 401,
            challenge: None,
            error: "invalid_token",
            reaches_upstream: false,
        },
        Row {
            name: "unknown kid after re-fetch",
            method: "GET",
            path: "/entity/Default/x",
            authorization: t(&unknown_kid),
            status: 401,
            challenge: None,
            error: "invalid_token",
            reaches_upstream: false,
        },
        Row {
            name: "missing scope",
            method: "PUT",
            path: "/entity/Default/x",
            authorization: t(&valid),
            status: 403,
            challenge: Some(
                "Bearer realm=\"tollgate\", error=\"insufficient_scope\", scope=\"api erp:write\"",
            ),
            error: "insufficient_scope",
            reaches_upstream: false,
        },
        Row {
            name: "claim mismatch",
            method: "GET",
            path: "/reports/daily",
            authorization: t(&no_tenant),
            status: 403,
            challenge: Some(
                "Bearer realm=\"tollgate\", error=\"insufficient_scope\", scope=\"reports admin\"",
            ),
            error: "insufficient_scope",
            reaches_upstream: false,
        },
        Row {
            name: "no route",
            method: "GET",
            path: "/nothing/here",
            authorization: t(&valid),
            status: 404,
            challenge: None,
            error: "not_found",
            reaches_upstream: false,
        },
        Row {
            name: "method no route allows",
            method: "OPTIONS",
            path: "/entity/Default/x",
            authorization: t(&valid),
            status: 404,
            challenge: None,
            error: "not_found",
            reaches_upstream: false,
        },
    ];

    let expected_challenges: Vec<(&str, String)> = vec![
        (
            "two Authorization headers",
            invalid_request("more than one Authorization header"),
        ),
        ("empty token", invalid_request("the bearer token is empty")),
        (
            "characters outside b64token",
            invalid_request("the bearer token has characters outside RFC 6750's b64token"),
        ),
        (
            "token over 16 KiB",
            invalid_request("the bearer token is larger than 16 KiB"),
        ),
        (
            "bad signature",
            invalid_token("the token's signature is invalid"),
        ),
        ("expired", invalid_token("the token has expired")),
        ("not yet valid", invalid_token("the token is not yet valid")),
        (
            "wrong iss",
            invalid_token("the token's issuer is not accepted"),
        ),
        (
            "wrong aud",
            invalid_token("the token's audience is not accepted"),
        ),
        (
            "disallowed alg",
            invalid_token("the token's signing algorithm is not accepted"),
        ),
        (
            "unknown kid after re-fetch",
            invalid_token("the token's signing key is unknown"),
        ),
    ];

    for row in rows {
        let before = upstream.count();
        let mut b = Request::builder().method(row.method).uri(gw.url(row.path));
        for a in &row.authorization {
            b = b.header("authorization", a.as_str());
        }
        let reply = request(b.body(Full::new(Bytes::new())).unwrap()).await;
        let name = row.name;
        assert_eq!(
            reply.status.as_u16(),
            row.status,
            "{name}: {}",
            reply.text()
        );
        let reached = upstream.count() > before;
        assert_eq!(
            reached, row.reaches_upstream,
            "{name}: upstream reached = {reached}"
        );
        let www = reply.header("www-authenticate").map(str::to_owned);
        let expected = row.challenge.map(str::to_owned).or_else(|| {
            expected_challenges
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, c)| c.clone())
        });
        assert_eq!(www, expected, "{name}: WWW-Authenticate");
        if row.status >= 400 {
            assert_eq!(reply.header("cache-control"), Some("no-store"), "{name}");
            let body = reply.json();
            assert_eq!(body["error"], row.error, "{name}: body {body}");
            assert!(body["error_description"].is_string(), "{name}: body {body}");
            if row.status == 403 {
                assert!(
                    !www.as_deref().unwrap().contains("error_description"),
                    "{name}"
                );
            }
        }
        for a in &row.authorization {
            let token = a.trim_start_matches("Bearer ").trim_start_matches("Basic ");
            if token.len() > 8 {
                assert!(
                    !reply.text().contains(token),
                    "{name}: the token was echoed"
                );
                for (_, v) in &reply.headers {
                    assert!(
                        !v.to_str().unwrap_or("").contains(token),
                        "{name}: token in a header"
                    );
                }
            }
        }
        assert!(
            reply.header("x-request-id").is_some(),
            "{name}: no X-Request-Id"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn issuer_down_since_start_is_503_with_retry_after() {
    let idp = FakeIdp::start().await;
    idp.set_down(true);
    let upstream = RecordingUpstream::start().await;
    let gw = TestGateway::start(&config(&idp.issuer, &upstream.url(), ""), false).await;
    let reply = crate::support::get(
        &gw.url("/entity/Default/x"),
        &[("authorization", &format!("Bearer {}", idp.token(json!({}))))],
    )
    .await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("www-authenticate"), None);
    assert_eq!(reply.header("retry-after"), Some("5"));
    assert_eq!(reply.json()["error"], "temporarily_unavailable");
    assert_eq!(upstream.count(), 0);
    let ready = crate::support::get(&format!("{}/readyz", gw.admin), &[]).await;
    assert_eq!(ready.status, 503, "not ready while the issuer has no keys");

    // The IdP comes back: the background refresh picks it up and the same request succeeds.
    idp.set_down(false);
    let readyz = format!("{}/readyz", gw.admin);
    crate::support::eventually(
        "ready after the IdP came back (/readyz answers 200)",
        std::time::Duration::from_secs(10),
        || async { crate::support::get(&readyz, &[]).await.status },
        |status| *status == 200,
    )
    .await;
    gw.shutdown().await;
}

#[tokio::test]
async fn upstream_refused_is_502_and_timeout_is_504() {
    let idp = FakeIdp::start().await;
    // A port with nothing listening: bind, read the port, close.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = TestGateway::start(&config(&idp.issuer, &format!("http://{closed}"), ""), true).await;
    let auth = format!("Bearer {}", idp.token(json!({})));
    let reply =
        crate::support::get(&gw.url("/entity/Default/x"), &[("authorization", &auth)]).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header("www-authenticate"), None);
    assert_eq!(reply.json()["error"], "upstream_unreachable");
    gw.shutdown().await;

    let upstream = RecordingUpstream::start().await;
    let gw = TestGateway::start(
        &config(&idp.issuer, &upstream.url(), "").replace(
            "connect_timeout = \"1s\"\ntimeout = \"2s\"",
            "connect_timeout = \"1s\"\ntimeout = \"300ms\"",
        ),
        true,
    )
    .await;
    let reply = crate::support::get(
        &gw.url("/entity/Default/slow?ms=3000"),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.header("www-authenticate"), None);
    assert_eq!(reply.json()["error"], "upstream_timeout");
    gw.shutdown().await;
}
