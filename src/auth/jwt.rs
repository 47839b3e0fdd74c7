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
use jsonwebtoken::{Algorithm, AlgorithmFamily, Header, Validation};
use serde::Deserialize;
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
    /// One validation per key family on the allow-list: jsonwebtoken requires every algorithm
    /// of a `Validation` to belong to the key's family.
    validations: Vec<(AlgorithmFamily, Validation)>,
    pub jwks: Arc<Jwks>,
}

impl IssuerVerifier {
    pub fn new(cfg: &IssuerConfig, jwks: Arc<Jwks>) -> Self {
        let mut validations: Vec<(AlgorithmFamily, Validation)> = Vec::new();
        for alg in &cfg.algorithms {
            let family = alg.family();
            if let Some((_, v)) = validations.iter_mut().find(|(f, _)| *f == family) {
                v.algorithms.push(*alg);
                continue;
            }
            let mut validation = Validation::new(*alg);
            validation.leeway = cfg.leeway.as_secs();
            validation.validate_exp = true;
            validation.validate_nbf = true;
            validation.validate_aud = true;
            validation.set_issuer(&[cfg.issuer.as_str()]);
            validation.set_audience(&cfg.audiences);
            validation.set_required_spec_claims(&["exp", "iss", "aud"]);
            validations.push((family, validation));
        }
        IssuerVerifier {
            id: cfg.id.clone(),
            iss: cfg.issuer.clone(),
            algorithms: cfg.algorithms.clone(),
            require_typ: cfg.require_typ,
            leeway: cfg.leeway,
            validations,
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
    pub async fn verify(&self, token: &str, header: &Header) -> Result<Principal, AuthError> {
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
            return Err(InvalidToken::UnknownKey.into());
        };

        let validation = self
            .validations
            .iter()
            .find(|(f, _)| *f == key.family)
            .map(|(_, v)| v)
            .ok_or(InvalidToken::AlgorithmNotAllowed)?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, validation)
            .map_err(|e| AuthError::from(invalid_from(e.kind())))?;
        let claims = data.claims;
        let now = unix_secs();
        if let Some(iat) = claims.get("iat") {
            let iat = iat.as_f64().ok_or(InvalidToken::Malformed)?;
            if iat > (now + self.leeway.as_secs()) as f64 {
                return Err(InvalidToken::NotYetValid.into());
            }
        }
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_f64)
            .ok_or(InvalidToken::Malformed)? as u64;
        Ok(Principal::new(self.id.clone(), claims, expires_at))
    }
}

/// RFC 9068 §4: `typ` is `at+jwt` (or the full media type `application/at+jwt`), any case.
fn is_at_jwt(typ: Option<&str>) -> bool {
    typ.is_some_and(|t| {
        t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
    })
}

fn invalid_from(kind: &ErrorKind) -> InvalidToken {
    match kind {
        ErrorKind::ExpiredSignature => InvalidToken::Expired,
        ErrorKind::ImmatureSignature => InvalidToken::NotYetValid,
        ErrorKind::InvalidAudience => InvalidToken::WrongAudience,
        ErrorKind::InvalidIssuer => InvalidToken::UnknownIssuer,
        ErrorKind::InvalidSignature => InvalidToken::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm => InvalidToken::AlgorithmNotAllowed,
        ErrorKind::MissingRequiredClaim(_) => InvalidToken::MissingClaim,
        _ => InvalidToken::Malformed,
    }
}

/// Unix seconds now, under the name the demo issuer mints tokens with.
pub(crate) use crate::clock::unix_secs as now_unix;

/// The parts of a compact JWS that select the issuer, read before any signature check.
pub(crate) struct Unverified {
    pub header: Header,
    pub iss: String,
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
    #[derive(Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    let payload = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| InvalidToken::Malformed)?;
    let iss: Iss = serde_json::from_slice(&payload).map_err(|_| InvalidToken::Malformed)?;
    let iss = iss.iss.ok_or(InvalidToken::UnknownIssuer)?;
    Ok(Unverified { header, iss })
}

#[cfg(test)]
mod tests {
    use super::*;

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
