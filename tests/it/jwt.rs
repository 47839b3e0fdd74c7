//! JWT validation against a live JWKS: algorithm confusion, forged keys, rotation, unknown-kid
//! floods, an IdP outage after start, and the verified-token cache.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tollgate::demo::keys::SigningKey;

use crate::support::gateway::config;
use crate::support::{eventually, get, FakeIdp, RecordingUpstream, TestGateway};

const PATH: &str = "/entity/Default/24.200.001/Customer";

/// Waits until a key-set fetch of issuer "erp" has failed (the failures are counted).
async fn jwks_fetch_failed(gw: &TestGateway, which: &str) {
    eventually(
        &format!("{which} fails (key-set fetch failures counted)"),
        Duration::from_secs(5),
        || async {
            gw.metrics()
                .await
                .count(r#"tollgate_jwks_refresh_total{issuer="erp",result="failure"}"#)
        },
        |failures| *failures > 0,
    )
    .await;
}

async fn call(gw: &TestGateway, token: &str) -> u16 {
    get(
        &gw.url(PATH),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
    .status
    .as_u16()
}

async fn setup(patch: impl Fn(String) -> String) -> (FakeIdp, RecordingUpstream, TestGateway) {
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let gw = TestGateway::start(&patch(config(&idp.issuer, &upstream.url(), "")), true).await;
    (idp, upstream, gw)
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let (idp, upstream, gw) = setup(|c| c).await;
    let pem = idp.key("k1").public_pem.clone();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let token = jsonwebtoken::encode(
        &header,
        &idp.claims(),
        &EncodingKey::from_secret(pem.as_bytes()),
    )
    .unwrap();
    assert_eq!(call(&gw, &token).await, 401);
    // Also with the issuer allowing every asymmetric algorithm there is.
    gw.shutdown().await;
    let gw = TestGateway::start(
        &config(&idp.issuer, &upstream.url(), "").replace(
            "algorithms = [\"RS256\"]",
            "algorithms = [\"RS256\", \"PS256\", \"ES256\", \"EdDSA\"]",
        ),
        true,
    )
    .await;
    assert_eq!(call(&gw, &token).await, 401);
    assert_eq!(upstream.count(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn alg_none_is_refused() {
    let (idp, upstream, gw) = setup(|c| c).await;
    let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let p = URL_SAFE_NO_PAD.encode(idp.claims().to_string());
    for token in [format!("{h}.{p}."), format!("{h}.{p}.c2ln")] {
        let r = get(
            &gw.url(PATH),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
        assert_eq!(r.status, 401);
        assert!(r
            .header("www-authenticate")
            .unwrap()
            .contains("invalid_token"));
    }
    assert_eq!(upstream.count(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_forged_kid_does_not_verify() {
    let (idp, upstream, gw) = setup(|c| c).await;
    // The attacker signs with their own key and names the issuer's kid.
    let attacker = SigningKey::rsa("k1", Algorithm::RS256).unwrap();
    assert_eq!(call(&gw, &attacker.sign(&idp.claims()).unwrap()).await, 401);
    // Embedded keys (jwk/jku/x5u headers) are ignored: only the configured key set counts.
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("attacker".into());
    h.jku = Some(format!("{}/jwks", idp.issuer));
    h.x5u = Some("https://evil.example.com/cert".into());
    let embedded = SigningKey::rsa("attacker", Algorithm::RS256).unwrap();
    assert_eq!(
        call(&gw, &embedded.sign_with_header(&h, &idp.claims()).unwrap()).await,
        401
    );
    assert_eq!(upstream.count(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn tokens_must_be_complete_and_current() {
    let (idp, upstream, gw) = setup(|c| c).await;
    let now = crate::support::now();
    assert_eq!(
        call(&gw, &idp.token(json!({"exp": null}))).await,
        401,
        "exp is required"
    );
    assert_eq!(
        call(&gw, &idp.token(json!({"aud": null}))).await,
        401,
        "aud is required"
    );
    assert_eq!(
        call(&gw, &idp.token(json!({"iat": now + 3600}))).await,
        401,
        "iat in the future"
    );
    assert_eq!(
        call(&gw, &idp.token(json!({"aud": ["other", "api"]}))).await,
        200,
        "aud array holding a configured audience"
    );
    assert_eq!(
        call(&gw, &idp.token(json!({"exp": now - 2}))).await,
        200,
        "expired within the 5 s leeway"
    );
    assert_eq!(
        call(&gw, &idp.token(json!({"scope": "other"}))).await,
        403,
        "no api scope"
    );
    assert_eq!(
        call(&gw, &idp.token(json!({"scope": null, "scp": ["api", "x"]}))).await,
        200,
        "scp array"
    );
    assert_eq!(
        call(&gw, &idp.token(json!({"scope": null, "scp": "x api"}))).await,
        200,
        "scp string"
    );
    let mut crit = Header::new(Algorithm::RS256);
    crit.kid = Some("k1".into());
    crit.crit = Some(vec!["exp".into()]);
    assert_eq!(
        call(
            &gw,
            &idp.key("k1")
                .sign_with_header(&crit, &idp.claims())
                .unwrap()
        )
        .await,
        401,
        "crit header"
    );
    assert_eq!(upstream.count(), 4);
    gw.shutdown().await;
}

#[tokio::test]
async fn require_typ_accepts_only_at_jwt() {
    let (idp, _upstream, gw) = setup(|c| {
        c.replace(
            "fetch_timeout = \"2s\"",
            "fetch_timeout = \"2s\"\nrequire_typ = true",
        )
    })
    .await;
    assert_eq!(call(&gw, &idp.token(json!({}))).await, 200);
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("k1".into());
    h.typ = Some("JWT".into());
    assert_eq!(
        call(
            &gw,
            &idp.key("k1").sign_with_header(&h, &idp.claims()).unwrap()
        )
        .await,
        401
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn ec_and_eddsa_keys_verify_when_allowed() {
    let idp = FakeIdp::start_with(vec![
        SigningKey::ec_p256("ec").unwrap(),
        SigningKey::ed25519("ed").unwrap(),
    ])
    .await;
    let upstream = RecordingUpstream::start().await;
    let cfg = config(&idp.issuer, &upstream.url(), "").replace(
        "algorithms = [\"RS256\"]",
        "algorithms = [\"ES256\", \"EdDSA\"]",
    );
    let gw = TestGateway::start(&cfg, true).await;
    let r = get(
        &gw.url(PATH),
        &[(
            "authorization",
            &format!("Bearer {}", idp.sign("ec", &idp.claims())),
        )],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.header("www-authenticate"));
    assert_eq!(call(&gw, &idp.sign("ed", &idp.claims())).await, 200);
    gw.shutdown().await;
    // EdDSA off the allow-list: refused although the key is published.
    let gw = TestGateway::start(&cfg.replace("\"ES256\", \"EdDSA\"", "\"ES256\""), true).await;
    assert_eq!(call(&gw, &idp.sign("ed", &idp.claims())).await, 401);
    gw.shutdown().await;
}

#[tokio::test]
async fn key_rotation_is_picked_up_without_a_restart() {
    let (idp, _upstream, gw) =
        setup(|c| c.replace("jwks_min_refresh = \"30s\"", "jwks_min_refresh = \"200ms\"")).await;
    assert_eq!(call(&gw, &idp.token(json!({}))).await, 200);
    let fetches = idp.jwks_fetches();
    // The IdP rotates: a new key k2, the old one withdrawn.
    idp.rotate(SigningKey::rsa("k2", Algorithm::RS256).unwrap(), false);
    let fresh = idp.sign("k2", &idp.claims());
    // Within the first 200 ms the kid miss may be refused (rate limit); after it, one re-fetch
    // picks the new key up.
    eventually(
        "the rotated key is picked up (a token it signed is accepted)",
        Duration::from_secs(5),
        || call(&gw, &fresh),
        |status| *status == 200,
    )
    .await;
    assert!(idp.jwks_fetches() > fetches);
    gw.shutdown().await;
}

/// The IdP rotates its key while it flaps (down, up, down…). A token signed with the new key is
/// never refused as invalid while the key set cannot be fetched: 503 with `Retry-After`, so
/// the client keeps it and retries; once a fetch succeeds it is served. Tokens of the old key
/// keep working throughout, and a truly unknown `kid` is still 401 once the IdP answers.
#[tokio::test]
async fn an_idp_that_flaps_during_a_key_rotation_never_turns_new_tokens_into_401() {
    let (idp, _upstream, gw) = setup(|c| {
        c.replace("jwks_min_refresh = \"30s\"", "jwks_min_refresh = \"100ms\"")
            .replace("jwks_refresh = \"10m\"", "jwks_refresh = \"1h\"")
    })
    .await;
    let old = idp.token(json!({}));
    assert_eq!(call(&gw, &old).await, 200);
    idp.set_down(true);
    idp.rotate(SigningKey::rsa("k2", Algorithm::RS256).unwrap(), true);
    let fresh = idp.sign("k2", &idp.claims());
    // Within jwks_min_refresh of the last good fetch a kid miss fetches nothing (the flood
    // guard) and is refused as unknown; past it, the miss fetches, and the fetch fails.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r = get(
        &gw.url(PATH),
        &[("authorization", &format!("Bearer {fresh}"))],
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "temporarily_unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("www-authenticate"), None, "not a token problem");
    // Counted where a key rotation would show, not as an introspection failure.
    let m = gw.metrics().await;
    assert!(m
        .value(r#"tollgate_auth_failures_total{issuer="erp",reason="key_unknown"}"#)
        .is_some_and(|v| v >= 1.0));
    assert_eq!(
        m.value(r#"tollgate_auth_failures_total{issuer="erp",reason="introspection_error"}"#),
        Some(0.0)
    );
    // A token of the old key never seen before verifies against the kept key set.
    let mut bob = idp.claims();
    bob["sub"] = json!("bob");
    assert_eq!(call(&gw, &idp.sign("k1", &bob)).await, 200);

    // The IdP flaps while clients keep sending both tokens: never a 401, and never an error
    // for the old key's tokens.
    let mut statuses = std::collections::BTreeSet::new();
    for i in 0..12 {
        idp.set_down(i % 2 == 0);
        tokio::time::sleep(Duration::from_millis(120)).await; // past jwks_min_refresh
        statuses.insert(call(&gw, &fresh).await);
        assert_eq!(call(&gw, &old).await, 200);
    }
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    idp.set_down(false);
    eventually(
        "with the IdP back, the new key is fetched and its token served",
        Duration::from_secs(5),
        || call(&gw, &fresh),
        |status| *status == 200,
    )
    .await;
    let attacker = SigningKey::rsa("nobody", Algorithm::RS256).unwrap();
    let stranger = attacker.sign(&idp.claims()).unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await; // past jwks_min_refresh
    assert_eq!(
        call(&gw, &stranger).await,
        401,
        "unknown kid with the IdP up"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_flood_of_unknown_kids_costs_at_most_one_fetch_per_window() {
    let (idp, upstream, gw) =
        setup(|c| c.replace("jwks_min_refresh = \"30s\"", "jwks_min_refresh = \"1h\"")).await;
    let before = idp.jwks_fetches();
    let attacker = SigningKey::rsa("x", Algorithm::RS256).unwrap();
    let claims = idp.claims();
    let tokens: Vec<String> = (0..1000)
        .map(|i| {
            let mut h = Header::new(Algorithm::RS256);
            h.kid = Some(format!("unknown-{i}"));
            attacker.sign_with_header(&h, &claims).unwrap()
        })
        .collect();
    let mut tasks = Vec::new();
    for chunk in tokens.chunks(100) {
        let chunk = chunk.to_vec();
        let url = gw.url(PATH);
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for t in chunk {
                statuses.push(
                    get(&url, &[("authorization", &format!("Bearer {t}"))])
                        .await
                        .status
                        .as_u16(),
                );
            }
            statuses
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().iter().all(|s| *s == 401));
    }
    assert!(
        idp.jwks_fetches() - before <= 1,
        "{} fetches for 1000 unknown kids",
        idp.jwks_fetches() - before
    );
    assert_eq!(upstream.count(), 0);
    gw.shutdown().await;

    // With a short window, concurrent misses share the fetch that is running.
    let idp = FakeIdp::start().await;
    let gw = TestGateway::start(
        &config(&idp.issuer, &upstream.url(), "")
            .replace("jwks_min_refresh = \"30s\"", "jwks_min_refresh = \"1s\""),
        true,
    )
    .await;
    // The 1 s window since the start-up fetch runs out: a span of time, not an event, is what
    // the rate limit counts, so this sleep is part of the test's subject.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = idp.jwks_fetches();
    let claims = idp.claims();
    let tokens: Vec<String> = (0..200)
        .map(|i| {
            let mut h = Header::new(Algorithm::RS256);
            h.kid = Some(format!("unknown-{i}"));
            attacker.sign_with_header(&h, &claims).unwrap()
        })
        .collect();
    let mut tasks = Vec::new();
    for t in tokens {
        let url = gw.url(PATH);
        tasks.push(tokio::spawn(async move {
            get(&url, &[("authorization", &format!("Bearer {t}"))])
                .await
                .status
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    let spent = idp.jwks_fetches() - before;
    assert!(
        (1..=2).contains(&spent),
        "{spent} fetches for 200 concurrent unknown kids within ~1 s"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn jwks_down_after_start_keeps_serving_with_the_last_good_keys() {
    let (idp, _upstream, gw) = setup(|c| {
        c.replace("jwks_refresh = \"10m\"", "jwks_refresh = \"100ms\"")
            .replace("jwks_min_refresh = \"30s\"", "jwks_min_refresh = \"100ms\"")
    })
    .await;
    assert_eq!(call(&gw, &idp.token(json!({}))).await, 200);
    idp.set_down(true);
    jwks_fetch_failed(&gw, "the background refresh").await;
    let admin = gw.admin.clone();
    // A token never seen before (so not cached) still verifies against the kept keys.
    assert_eq!(call(&gw, &idp.token(json!({"sub": "bob"}))).await, 200);
    assert_eq!(
        get(&format!("{admin}/readyz"), &[]).await.status,
        200,
        "still ready on the last good key set"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_repeated_token_is_served_from_the_cache() {
    let (idp, _upstream, gw) = setup(|c| c).await;
    let token = idp.token(json!({}));
    for _ in 0..5 {
        assert_eq!(call(&gw, &token).await, 200);
    }
    let m = gw.metrics().await;
    assert_eq!(
        m.count(r#"tollgate_token_cache_requests_total{cache="jwt",result="miss"}"#),
        1
    );
    assert_eq!(
        m.count(r#"tollgate_token_cache_requests_total{cache="jwt",result="hit"}"#),
        4
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_route_can_pin_its_issuer() {
    let other = FakeIdp::start().await;
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let extra = format!(
        r#"
[[issuer]]
id = "partner"
issuer = "{iss}"
jwks_uri = "{iss}/jwks"
audiences = ["api"]

[[route]]
id = "partner-only"
prefix = "/partner/"
upstream = "erp"
issuer = "partner"
scopes = ["api"]
"#,
        iss = other.issuer
    );
    let gw = TestGateway::start(&config(&idp.issuer, &upstream.url(), &extra), true).await;
    let auth = |t: String| format!("Bearer {t}");
    let r = get(
        &gw.url("/partner/x"),
        &[("authorization", &auth(other.token(json!({}))))],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.header("www-authenticate"));
    let wrong = get(
        &gw.url("/partner/x"),
        &[("authorization", &auth(idp.token(json!({}))))],
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong
        .header("www-authenticate")
        .unwrap()
        .contains("error=\"invalid_token\""));
    // Both issuers' tokens work where no issuer is pinned.
    assert_eq!(call(&gw, &other.token(json!({}))).await, 200);
    assert_eq!(call(&gw, &idp.token(json!({}))).await, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn discovery_finds_the_jwks_and_checks_the_issuer() {
    let idp = FakeIdp::start().await;
    let upstream = RecordingUpstream::start().await;
    let cfg = config(&idp.issuer, &upstream.url(), "").replace(
        &format!("jwks_uri = \"{}/jwks\"", idp.issuer),
        "discovery = true",
    );
    let gw = TestGateway::start(&cfg, true).await;
    assert_eq!(call(&gw, &idp.token(json!({}))).await, 200);
    assert!(
        idp.discovery_fetches
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    );
    gw.shutdown().await;

    // A discovery document naming another issuer is not trusted: never ready.
    let lying = cfg.replace(
        &format!("issuer = \"{}\"", idp.issuer),
        &format!("issuer = \"{}/\"", idp.issuer),
    );
    let gw = TestGateway::start(&lying, false).await;
    let app = gw.app.as_ref().unwrap();
    jwks_fetch_failed(&gw, "the first fetch through the lying document").await;
    assert!(
        !app.gateway.is_ready(),
        "ready on an untrusted discovery document"
    );
    gw.shutdown().await;
}
