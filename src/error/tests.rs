use super::*;
use crate::auth::InvalidToken;

fn challenges() -> Challenges {
    Challenges::new("tollgate")
}

fn respond(e: GatewayError) -> Response<Body> {
    e.into_response(&challenges())
}

#[test]
fn missing_token_has_a_bare_challenge() {
    let r = respond(AuthError::Bearer(BearerError::Missing).into());
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()[header::WWW_AUTHENTICATE],
        "Bearer realm=\"tollgate\""
    );
    assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
}

#[test]
fn malformed_header_is_invalid_request() {
    let r = respond(AuthError::Bearer(BearerError::Duplicate).into());
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.headers()[header::WWW_AUTHENTICATE],
        "Bearer realm=\"tollgate\", error=\"invalid_request\", error_description=\"more than one Authorization header\""
    );
}

#[test]
fn invalid_token() {
    let r = respond(AuthError::InvalidToken(InvalidToken::Expired).into());
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()[header::WWW_AUTHENTICATE],
        "Bearer realm=\"tollgate\", error=\"invalid_token\", error_description=\"the token has expired\""
    );
}

#[test]
fn idp_down_is_503_with_retry_after_and_no_challenge() {
    let r = respond(
        AuthError::IdpUnavailable {
            issuer: "erp".into(),
            retry_after: 5,
            what: crate::auth::Unreachable::Keys,
        }
        .into(),
    );
    assert_eq!(r.status(), 503);
    assert!(r.headers().get(header::WWW_AUTHENTICATE).is_none());
    assert_eq!(r.headers()[header::RETRY_AFTER], "5");
}

#[test]
fn insufficient_scope_uses_the_routes_challenge() {
    let challenge = HeaderValue::from_static(
        "Bearer realm=\"tollgate\", error=\"insufficient_scope\", scope=\"api erp:write\"",
    );
    let r = respond(GatewayError::Denied {
        reason: Denied::InsufficientScope,
        challenge: challenge.clone(),
        route: "w".into(),
    });
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()[header::WWW_AUTHENTICATE], challenge);
}

#[test]
fn upstream_failures() {
    let r = respond(
        ProxyError::Unreachable {
            upstream: "u".into(),
            reason: "refused".into(),
        }
        .into(),
    );
    assert_eq!(r.status(), 502);
    assert!(r.headers().get(header::WWW_AUTHENTICATE).is_none());
    let r = respond(
        ProxyError::Timeout {
            upstream: "u".into(),
            timeout: std::time::Duration::from_secs(1),
        }
        .into(),
    );
    assert_eq!(r.status(), 504);
    assert_eq!(respond(GatewayError::NoRoute).status(), 404);
}

/// Every fixed `invalid_token` and `invalid_request` description has its challenge built with
/// the realm, before any request: the lookup never formats.
#[test]
fn challenges_are_prebuilt_for_every_fixed_description() {
    let c = challenges();
    // An exhaustive match: a new variant does not compile until it is placed, and then fails
    // here until `InvalidToken::ALL` lists it.
    let place = |e: InvalidToken| match e {
        InvalidToken::Malformed => 0,
        InvalidToken::UnknownIssuer => 1,
        InvalidToken::AlgorithmNotAllowed => 2,
        InvalidToken::UnknownKey => 3,
        InvalidToken::BadSignature => 4,
        InvalidToken::Expired => 5,
        InvalidToken::NotYetValid => 6,
        InvalidToken::WrongAudience => 7,
        InvalidToken::MissingClaim => 8,
        InvalidToken::NotAnAccessToken => 9,
        InvalidToken::UnsupportedCritical => 10,
        InvalidToken::Inactive => 11,
    };
    for (i, e) in InvalidToken::ALL.iter().enumerate() {
        assert_eq!(place(*e), i);
        assert!(c.invalid_token.contains_key(&e.to_string()), "{e:?}");
    }
    for d in [
        Denied::WrongIssuer.to_string(),
        SessionError::NoGrant.to_string(),
    ] {
        assert!(c.invalid_token.contains_key(&d), "{d}");
    }
    for e in BearerError::MALFORMED {
        assert!(c.invalid_request.contains_key(&e.to_string()), "{e:?}");
    }
    assert_eq!(c.invalid_token.len(), InvalidToken::ALL.len() + 2);
}

/// The class drives the response, the log level and the metric decision alike.
#[test]
fn the_class_is_the_response() {
    let cases: Vec<GatewayError> = vec![
        GatewayError::NoRoute,
        AuthError::Bearer(BearerError::Missing).into(),
        AuthError::InvalidToken(InvalidToken::BadSignature).into(),
        SessionError::GrantBusy.into(),
        SessionError::GrantRequired.into(),
        SessionError::BodyRead.into(),
        SessionError::Store("down".into()).into(),
        ProxyError::Overloaded {
            upstream: "u".into(),
        }
        .into(),
    ];
    for e in cases {
        let class = e.class();
        let r = respond(e);
        assert_eq!(r.status(), class.status);
        assert_eq!(
            r.headers().get(header::WWW_AUTHENTICATE).is_some(),
            class.challenge != Challenge::None
        );
        assert_eq!(
            r.headers().get(header::RETRY_AFTER).is_some(),
            class.retry_after.is_some()
        );
    }
}

#[test]
fn session_rows() {
    let r = respond(SessionError::GrantRequired.into());
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()[header::WWW_AUTHENTICATE],
        "Bearer realm=\"tollgate\""
    );
    let e: GatewayError = SessionError::GrantRequired.into();
    assert_eq!(e.decision(), Some(Decision::MissingToken));

    let r = respond(SessionError::SignedOut.into());
    assert_eq!(r.status(), 401);
    assert!(r.headers().get(header::WWW_AUTHENTICATE).is_none());

    let refused = SessionError::LoginRefused {
        status: StatusCode::TOO_MANY_REQUESTS,
        refused: RefusedLogin::Throttled,
        retry_after: Some(HeaderValue::from_static("Wed, 21 Oct 2026 07:28:00 GMT")),
    };
    let r = respond(refused.into());
    assert_eq!(r.status(), 429, "the upstream's own status");
    assert_eq!(
        r.headers()[header::RETRY_AFTER],
        "Wed, 21 Oct 2026 07:28:00 GMT",
        "the upstream's Retry-After as it came"
    );
    assert_eq!(
        SessionError::Store("secret detail".into()).to_string(),
        "the session store is unavailable",
        "the description never carries the store's error"
    );
}

#[test]
fn step_up_is_a_401_with_the_routes_challenge_and_its_own_decision() {
    let challenge = HeaderValue::from_static(
        "Bearer realm=\"tollgate\", error=\"insufficient_user_authentication\", error_description=\"x\", max_age=\"900\"",
    );
    for reason in [Denied::AcrNotAccepted, Denied::AuthenticationTooOld] {
        let e = GatewayError::Denied {
            reason,
            challenge: challenge.clone(),
            route: "payments".into(),
        };
        assert_eq!(e.decision(), Some(Decision::InsufficientUserAuthentication));
        assert_eq!(e.fault(), Fault::Auth);
        let r = respond(e);
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], challenge);
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
    }
}

#[test]
fn every_challenge_names_the_metadata_after_the_realm() {
    let head = "Bearer realm=\"tollgate\", resource_metadata=\"https://erp.example.com/.well-known/oauth-protected-resource\"";
    let c = Challenges::with_head(head);
    let bare = GatewayError::from(AuthError::Bearer(BearerError::Missing)).into_response(&c);
    assert_eq!(bare.headers()[header::WWW_AUTHENTICATE], head);
    let expired =
        GatewayError::from(AuthError::InvalidToken(InvalidToken::Expired)).into_response(&c);
    assert_eq!(
        expired.headers()[header::WWW_AUTHENTICATE],
        format!("{head}, error=\"invalid_token\", error_description=\"the token has expired\"")
            .as_str()
    );
}

#[test]
fn a_refused_preflight_and_a_wrong_method_on_the_metadata() {
    let r = respond(crate::policy::cors::CorsRefused::Origin.into());
    assert_eq!(r.status(), 403);
    assert!(r.headers().get(header::WWW_AUTHENTICATE).is_none());
    assert!(!r
        .headers()
        .keys()
        .any(|n| n.as_str().starts_with("access-control-")));
    let r = respond(MethodNotAllowed.into());
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()[header::ALLOW], "GET, HEAD, OPTIONS");
}
