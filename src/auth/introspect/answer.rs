//! An RFC 7662 answer read against the issuer's configuration: an active token becomes a
//! [`Principal`], anything tollgate must not accept becomes the reason it is inactive. Pure: the
//! time is an argument.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::auth::{InvalidToken, Principal};

/// What the introspection endpoint said about a token (after tollgate's own checks).
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The principal itself, not behind an `Arc`: it is a few shared pointers, and a cached
    /// answer then sits in the cache's own slot, one memory access away (see `cache.rs`).
    Active(Principal),
    Inactive(InvalidToken),
}

/// Turns an RFC 7662 answer into an outcome: `active: false`, a past `exp`, a future `nbf`, or an
/// `iss`/`aud` that does not match the issuer's configuration are all "inactive". Claims for
/// policy and identity headers are the other members; scopes come from `scope`.
pub fn interpret(
    mut members: Map<String, Value>,
    issuer_id: &Arc<str>,
    issuer: &str,
    audiences: &[String],
    leeway: u64,
    now: u64,
) -> Outcome {
    if members.remove("active") != Some(Value::Bool(true)) {
        return Outcome::Inactive(InvalidToken::Inactive);
    }
    let exp = members.get("exp").and_then(Value::as_f64).map(|e| e as u64);
    if exp.is_some_and(|e| e <= now) {
        return Outcome::Inactive(InvalidToken::Expired);
    }
    if members
        .get("nbf")
        .and_then(Value::as_f64)
        .is_some_and(|nbf| nbf > (now + leeway) as f64)
    {
        return Outcome::Inactive(InvalidToken::NotYetValid);
    }
    if let Some(iss) = members.get("iss") {
        if iss.as_str() != Some(issuer) {
            return Outcome::Inactive(InvalidToken::UnknownIssuer);
        }
    }
    if let Some(aud) = members.get("aud") {
        let ok = match aud {
            Value::String(a) => audiences.iter().any(|x| x == a),
            Value::Array(list) => list
                .iter()
                .filter_map(Value::as_str)
                .any(|a| audiences.iter().any(|x| x == a)),
            _ => false,
        };
        if !ok {
            return Outcome::Inactive(InvalidToken::WrongAudience);
        }
    }
    // Without exp, the answer counts until the cache's own limit (cache_max_ttl) ends it.
    let expires_at = exp.unwrap_or(u64::MAX);
    Outcome::Active(Principal::new(issuer_id.clone(), members, expires_at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id() -> Arc<str> {
        Arc::from("erp")
    }

    fn answer(v: Value) -> Outcome {
        interpret(
            v.as_object().unwrap().clone(),
            &id(),
            "https://idp",
            &["api".to_owned()],
            5,
            1_000,
        )
    }

    #[test]
    fn active_answers_become_principals() {
        let Outcome::Active(p) = answer(
            json!({"active": true, "scope": "api erp:write", "sub": "u1", "client_id": "c", "exp": 2_000, "iss": "https://idp", "aud": ["x", "api"], "tenant": "MyStore"}),
        ) else {
            panic!("active expected")
        };
        assert!(p.scopes.contains("erp:write"));
        assert_eq!(p.subject(), Some("u1"));
        assert_eq!(p.client_id(), Some("c"));
        assert_eq!(p.expires_at, 2_000);
        assert_eq!(p.claims["tenant"], "MyStore");
        assert!(!p.claims.contains_key("active"));
    }

    #[test]
    fn inactive_expired_and_mismatched_answers() {
        assert!(matches!(
            answer(json!({"active": false})),
            Outcome::Inactive(InvalidToken::Inactive)
        ));
        assert!(matches!(
            answer(json!({"active": "true"})),
            Outcome::Inactive(InvalidToken::Inactive)
        ));
        assert!(matches!(
            answer(json!({"active": true, "exp": 999})),
            Outcome::Inactive(InvalidToken::Expired)
        ));
        assert!(matches!(
            answer(json!({"active": true, "nbf": 2_000})),
            Outcome::Inactive(InvalidToken::NotYetValid)
        ));
        assert!(matches!(
            answer(json!({"active": true, "iss": "https://other"})),
            Outcome::Inactive(InvalidToken::UnknownIssuer)
        ));
        assert!(matches!(
            answer(json!({"active": true, "aud": "other"})),
            Outcome::Inactive(InvalidToken::WrongAudience)
        ));
        assert!(matches!(
            answer(json!({"active": true, "aud": 5})),
            Outcome::Inactive(InvalidToken::WrongAudience)
        ));
        assert!(matches!(
            answer(json!({"active": true})),
            Outcome::Active(_)
        ));
    }
}
