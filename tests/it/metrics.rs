//! The admin listener's /metrics, read by Prometheus's own parser (`promtool check metrics`), and
//! the families and labels docs/metrics.md promises. Also: nothing of the admin API on the proxy
//! port.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::json;

use crate::support::gateway::config;
use crate::support::{get, FakeIdp, RecordingUpstream, TestGateway};

/// Runs `promtool check metrics` on the exposition; panics with its output when it objects.
pub(crate) fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: the test command installs it (apt-get install prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // promtool exits non-zero on parse errors; lint findings (naming advice) are printed too and
    // must be empty for tollgate's own families.
    assert!(
        out.status.success(),
        "promtool rejected the exposition:\n{report}"
    );
    let ours: Vec<&str> = report.lines().filter(|l| l.contains("tollgate_")).collect();
    assert!(
        ours.is_empty(),
        "promtool lint findings:\n{}",
        ours.join("\n")
    );
}

#[tokio::test]
async fn the_exposition_parses_and_has_every_family() {
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let gw = TestGateway::start(&config(&idp.issuer, &upstream.url(), ""), true).await;
    let token = idp.token(json!({}));
    let auth = format!("Bearer {token}");
    get(&gw.url("/entity/Default/x"), &[("authorization", &auth)]).await;
    get(&gw.url("/entity/Default/x"), &[("authorization", &auth)]).await;
    get(&gw.url("/entity/Default/x"), &[]).await;
    get(&gw.url("/nowhere"), &[]).await;
    get(&gw.url("/health"), &[]).await;

    let m = gw.metrics().await;
    promtool_check(m.text());
    for (sample, value) in [
        (
            r#"tollgate_requests_total{method="GET",route="erp-read",status="200"}"#,
            2.0,
        ),
        (
            r#"tollgate_requests_total{method="GET",route="erp-read",status="401"}"#,
            1.0,
        ),
        (
            r#"tollgate_requests_total{method="GET",route="none",status="404"}"#,
            1.0,
        ),
        (
            r#"tollgate_auth_decisions_total{decision="allowed",route="erp-read"}"#,
            2.0,
        ),
        (
            r#"tollgate_auth_decisions_total{decision="missing_token",route="erp-read"}"#,
            1.0,
        ),
        (
            r#"tollgate_auth_decisions_total{decision="public",route="health"}"#,
            1.0,
        ),
        (
            r#"tollgate_token_cache_requests_total{cache="jwt",result="hit"}"#,
            1.0,
        ),
        (
            r#"tollgate_token_cache_requests_total{cache="jwt",result="miss"}"#,
            1.0,
        ),
        (
            r#"tollgate_jwks_refresh_total{issuer="erp",result="success"}"#,
            1.0,
        ),
        (r#"tollgate_jwks_keys{issuer="erp"}"#, 1.0),
        (
            r#"tollgate_request_duration_seconds_count{route="erp-read"}"#,
            3.0,
        ),
        (
            r#"tollgate_upstream_duration_seconds_count{upstream="erp"}"#,
            3.0,
        ),
        (r#"tollgate_token_cache_entries{cache="jwt"}"#, 1.0),
        (
            r#"tollgate_upstream_responses_total{class="2xx",upstream="erp"}"#,
            3.0,
        ),
        ("tollgate_gateway_overhead_seconds_count", 5.0),
        ("tollgate_requests_in_flight", 0.0),
        (
            r#"tollgate_jwks_fetch_duration_seconds_count{issuer="erp"}"#,
            1.0,
        ),
    ] {
        assert_eq!(m.value(sample), Some(value), "`{sample}` in:\n{m:?}");
    }
    // Present, whatever their values.
    for sample in [
        r#"tollgate_jwks_last_success_timestamp_seconds{issuer="erp"}"#,
        "process_resident_memory_bytes",
    ] {
        assert!(m.value(sample).is_some(), "no `{sample}` in:\n{m:?}");
    }
    assert!(
        m.value(r#"tollgate_connections_open{listener="admin"}"#) >= Some(1.0),
        "the scrape's own connection is open: {m:?}"
    );
    // Three requests went upstream, one after another, to an upstream that keeps its
    // connections open: at least one connection, and never one a request.
    let opened = m.value(r#"tollgate_upstream_connections_opened_total{upstream="erp"}"#);
    assert!(
        opened.is_some_and(|n| (1.0..3.0).contains(&n)),
        "tollgate_upstream_connections_opened_total: {opened:?} in {m:?}"
    );
    // Each answer was read to its end, so its connection waits for the next request.
    let idle = m.value(r#"tollgate_upstream_connections_idle{upstream="erp"}"#);
    assert!(
        idle.is_some_and(|n| n >= 1.0) && idle <= opened,
        "tollgate_upstream_connections_idle: {idle:?} (opened {opened:?}) in {m:?}"
    );
    let build: Vec<_> = m.samples("tollgate_build_info").collect();
    assert!(
        build.len() == 1
            && ["version", "rustc", "commit"]
                .iter()
                .all(|l| build[0].labels.get(*l).is_some_and(|v| !v.is_empty())),
        "tollgate_build_info: {build:?}"
    );
    assert!(build[0].labels["rustc"].starts_with("rustc "), "{build:?}");
    // No label value comes from request data.
    assert!(!m.text().contains("nowhere"));
    assert!(!m.text().contains(&token[..20]));

    // The proxy port serves no admin endpoints.
    assert_eq!(get(&gw.url("/metrics"), &[]).await.status, 404);
    assert_eq!(get(&format!("{}/healthz", gw.admin), &[]).await.status, 200);
    assert_eq!(get(&format!("{}/readyz", gw.admin), &[]).await.status, 200);
    gw.shutdown().await;
}

/// Every refused token is counted by issuer and a reason from a fixed set, so that a key
/// rotation, a skewed clock and a wrong audience do not look alike.
#[tokio::test]
async fn refused_tokens_are_counted_by_issuer_and_reason() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use tollgate::demo::keys::SigningKey;

    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let gw = TestGateway::start(&config(&idp.issuer, &upstream.url(), ""), true).await;
    let now = crate::support::now();
    let stranger = SigningKey::rsa("k1", Algorithm::RS256).unwrap();
    let mut unknown_kid = Header::new(Algorithm::RS256);
    unknown_kid.kid = Some("nobody".into());
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &idp.claims(),
        &EncodingKey::from_secret(b"secret"),
    )
    .unwrap();
    let cases = [
        ("expired", idp.token(json!({"exp": now - 3600}))),
        ("not_yet_valid", idp.token(json!({"nbf": now + 3600}))),
        ("audience", idp.token(json!({"aud": "someone-else"}))),
        ("signature", stranger.sign(&idp.claims()).unwrap()),
        (
            "key_unknown",
            stranger
                .sign_with_header(&unknown_kid, &idp.claims())
                .unwrap(),
        ),
        ("algorithm", hs256),
    ];
    for (reason, token) in &cases {
        let r = get(
            &gw.url("/entity/Default/x"),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
        assert_eq!(r.status, 401, "{reason}: {}", r.text());
    }
    // Not a JWT of any configured issuer.
    for token in [
        "not-a-jwt-at-all",
        &idp.token(json!({"iss": "https://elsewhere"})),
    ] {
        let r = get(
            &gw.url("/entity/Default/x"),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
        assert_eq!(r.status, 401);
    }
    let m = gw.metrics().await;
    promtool_check(m.text());
    for (reason, _) in &cases {
        assert_eq!(
            m.value(&format!(
                r#"tollgate_auth_failures_total{{issuer="erp",reason="{reason}"}}"#
            )),
            Some(1.0),
            "{reason}: {m:?}"
        );
    }
    let unknown: f64 = m
        .samples("tollgate_auth_failures_total")
        .filter(|s| s.labels["issuer"] == "unknown")
        .map(|s| s.value)
        .sum();
    assert_eq!(unknown, 2.0, "{m:?}");
    // A good token is no failure.
    let good = idp.token(json!({"scope": "api"}));
    get(
        &gw.url("/entity/Default/x"),
        &[("authorization", &format!("Bearer {good}"))],
    )
    .await;
    let total: f64 = gw
        .metrics()
        .await
        .samples("tollgate_auth_failures_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(total, 8.0);
    gw.shutdown().await;
}
