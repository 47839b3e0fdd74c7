//! JWT access-token validation (RFC 7519, RFC 9068) against one issuer's key set.
//!
//! The algorithm allow-list comes from configuration, never from the token: `alg` must be on the
//! issuer's list and fit the key's type, so HS256 "signed" with an RSA public key, or `none`, can
//! never verify. The `jku`, `x5u`, `jwk` and `x5c` headers are ignored: keys come only from the
//! configured key set. Tokens with a `crit` header are refused (no extension is understood).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::Value;

use super::jwks::{Jwks, Lookup};
use super::members::{self, Members};
use super::settings::IssuerConfig;
use super::{AuthError, InvalidToken};
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
    pub(crate) fn has_key(&self, header: &JwsHeader) -> bool {
        self.algorithms.contains(&header.alg)
            && self.jwks.snapshot().is_some_and(|k| {
                matches!(k.find(header.kid.as_deref(), header.alg), Lookup::Found(_))
            })
    }

    /// Verifies signature and claims; returns the token's `exp`. May wait for one JWKS re-fetch
    /// on an unknown `kid`.
    pub(crate) async fn verify(
        &self,
        token: &str,
        unverified: &Unverified<'_>,
    ) -> Result<u64, AuthError> {
        let header = &unverified.header;
        if !self.algorithms.contains(&header.alg) {
            return Err(InvalidToken::AlgorithmNotAllowed.into());
        }
        if header.crit {
            return Err(InvalidToken::UnsupportedCritical.into());
        }
        if self.require_typ && !header.at_jwt {
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
        Ok(check_claims(
            &unverified.claims,
            (&self.iss, &self.audiences, self.leeway.as_secs()),
            unix_secs(),
        )?)
    }
}

/// The registered claims of a token whose signature holds (RFC 7519 §4.1, RFC 9068 §4): `exp`,
/// `iss` and `aud` are required; `exp`, `nbf` and `iat` are held against `now` with the issuer's
/// leeway; `iss` is the issuer's; `aud` (a string or an array) names one of the configured
/// audiences. Returns `exp`.
pub(crate) fn check_claims(
    claims: &Members<'_>,
    (issuer, accepted, leeway): (&str, &[String], u64),
    now: u64,
) -> Result<u64, InvalidToken> {
    let exp = claims.value("exp").ok_or(InvalidToken::MissingClaim)?;
    let exp = numeric_date(&exp).ok_or(InvalidToken::MissingClaim)?;
    let iss = claims.str("iss");
    let aud = claims.raw("aud").ok_or(InvalidToken::MissingClaim)?;
    let audiences: Vec<Cow<'_, str>> = match members::text(aud) {
        Some(a) => vec![a],
        None => members::items(aud)
            .ok_or(InvalidToken::MissingClaim)?
            .into_iter()
            .map(members::text)
            .collect::<Option<_>>()
            .ok_or(InvalidToken::MissingClaim)?,
    };
    if exp < now.saturating_sub(leeway) {
        return Err(InvalidToken::Expired);
    }
    if let Some(nbf) = claims.value("nbf") {
        if numeric_date(&nbf).ok_or(InvalidToken::Malformed)? > now + leeway {
            return Err(InvalidToken::NotYetValid);
        }
    }
    if iss.as_deref() != Some(issuer) {
        return Err(InvalidToken::UnknownIssuer);
    }
    if !audiences.iter().any(|a| accepted.iter().any(|c| c == a)) {
        return Err(InvalidToken::WrongAudience);
    }
    if let Some(iat) = claims.value("iat") {
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

/// What tollgate reads of a JWS header (RFC 7515 §4.1). Other members are ignored: `jku`,
/// `x5u`, `jwk` and `x5c` never choose a key.
#[derive(Debug)]
pub(crate) struct JwsHeader {
    pub alg: Algorithm,
    pub kid: Option<String>,
    /// Whether `typ` says a JWT access token (RFC 9068 §2.1).
    at_jwt: bool,
    /// Whether the header has a `crit` member (other than `null`).
    crit: bool,
}

/// A header as it is written; `alg` is required.
#[derive(Deserialize)]
struct RawHeader<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    typ: Option<Cow<'a, str>>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

impl JwsHeader {
    /// The header of a compact JWS, from its first part. An `alg` that names no JWS algorithm
    /// (`none` included) is refused as such; anything else that is not a JSON object with a
    /// string `alg` is `Malformed`.
    fn parse(encoded: &str) -> Result<JwsHeader, InvalidToken> {
        let json = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| InvalidToken::Malformed)?;
        let raw: RawHeader<'_> =
            serde_json::from_slice(&json).map_err(|_| InvalidToken::Malformed)?;
        Ok(JwsHeader {
            alg: raw
                .alg
                .parse()
                .map_err(|_| InvalidToken::AlgorithmNotAllowed)?,
            kid: raw.kid.map(Cow::into_owned),
            at_jwt: is_at_jwt(raw.typ.as_deref()),
            crit: raw.crit.is_some(),
        })
    }
}

/// The parts of a compact JWS that select the issuer, read before any signature check.
pub(crate) struct Unverified<'a> {
    pub header: JwsHeader,
    pub iss: Cow<'a, str>,
    /// The payload's members, read in place and checked once the signature holds.
    pub claims: Members<'a>,
}

/// Splits a compact JWS and reads its header and `iss`; `payload` receives the decoded payload
/// that the claims are read from. Anything that is not three base64url parts with a JSON header
/// and payload is `Malformed` (JWEs included).
pub(crate) fn peek<'a>(
    token: &str,
    payload: &'a mut Vec<u8>,
) -> Result<Unverified<'a>, InvalidToken> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(InvalidToken::Malformed);
    };
    let header = JwsHeader::parse(h)?;
    payload.clear();
    URL_SAFE_NO_PAD
        .decode_vec(p, payload)
        .map_err(|_| InvalidToken::Malformed)?;
    let claims = Members::parse(payload).ok_or(InvalidToken::Malformed)?;
    let iss = match claims.raw("iss") {
        None => return Err(InvalidToken::UnknownIssuer),
        Some(raw) if raw.get() == "null" => return Err(InvalidToken::UnknownIssuer),
        Some(raw) => members::text(raw).ok_or(InvalidToken::Malformed)?,
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
        let json = serde_json::to_vec(&claims).unwrap();
        let members = Members::parse(&json).expect("claims are an object");
        let accepted = ["api".to_owned(), "erp".to_owned()];
        check_claims(&members, ("https://idp", &accepted, 30), 1_000)
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
        let peek = |t: &str| peek(t, &mut Vec::new()).map(|u| u.iss.into_owned());
        assert!(matches!(peek("abc"), Err(InvalidToken::Malformed)));
        assert!(matches!(peek("a.b.c.d.e"), Err(InvalidToken::Malformed)));
        assert!(matches!(peek("!!.!!.!!"), Err(InvalidToken::Malformed)));
    }

    #[test]
    fn peek_reads_iss_and_refuses_none() {
        let b64 = |json: &str| URL_SAFE_NO_PAD.encode(json);
        let h = b64(r#"{"alg":"RS256","kid":"k"}"#);
        let p = b64(r#"{"iss":"https://idp","sub":"x"}"#);
        let mut payload = Vec::new();
        let u = peek(&format!("{h}.{p}.sig"), &mut payload).unwrap();
        assert_eq!(u.iss, "https://idp");
        assert_eq!(u.header.alg, Algorithm::RS256);
        assert_eq!(u.header.kid.as_deref(), Some("k"));
        assert!(!u.header.crit && !u.header.at_jwt);
        assert_eq!(u.claims.str("sub").as_deref(), Some("x"));
        let peek =
            |h: &str, p: &str| peek(&format!("{h}.{p}.sig"), &mut Vec::new()).map(|u| u.header);
        // An alg that names no JWS algorithm, `none` included, is refused as such.
        for alg in [r#"{"alg":"none"}"#, r#"{"alg":"HS1024"}"#] {
            assert_eq!(
                peek(&b64(alg), &p).err(),
                Some(InvalidToken::AlgorithmNotAllowed)
            );
        }
        // A header that is not an object with a string alg is malformed.
        for header in [
            r#"{"kid":"k"}"#,
            r#"{"alg":256}"#,
            "[]",
            r#"{"alg":"RS256""#,
        ] {
            assert_eq!(peek(&b64(header), &p).err(), Some(InvalidToken::Malformed));
        }
        // typ and crit are read; a null crit is no crit.
        let read = peek(&b64(r#"{"alg":"ES256","typ":"at+JWT","crit":["x"]}"#), &p).unwrap();
        assert!(read.at_jwt && read.crit && read.alg == Algorithm::ES256);
        assert!(
            !peek(&b64(r#"{"alg":"ES256","crit":null}"#), &p)
                .unwrap()
                .crit
        );
        // The issuer: absent or null is unknown, another type malformed, escapes are read.
        for (payload, want) in [
            (r#"{"sub":"x"}"#, Err(InvalidToken::UnknownIssuer)),
            (r#"{"iss":null}"#, Err(InvalidToken::UnknownIssuer)),
            (r#"{"iss":7}"#, Err(InvalidToken::Malformed)),
            (r#"{"iss":"https:\/\/idp"}"#, Ok("https://idp".to_owned())),
            ("[1]", Err(InvalidToken::Malformed)),
        ] {
            let got = super::peek(&format!("{h}.{}.sig", b64(payload)), &mut Vec::new())
                .map(|u| u.iss.into_owned());
            assert_eq!(got, want, "{payload}");
        }
    }
}
