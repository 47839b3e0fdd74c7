//! Concurrent-mode handle cookies (design §6.4): `base64url(nonce[16] ‖ trunc16(HMAC-SHA256(K_h,
//! grant_key ‖ nonce)))`. A handle names one upstream session of one grant; it is useless without
//! a bearer token of the same grant, and a handle of another grant (or a forged one) never
//! verifies.

use aws_lc_rs::{constant_time, hmac};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::grant::GrantKey;

/// The 16-byte nonce that identifies a session slot within a grant.
pub type Nonce = [u8; 16];

fn tag(key: &hmac::Key, grant: &GrantKey, nonce: &Nonce) -> [u8; 16] {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(grant.0.as_bytes());
    ctx.update(nonce);
    let full = ctx.sign();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full.as_ref()[..16]);
    out
}

/// A fresh handle for `grant`: its nonce and the cookie value.
pub fn issue(key: &hmac::Key, grant: &GrantKey) -> (Nonce, String) {
    let nonce: Nonce = rand::random();
    (nonce, encode(key, grant, &nonce))
}

/// The cookie value of `nonce` for `grant`.
pub fn encode(key: &hmac::Key, grant: &GrantKey, nonce: &Nonce) -> String {
    let mut raw = [0u8; 32];
    raw[..16].copy_from_slice(nonce);
    raw[16..].copy_from_slice(&tag(key, grant, nonce));
    URL_SAFE_NO_PAD.encode(raw)
}

/// The nonce of a handle whose MAC verifies for `grant`; `None` for another grant's handle, a
/// forged or a garbled one.
pub fn verify(key: &hmac::Key, grant: &GrantKey, value: &str) -> Option<Nonce> {
    let raw = URL_SAFE_NO_PAD.decode(value.as_bytes()).ok()?;
    if raw.len() != 32 {
        return None;
    }
    let mut nonce = [0u8; 16];
    nonce.copy_from_slice(&raw[..16]);
    let expected = tag(key, grant, &nonce);
    constant_time::verify_slices_are_equal(&expected, &raw[16..]).ok()?;
    Some(nonce)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &[9u8; 32])
    }

    #[test]
    fn a_handle_verifies_only_for_its_grant() {
        let g1 = GrantKey("grant-one".into());
        let g2 = GrantKey("grant-two".into());
        let (nonce, value) = issue(&key(), &g1);
        assert_eq!(verify(&key(), &g1, &value), Some(nonce));
        assert_eq!(verify(&key(), &g2, &value), None);
        let other_key = hmac::Key::new(hmac::HMAC_SHA256, &[1u8; 32]);
        assert_eq!(verify(&other_key, &g1, &value), None);
    }

    #[test]
    fn garbled_and_forged_handles_fail() {
        let g = GrantKey("g".into());
        let (_, value) = issue(&key(), &g);
        let mut forged = value.clone().into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            verify(&key(), &g, std::str::from_utf8(&forged).unwrap()),
            None
        );
        assert_eq!(verify(&key(), &g, "not base64 !!"), None);
        assert_eq!(verify(&key(), &g, ""), None);
        assert_eq!(verify(&key(), &g, &value[..20]), None);
    }

    #[test]
    fn handles_are_distinct() {
        let g = GrantKey("g".into());
        assert_ne!(issue(&key(), &g).1, issue(&key(), &g).1);
    }
}
