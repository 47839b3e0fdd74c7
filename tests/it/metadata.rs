//! RFC 9728 protected resource metadata over real sockets: the document (parsed), where it is
//! served, that it is never forwarded, and `resource_metadata` in every challenge, built from the
//! configured resource and never from the request's `Host`.

use serde_json::json;

use crate::support::gateway::config;
use crate::support::{get, send, FakeIdp, RecordingUpstream, TestGateway};

/// A public catch-all route: anything the gateway forwarded would reach the upstream.
const CATCH_ALL: &str = r#"
[[route]]
id = "everything"
prefix = "/"
upstream = "erp"
auth = "none"
"#;

const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

async fn start(metadata: &str) -> (FakeIdp, RecordingUpstream, TestGateway) {
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let extra = format!("{CATCH_ALL}{metadata}");
    let gw = TestGateway::start(&config(&idp.issuer, &upstream.url(), &extra), true).await;
    (idp, upstream, gw)
}

#[tokio::test]
async fn the_document_is_served_without_auth_and_never_forwarded() {
    let (idp, upstream, gw) = start(
        r#"
[metadata]
resource = "https://erp.example.com"
resource_name = "ERP API"
documentation = "https://erp.example.com/docs"
"#,
    )
    .await;

    let r = get(&gw.url(WELL_KNOWN), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("max-age=300"));
    assert_eq!(
        r.json(),
        json!({
            "resource": "https://erp.example.com",
            "authorization_servers": [idp.issuer],
            "scopes_supported": ["admin", "api", "erp:write", "reports"],
            "bearer_methods_supported": ["header"],
            "resource_documentation": "https://erp.example.com/docs",
            "resource_name": "ERP API"
        })
    );
    let head = send("HEAD", &gw.url(WELL_KNOWN), &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    let post = send("POST", &gw.url(WELL_KNOWN), &[]).await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD, OPTIONS"));
    assert_eq!(post.json()["error"], "method_not_allowed");
    assert_eq!(upstream.count(), 0, "the document is the gateway's own");

    let m = gw.metrics().await;
    assert_eq!(
        m.count(r#"tollgate_requests_total{route="none",method="GET",status="200"}"#),
        1
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn every_challenge_names_the_document_after_the_realm() {
    let (idp, upstream, gw) = start(
        r#"
[[route]]
id = "payments"
prefix = "/entity/Default/24.200.001/Payment"
upstream = "erp"
scopes = ["api"]
acr_values = ["phr"]

[metadata]
resource = "https://erp.example.com"
"#,
    )
    .await;
    let head = "Bearer realm=\"tollgate\", resource_metadata=\"https://erp.example.com/.well-known/oauth-protected-resource\"";
    let customers = gw.url("/entity/Default/24.200.001/Customer");

    // Built from the resource, not from where the request says it went.
    let bare = get(&customers, &[("host", "evil.example.net")]).await;
    assert_eq!(bare.status, 401);
    assert_eq!(bare.header("www-authenticate"), Some(head));

    let expired = idp.token(json!({"exp": crate::support::now() - 3600}));
    let r = get(
        &customers,
        &[("authorization", &format!("Bearer {expired}"))],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate").unwrap(),
        format!("{head}, error=\"invalid_token\", error_description=\"the token has expired\"")
    );

    let valid = idp.token(json!({}));
    let r = get(
        &gw.url("/entity/Default/24.200.001/Payment/1"),
        &[("authorization", &format!("Bearer {valid}"))],
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate").unwrap().starts_with(&format!(
            "{head}, error=\"insufficient_user_authentication\""
        )),
        "{:?}",
        r.header("www-authenticate")
    );

    // The 403 names it too: a client that needs more scope learns where to ask.
    let r = send(
        "PUT",
        &customers,
        &[("authorization", &format!("Bearer {valid}"))],
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("www-authenticate").unwrap(),
        format!("{head}, error=\"insufficient_scope\", scope=\"api erp:write\"")
    );
    assert_eq!(upstream.count(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_resource_with_a_path_is_served_at_its_section_3_1_url() {
    // RFC 9728 §3.1 and §3.2's example resource.
    let (idp, upstream, gw) = start(
        r#"
[metadata]
resource = "https://resource.example.com/resource1"
documentation = "https://resource.example.com/resource_documentation.html"
"#,
    )
    .await;
    let expected = json!({
        "resource": "https://resource.example.com/resource1",
        "authorization_servers": [idp.issuer],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["admin", "api", "erp:write", "reports"],
        "resource_documentation": "https://resource.example.com/resource_documentation.html"
    });
    let r = get(&gw.url(&format!("{WELL_KNOWN}/resource1")), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), expected);
    // The bare well-known path serves it too, for clients that look only there.
    assert_eq!(get(&gw.url(WELL_KNOWN), &[]).await.json(), expected);
    assert_eq!(upstream.count(), 0);
    let bare = get(&gw.url("/entity/Default/x"), &[]).await;
    assert_eq!(
        bare.header("www-authenticate"),
        Some("Bearer realm=\"tollgate\", resource_metadata=\"https://resource.example.com/.well-known/oauth-protected-resource/resource1\"")
    );

    // Another resource's document is not this gateway's: the path goes to route choice.
    let other = get(&gw.url(&format!("{WELL_KNOWN}/resource2")), &[]).await;
    assert_eq!(other.status, 200);
    assert_eq!(upstream.count(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn without_the_table_the_path_is_routed_and_challenges_are_unchanged() {
    let (_idp, upstream, gw) = start("").await;
    let r = get(&gw.url(WELL_KNOWN), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["uri"],
        WELL_KNOWN,
        "forwarded to the catch-all route"
    );
    assert_eq!(upstream.count(), 1);
    let bare = get(&gw.url("/entity/Default/x"), &[]).await;
    assert_eq!(
        bare.header("www-authenticate"),
        Some("Bearer realm=\"tollgate\"")
    );
    gw.shutdown().await;
}
