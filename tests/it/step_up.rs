//! RFC 9470 step-up over real sockets: a route that requires how (`acr`) and how recently
//! (`auth_time`) the user authenticated answers 401 `insufficient_user_authentication` with the
//! route's `acr_values` and `max_age`, forwards nothing, and records its own decision; scope is
//! checked first; introspected tokens step up from the introspection answer.

use serde_json::json;

use crate::support::gateway::config;
use crate::support::http::Reply;
use crate::support::introspect::{ExpectAuth, FakeIntrospection};
use crate::support::{get, now, FakeIdp, RecordingUpstream, TestGateway};

/// A route with the step-up requirement of the issue's example.
pub const PAYMENTS: &str = r#"
[[route]]
id = "payments"
prefix = "/entity/Default/24.200.001/Payment"
upstream = "erp"
scopes = ["api"]
acr_values = ["urn:example:mfa", "phr"]
max_age = "15m"
"#;

const PAYMENT: &str = "/entity/Default/24.200.001/Payment/P-1";

const ACR_TOO_WEAK: &str = "Bearer realm=\"tollgate\", error=\"insufficient_user_authentication\", error_description=\"the token's authentication context (acr) is missing or not one this route accepts\", acr_values=\"urn:example:mfa phr\", max_age=\"900\"";
const AUTH_TOO_OLD: &str = "Bearer realm=\"tollgate\", error=\"insufficient_user_authentication\", error_description=\"the token's authentication time (auth_time) is missing or older than this route allows\", acr_values=\"urn:example:mfa phr\", max_age=\"900\"";

async fn call(gw: &TestGateway, path: &str, token: &str) -> Reply {
    get(
        &gw.url(path),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

fn assert_step_up(r: &Reply, challenge: &str) {
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.header("www-authenticate"), Some(challenge));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let body = r.json();
    assert_eq!(body["error"], "insufficient_user_authentication");
    assert!(!body["error_description"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn a_token_short_of_the_routes_authentication_gets_the_step_up_challenge() {
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let gw = TestGateway::start(&config(&idp.issuer, &upstream.url(), PAYMENTS), true).await;
    let t = now();

    let no_acr = idp.token(json!({"auth_time": t - 60}));
    assert_step_up(&call(&gw, PAYMENT, &no_acr).await, ACR_TOO_WEAK);
    let weak = idp.token(json!({"acr": "pwd", "auth_time": t - 60}));
    assert_step_up(&call(&gw, PAYMENT, &weak).await, ACR_TOO_WEAK);
    let no_time = idp.token(json!({"acr": "phr"}));
    assert_step_up(&call(&gw, PAYMENT, &no_time).await, AUTH_TOO_OLD);
    let old = idp.token(json!({"acr": "urn:example:mfa", "auth_time": t - 3600}));
    assert_step_up(&call(&gw, PAYMENT, &old).await, AUTH_TOO_OLD);
    assert_eq!(upstream.count(), 0, "a step-up refusal forwards nothing");

    // An accepted acr and a recent login pass.
    let fresh = idp.token(json!({"acr": "phr", "auth_time": t - 60}));
    let r = call(&gw, PAYMENT, &fresh).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream.count(), 1);

    // Scope first: a token that fails both gets the 403.
    let neither = idp.token(json!({"scope": "reports"}));
    let r = call(&gw, PAYMENT, &neither).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"tollgate\", error=\"insufficient_scope\", scope=\"api\"")
    );

    // Routes without the keys are unchanged: the weak token reads customers.
    let r = call(&gw, "/entity/Default/24.200.001/Customer", &weak).await;
    assert_eq!(r.status, 200);
    assert_eq!(upstream.count(), 2);

    let m = gw.metrics().await;
    let decision = |d: &str| {
        m.count(&format!(
            r#"tollgate_auth_decisions_total{{route="payments",decision="{d}"}}"#
        ))
    };
    assert_eq!(decision("insufficient_user_authentication"), 4, "{m:?}");
    assert_eq!(decision("insufficient_scope"), 1);
    assert_eq!(decision("allowed"), 1);
    assert_eq!(
        m.count(r#"tollgate_requests_total{route="payments",method="GET",status="401"}"#),
        4
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn an_introspected_token_steps_up_from_the_answers_members() {
    let fake = FakeIntrospection::start(ExpectAuth::Basic {
        id: "tollgate".into(),
        secret: "s3cret".into(),
    })
    .await;
    let upstream = RecordingUpstream::start().await;
    let cfg = format!(
        r#"
[[issuer]]
id = "erp"
issuer = "{iss}"
audiences = ["api"]
validation = "introspection"
leeway = "5s"
[issuer.introspection]
endpoint = "{ep}"
client_id = "tollgate"
client_secret = "s3cret"

[[upstream]]
id = "erp"
url = "{up}"
{PAYMENTS}"#,
        iss = fake.issuer,
        ep = fake.endpoint,
        up = upstream.url(),
    );
    let gw = TestGateway::start(&cfg, true).await;
    let t = now();

    let fresh = fake.active(json!({"acr": "urn:example:mfa", "auth_time": t - 120}));
    let r = call(&gw, PAYMENT, &fresh).await;
    assert_eq!(r.status, 200, "{} {:?}", r.text(), fake.auth_errors());
    let weak = fake.active(json!({"acr": "pwd", "auth_time": t - 120}));
    assert_step_up(&call(&gw, PAYMENT, &weak).await, ACR_TOO_WEAK);
    let old = fake.active(json!({"acr": "phr", "auth_time": t - 7200}));
    assert_step_up(&call(&gw, PAYMENT, &old).await, AUTH_TOO_OLD);
    assert_eq!(upstream.count(), 1);
    gw.shutdown().await;
}
