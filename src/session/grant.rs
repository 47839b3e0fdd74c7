//! The grant key (design §5.5, §6.2): a stable, opaque name for the OAuth grant behind a token, so
//! that every access token of one refresh chain maps to the same upstream session.
//!
//! `grant_key = base64url(HMAC-SHA256(K_gk, "gk1" ‖ lp(iss) ‖ lp(upstream) ‖ lp(source) ‖ lp(value)))`
//! with `lp` a 4-byte big-endian length prefix. The issuer and the upstream are always part of it,
//! so equal `sub`/`sid` values of different issuers or upstreams never collide, and the key never
//! contains a raw claim or token.

use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;

use crate::auth::Principal;
use crate::config::GrantSource;

/// Why no grant key could be derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("the token carries no grant identifier")]
    NoGrant,
}

/// A derived grant key: URL-safe text, safe to log and to show on the admin API. Shared, not
/// copied: a session request names its grant in its slot, its lease and its queue entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantKey(pub std::sync::Arc<str>);

impl std::fmt::Display for GrantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn lp(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&prefix(part.len()));
    out.extend_from_slice(part);
}

/// `lp`'s 4-byte big-endian length prefix.
fn prefix(len: usize) -> [u8; 4] {
    u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes()
}

fn text<'a>(p: &'a Principal, claim: &str) -> Option<&'a str> {
    p.claims
        .get(claim)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Writes into `msg` (cleared first) what the grant key of `principal` for `upstream` signs,
/// and answers the source it came from: the first source of `sources` that applies
/// (`token_digest` serves the `token` source when the token has no `jti`). The message holds
/// every input of the key, so two principals with the same message have the same key (what
/// lets a pool remember keys by message).
///
/// Into a buffer, not a new vector: a pool reuses one for the message of every request of a
/// session route, whose key it has signed already.
pub fn write_message(
    sources: &[GrantSource],
    issuer: &str,
    upstream: &str,
    principal: &Principal,
    token_digest: &[u8; 32],
    msg: &mut Vec<u8>,
) -> Result<&'static str, GrantError> {
    msg.clear();
    for source in sources {
        // The value's pieces, written once into room for the whole message (this runs on every
        // request of a session route): `lp` pieces are length-prefixed inside the value.
        let found: Option<(&'static str, [Piece<'_>; 3])> = match source {
            GrantSource::Claim(name) => text(principal, name).map(|v| {
                let (name, v) = (name.as_bytes(), v.as_bytes());
                ("claim", [Piece::Raw(name), Piece::Raw(b"="), Piece::Raw(v)])
            }),
            GrantSource::SidClientId => match (text(principal, "sid"), principal.client_id()) {
                (Some(sid), Some(client)) => Some((
                    "sid+client_id",
                    [
                        Piece::Lp(sid.as_bytes()),
                        Piece::Lp(client.as_bytes()),
                        Piece::NONE,
                    ],
                )),
                _ => None,
            },
            GrantSource::ClientCredentials => match (principal.client_id(), principal.subject()) {
                (Some(client), None) => Some(("client_credentials", Piece::one(client.as_bytes()))),
                (Some(client), Some(sub)) if sub == client => {
                    Some(("client_credentials", Piece::one(client.as_bytes())))
                }
                _ => None,
            },
            GrantSource::Subject => match (principal.client_id(), principal.subject()) {
                (Some(client), Some(sub)) => Some((
                    "subject",
                    [
                        Piece::Lp(client.as_bytes()),
                        Piece::Lp(sub.as_bytes()),
                        Piece::NONE,
                    ],
                )),
                (None, Some(sub)) => Some(("subject", Piece::one(sub.as_bytes()))),
                _ => None,
            },
            GrantSource::Token => Some(match text(principal, "jti") {
                Some(jti) => ("token", Piece::one(jti.as_bytes())),
                None => ("token", Piece::one(token_digest)),
            }),
            GrantSource::Reject => return Err(GrantError::NoGrant),
        };
        if let Some((name, value)) = found {
            let value_len: usize = value.iter().map(Piece::len).sum();
            msg.reserve(MAGIC.len() + 16 + issuer.len() + upstream.len() + name.len() + value_len);
            msg.extend_from_slice(MAGIC);
            lp(msg, issuer.as_bytes());
            lp(msg, upstream.as_bytes());
            lp(msg, name.as_bytes());
            msg.extend_from_slice(&prefix(value_len));
            for piece in &value {
                piece.write(msg);
            }
            return Ok(name);
        }
    }
    Err(GrantError::NoGrant)
}

/// [`write_message`] into a new vector (the tests').
#[cfg(test)]
pub fn message(
    sources: &[GrantSource],
    issuer: &str,
    upstream: &str,
    principal: &Principal,
    token_digest: &[u8; 32],
) -> Result<(&'static str, Vec<u8>), GrantError> {
    let mut msg = Vec::new();
    let source = write_message(sources, issuer, upstream, principal, token_digest, &mut msg)?;
    Ok((source, msg))
}

/// The version tag a grant key's message starts with.
const MAGIC: &[u8] = b"gk1";

/// A piece of a grant source's value: bytes as they are, or length-prefixed.
enum Piece<'a> {
    Raw(&'a [u8]),
    Lp(&'a [u8]),
}

impl<'a> Piece<'a> {
    const NONE: Piece<'static> = Piece::Raw(b"");

    /// A value of one piece.
    fn one(bytes: &'a [u8]) -> [Piece<'a>; 3] {
        [Piece::Raw(bytes), Piece::NONE, Piece::NONE]
    }

    fn len(&self) -> usize {
        match self {
            Piece::Raw(b) => b.len(),
            Piece::Lp(b) => 4 + b.len(),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Piece::Raw(b) => out.extend_from_slice(b),
            Piece::Lp(b) => lp(out, b),
        }
    }
}

/// The grant key of a message ([`write_message`]).
pub fn sign(key: &hmac::Key, message: &[u8]) -> GrantKey {
    GrantKey(
        URL_SAFE_NO_PAD
            .encode(hmac::sign(key, message).as_ref())
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    /// A key and the source it came from, as the tests below check them.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Derived {
        key: GrantKey,
        source: &'static str,
    }

    /// [`message`] then [`sign`], as a pool does on a key it has not signed yet.
    fn derive(
        key: &hmac::Key,
        sources: &[GrantSource],
        issuer: &str,
        upstream: &str,
        principal: &Principal,
        token_digest: &[u8; 32],
    ) -> Result<Derived, GrantError> {
        let (source, message) = message(sources, issuer, upstream, principal, token_digest)?;
        Ok(Derived {
            key: sign(key, &message),
            source,
        })
    }

    fn key() -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &[7u8; 32])
    }

    fn p(claims: Value) -> Principal {
        Principal::new(
            Arc::from("erp"),
            claims.as_object().unwrap().clone(),
            u64::MAX,
        )
    }

    fn defaults() -> Vec<GrantSource> {
        vec![
            GrantSource::Claim("grant_id".into()),
            GrantSource::Claim("origin_jti".into()),
            GrantSource::SidClientId,
            GrantSource::ClientCredentials,
            GrantSource::Subject,
        ]
    }

    fn derive_default(claims: Value) -> Result<Derived, GrantError> {
        derive(
            &key(),
            &defaults(),
            "https://idp",
            "erp",
            &p(claims),
            &[0; 32],
        )
    }

    #[test]
    fn a_refreshed_token_keeps_its_grant_key() {
        let a = derive_default(json!({"grant_id": "g1", "jti": "t1", "sub": "u"})).unwrap();
        let b = derive_default(json!({"grant_id": "g1", "jti": "t2", "sub": "u"})).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.source, "claim");
        assert_ne!(
            a,
            derive_default(json!({"grant_id": "g2", "sub": "u"})).unwrap()
        );
    }

    #[test]
    fn sources_are_tried_in_order() {
        assert_eq!(
            derive_default(json!({"sid": "s", "client_id": "c", "sub": "u"}))
                .unwrap()
                .source,
            "sid+client_id"
        );
        assert_eq!(
            derive_default(json!({"client_id": "c"})).unwrap().source,
            "client_credentials"
        );
        assert_eq!(
            derive_default(json!({"client_id": "c", "sub": "c"}))
                .unwrap()
                .source,
            "client_credentials"
        );
        assert_eq!(
            derive_default(json!({"client_id": "c", "sub": "u"}))
                .unwrap()
                .source,
            "subject"
        );
        assert_eq!(derive_default(json!({})), Err(GrantError::NoGrant));
    }

    #[test]
    fn issuer_and_upstream_namespace_the_key() {
        let claims = p(json!({"sub": "u", "client_id": "c"}));
        let a = derive(
            &key(),
            &defaults(),
            "https://idp-a",
            "erp",
            &claims,
            &[0; 32],
        )
        .unwrap();
        let b = derive(
            &key(),
            &defaults(),
            "https://idp-b",
            "erp",
            &claims,
            &[0; 32],
        )
        .unwrap();
        let c = derive(
            &key(),
            &defaults(),
            "https://idp-a",
            "crm",
            &claims,
            &[0; 32],
        )
        .unwrap();
        assert_ne!(a, b);
        assert_ne!(a, c);
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        let x = derive(
            &key(),
            &[GrantSource::Subject],
            "i",
            "u",
            &p(json!({"client_id": "ab", "sub": "c"})),
            &[0; 32],
        )
        .unwrap();
        let y = derive(
            &key(),
            &[GrantSource::Subject],
            "i",
            "u",
            &p(json!({"client_id": "a", "sub": "bc"})),
            &[0; 32],
        )
        .unwrap();
        assert_ne!(x, y);
    }

    #[test]
    fn the_key_reveals_no_claim() {
        let d = derive_default(json!({"grant_id": "secret-grant-id"})).unwrap();
        assert!(!d.key.0.contains("secret"));
        assert_eq!(d.key.0.len(), 43);
    }

    #[test]
    fn token_and_reject_sources() {
        let with_jti = derive(
            &key(),
            &[GrantSource::Token],
            "i",
            "u",
            &p(json!({"jti": "j1"})),
            &[1; 32],
        )
        .unwrap();
        let other_jti = derive(
            &key(),
            &[GrantSource::Token],
            "i",
            "u",
            &p(json!({"jti": "j2"})),
            &[1; 32],
        )
        .unwrap();
        assert_ne!(with_jti, other_jti);
        let digest_a = derive(
            &key(),
            &[GrantSource::Token],
            "i",
            "u",
            &p(json!({})),
            &[1; 32],
        )
        .unwrap();
        let digest_b = derive(
            &key(),
            &[GrantSource::Token],
            "i",
            "u",
            &p(json!({})),
            &[2; 32],
        )
        .unwrap();
        assert_ne!(digest_a, digest_b);
        assert_eq!(
            derive(
                &key(),
                &[GrantSource::Reject],
                "i",
                "u",
                &p(json!({"sub": "x"})),
                &[0; 32]
            ),
            Err(GrantError::NoGrant)
        );
    }

    #[test]
    fn a_message_written_into_a_used_buffer_is_the_message_alone() {
        let (long, short) = (
            p(json!({"grant_id": "a-long-grant-identifier-of-some-length"})),
            p(json!({"grant_id": "g"})),
        );
        let sources = [GrantSource::Claim("grant_id".into())];
        let mut buf = Vec::new();
        for principal in [&long, &short] {
            let source = write_message(
                &sources,
                "https://idp",
                "erp",
                principal,
                &[0; 32],
                &mut buf,
            )
            .unwrap();
            let (expected_source, expected) =
                message(&sources, "https://idp", "erp", principal, &[0; 32]).unwrap();
            assert_eq!((source, &buf), (expected_source, &expected));
        }
    }

    /// The message of each source, built here from the module's formula: fleet replicas of
    /// different versions share one session table, so these bytes must never change.
    #[test]
    fn every_source_signs_the_documented_message() {
        fn lp(part: &[u8]) -> Vec<u8> {
            [&(part.len() as u32).to_be_bytes()[..], part].concat()
        }
        let expected = |source: &str, value: &[u8]| {
            [
                &b"gk1"[..],
                &lp(b"https://idp"),
                &lp(b"erp"),
                &lp(source.as_bytes()),
                &lp(value),
            ]
            .concat()
        };
        let cases: [(GrantSource, Value, &str, Vec<u8>); 7] = [
            (
                GrantSource::Claim("grant_id".into()),
                json!({"grant_id": "g-1"}),
                "claim",
                b"grant_id=g-1".to_vec(),
            ),
            (
                GrantSource::SidClientId,
                json!({"sid": "s-1", "client_id": "app"}),
                "sid+client_id",
                [lp(b"s-1"), lp(b"app")].concat(),
            ),
            (
                GrantSource::ClientCredentials,
                json!({"client_id": "svc"}),
                "client_credentials",
                b"svc".to_vec(),
            ),
            (
                GrantSource::Subject,
                json!({"client_id": "app", "sub": "u-1"}),
                "subject",
                [lp(b"app"), lp(b"u-1")].concat(),
            ),
            (
                GrantSource::Subject,
                json!({"sub": "u-1"}),
                "subject",
                b"u-1".to_vec(),
            ),
            (
                GrantSource::Token,
                json!({"jti": "j-1"}),
                "token",
                b"j-1".to_vec(),
            ),
            (GrantSource::Token, json!({}), "token", vec![7; 32]),
        ];
        for (source, claims, name, value) in cases {
            let (got_name, got) =
                message(&[source], "https://idp", "erp", &p(claims), &[7; 32]).unwrap();
            assert_eq!(got_name, name);
            assert_eq!(got, expected(name, &value), "{name}");
            assert_eq!(
                got.capacity(),
                got.len(),
                "{name}: written in one allocation"
            );
        }
    }
}
