//! Secrets at rest in the shared store: a session's cookie jar is a live credential for the
//! upstream, so it is sealed before it is written to Redis (AES-256-GCM, a random 96-bit nonce
//! per seal) with the record's key as associated data. A sealed jar copied to another record,
//! or altered, does not open; neither does one sealed under another key.
//!
//! The key is derived from the session's `handle_key_file`, which every replica of a fleet
//! shares already (grant keys and handles depend on it).

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hmac;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;

/// Seals and opens jar text for the shared store.
pub struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

/// A sealed value that did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a sealed session jar did not open (altered, moved, or sealed under another key)")]
pub struct Unsealable;

impl Sealer {
    /// The sealer of `master` (the 32-byte session master key).
    pub fn new(master: &[u8; 32]) -> Sealer {
        let derived = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, master),
            b"tollgate jar seal v1",
        );
        // A 32-byte HMAC output is a valid AES-256 key.
        let key = UnboundKey::new(&AES_256_GCM, derived.as_ref())
            .map(LessSafeKey::new)
            .unwrap_or_else(|_| unreachable_key());
        Sealer { key }
    }

    /// `plain` sealed for the record at `aad`: base64 of nonce ‖ ciphertext ‖ tag. The empty
    /// jar stays empty (nothing to hide, and an empty field reads as "no jar").
    pub fn seal(&self, aad: &str, plain: &str) -> String {
        if plain.is_empty() {
            return String::new();
        }
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let mut buf = plain.as_bytes().to_vec();
        let sealed = self.key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce_bytes),
            Aad::from(aad.as_bytes()),
            &mut buf,
        );
        if sealed.is_err() {
            // Sealing fails only for inputs beyond AES-GCM's size limit (GiBs); a jar is 8 KiB.
            return String::new();
        }
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&buf);
        STANDARD_NO_PAD.encode(out)
    }

    /// The jar text sealed by [`Sealer::seal`] for `aad`.
    pub fn open(&self, aad: &str, sealed: &str) -> Result<String, Unsealable> {
        if sealed.is_empty() {
            return Ok(String::new());
        }
        let raw = STANDARD_NO_PAD.decode(sealed).map_err(|_| Unsealable)?;
        if raw.len() < NONCE_LEN {
            return Err(Unsealable);
        }
        let (nonce, body) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Unsealable)?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut body)
            .map_err(|_| Unsealable)?;
        String::from_utf8(plain.to_vec()).map_err(|_| Unsealable)
    }
}

/// AES-256 accepts every 32-byte key; this is never reached.
fn unreachable_key() -> LessSafeKey {
    #[allow(clippy::expect_used)]
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[0u8; 32]).expect("a 32-byte AES key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jar_opens_only_under_its_key_and_record() {
        let s = Sealer::new(&[7u8; 32]);
        let jar = "ASP.NET_SessionId\t/\tabc\n.ASPXAUTH\t/\tdef";
        let sealed = s.seal("r:g|-", jar);
        assert!(!sealed.contains("abc") && !sealed.contains("ASPXAUTH"));
        assert_eq!(s.open("r:g|-", &sealed).unwrap(), jar);
        assert_ne!(sealed, s.seal("r:g|-", jar), "a fresh nonce each time");
        assert_eq!(s.open("r:other|-", &sealed), Err(Unsealable), "moved");
        assert_eq!(
            Sealer::new(&[8u8; 32]).open("r:g|-", &sealed),
            Err(Unsealable),
            "another key"
        );
        let mut altered = sealed.into_bytes();
        altered[20] = if altered[20] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            s.open("r:g|-", &String::from_utf8(altered).unwrap()),
            Err(Unsealable)
        );
        assert_eq!(s.open("r:g|-", "not base64!"), Err(Unsealable));
        assert_eq!(s.seal("r:g|-", ""), "");
        assert_eq!(s.open("r:g|-", "").unwrap(), "");
    }
}
