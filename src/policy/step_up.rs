//! RFC 9470 step-up authentication: a route may require how the user authenticated (`acr`) and
//! how recently (`auth_time`). A token that falls short is refused with a challenge naming what
//! the route requires (`acr_values`, `max_age`), so that the client can ask the authorization
//! server for a new token that meets it.
//!
//! The check runs after every scope and claim check: a token that would be refused for its scopes
//! anyway gets that answer, since authenticating again would not help it.

use std::sync::Arc;

use http::HeaderValue;
use serde_json::Value;

use super::Denied;
use crate::auth::Principal;

/// What a route requires of the user's authentication, with its prebuilt challenges.
#[derive(Debug, Clone)]
pub struct StepUp {
    /// The token's `acr` must be one of these; empty: any `acr`, or none.
    pub acr_values: Box<[Box<str>]>,
    /// `now - auth_time` may be at most this (seconds), plus the issuer's leeway.
    pub max_age: Option<u64>,
    /// The leeway (seconds) of each issuer whose tokens the route accepts.
    pub leeway: Box<[(Arc<str>, u64)]>,
    /// The 401 challenge when `acr` falls short. Both challenges name everything the route
    /// requires, so that one new authentication meets all of it.
    pub acr_challenge: HeaderValue,
    /// The 401 challenge when `auth_time` falls short.
    pub max_age_challenge: HeaderValue,
}

/// Checks the principal's authentication against the route's requirement at Unix time `now`.
pub fn check(step_up: &StepUp, principal: &Principal, now: u64) -> Result<(), Denied> {
    let (acr, auth_time) = authentication(principal);
    if !step_up.acr_values.is_empty()
        && !acr.is_some_and(|a| step_up.acr_values.iter().any(|v| **v == *a))
    {
        return Err(Denied::AcrNotAccepted);
    }
    if let Some(max_age) = step_up.max_age {
        let leeway = step_up
            .leeway
            .iter()
            .find(|(issuer, _)| *issuer == principal.issuer)
            .map_or(0, |(_, l)| *l);
        // An authentication the issuer dates in the future (its clock is ahead) is a fresh one.
        let fresh =
            auth_time.is_some_and(|t| now.saturating_sub(t) <= max_age.saturating_add(leeway));
        if !fresh {
            return Err(Denied::AuthenticationTooOld);
        }
    }
    Ok(())
}

/// The two claims step-up reads: `acr` (a string) and `auth_time` (a NumericDate, whole or
/// fractional seconds). Introspected tokens carry them as members of the introspection answer.
/// Anything else (missing, another type, negative) counts as absent.
fn authentication(principal: &Principal) -> (Option<&str>, Option<u64>) {
    let acr = principal.claims.get("acr").and_then(Value::as_str);
    let auth_time = principal.claims.get("auth_time").and_then(|v| {
        v.as_u64()
            .or_else(|| v.as_f64().filter(|t| *t >= 0.0).map(|t| t as u64))
    });
    (acr, auth_time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;

    fn principal(claims: Value) -> Principal {
        let Value::Object(map) = claims else {
            panic!("claims must be an object")
        };
        Principal::new("erp".into(), map, NOW + 300)
    }

    fn step_up(acr: &[&str], max_age: Option<u64>) -> StepUp {
        StepUp {
            acr_values: acr.iter().map(|a| Box::from(*a)).collect(),
            max_age,
            leeway: Box::new([("erp".into(), 5)]),
            acr_challenge: HeaderValue::from_static("acr"),
            max_age_challenge: HeaderValue::from_static("max_age"),
        }
    }

    #[test]
    fn acr_must_be_one_of_the_routes_values() {
        let s = step_up(&["urn:example:mfa", "phr"], None);
        assert_eq!(check(&s, &principal(json!({"acr": "phr"})), NOW), Ok(()));
        assert_eq!(
            check(&s, &principal(json!({"acr": "urn:example:mfa"})), NOW),
            Ok(())
        );
        for claims in [
            json!({}),
            json!({"acr": "pwd"}),
            json!({"acr": "PHR"}),
            json!({"acr": ["phr"]}),
            json!({"acr": null}),
        ] {
            assert_eq!(
                check(&s, &principal(claims.clone()), NOW),
                Err(Denied::AcrNotAccepted),
                "{claims}"
            );
        }
    }

    #[test]
    fn auth_time_must_be_recent_within_the_issuers_leeway() {
        let s = step_up(&[], Some(900));
        let at = |t: Value| check(&s, &principal(json!({ "auth_time": t })), NOW);
        assert_eq!(at(json!(NOW - 900)), Ok(()));
        assert_eq!(at(json!(NOW - 905)), Ok(()), "the issuer's 5 s of leeway");
        assert_eq!(at(json!(NOW - 906)), Err(Denied::AuthenticationTooOld));
        assert_eq!(at(json!((NOW - 10) as f64 + 0.5)), Ok(()));
        assert_eq!(at(json!(NOW + 60)), Ok(()), "dated ahead: fresh");
        for bad in [json!("1700000000"), json!(-1), json!(null)] {
            assert_eq!(at(bad.clone()), Err(Denied::AuthenticationTooOld), "{bad}");
        }
        assert_eq!(
            check(&s, &principal(json!({})), NOW),
            Err(Denied::AuthenticationTooOld)
        );
    }

    #[test]
    fn acr_is_checked_before_auth_time() {
        let s = step_up(&["phr"], Some(60));
        let both_short = principal(json!({"acr": "pwd", "auth_time": NOW - 3600}));
        assert_eq!(check(&s, &both_short, NOW), Err(Denied::AcrNotAccepted));
        let ok = principal(json!({"acr": "phr", "auth_time": NOW - 30}));
        assert_eq!(check(&s, &ok, NOW), Ok(()));
    }

    #[test]
    fn another_issuers_leeway_is_not_borrowed() {
        let s = step_up(&[], Some(900));
        let mut p = principal(json!({ "auth_time": NOW - 903 }));
        p.issuer = "other".into();
        assert_eq!(check(&s, &p, NOW), Err(Denied::AuthenticationTooOld));
    }
}
