//! The real binary, at trace level in JSON: every error case of the response table is sent, and
//! the captured logs must hold an access-log line for each request and never the token.

use serde_json::json;

use crate::support::gateway::config;
use crate::support::introspect::{ExpectAuth, FakeIntrospection, Mode};
use crate::support::process::{child_config, Process};
use crate::support::{get, FakeIdp, RecordingUpstream};

const CLIENT_SECRET: &str = "introspection-client-secret-value";

/// What marks an access-log line.
const ACCESS: &str = "\"target\":\"tollgate::access\"";

#[tokio::test]
async fn no_token_reaches_the_logs_at_any_level() {
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let introspection = FakeIntrospection::start(ExpectAuth::Basic {
        id: "tollgate".into(),
        secret: CLIENT_SECRET.into(),
    })
    .await;
    // A second issuer validates opaque tokens by introspection (breaker off, so every outage
    // request reaches the failing endpoint).
    let opaque_issuer = format!(
        "\n[[issuer]]\nid = \"opaque\"\nissuer = \"{}\"\naudiences = [\"api\"]\nvalidation = \"introspection\"\n[issuer.introspection]\nendpoint = \"{}\"\nclient_id = \"tollgate\"\nclient_secret = \"{CLIENT_SECRET}\"\nbreaker_failures = 1000\n",
        introspection.issuer, introspection.endpoint
    );
    let cfg = child_config(
        &config(&idp.issuer, &upstream.url(), &opaque_issuer),
        "trace",
    );
    let mut p = Process::start(&cfg).await;
    let base = p.proxy.clone();

    let valid = idp.token(json!({"scope": "api"}));
    let expired = idp.token(json!({"exp": crate::support::now() - 3600}));
    let wrong_aud = idp.token(json!({"aud": "nope"}));
    let tampered = format!("{}x", &valid[..valid.len() - 1]);
    let secrets = [
        valid.clone(),
        expired.clone(),
        wrong_aud.clone(),
        tampered.clone(),
    ];
    let url = format!("{base}/entity/Default/x");
    let mut sent = 0;
    for token in &secrets {
        get(&url, &[("authorization", &format!("Bearer {token}"))]).await;
        sent += 1;
    }
    // The keys are loaded (ready) before the table, so that its verification paths run.
    p.ready().await;
    for token in &secrets {
        get(&url, &[("authorization", &format!("Bearer {token}"))]).await;
        get(
            &url,
            &[
                ("authorization", &format!("bearer {token}")),
                ("x-request-id", "log-test"),
            ],
        )
        .await;
        get(
            &url,
            &[
                ("authorization", &format!("Bearer {token}")),
                ("authorization", "Bearer other-token-value"),
            ],
        )
        .await;
        let put = http::Request::put(&url)
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
            .unwrap();
        crate::support::request(put).await;
        sent += 4;
    }
    // Opaque tokens: active, inactive, and during an introspection outage.
    let active = introspection.active(json!({}));
    let inactive = "opaque-inactive-token-0123456789abcdef".to_owned();
    for token in [&active, &inactive] {
        get(&url, &[("authorization", &format!("Bearer {token}"))]).await;
        sent += 1;
    }
    introspection.set_mode(Mode::Status(500));
    let during_outage = introspection.active(json!({}));
    get(
        &url,
        &[("authorization", &format!("Bearer {during_outage}"))],
    )
    .await;
    introspection.set_mode(Mode::Malformed);
    get(
        &url,
        &[("authorization", &format!("Bearer {during_outage}"))],
    )
    .await;
    sent += 2;
    assert!(
        introspection.auth_errors().is_empty(),
        "{:?}",
        introspection.auth_errors()
    );
    assert_eq!(introspection.calls(), 4);
    let secrets: Vec<String> = secrets
        .into_iter()
        .chain([active, inactive, during_outage])
        .collect();

    get(
        &format!("{base}/entity/Default/x?access_token={valid}"),
        &[],
    )
    .await;
    get(
        &format!("{base}/entity/Default/x"),
        &[("authorization", &format!("Basic {valid}"))],
    )
    .await;
    sent += 2;

    // Every request has its access-log line; then the process ends and its log is complete.
    p.wait_for_log(ACCESS, sent).await;
    p.kill();
    let lines = p.logs();
    let all = lines.join("\n");
    let access = lines.iter().filter(|l| l.contains(ACCESS)).count();
    assert!(
        access >= sent,
        "expected {sent} access-log lines, got {access}:\n{all}"
    );
    assert!(
        all.contains("\"level\":\"TRACE\"") || all.contains("\"level\":\"DEBUG\""),
        "not logging at trace/debug"
    );
    for token in &secrets {
        // Any 24-character piece of the signature (or of an opaque token) would identify it.
        let sig = token.rsplit('.').next().unwrap();
        assert!(!all.contains(token.as_str()), "a token appears in the logs");
        assert!(
            !all.contains(&sig[sig.len() - 24..]),
            "a token's signature appears in the logs"
        );
    }
    assert!(!all.contains("other-token-value"));
    assert!(
        !all.contains(CLIENT_SECRET),
        "the introspection client secret appears in the logs"
    );
    assert!(
        all.contains("introspection failed"),
        "the outage was not logged at all:\n{all}"
    );
}
