//! JWT access-token validation (RFC 7519, RFC 9068) against one issuer's key set.
//!
//! The algorithm allow-list comes from configuration, never from the token: `alg` must be on the
//! issuer's list and fit the key's type, so HS256 "signed" with an RSA public key, or `none`, can
//! never verify. The `jku`, `x5u`, `jwk` and `x5c` headers are ignored: keys come only from the
//! configured key set. Tokens with a `crit` header are refused (no extension is understood).

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Header};
use serde_json::{Map, Value};

use super::jwks::{Jwks, Lookup};
use super::settings::IssuerConfig;
use super::{AuthError, InvalidToken, Principal};
use crate::clock::unix_secs;

/// Everything needed to verify one issuer's tokens, prebuilt at load time.
#[derive(Debug)]
pub struct IssuerVerifier {
    pub id: Arc<str>,
    /// The exact `iss` value.
    pub iss: String,
    algorithms: Vec<Algorithm>,
    require_typ: bool,
    leeway: Duration,
    audiences: Vec<String>,
    pub jwks: Arc<Jwks>,
}

impl IssuerVerifier {
    pub fn new(cfg: &IssuerConfig, jwks: Arc<Jwks>) -> Self {
        IssuerVerifier {
            id: cfg.id.clone(),
            iss: cfg.issuer.clone(),
            algorithms: cfg.algorithms.clone(),
            require_typ: cfg.require_typ,
            leeway: cfg.leeway,
            audiences: cfg.audiences.clone(),
            jwks,
        }
    }

    /// True when the current key set holds a key for this header (for `auto` mode: such tokens
    /// are validated locally, others introspected).
    pub fn has_key(&self, header: &Header) -> bool {
        self.algorithms.contains(&header.alg)
            && self.jwks.snapshot().is_some_and(|k| {
                matches!(k.find(header.kid.as_deref(), header.alg), Lookup::Found(_))
            })
    }

    /// Verifies signature and claims. May wait for one JWKS re-fetch on an unknown `kid`.
    pub(crate) async fn verify(
        &self,
        token: &str,
        unverified: Unverified,
    ) -> Result<Principal, AuthError> {
        let header = &unverified.header;
        if !self.algorithms.contains(&header.alg) {
            return Err(InvalidToken::AlgorithmNotAllowed.into());
        }
        if header.crit.is_some() {
            return Err(InvalidToken::UnsupportedCritical.into());
        }
        if self.require_typ && !is_at_jwt(header.typ.as_deref()) {
            return Err(InvalidToken::NotAnAccessToken.into());
        }

        let Some(keys) = self.jwks.snapshot() else {
            return Err(AuthError::IdpUnavailable {
                issuer: self.id.clone(),
                retry_after: 5,
                what: super::Unreachable::Keys,
            });
        };
        let keys = match keys.find(header.kid.as_deref(), header.alg) {
            Lookup::Found(_) => keys,
            Lookup::Ambiguous => return Err(InvalidToken::UnknownKey.into()),
            Lookup::Unknown => {
                self.jwks.refresh_for_unknown_kid(keys.generation).await;
                match self.jwks.snapshot() {
                    Some(fresh) => fresh,
                    None => return Err(InvalidToken::UnknownKey.into()),
                }
            }
        };
        let Lookup::Found(key) = keys.find(header.kid.as_deref(), header.alg) else {
            // While the IdP cannot be reached, an unknown key may be one it published meanwhile
            // (a rotation): 503, so that the client retries the token instead of dropping it.
            if self.jwks.is_failing() {
                return Err(AuthError::IdpUnavailable {
                    issuer: self.id.clone(),
                    retry_after: self.jwks.retry_after(),
                    what: super::Unreachable::Keys,
                });
            }
            return Err(InvalidToken::UnknownKey.into());
        };

        // The signature covers `header.payload`, the token up to its last dot.
        let (message, signature) = token.rsplit_once('.').ok_or(InvalidToken::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| InvalidToken::Malformed)?;
        if !key
            .public
            .verify(header.alg, message.as_bytes(), &signature)
        {
            return Err(InvalidToken::BadSignature.into());
        }
        let expires_at = check_claims(
            &unverified.claims,
            (&self.iss, &self.audiences, self.leeway.as_secs()),
            unix_secs(),
        )?;
        Ok(Principal::new(
            self.id.clone(),
            unverified.claims,
            expires_at,
        ))
    }
}

/// The registered claims of a token whose signature holds (RFC 7519 §4.1, RFC 9068 §4): `exp`,
/// `iss` and `aud` are required; `exp`, `nbf` and `iat` are held against `now` with the issuer's
/// leeway; `iss` is the issuer's; `aud` (a string or an array) names one of the configured
/// audiences. Returns `exp`.
pub(crate) fn check_claims(
    claims: &Map<String, Value>,
    (issuer, accepted, leeway): (&str, &[String], u64),
    now: u64,
) -> Result<u64, InvalidToken> {
    let exp = claims.get("exp").ok_or(InvalidToken::MissingClaim)?;
    let exp = numeric_date(exp).ok_or(InvalidToken::MissingClaim)?;
    let iss = claims.get("iss").and_then(Value::as_str);
    let aud = claims.get("aud").ok_or(InvalidToken::MissingClaim)?;
    let audiences: Vec<&str> = match aud {
        Value::String(a) => vec![a.as_str()],
        Value::Array(items) => items
            .iter()
            .map(Value::as_str)
            .collect::<Option<_>>()
            .ok_or(InvalidToken::MissingClaim)?,
        _ => return Err(InvalidToken::MissingClaim),
    };
    if exp < now.saturating_sub(leeway) {
        return Err(InvalidToken::Expired);
    }
    if let Some(nbf) = claims.get("nbf") {
        if numeric_date(nbf).ok_or(InvalidToken::Malformed)? > now + leeway {
            return Err(InvalidToken::NotYetValid);
        }
    }
    if iss != Some(issuer) {
        return Err(InvalidToken::UnknownIssuer);
    }
    if !audiences.iter().any(|a| accepted.iter().any(|c| c == a)) {
        return Err(InvalidToken::WrongAudience);
    }
    if let Some(iat) = claims.get("iat") {
        let iat = iat.as_f64().ok_or(InvalidToken::Malformed)?;
        if iat > (now + leeway) as f64 {
            return Err(InvalidToken::NotYetValid);
        }
    }
    Ok(exp)
}

/// A NumericDate (RFC 7519 §2): a non-negative number of seconds, rounded to whole seconds.
fn numeric_date(v: &Value) -> Option<u64> {
    match v.as_u64() {
        Some(n) => Some(n),
        None => v
            .as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f.round() as u64),
    }
}

/// RFC 9068 §4: `typ` is `at+jwt` (or the full media type `application/at+jwt`), any case.
fn is_at_jwt(typ: Option<&str>) -> bool {
    typ.is_some_and(|t| {
        t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
    })
}

/// Unix seconds now, under the name the demo issuer mints tokens with.
pub(crate) use crate::clock::unix_secs as now_unix;

/// The parts of a compact JWS that select the issuer, read before any signature check.
pub(crate) struct Unverified {
    pub header: Header,
    pub iss: String,
    /// The payload, parsed once here and checked once the signature holds.
    pub claims: Map<String, Value>,
}

/// Splits a compact JWS and reads its header and `iss`. Anything that is not three base64url
/// parts with a JSON header and payload is `Malformed` (JWEs included).
pub(crate) fn peek(token: &str) -> Result<Unverified, InvalidToken> {
    let mut parts = token.split('.');
    let (Some(_), Some(p), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(InvalidToken::Malformed);
    };
    let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
        ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
            InvalidToken::AlgorithmNotAllowed
        }
        _ => InvalidToken::Malformed,
    })?;
    let payload = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| InvalidToken::Malformed)?;
    let claims: Map<String, Value> =
        serde_json::from_slice(&payload).map_err(|_| InvalidToken::Malformed)?;
    let iss = match claims.get("iss") {
        Some(Value::String(iss)) => iss.clone(),
        None | Some(Value::Null) => return Err(InvalidToken::UnknownIssuer),
        Some(_) => return Err(InvalidToken::Malformed),
    };
    Ok(Unverified {
        header,
        iss,
        claims,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(claims: Value) -> Result<u64, InvalidToken> {
        let Value::Object(map) = claims else {
            unreachable!("claims are an object")
        };
        let accepted = ["api".to_owned(), "erp".to_owned()];
        check_claims(&map, ("https://idp", &accepted, 30), 1_000)
    }

    #[test]
    fn registered_claims() {
        let ok = json!({"iss": "https://idp", "aud": "api", "exp": 2_000});
        assert_eq!(check(ok.clone()), Ok(2_000));
        let with = |k: &str, v: Value| {
            let mut c = ok.clone();
            c[k] = v;
            check(c)
        };
        let without = |k: &str| {
            let mut c = ok.clone();
            c.as_object_mut().unwrap().remove(k);
            check(c)
        };
        // Audience: a string or an array naming one accepted audience.
        assert_eq!(with("aud", json!(["x", "erp"])), Ok(2_000));
        assert_eq!(with("aud", json!(["x"])), Err(InvalidToken::WrongAudience));
        assert_eq!(with("aud", json!("x")), Err(InvalidToken::WrongAudience));
        assert_eq!(with("aud", json!(7)), Err(InvalidToken::MissingClaim));
        assert_eq!(without("aud"), Err(InvalidToken::MissingClaim));
        // Expiry: required, a non-negative number, with the leeway.
        assert_eq!(without("exp"), Err(InvalidToken::MissingClaim));
        assert_eq!(with("exp", json!("2000")), Err(InvalidToken::MissingClaim));
        assert_eq!(with("exp", json!(-5)), Err(InvalidToken::MissingClaim));
        assert_eq!(with("exp", json!(1_500.6)), Ok(1_501));
        assert_eq!(with("exp", json!(971)), Ok(971));
        assert_eq!(with("exp", json!(969)), Err(InvalidToken::Expired));
        // Not before and issued at: not beyond now plus the leeway.
        assert_eq!(with("nbf", json!(1_030)), Ok(2_000));
        assert_eq!(with("nbf", json!(1_031)), Err(InvalidToken::NotYetValid));
        assert_eq!(with("nbf", json!("soon")), Err(InvalidToken::Malformed));
        assert_eq!(with("iat", json!(1_031)), Err(InvalidToken::NotYetValid));
        // Issuer: exactly the configured one.
        assert_eq!(
            with("iss", json!("https://idp/")),
            Err(InvalidToken::UnknownIssuer)
        );
        assert_eq!(without("iss"), Err(InvalidToken::UnknownIssuer));
    }

    #[test]
    fn typ_check() {
        assert!(is_at_jwt(Some("at+jwt")));
        assert!(is_at_jwt(Some("AT+JWT")));
        assert!(is_at_jwt(Some("application/at+jwt")));
        assert!(!is_at_jwt(Some("JWT")));
        assert!(!is_at_jwt(None));
    }

    #[test]
    fn peek_rejects_non_jws() {
        assert!(matches!(peek("abc"), Err(InvalidToken::Malformed)));
        assert!(matches!(peek("a.b.c.d.e"), Err(InvalidToken::Malformed)));
        assert!(matches!(peek("!!.!!.!!"), Err(InvalidToken::Malformed)));
    }

    #[test]
    fn peek_reads_iss_and_refuses_none() {
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"k"}"#);
        let p = URL_SAFE_NO_PAD.encode(br#"{"iss":"https://idp","sub":"x"}"#);
        let u = peek(&format!("{h}.{p}.sig")).unwrap();
        assert_eq!(u.iss, "https://idp");
        assert_eq!(u.header.kid.as_deref(), Some("k"));
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        assert!(matches!(
            peek(&format!("{none}.{p}.")),
            Err(InvalidToken::AlgorithmNotAllowed | InvalidToken::Malformed)
        ));
        let no_iss = URL_SAFE_NO_PAD.encode(br#"{"sub":"x"}"#);
        assert!(matches!(
            peek(&format!("{h}.{no_iss}.sig")),
            Err(InvalidToken::UnknownIssuer)
        ));
    }
}
