//! What introspection remembers: the per-issuer answer cache, and the hook through which the
//! replicas of a fleet share positive answers.
//!
//! - **Cache** (`quick_cache`, bounded by `cache_capacity`, as the verified-token cache), keyed
//!   by the SHA-256 digest of the token, never the token. An entry and its principal sit in
//!   the cache's own slot, not behind pointers: with tens of thousands of tokens, every pointer
//!   followed to another allocation was a memory (and TLB) miss on a cached request. A
//!   positive answer is fresh for `min(exp - now, cache_max_ttl)`; an `active: false` answer for
//!   `negative_ttl`. After the token's `exp` the entry still answers "expired" without a call.
//!   With `serve_stale > 0`, a positive answer that went stale less than `serve_stale` ago (and
//!   never past the token's `exp`) may keep serving while calls fail. Errors are never cached.
//! - **Shared answers**: with a shared store, a positive answer is stored for the rest of its
//!   freshness under the issuer id and the token digest, and another replica reads it before it
//!   calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::answer::Outcome;
use crate::auth::settings::IntrospectionConfig;
use crate::auth::{InvalidToken, Principal};

/// Positive introspection answers shared between replicas through a shared store, keyed by
/// issuer and token digest (never the token).
#[async_trait::async_trait]
pub trait SharedAnswers: Send + Sync {
    /// The members of a shared answer, if one is stored.
    async fn get(&self, key: &str) -> Option<String>;
    /// Stores the members of a positive answer for `ttl`.
    async fn put(&self, key: &str, members: String, ttl: Duration);
}

/// One cached answer and how long it may be used. Cloned out of the cache on every hit: a
/// principal's clone is a few reference counts.
#[derive(Clone)]
pub(super) struct Entry {
    outcome: Outcome,
    fresh_until: Instant,
    /// Until when a positive answer may be served while calls fail.
    stale_until: Instant,
    /// Until when the entry is kept at all (it is dropped when looked up after that, or
    /// evicted before).
    keep_until: Instant,
}

/// What an entry answers without a call.
#[derive(Debug)]
pub(super) enum Hit {
    Active(Principal),
    /// A positive answer whose token has expired since.
    Expired,
    Inactive(InvalidToken),
}

// === impl Entry ===

impl Entry {
    /// The answer at `now` (`now_unix` in Unix seconds), unless the entry is no longer fresh.
    pub(super) fn answer(&self, now: Instant, now_unix: u64) -> Option<Hit> {
        match &self.outcome {
            Outcome::Active(p) if p.expires_at <= now_unix => Some(Hit::Expired),
            Outcome::Active(p) if now < self.fresh_until => Some(Hit::Active(p.clone())),
            Outcome::Inactive(reason) if now < self.fresh_until => Some(Hit::Inactive(*reason)),
            Outcome::Active(_) | Outcome::Inactive(_) => None,
        }
    }

    /// A positive answer that may still be served while calls fail.
    pub(super) fn stale(&self, now: Instant, now_unix: u64) -> Option<Principal> {
        match &self.outcome {
            Outcome::Active(p) if now < self.stale_until && p.expires_at > now_unix => {
                Some(p.clone())
            }
            Outcome::Active(_) | Outcome::Inactive(_) => None,
        }
    }

    /// How long the answer stays fresh after `now`.
    pub(super) fn fresh_for(&self, now: Instant) -> Duration {
        self.fresh_until.saturating_duration_since(now)
    }
}

/// One issuer's answers by token digest, with the issuer's freshness rules.
pub(super) struct AnswerCache {
    cache: quick_cache::sync::Cache<[u8; 32], Entry>,
    max_ttl: Duration,
    negative_ttl: Duration,
    serve_stale: Duration,
}

// === impl AnswerCache ===

impl AnswerCache {
    pub(super) fn new(cfg: &IntrospectionConfig) -> Self {
        AnswerCache {
            cache: quick_cache::sync::Cache::new(
                usize::try_from(cfg.cache_capacity).unwrap_or(usize::MAX),
            ),
            max_ttl: cfg.cache_max_ttl,
            negative_ttl: cfg.negative_ttl,
            serve_stale: cfg.serve_stale,
        }
    }

    /// The entry for this digest at `now`, unless it is past the time it is kept.
    pub(super) fn get(&self, digest: &[u8; 32], now: Instant) -> Option<Entry> {
        let e = self.cache.get(digest)?;
        if now < e.keep_until {
            return Some(e);
        }
        self.cache.remove(digest);
        None
    }

    pub(super) fn insert(&self, digest: [u8; 32], entry: Entry) {
        self.cache.insert(digest, entry);
    }

    /// Drops the entries past the time they are kept; returns how many are left.
    pub(super) fn len(&self) -> u64 {
        let now = Instant::now();
        self.cache.retain(|_, e| now < e.keep_until);
        self.cache.len() as u64
    }

    /// The entry for an answer received at `now`, `now_unix` in Unix seconds.
    pub(super) fn entry(&self, outcome: Outcome, now: Instant, now_unix: u64) -> Entry {
        match &outcome {
            Outcome::Active(p) => {
                let left = Duration::from_secs(p.expires_at.saturating_sub(now_unix));
                let fresh = left.min(self.max_ttl);
                let stale = (fresh + self.serve_stale).min(left);
                Entry {
                    fresh_until: now + fresh,
                    stale_until: now + stale,
                    // Past exp (when exp comes before the cache limit) the entry answers
                    // "expired" for a minute without a call.
                    keep_until: now + fresh.max(stale) + Duration::from_secs(60),
                    outcome,
                }
            }
            Outcome::Inactive(_) => Entry {
                fresh_until: now + self.negative_ttl,
                stale_until: now,
                keep_until: now + self.negative_ttl,
                outcome,
            },
        }
    }
}

/// The shared answers of one issuer.
pub(super) struct Shared {
    answers: Arc<dyn SharedAnswers>,
    issuer_id: Arc<str>,
}

// === impl Shared ===

impl Shared {
    pub(super) fn new(answers: Arc<dyn SharedAnswers>, issuer_id: Arc<str>) -> Self {
        Shared { answers, issuer_id }
    }

    /// The members of the answer another replica stored for this token, if any.
    pub(super) async fn get(&self, digest: &[u8; 32]) -> Option<Map<String, Value>> {
        let text = self.answers.get(&self.key(digest)).await?;
        match serde_json::from_str(&text) {
            Ok(Value::Object(members)) => Some(members),
            Ok(_) | Err(_) => None,
        }
    }

    /// Stores a positive answer's members (as JSON text) for the rest of its freshness.
    pub(super) async fn put(&self, digest: &[u8; 32], members: String, fresh: Duration) {
        if !fresh.is_zero() {
            self.answers.put(&self.key(digest), members, fresh).await;
        }
    }

    fn key(&self, digest: &[u8; 32]) -> String {
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("i:{}:{hex}", self.issuer_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> AnswerCache {
        AnswerCache {
            cache: quick_cache::sync::Cache::new(16),
            max_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(30),
            serve_stale: Duration::from_secs(10),
        }
    }

    fn active(expires_at: u64) -> Outcome {
        Outcome::Active(Principal::new(Arc::from("erp"), Map::new(), expires_at))
    }

    #[test]
    fn positive_answers_are_fresh_until_the_cache_limit_then_stale_for_a_while() {
        let (now, unix) = (Instant::now(), 1_000_000);
        let e = cache().entry(active(unix + 3_600), now, unix);
        let at = |s: u64| now + Duration::from_secs(s);
        assert!(matches!(e.answer(at(59), unix + 59), Some(Hit::Active(_))));
        assert!(e.answer(at(61), unix + 61).is_none());
        assert!(e.stale(at(65), unix + 65).is_some());
        assert!(e.stale(at(71), unix + 71).is_none());
        assert_eq!(e.fresh_for(now), Duration::from_secs(60));
    }

    #[test]
    fn a_token_near_its_exp_is_never_fresh_or_stale_past_it() {
        let (now, unix) = (Instant::now(), 1_000_000);
        let e = cache().entry(active(unix + 20), now, unix);
        assert_eq!(e.fresh_for(now), Duration::from_secs(20));
        let later = now + Duration::from_secs(21);
        assert!(matches!(e.answer(later, unix + 21), Some(Hit::Expired)));
        assert!(e.stale(later, unix + 21).is_none());
    }

    #[test]
    fn entries_past_their_keep_time_are_dropped_when_looked_up_or_counted() {
        let (now, unix) = (Instant::now(), 1_000_000);
        let c = cache();
        c.insert([1; 32], c.entry(active(unix + 3_600), now, unix));
        c.insert(
            [2; 32],
            c.entry(Outcome::Inactive(InvalidToken::Inactive), now, unix),
        );
        assert_eq!(c.len(), 2);
        let later = now + Duration::from_secs(31);
        assert!(c.get(&[2; 32], later).is_none(), "past the negative ttl");
        assert!(c.get(&[1; 32], later).is_some(), "kept for the cache limit");
        assert_eq!(c.len(), 1, "the negative answer is gone");
        assert!(c.get(&[1; 32], now + Duration::from_secs(131)).is_none());
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn negative_answers_are_kept_for_the_negative_ttl() {
        let (now, unix) = (Instant::now(), 1_000_000);
        let e = cache().entry(Outcome::Inactive(InvalidToken::Inactive), now, unix);
        assert!(matches!(
            e.answer(now, unix),
            Some(Hit::Inactive(InvalidToken::Inactive))
        ));
        let later = now + Duration::from_secs(31);
        assert!(e.answer(later, unix + 31).is_none());
        assert!(e.stale(now, unix).is_none());
        assert_eq!(e.keep_until, now + Duration::from_secs(30));
    }
}
