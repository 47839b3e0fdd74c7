//! The verified-token cache: a principal per token digest, until the token's `exp`.
//!
//! Keyed by the SHA-256 digest of the whole token (never the token, never less than all of it),
//! bounded by `server.token_cache_capacity` entries. It is a plain concurrent map with CLOCK-Pro
//! eviction (`quick_cache`, about 21 bytes of bookkeeping per entry) holding compact principals
//! ([`Kept`]): with 100,000 cached tokens the gateway stays within a few tens of megabytes. An
//! entry past its `exp` is never answered; it is dropped when next looked up, at the next sweep
//! (each scrape of the gauges), or by eviction.

use std::sync::Arc;

use quick_cache::sync::Cache;

use super::members::Members;
use super::principal::{Kept, Principal};

pub(super) struct TokenCache {
    entries: Cache<[u8; 32], Principal>,
    kept: Arc<Kept>,
}

impl TokenCache {
    pub(super) fn new(capacity: u64, kept: Arc<Kept>) -> Self {
        TokenCache {
            entries: Cache::new(usize::try_from(capacity).unwrap_or(usize::MAX)),
            kept,
        }
    }

    /// The principal of the token with this digest, unless it has expired at `now` (Unix s).
    pub(super) fn get(&self, digest: &[u8; 32], now: u64) -> Option<Principal> {
        let p = self.entries.get(digest)?;
        if p.expires_at > now {
            return Some(p);
        }
        self.entries.remove(digest);
        None
    }

    /// Builds the principal of a verified token's claims, compacted to what the configuration
    /// reads ([`Kept::principal`]), caches it unless it has expired at `now`, and returns it.
    pub(super) fn insert(
        &self,
        digest: [u8; 32],
        (issuer, claims, expires_at): (Arc<str>, &Members<'_>, u64),
        now: u64,
    ) -> Principal {
        let p = self.kept.principal(issuer, claims, expires_at);
        if p.expires_at > now {
            self.entries.insert(digest, p.clone());
        }
        p
    }

    /// Drops the expired entries; returns how many entries are left.
    pub(super) fn sweep(&self, now: u64) -> u64 {
        self.entries.retain(|_, p| p.expires_at > now);
        self.entries.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLAIMS: &[u8] = br#"{"sub": "u", "scope": "api", "tenant": "T"}"#;

    /// What the verifier hands the cache for a token with these members and `exp`.
    fn verified<'a>(members: &'a Members<'a>, exp: u64) -> (Arc<str>, &'a Members<'a>, u64) {
        ("erp".into(), members, exp)
    }

    #[test]
    fn an_entry_answers_until_its_tokens_exp() {
        let m = Members::parse(CLAIMS).unwrap();
        let cache = TokenCache::new(10, Arc::new(Kept::new(["api"], ["tenant"], false)));
        cache.insert([1; 32], verified(&m, 100), 50);
        assert!(cache.get(&[1; 32], 99).is_some());
        assert!(cache.get(&[1; 32], 100).is_none());
        // Dropped once seen expired.
        assert!(cache.get(&[1; 32], 50).is_none());
    }

    #[test]
    fn what_is_cached_is_compacted_and_an_expired_principal_is_not_cached() {
        let m = Members::parse(CLAIMS).unwrap();
        let cache = TokenCache::new(10, Arc::new(Kept::new(["api"], [], false)));
        let p = cache.insert([2; 32], verified(&m, 100), 50);
        assert!(p.claims.is_empty() && p.subject().is_none() && p.scopes.contains("api"));
        cache.insert([3; 32], verified(&m, 40), 50);
        assert!(cache.get(&[3; 32], 30).is_none());
    }

    #[test]
    fn a_sweep_drops_expired_entries() {
        let m = Members::parse(CLAIMS).unwrap();
        let cache = TokenCache::new(10, Arc::new(Kept::new([], [], false)));
        cache.insert([1; 32], verified(&m, 100), 0);
        cache.insert([2; 32], verified(&m, 200), 0);
        assert_eq!(cache.sweep(150), 1);
        assert!(cache.get(&[2; 32], 150).is_some());
    }

    #[test]
    fn the_capacity_bounds_the_entries() {
        let m = Members::parse(CLAIMS).unwrap();
        let cache = TokenCache::new(100, Arc::new(Kept::new([], [], false)));
        for i in 0..1000u32 {
            let mut d = [0; 32];
            d[..4].copy_from_slice(&i.to_be_bytes());
            cache.insert(d, verified(&m, 100), 0);
        }
        assert!(cache.sweep(0) <= 100);
    }
}
