//! The correctness matrix: before any load, every validating gateway gets one valid token and
//! eight bad ones, one request each, and its status for each is recorded. A gateway that answers
//! 2xx to a bad token is marked in the table and the chart: a fast gateway that lets such a token
//! through is not doing the same work.
//!
//! The valid token goes first and the tampered one is that same token with one signature
//! character changed, so that a gateway whose token cache were keyed on less than the whole
//! token (say, the payload) would let the tampered one through.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use tollgate::demo::keys::SigningKey;

use crate::fixtures;

/// One token of the matrix.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Case {
    Valid,
    Expired,
    WrongAudience,
    WrongIssuer,
    AlgNone,
    Tampered,
    NoExp,
    NotYetValid,
    Garbage,
}

impl Case {
    /// In the order they are sent (`Valid` before `Tampered`).
    pub(crate) const ALL: [Case; 9] = [
        Case::Valid,
        Case::Expired,
        Case::WrongAudience,
        Case::WrongIssuer,
        Case::AlgNone,
        Case::Tampered,
        Case::NoExp,
        Case::NotYetValid,
        Case::Garbage,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Case::Valid => "valid",
            Case::Expired => "expired",
            Case::WrongAudience => "wrong aud",
            Case::WrongIssuer => "wrong iss",
            Case::AlgNone => "alg none",
            Case::Tampered => "tampered sig",
            Case::NoExp => "no exp",
            Case::NotYetValid => "nbf future",
            Case::Garbage => "garbage",
        }
    }
}

/// The nine tokens for a gateway that trusts `key` for `issuer` and audience `audience`, in
/// `Case::ALL`'s order. The time claims are an hour off, beyond any gateway's clock skew.
pub(crate) fn tokens(
    key: &SigningKey,
    issuer: &str,
    audience: &str,
) -> anyhow::Result<Vec<(Case, String)>> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = |case: Case| {
        json!({
            "iss": issuer, "aud": audience, "sub": "matrix", "client_id": "bench",
            "scope": "api", "iat": now, "exp": now + 3600,
            "jti": format!("matrix-{}", case.name().replace(' ', "-")),
        })
    };
    let sign = |c: &Value| key.sign(c).map_err(anyhow::Error::msg);
    let mut out = Vec::new();
    let mut valid = String::new();
    for case in Case::ALL {
        let mut c = claims(case);
        let token = match case {
            Case::Valid => {
                valid = sign(&c)?;
                valid.clone()
            }
            Case::Expired => {
                c["iat"] = json!(now - 7200);
                c["exp"] = json!(now - 3600);
                sign(&c)?
            }
            Case::WrongAudience => {
                c["aud"] = json!("another-api");
                sign(&c)?
            }
            Case::WrongIssuer => {
                c["iss"] = json!("https://issuer.invalid");
                sign(&c)?
            }
            Case::AlgNone => unsigned(&key.kid, &c),
            Case::Tampered => tamper(&valid),
            Case::NoExp => {
                c.as_object_mut().map(|o| o.remove("exp"));
                sign(&c)?
            }
            Case::NotYetValid => {
                c["nbf"] = json!(now + 3600);
                sign(&c)?
            }
            Case::Garbage => "not-a-jwt".to_owned(),
        };
        out.push((case, token));
    }
    Ok(out)
}

/// An `alg: none` token (RFC 7519 §6: an empty signature).
fn unsigned(kid: &str, claims: &Value) -> String {
    let header = json!({"alg": "none", "typ": "at+jwt", "kid": kid});
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// `token` with the middle character of its signature changed. Not the last one: the last
/// base64url character of a signature carries padding bits, and changing only those would leave
/// the signature as it was.
fn tamper(token: &str) -> String {
    let sig_start = token.rfind('.').map_or(0, |i| i + 1);
    let i = sig_start + (token.len() - sig_start) / 2;
    let mut bytes = token.as_bytes().to_vec();
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap_or_default()
}

/// One gateway's answers, in `Case::ALL`'s order.
pub(crate) struct Matrix {
    pub(crate) statuses: Vec<(Case, u16)>,
}

impl Matrix {
    /// The bad tokens the gateway let through (2xx).
    pub(crate) fn accepted_bad(&self) -> Vec<Case> {
        self.statuses
            .iter()
            .filter(|(c, s)| *c != Case::Valid && (200..300).contains(s))
            .map(|(c, _)| *c)
            .collect()
    }

    /// Whether the valid token was refused (the gateway's setup is wrong, not its checks).
    pub(crate) fn valid_refused(&self) -> bool {
        self.statuses
            .iter()
            .any(|(c, s)| *c == Case::Valid && !(200..300).contains(s))
    }
}

/// Sends each token once to `addr` `path` (a connection each) and records the statuses.
pub(crate) fn run(
    addr: SocketAddr,
    path: &str,
    tokens: &[(Case, String)],
) -> anyhow::Result<Matrix> {
    let mut statuses = Vec::new();
    for (case, token) in tokens {
        let (status, _) = fixtures::http_get(addr, path, Some(token), None)?;
        statuses.push((*case, status));
    }
    Ok(Matrix { statuses })
}
