//! RFC 7662 introspection end to end: an in-process introspection server that checks client
//! authentication on the wire, and the gateway's cache, coalescing, outage policy and breaker.

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::json;
use tollgate::demo::keys::SigningKey;

use crate::support::introspect::{ExpectAuth, FakeIntrospection, Mode};
use crate::support::{eventually, get, FakeIdp, RecordingUpstream, TestGateway};

const PATH: &str = "/entity/Default/24.200.001/Customer";

fn basic() -> ExpectAuth {
    ExpectAuth::Basic {
        id: "tollgate".into(),
        secret: "s3cr&t:1".into(),
    }
}

const BASIC: &str = "client_secret = \"s3cr&t:1\"";

/// One introspection issuer (`validation = "introspection"`) with `auth` lines and `tuning`
/// lines in its [issuer.introspection] table.
fn config(fake: &FakeIntrospection, upstream: &str, auth: &str, tuning: &str) -> String {
    format!(
        r#"
[[issuer]]
id = "erp"
issuer = "{iss}"
audiences = ["api"]
validation = "introspection"
[issuer.introspection]
endpoint = "{ep}"
client_id = "tollgate"
{auth}
timeout = "500ms"
{tuning}

[[upstream]]
id = "erp"
url = "{upstream}"

[[route]]
id = "read"
prefix = "/entity/Default/"
upstream = "erp"
scopes = ["api"]
[route.headers]
"X-Auth-Subject" = "sub"
"X-Auth-Tenant" = "tenant"

[[route]]
id = "write"
prefix = "/write/"
upstream = "erp"
scopes = ["api", "erp:write"]
"#,
        iss = fake.issuer,
        ep = fake.endpoint,
    )
}

async fn start(
    expect: ExpectAuth,
    auth: &str,
    tuning: &str,
) -> (FakeIntrospection, RecordingUpstream, TestGateway) {
    let fake = FakeIntrospection::start(expect).await;
    let upstream = RecordingUpstream::start().await;
    let gw = TestGateway::start(&config(&fake, &upstream.url(), auth, tuning), true).await;
    (fake, upstream, gw)
}

async fn call(gw: &TestGateway, path: &str, token: &str) -> crate::support::http::Reply {
    get(
        &gw.url(path),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

#[tokio::test]
async fn active_inactive_expired_and_mismatched_answers() {
    let (fake, upstream, gw) = start(basic(), BASIC, "").await;

    let active = fake.active(json!({"sub": "u-7", "tenant": "MyStore"}));
    let r = call(&gw, PATH, &active).await;
    assert_eq!(r.status, 200, "{} {:?}", r.text(), fake.auth_errors());
    let seen = upstream.last();
    assert_eq!(seen.headers["x-auth-subject"], "u-7");
    assert_eq!(seen.headers["x-auth-tenant"], "MyStore");
    assert!(seen.headers.get("authorization").is_none());
    // Scopes come from the answer's `scope`.
    let r = call(&gw, "/write/x", &active).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"tollgate\", error=\"insufficient_scope\", scope=\"api erp:write\"")
    );

    let cases = [
        (
            "unknown (inactive)",
            "never-issued-token".to_owned(),
            "the token is not active",
        ),
        (
            "active: false",
            {
                let t = "revoked-token".to_owned();
                fake.register(&t, json!({"active": false}));
                t
            },
            "the token is not active",
        ),
        (
            "expired",
            fake.active(json!({"exp": crate::support::now() - 10})),
            "the token has expired",
        ),
        (
            "wrong aud",
            fake.active(json!({"aud": ["other"]})),
            "the token's audience is not accepted",
        ),
        (
            "wrong iss",
            fake.active(json!({"iss": "https://evil.example.com"})),
            "the token's issuer is not accepted",
        ),
    ];
    for (name, token, desc) in cases {
        let r = call(&gw, PATH, &token).await;
        assert_eq!(r.status, 401, "{name}");
        assert_eq!(
            r.header("www-authenticate").map(str::to_owned),
            Some(format!(
                "Bearer realm=\"tollgate\", error=\"invalid_token\", error_description=\"{desc}\""
            )),
            "{name}"
        );
        assert!(!r.text().contains(&token), "{name}: token echoed");
    }
    assert_eq!(
        upstream.count(),
        1,
        "refused requests never reach the upstream"
    );
    assert!(fake.auth_errors().is_empty(), "{:?}", fake.auth_errors());
    gw.shutdown().await;
}

#[tokio::test]
async fn an_inactive_answer_is_cached_and_a_positive_one_too() {
    let (fake, _upstream, gw) = start(basic(), BASIC, "negative_ttl = \"30s\"").await;
    let active = fake.active(json!({}));
    for _ in 0..3 {
        assert_eq!(call(&gw, PATH, &active).await.status, 200);
        assert_eq!(call(&gw, PATH, "inactive-token").await.status, 401);
    }
    assert_eq!(fake.calls(), 2, "one call per token");
    let m = gw.metrics().await;
    assert_eq!(
        m.count(r#"tollgate_token_cache_requests_total{cache="introspection",result="hit"}"#),
        2
    );
    assert_eq!(
        m.count(
            r#"tollgate_token_cache_requests_total{cache="introspection",result="negative_hit"}"#
        ),
        2
    );
    assert_eq!(
        m.count(r#"tollgate_token_cache_requests_total{cache="introspection",result="miss"}"#),
        2
    );
    assert_eq!(
        m.count(r#"tollgate_introspection_requests_total{issuer="erp",result="active"}"#),
        1
    );
    assert_eq!(
        m.count(r#"tollgate_introspection_requests_total{issuer="erp",result="inactive"}"#),
        1
    );
    assert_eq!(
        m.count(r#"tollgate_token_cache_entries{cache="introspection"}"#),
        2
    );
    assert_eq!(
        m.count(r#"tollgate_introspection_duration_seconds_count{issuer="erp"}"#),
        2
    );
    assert_eq!(
        m.value(r#"tollgate_introspection_breaker_open{issuer="erp"}"#),
        Some(0.0)
    );
    crate::metrics::promtool_check(m.text());
    gw.shutdown().await;
}

#[tokio::test]
async fn the_cache_ttl_is_capped_by_the_tokens_exp() {
    let (fake, _upstream, gw) = start(basic(), BASIC, "cache_max_ttl = \"5m\"").await;
    let token = fake.active(json!({"exp": crate::support::now() + 2}));
    assert_eq!(call(&gw, PATH, &token).await.status, 200);
    assert_eq!(fake.calls(), 1);
    // Once the token has expired it is refused from the cache: no new call is needed.
    let status = eventually(
        "the expired token is refused",
        Duration::from_secs(6),
        || async { call(&gw, PATH, &token).await.status },
        |status| *status != 200,
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(
        fake.calls(),
        1,
        "the expiry was decided without calling the endpoint"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn each_client_authentication_method_is_right_on_the_wire() {
    // client_secret_post with the secret in a file (trailing newline trimmed).
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "file-secret\n").unwrap();
    let post = ExpectAuth::Post {
        id: "tollgate".into(),
        secret: "file-secret".into(),
    };
    let auth = format!(
        "auth_method = \"client_secret_post\"\nclient_secret_file = \"{}\"",
        secret.display()
    );
    let (fake, _u, gw) = start(post, &auth, "").await;
    let r = call(&gw, PATH, &fake.active(json!({}))).await;
    assert_eq!(r.status, 200, "{:?}", fake.auth_errors());
    gw.shutdown().await;

    // private_key_jwt, RSA and EC: a fresh assertion (new jti) per call.
    for key in [
        SigningKey::rsa("client-key", Algorithm::RS256).unwrap(),
        SigningKey::ec_p256("client-ec").unwrap(),
    ] {
        let pem = dir.path().join(format!("{}.pem", key.kid));
        std::fs::write(&pem, &key.private_pem).unwrap();
        let expect = ExpectAuth::Jwt {
            id: "tollgate".into(),
            jwk: key.jwk.clone(),
        };
        let auth = format!("auth_method = \"private_key_jwt\"\nprivate_key_file = \"{}\"\nprivate_key_kid = \"{}\"", pem.display(), key.kid);
        let (fake, _u, gw) = start(expect, &auth, "").await;
        for _ in 0..3 {
            let r = call(&gw, PATH, &fake.active(json!({}))).await;
            assert_eq!(r.status, 200, "{}: {:?}", key.kid, fake.auth_errors());
        }
        assert_eq!(fake.jtis(), 3, "one unique jti per call");
        gw.shutdown().await;
    }

    // Wrong credentials: the endpoint answers 401, which is an outage for the client (503).
    let (fake, _u, gw) = start(basic(), "client_secret = \"wrong\"", "").await;
    let r = call(&gw, PATH, &fake.active(json!({}))).await;
    assert_eq!(r.status, 503);
    assert_eq!(fake.auth_errors().len(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn outages_are_503_never_401_and_errors_are_not_cached() {
    let (fake, upstream, gw) = start(basic(), BASIC, "breaker_failures = 100").await;
    let cached = fake.active(json!({}));
    assert_eq!(call(&gw, PATH, &cached).await.status, 200);

    for (name, mode) in [
        ("slow", Mode::Slow(1500)),
        ("500", Mode::Status(500)),
        ("503", Mode::Status(503)),
        ("malformed", Mode::Malformed),
    ] {
        fake.set_mode(mode);
        let fresh = fake.active(json!({}));
        let before = fake.calls();
        let r = call(&gw, PATH, &fresh).await;
        assert_eq!(r.status, 503, "{name}");
        assert!(r.header("retry-after").is_some(), "{name}");
        assert_eq!(r.header("www-authenticate"), None, "{name}");
        assert_eq!(r.json()["error"], "temporarily_unavailable", "{name}");
        assert_eq!(fake.calls(), before + 1, "{name}");
        // A cached token keeps working through the outage.
        assert_eq!(call(&gw, PATH, &cached).await.status, 200, "{name}");
        // The error was not cached: with the endpoint back, the same token is introspected again.
        fake.set_mode(Mode::Normal);
        assert_eq!(call(&gw, PATH, &fresh).await.status, 200, "{name}");
        assert_eq!(fake.calls(), before + 2, "{name}");
    }
    let m = gw.metrics().await;
    assert_eq!(
        m.count(r#"tollgate_introspection_requests_total{issuer="erp",result="error"}"#),
        4
    );
    assert_eq!(upstream.count(), 1 + 4 * 2);
    gw.shutdown().await;

    // Connection refused.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let upstream = RecordingUpstream::start().await;
    let cfg = config(&fake, &upstream.url(), BASIC, "")
        .replace(&fake.endpoint, &format!("http://{closed}/introspect"));
    let gw = TestGateway::start(&cfg, true).await;
    let r = call(&gw, PATH, &fake.active(json!({}))).await;
    assert_eq!(r.status, 503);
    gw.shutdown().await;
}

#[tokio::test]
async fn stale_answers_serve_while_the_endpoint_is_down_only_when_enabled() {
    for (serve_stale, expected) in [("30s", 200), ("0s", 503)] {
        let tuning = format!(
            "cache_max_ttl = \"1s\"\nserve_stale = \"{serve_stale}\"\nbreaker_failures = 100"
        );
        let (fake, _u, gw) = start(basic(), BASIC, &tuning).await;
        let token = fake.active(json!({}));
        assert_eq!(call(&gw, PATH, &token).await.status, 200);
        fake.set_mode(Mode::Status(500));
        // Once the 1 s freshness is over, each request tries the endpoint, fails, and falls back.
        let (_, status) = eventually(
            "the endpoint is asked again (calls, last status)",
            Duration::from_secs(5),
            || async {
                let status = call(&gw, PATH, &token).await.status;
                if fake.calls() < 2 {
                    assert_eq!(status, 200, "fresh cache");
                }
                (fake.calls(), status)
            },
            |(calls, _)| *calls >= 2,
        )
        .await;
        assert_eq!(status, expected, "serve_stale = {serve_stale}");
        if expected == 200 {
            let m = gw.metrics().await;
            assert!(
                m.count(r#"tollgate_token_cache_requests_total{cache="introspection",result="stale_hit"}"#) >= 1
            );
        }
        gw.shutdown().await;
    }
}

#[tokio::test]
async fn the_breaker_opens_fails_fast_and_one_probe_closes_it() {
    let (fake, _u, gw) = start(
        basic(),
        BASIC,
        "breaker_failures = 3\nbreaker_cooldown = \"1s\"",
    )
    .await;
    fake.set_mode(Mode::Status(500));
    for _ in 0..3 {
        assert_eq!(call(&gw, PATH, &fake.active(json!({}))).await.status, 503);
    }
    assert_eq!(fake.calls(), 3);
    let m = gw.metrics().await;
    assert_eq!(
        m.count(r#"tollgate_introspection_breaker_open{issuer="erp"}"#),
        1
    );
    // Open: fail fast, no call reaches the endpoint.
    for _ in 0..5 {
        let r = call(&gw, PATH, &fake.active(json!({}))).await;
        assert_eq!(r.status, 503);
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=1).contains(&retry), "retry-after {retry}");
    }
    assert_eq!(fake.calls(), 3, "calls while open");
    // After the cool-down, one probe: the endpoint is back, the breaker closes.
    fake.set_mode(Mode::Normal);
    let token = fake.active(json!({}));
    eventually(
        "after the cool-down the probe is let through and answered",
        Duration::from_secs(5),
        || async { call(&gw, PATH, &token).await.status },
        |status| *status == 200,
    )
    .await;
    assert_eq!(fake.calls(), 4, "exactly one probe");
    let m = gw.metrics().await;
    assert_eq!(
        m.count(r#"tollgate_introspection_breaker_open{issuer="erp"}"#),
        0
    );
    assert_eq!(call(&gw, PATH, &fake.active(json!({}))).await.status, 200);
    gw.shutdown().await;
}

/// An endpoint answering 5xx to a storm of concurrent new tokens: every request is 503
/// `temporarily_unavailable` with `Retry-After` (never 401, never a 5xx of another kind), the
/// breaker keeps the storm off the endpoint, and the gateway recovers once it is back.
#[tokio::test]
async fn a_storm_of_5xx_is_503_and_the_breaker_keeps_it_off_the_endpoint() {
    let (fake, _u, gw) = start(
        basic(),
        BASIC,
        "breaker_failures = 5\nbreaker_cooldown = \"5s\"",
    )
    .await;
    let cached = fake.active(json!({}));
    assert_eq!(call(&gw, PATH, &cached).await.status, 200);
    fake.set_mode(Mode::Status(502));
    for _ in 0..5 {
        assert_eq!(call(&gw, PATH, &fake.active(json!({}))).await.status, 503);
    }
    assert_eq!(fake.calls(), 6);
    fake.set_mode(Mode::Status(500));
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for _wave in 0..4 {
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let url = gw.url(PATH);
                let auth = format!("Bearer {}", fake.active(json!({})));
                tokio::spawn(async move {
                    let r = get(&url, &[("authorization", &auth)]).await;
                    (
                        r.status.as_u16(),
                        r.header("retry-after").is_some(),
                        r.json(),
                    )
                })
            })
            .collect();
        for t in tasks {
            let (status, retry_after, body) = t.await.unwrap();
            *statuses.entry(status).or_default() += 1;
            assert!(retry_after, "a 503 without Retry-After");
            assert_eq!(body["error"], "temporarily_unavailable");
        }
        // Tokens verified before the storm keep working from the cache.
        assert_eq!(call(&gw, PATH, &cached).await.status, 200);
    }
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        [503],
        "{statuses:?}"
    );
    // At most a probe per cool-down reached the endpoint during the 200 requests.
    assert!(
        fake.calls() <= 8,
        "{} calls reached the endpoint",
        fake.calls()
    );
    // Each refusal is counted under the issuer, as an introspection error (not a bad token).
    let m = gw.metrics().await;
    assert_eq!(
        m.value(r#"tollgate_auth_failures_total{issuer="erp",reason="introspection_error"}"#),
        Some(205.0),
        "{m:?}"
    );

    fake.set_mode(Mode::Normal);
    let token = fake.active(json!({}));
    eventually(
        "after the storm the endpoint is used again",
        Duration::from_secs(15),
        || async { call(&gw, PATH, &token).await.status },
        |status| *status == 200,
    )
    .await;
    gw.shutdown().await;
}

#[tokio::test]
async fn concurrent_requests_for_one_new_token_share_one_call() {
    let (fake, upstream, gw) = start(basic(), BASIC, "").await;
    fake.set_mode(Mode::Slow(300));
    let token = fake.active(json!({}));
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let url = gw.url(PATH);
        let auth = format!("Bearer {token}");
        tasks.push(tokio::spawn(async move {
            get(&url, &[("authorization", &auth)]).await.status.as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(
        fake.calls(),
        1,
        "200 concurrent requests, one introspection call"
    );
    assert_eq!(upstream.count(), 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn auto_mode_validates_its_jwts_locally_and_introspects_the_rest() {
    let idp = FakeIdp::start().await;
    let fake = FakeIntrospection::start(basic()).await;
    let upstream = RecordingUpstream::start().await;
    // One issuer, two ways: its JWKS for JWTs, its introspection endpoint for anything else.
    let cfg = config(&fake, &upstream.url(), BASIC, "")
        .replace(
            "validation = \"introspection\"",
            &format!("validation = \"auto\"\njwks_uri = \"{}/jwks\"", idp.issuer),
        )
        .replace(
            &format!("issuer = \"{}\"", fake.issuer),
            &format!("issuer = \"{}\"", idp.issuer),
        );
    let gw = TestGateway::start(&cfg, true).await;
    let jwt = idp.token(json!({}));
    for _ in 0..3 {
        assert_eq!(call(&gw, PATH, &jwt).await.status, 200);
    }
    assert_eq!(fake.calls(), 0, "JWTs of the issuer are validated locally");
    let answer = json!({"active": true, "scope": "api", "sub": "opaque-user", "iss": idp.issuer, "aud": "api", "exp": crate::support::now() + 60});
    fake.register("opaque-1", answer);
    assert_eq!(call(&gw, PATH, "opaque-1").await.status, 200);
    assert_eq!(fake.calls(), 1);
    // A JWS whose key the key set does not hold is introspected too (here: inactive).
    let stranger = SigningKey::rsa("unknown-kid", Algorithm::RS256)
        .unwrap()
        .sign(&idp.claims())
        .unwrap();
    assert_eq!(call(&gw, PATH, &stranger).await.status, 401);
    assert_eq!(fake.calls(), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn introspection_mode_checks_jwts_with_the_issuer_for_revocation() {
    let idp = FakeIdp::start().await;
    let fake = FakeIntrospection::start(basic()).await;
    let upstream = RecordingUpstream::start().await;
    let cfg = config(&fake, &upstream.url(), BASIC, "").replace(
        &format!("issuer = \"{}\"", fake.issuer),
        &format!("issuer = \"{}\"", idp.issuer),
    );
    let gw = TestGateway::start(&cfg, true).await;
    let jwt = idp.token(json!({}));
    // The issuer says the (validly signed) JWT was revoked.
    fake.register(&jwt, json!({"active": false}));
    assert_eq!(call(&gw, PATH, &jwt).await.status, 401);
    assert_eq!(fake.calls(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn discovery_finds_the_endpoint_and_routes_choose_the_issuer() {
    let a = FakeIntrospection::start(basic()).await;
    let b = FakeIntrospection::start(basic()).await;
    let upstream = RecordingUpstream::start().await;
    let issuer = |id: &str, url: &str| {
        format!(
            "[[issuer]]\nid = \"{id}\"\nissuer = \"{url}\"\ndiscovery = true\naudiences = [\"api\"]\nvalidation = \"introspection\"\n[issuer.introspection]\nclient_id = \"tollgate\"\n{BASIC}\n"
        )
    };
    let cfg = format!(
        r#"
{a}
{b}
[[upstream]]
id = "u"
url = "{up}"

[[route]]
id = "a-route"
prefix = "/a/"
upstream = "u"
issuer = "a"

[[route]]
id = "b-route"
prefix = "/b/"
upstream = "u"
issuer = "b"

[[route]]
id = "any"
prefix = "/any/"
upstream = "u"
"#,
        a = issuer("a", &a.issuer),
        b = issuer("b", &b.issuer),
        up = upstream.url()
    );
    let gw = TestGateway::start(&cfg, true).await;
    let ta = a.active(json!({"iss": null}));
    let tb = b.active(json!({"iss": null}));
    assert_eq!(call(&gw, "/a/x", &ta).await.status, 200);
    assert_eq!(call(&gw, "/b/x", &tb).await.status, 200);
    // Each opaque token went to its route's issuer only.
    assert_eq!((a.calls(), b.calls()), (1, 1));
    assert_eq!(
        call(&gw, "/b/x", &ta).await.status,
        401,
        "a's token is unknown to b"
    );
    // No issuer on the route and two introspecting issuers: the token's issuer cannot be told.
    let r = call(&gw, "/any/x", &ta).await;
    assert_eq!(r.status, 401);
    assert_eq!((a.calls(), b.calls()), (1, 2));
    gw.shutdown().await;
}

#[tokio::test]
async fn introspection_config_errors_name_their_keys() {
    let base = r#"
[[issuer]]
id = "erp"
issuer = "https://idp.example.com"
audiences = ["api"]
validation = "introspection"
[issuer.introspection]
endpoint = "https://idp.example.com/introspect"
client_id = "tollgate"
client_secret = "x"

[[upstream]]
id = "u"
url = "http://127.0.0.1:1"
"#;
    let check = |toml: String, key: &str, fragment: &str| {
        let e = tollgate::config::from_toml_str(&toml).expect_err("should fail");
        assert!(
            e.0.iter()
                .any(|x| x.key == key && x.message.contains(fragment)),
            "expected {key}: …{fragment}…, got {e}"
        );
    };
    assert!(tollgate::config::from_toml_str(base).is_ok());
    check(
        base.replace(
            "client_secret = \"x\"",
            "client_secret = \"x\"\nclient_secret_file = \"/x\"",
        ),
        "issuer[0].introspection.client_secret",
        "only one",
    );
    check(
        base.replace("client_secret = \"x\"\n", ""),
        "issuer[0].introspection.client_secret",
        "missing key",
    );
    check(
        base.replace(
            "client_secret = \"x\"",
            "client_secret_file = \"/nonexistent/secret\"",
        ),
        "issuer[0].introspection.client_secret_file",
        "cannot read",
    );
    check(
        base.replace(
            "client_secret = \"x\"",
            "client_secret_env = \"TOLLGATE_TEST_UNSET_VARIABLE\"",
        ),
        "issuer[0].introspection.client_secret_env",
        "is not set",
    );
    check(
        base.replace(
            "client_secret = \"x\"",
            "client_secret = \"x\"\nauth_method = \"private_key_jwt\"",
        ),
        "issuer[0].introspection.auth_method",
        "not a client secret",
    );
    check(
        base.replace(
            "client_secret = \"x\"",
            "auth_method = \"private_key_jwt\"\nprivate_key_file = \"/nonexistent.pem\"",
        ),
        "issuer[0].introspection.private_key_file",
        "cannot read",
    );
    check(
        base.replace(
            "client_secret = \"x\"",
            "client_secret = \"x\"\nauth_method = \"tls_client_auth\"",
        ),
        "issuer[0].introspection.auth_method",
        "not supported",
    );
    check(
        base.replace(
            "https://idp.example.com/introspect",
            "http://idp.example.com/introspect",
        ),
        "issuer[0].introspection.endpoint",
        "must use https://",
    );
    check(
        base.replace("endpoint = \"https://idp.example.com/introspect\"\n", ""),
        "issuer[0].introspection.endpoint",
        "discovery = true",
    );
    check(
        base.replace(
            "validation = \"introspection\"",
            "validation = \"sometimes\"",
        ),
        "issuer[0].validation",
        "not a validation mode",
    );
    check(
        base.replace(
            "validation = \"introspection\"",
            "validation = \"jwt\"\ndiscovery = true",
        ),
        "issuer[0].validation",
        "would never be used",
    );
    check(
        base.replace("validation = \"introspection\"", "validation = \"auto\""),
        "issuer[0].jwks_uri",
        "missing key",
    );
    check(
        base.replace("timeout", "x").replace(
            "client_secret = \"x\"",
            "client_secret = \"x\"\nserve_stale = \"later\"",
        ),
        "issuer[0].introspection.serve_stale",
        "not a duration",
    );
    check(
        base.replace(
            "client_secret = \"x\"",
            "client_secret = \"x\"\nbreaker_failures = 0",
        ),
        "issuer[0].introspection.breaker_failures",
        "at least 1",
    );
    let no_table = base
        .split("[issuer.introspection]")
        .next()
        .unwrap()
        .to_owned()
        + "\n[[upstream]]\nid = \"u\"\nurl = \"http://127.0.0.1:1\"\n";
    check(no_table, "issuer[0].introspection", "missing table");
}
