//! Signature checks with public keys parsed once, when the key set is loaded.
//!
//! Verifying with a JWK's raw components makes the crypto library rebuild the key (for RSA, its
//! modulus as a big number and its Montgomery context) for every token: about as much work
//! again as the signature check itself. A [`PublicKey`] holds the key in the library's parsed
//! form, one per algorithm the key can serve, and verifies against it.
//!
//! Which algorithm a key serves follows from its type and curve: an RSA key serves RS256/384/512
//! and PS256/384/512 (moduli of 2048 to 8192 bits), a P-256 key ES256, a P-384 key ES384, an
//! Ed25519 key EdDSA. Symmetric keys are never parsed: a public key set must not enable HMAC.

use aws_lc_rs::signature::{self, ParsedPublicKey, RsaPublicKeyComponents};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::Algorithm;

/// A public key in parsed form, for each algorithm it can verify.
pub struct PublicKey {
    parsed: Vec<(Algorithm, ParsedPublicKey)>,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.parsed.iter().map(|(a, _)| a))
            .finish()
    }
}

const RSA: [(Algorithm, &signature::RsaParameters); 6] = [
    (Algorithm::RS256, &signature::RSA_PKCS1_2048_8192_SHA256),
    (Algorithm::RS384, &signature::RSA_PKCS1_2048_8192_SHA384),
    (Algorithm::RS512, &signature::RSA_PKCS1_2048_8192_SHA512),
    (Algorithm::PS256, &signature::RSA_PSS_2048_8192_SHA256),
    (Algorithm::PS384, &signature::RSA_PSS_2048_8192_SHA384),
    (Algorithm::PS512, &signature::RSA_PSS_2048_8192_SHA512),
];

impl PublicKey {
    /// Parses an RSA, EC (P-256, P-384) or OKP (Ed25519) JWK; `None` for anything else or a
    /// key that does not parse.
    pub fn from_jwk(jwk: &Jwk) -> Option<PublicKey> {
        let b64 = |s: &str| URL_SAFE_NO_PAD.decode(s).ok();
        let parsed = match &jwk.algorithm {
            AlgorithmParameters::RSA(p) => {
                let (n, e) = (b64(&p.n)?, b64(&p.e)?);
                let components = RsaPublicKeyComponents {
                    n: n.as_slice(),
                    e: e.as_slice(),
                };
                RSA.iter()
                    .map(|(alg, params)| {
                        Some((*alg, components.to_parsed_public_key(params).ok()?))
                    })
                    .collect::<Option<Vec<_>>>()?
            }
            AlgorithmParameters::EllipticCurve(p) => {
                let (alg, verification): (_, &'static dyn signature::VerificationAlgorithm) =
                    match p.curve {
                        EllipticCurve::P256 => {
                            (Algorithm::ES256, &signature::ECDSA_P256_SHA256_FIXED)
                        }
                        EllipticCurve::P384 => {
                            (Algorithm::ES384, &signature::ECDSA_P384_SHA384_FIXED)
                        }
                        _ => return None,
                    };
                // The uncompressed point: 0x04 ‖ x ‖ y.
                let point = [&[0x04][..], &b64(&p.x)?, &b64(&p.y)?].concat();
                vec![(alg, ParsedPublicKey::new(verification, point).ok()?)]
            }
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                vec![(
                    Algorithm::EdDSA,
                    ParsedPublicKey::new(&signature::ED25519, b64(&p.x)?).ok()?,
                )]
            }
            _ => return None,
        };
        Some(PublicKey { parsed })
    }

    /// Whether this key can verify `alg` at all.
    #[cfg(test)]
    fn serves(&self, alg: Algorithm) -> bool {
        self.parsed.iter().any(|(a, _)| *a == alg)
    }

    /// Whether `signature` is `alg`'s signature of `message` by this key.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        self.parsed
            .iter()
            .find(|(a, _)| *a == alg)
            .is_some_and(|(_, key)| key.verify_sig(message, signature).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::keys::{self, SigningKey};

    fn public(key: &SigningKey) -> PublicKey {
        let set = keys::jwks(&[key]);
        let jwk: Jwk = serde_json::from_value(set["keys"][0].clone()).unwrap();
        PublicKey::from_jwk(&jwk).unwrap()
    }

    /// The signing input and the decoded signature of a compact JWS.
    fn split(token: &str) -> (&[u8], Vec<u8>) {
        let dot = token.rfind('.').unwrap();
        let sig = URL_SAFE_NO_PAD.decode(&token[dot + 1..]).unwrap();
        (&token.as_bytes()[..dot], sig)
    }

    #[test]
    fn each_key_type_verifies_its_own_signatures_only() {
        let cases = [
            (
                SigningKey::rsa("r", Algorithm::RS256).unwrap(),
                Algorithm::RS256,
            ),
            (
                SigningKey::rsa("p", Algorithm::PS256).unwrap(),
                Algorithm::PS256,
            ),
            (SigningKey::ec_p256("e").unwrap(), Algorithm::ES256),
            (SigningKey::ed25519("d").unwrap(), Algorithm::EdDSA),
        ];
        for (key, alg) in &cases {
            let public = public(key);
            let token = key.sign(&serde_json::json!({"sub": "x"})).unwrap();
            let (message, sig) = split(&token);
            assert!(public.verify(*alg, message, &sig), "{alg:?}");
            let mut tampered = message.to_vec();
            tampered[0] ^= 1;
            assert!(!public.verify(*alg, &tampered, &sig), "{alg:?} tampered");
            // Another algorithm never verifies, even of the same key family.
            let other = if *alg == Algorithm::RS256 {
                Algorithm::RS384
            } else {
                Algorithm::RS256
            };
            assert!(!public.verify(other, message, &sig), "{alg:?} as {other:?}");
        }
    }

    #[test]
    fn the_curve_decides_the_algorithm() {
        let public = public(&SigningKey::ec_p256("e").unwrap());
        assert!(public.serves(Algorithm::ES256));
        assert!(!public.serves(Algorithm::ES384));
        let rsa = public_rsa();
        assert!(rsa.serves(Algorithm::PS512) && !rsa.serves(Algorithm::ES256));
    }

    fn public_rsa() -> PublicKey {
        public(&SigningKey::rsa("r", Algorithm::RS256).unwrap())
    }

    #[test]
    fn symmetric_and_broken_keys_are_not_parsed() {
        let oct: Jwk =
            serde_json::from_value(serde_json::json!({"kty": "oct", "k": "c2VjcmV0"})).unwrap();
        assert!(PublicKey::from_jwk(&oct).is_none());
        let short: Jwk =
            serde_json::from_value(serde_json::json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"}))
                .unwrap();
        // A 17-bit modulus parses as components but verifies nothing (2048-bit minimum).
        if let Some(k) = PublicKey::from_jwk(&short) {
            assert!(!k.verify(Algorithm::RS256, b"m", &[0; 3]));
        }
    }
}
