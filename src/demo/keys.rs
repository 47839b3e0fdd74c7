//! Signing keys made at run time (RSA 2048, P-256, Ed25519) with their public JWKs: the demo
//! issuer signs with them, and the integration tests' issuer mints, rotates and forges with them.
//! Nothing here is used on the verification path.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// A private key with its public JWK.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    /// The public key as a JWK (with `kid`, `alg` and `use`).
    pub jwk: Value,
    /// The public key as PEM (SubjectPublicKeyInfo), for algorithm-confusion tests.
    pub public_pem: String,
    /// The private key as PKCS#8 PEM (RSA and EC keys), e.g. for a `private_key_jwt` client.
    pub private_pem: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or(""));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl SigningKey {
    /// A fresh RSA 2048 key for RS256 (or another RSA algorithm).
    pub fn rsa(kid: &str, alg: Algorithm) -> Result<Self, String> {
        let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .map_err(|e| format!("RSA key generation: {e}"))?;
        let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'_>>::as_der(&kp)
            .map_err(|e| format!("RSA key encoding: {e}"))?;
        let private_pem = pem("PRIVATE KEY", pkcs8.as_ref());
        let encoding = EncodingKey::from_rsa_pem(private_pem.as_bytes())
            .map_err(|e| format!("RSA key import: {e}"))?;
        let public = kp.public_key();
        let spki = AsDer::<aws_lc_rs::encoding::PublicKeyX509Der<'_>>::as_der(public)
            .map_err(|e| format!("RSA public key encoding: {e}"))?;
        let jwk = json!({
            "kty": "RSA",
            "kid": kid,
            "use": "sig",
            "alg": alg_name(alg),
            "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
            "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
        });
        Ok(SigningKey {
            kid: kid.to_owned(),
            alg,
            encoding,
            jwk,
            public_pem: pem("PUBLIC KEY", spki.as_ref()),
            private_pem,
        })
    }

    /// A fresh P-256 key for ES256.
    pub fn ec_p256(kid: &str) -> Result<Self, String> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|e| format!("EC key generation: {e}"))?;
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref())
            .map_err(|e| format!("EC key import: {e}"))?;
        let point = kp.public_key().as_ref();
        // Uncompressed point: 0x04 || x (32) || y (32).
        let (x, y) = point
            .get(1..)
            .map_or((&[][..], &[][..]), |xy| xy.split_at(xy.len() / 2));
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        });
        Ok(SigningKey {
            kid: kid.to_owned(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(doc.as_ref()),
            jwk,
            public_pem: String::new(),
            private_pem: pem("PRIVATE KEY", doc.as_ref()),
        })
    }

    /// A fresh Ed25519 key for EdDSA.
    pub fn ed25519(kid: &str) -> Result<Self, String> {
        let rng = SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|e| format!("Ed25519 key generation: {e}"))?;
        let kp = Ed25519KeyPair::from_pkcs8(doc.as_ref())
            .map_err(|e| format!("Ed25519 key import: {e}"))?;
        let jwk = json!({
            "kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig", "alg": "EdDSA",
            "x": URL_SAFE_NO_PAD.encode(kp.public_key().as_ref()),
        });
        Ok(SigningKey {
            kid: kid.to_owned(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(doc.as_ref()),
            jwk,
            public_pem: String::new(),
            private_pem: String::new(),
        })
    }

    /// Signs `claims` as an RFC 9068 access token (`typ: at+jwt`, this key's `kid`).
    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        let mut header = Header::new(self.alg);
        header.typ = Some("at+jwt".to_owned());
        header.kid = Some(self.kid.clone());
        self.sign_with_header(&header, claims)
    }

    /// Signs with a caller-made header (tests forge kids, types and algorithms with it).
    pub fn sign_with_header(&self, header: &Header, claims: &Value) -> Result<String, String> {
        jsonwebtoken::encode(header, claims, &self.encoding).map_err(|e| format!("signing: {e}"))
    }
}

fn alg_name(alg: Algorithm) -> String {
    // Algorithm serialises as its JOSE name ("RS256").
    serde_json::to_value(alg)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The JWKS document for a set of keys.
pub fn jwks(keys: &[&SigningKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
}
