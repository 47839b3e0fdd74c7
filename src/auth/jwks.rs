//! An issuer's key set: fetched at start, refreshed in the background, re-fetched when a token
//! names an unknown `kid`, and kept when the IdP is down.
//!
//! Lookups read an `Arc` snapshot and never wait on I/O. Every fetch (background or kid miss) goes
//! through one async mutex per issuer, so fetches are single-flight: requests that miss on a `kid`
//! while a fetch is running wait for that fetch and then look again. A kid miss causes a fetch only
//! when the last attempt is older than `jwks_min_refresh`, so a flood of tokens with invented
//! `kid`s costs the IdP at most one request per window.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Mutex;
use url::Url;

use super::discovery::{self, DiscoveryError};
use super::fetch::{FetchError, IdpClient};
use super::settings::{IssuerConfig, KeySource};
use super::signature::PublicKey;
use crate::metrics::Metrics;

/// One usable verification key.
pub struct Key {
    pub kid: Option<String>,
    pub family: AlgorithmFamily,
    /// The JWK's own `alg`, when it declares one: the token's `alg` must then equal it.
    pub alg: Option<Algorithm>,
    /// The key, parsed once for every algorithm it serves.
    pub public: PublicKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// A parsed key set. Immutable; replaced whole on refresh.
#[derive(Debug)]
pub struct KeySet {
    pub keys: Vec<Key>,
    /// Increases with every successful fetch; lets a kid miss tell whether a refresh happened
    /// while it waited.
    pub generation: u64,
}

/// The result of looking a token's key up.
#[derive(Debug)]
pub enum Lookup<'a> {
    Found(&'a Key),
    /// No key with that `kid` (or, without `kid`, no key of the algorithm's type).
    Unknown,
    /// No `kid`, and several keys of the algorithm's type: the token must say which.
    Ambiguous,
}

impl KeySet {
    /// Parses a JWKS document, keeping every key that can verify signatures and skipping the rest
    /// (encryption keys, symmetric keys, unsupported types) so that one odd key does not make a
    /// whole key set unusable.
    pub fn parse(body: &[u8], generation: u64) -> Result<(KeySet, usize), String> {
        #[derive(Deserialize)]
        struct Raw {
            keys: Vec<Value>,
        }
        let raw: Raw = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
        let total = raw.keys.len();
        let keys: Vec<Key> = raw.keys.into_iter().filter_map(parse_key).collect();
        let skipped = total - keys.len();
        Ok((KeySet { keys, generation }, skipped))
    }

    /// The key for a token: by `kid`, or the only key of the algorithm's family when the token has
    /// no `kid`. A key whose declared `alg` differs from the token's is never returned.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Lookup<'_> {
        let family = family_of(alg);
        let fits = |k: &&Key| k.family == family && k.alg.is_none_or(|a| a == alg);
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .filter(fits)
                .find(|k| k.kid.as_deref() == Some(kid))
                .map_or(Lookup::Unknown, Lookup::Found),
            None => {
                let mut candidates = self.keys.iter().filter(fits);
                match (candidates.next(), candidates.next()) {
                    (Some(k), None) => Lookup::Found(k),
                    (Some(_), Some(_)) => Lookup::Ambiguous,
                    (None, _) => Lookup::Unknown,
                }
            }
        }
    }
}

fn parse_key(v: Value) -> Option<Key> {
    let obj = v.as_object()?;
    if obj
        .get("use")
        .and_then(Value::as_str)
        .is_some_and(|u| u != "sig")
    {
        return None;
    }
    let kty = obj.get("kty").and_then(Value::as_str)?;
    if !matches!(kty, "RSA" | "EC" | "OKP") {
        // Symmetric ("oct") keys are never used: a public key set must not enable HMAC tokens.
        return None;
    }
    let alg = match obj.get("alg").and_then(Value::as_str) {
        None => None,
        // A key declared for another purpose (RSA-OAEP, …) is not a signing key.
        Some(a) => Some(a.parse::<Algorithm>().ok()?),
    };
    let kid = obj.get("kid").and_then(Value::as_str).map(str::to_owned);
    let jwk: Jwk = serde_json::from_value(v).ok()?;
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
        AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
        AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed,
        _ => return None,
    };
    if alg.is_some_and(|a| family_of(a) != family) {
        return None;
    }
    let public = PublicKey::from_jwk(&jwk)?;
    Some(Key {
        kid,
        family,
        alg,
        public,
    })
}

/// The key family an algorithm needs.
pub fn family_of(alg: Algorithm) -> AlgorithmFamily {
    alg.family()
}

/// Why a refresh failed. Logged; never shown to clients.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error("JWKS at {url}: {reason}")]
    KeySet { url: String, reason: String },
}

struct RefreshState {
    /// When the last fetch attempt (of any kind) started.
    last_attempt: Option<Instant>,
    /// The JWKS URL, configured or discovered.
    jwks_uri: Option<Url>,
}

/// One issuer's keys and the machinery that keeps them fresh.
pub struct Jwks {
    issuer_id: Arc<str>,
    issuer: String,
    source: KeySource,
    allow_http: bool,
    refresh_every: Duration,
    min_refresh: Duration,
    fetch_timeout: Duration,
    client: IdpClient,
    metrics: Metrics,
    current: ArcSwapOption<KeySet>,
    generation: AtomicU64,
    /// The last fetch attempt failed: the IdP is down or answering garbage.
    failing: AtomicBool,
    state: Mutex<RefreshState>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("issuer", &self.issuer_id)
            .finish_non_exhaustive()
    }
}

impl Jwks {
    pub fn new(cfg: &IssuerConfig, source: KeySource, client: IdpClient, metrics: Metrics) -> Self {
        metrics.declare_issuer(&cfg.id);
        let jwks_uri = match &source {
            KeySource::Jwks(u) => Some(u.clone()),
            KeySource::Discovery(_) => None,
        };
        Jwks {
            issuer_id: cfg.id.clone(),
            issuer: cfg.issuer.clone(),
            source,
            allow_http: cfg.allow_http,
            refresh_every: cfg.jwks_refresh,
            min_refresh: cfg.jwks_min_refresh,
            fetch_timeout: cfg.fetch_timeout,
            client,
            metrics,
            current: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            state: Mutex::new(RefreshState {
                last_attempt: None,
                jwks_uri,
            }),
        }
    }

    /// True when this key set serves `cfg` unchanged (a reload keeps it, keys and all).
    pub fn serves(&self, cfg: &IssuerConfig) -> bool {
        cfg.keys.as_ref() == Some(&self.source)
            && *cfg.id == *self.issuer_id
            && cfg.issuer == self.issuer
            && cfg.allow_http == self.allow_http
            && cfg.jwks_refresh == self.refresh_every
            && cfg.jwks_min_refresh == self.min_refresh
            && cfg.fetch_timeout == self.fetch_timeout
    }

    /// The current key set; `None` until the first successful fetch.
    pub fn snapshot(&self) -> Option<Arc<KeySet>> {
        self.current.load_full()
    }

    pub fn is_ready(&self) -> bool {
        self.current.load().is_some()
    }

    /// The last attempt to fetch the key set failed. A `kid` still unknown then may belong to a
    /// key the IdP published while it could not be reached: the token may well be valid.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// Seconds until a kid-miss may fetch again, for a `Retry-After` (at least 1).
    pub fn retry_after(&self) -> u64 {
        self.min_refresh.as_secs().clamp(1, 30)
    }

    /// Called after a lookup found no key. Fetches again unless another fetch completed since
    /// `seen_generation` or the last attempt is younger than `jwks_min_refresh`; concurrent
    /// callers queue on the same lock and so share one fetch.
    pub async fn refresh_for_unknown_kid(&self, seen_generation: u64) {
        let mut state = self.state.lock().await;
        if self.generation.load(Ordering::Acquire) != seen_generation {
            return;
        }
        if state
            .last_attempt
            .is_some_and(|t| t.elapsed() < self.min_refresh)
        {
            return;
        }
        let _ = self.fetch_locked(&mut state).await;
    }

    /// `tollgate check --online`: fetches the key set (and the discovery document first, when
    /// configured so) once.
    pub async fn probe(&self) -> Result<String, String> {
        self.refresh()
            .await
            .map_err(|e| crate::net::redact_error(&e))?;
        let keys = self.snapshot().map_or(0, |s| s.keys.len());
        Ok(format!("{keys} usable key(s)"))
    }

    /// Fetches now (start-up and background refresh). Returns the server's max-age on success.
    pub async fn refresh(&self) -> Result<Option<Duration>, JwksError> {
        let mut state = self.state.lock().await;
        self.fetch_locked(&mut state).await
    }

    async fn fetch_locked(&self, state: &mut RefreshState) -> Result<Option<Duration>, JwksError> {
        let started = Instant::now();
        state.last_attempt = Some(started);
        let result = self.fetch(state).await;
        self.metrics
            .observe_jwks_fetch(&self.issuer_id, started.elapsed().as_secs_f64());
        self.failing.store(result.is_err(), Ordering::Release);
        match &result {
            Ok(_) => {}
            Err(e) => {
                self.metrics.jwks_failed(&self.issuer_id);
                tracing::warn!(issuer = %self.issuer_id, error = %e, "JWKS refresh failed; the last good key set (if any) stays in use");
                if matches!(self.source, KeySource::Discovery(_)) {
                    // Discover again next time: the IdP may have moved its key set.
                    state.jwks_uri = None;
                }
            }
        }
        result
    }

    async fn fetch(&self, state: &mut RefreshState) -> Result<Option<Duration>, JwksError> {
        let jwks_uri = match (&state.jwks_uri, &self.source) {
            (Some(u), _) => u.clone(),
            (None, KeySource::Discovery(url)) => {
                let u = self.discover(url).await?;
                state.jwks_uri = Some(u.clone());
                u
            }
            (None, KeySource::Jwks(u)) => u.clone(),
        };
        let fetched = self
            .client
            .get("jwks fetch", &jwks_uri, self.fetch_timeout)
            .await?;
        self.install(&jwks_uri, &fetched.body)?;
        Ok(fetched.max_age)
    }

    /// Loads a key set that came by other means than a fetch (the fuzz targets' fixed keys),
    /// counted as a fetch attempt: a kid miss then waits `jwks_min_refresh` before it fetches.
    pub(crate) async fn preload(&self, body: &[u8]) -> Result<(), JwksError> {
        let mut state = self.state.lock().await;
        state.last_attempt = Some(Instant::now());
        let url = match (&state.jwks_uri, &self.source) {
            (Some(u), _) | (None, KeySource::Jwks(u) | KeySource::Discovery(u)) => u.clone(),
        };
        self.install(&url, body)
    }

    /// Parses a fetched JWKS document and makes it the current key set.
    fn install(&self, jwks_uri: &Url, body: &[u8]) -> Result<(), JwksError> {
        let generation = self.generation.load(Ordering::Acquire) + 1;
        let (set, skipped) =
            KeySet::parse(body, generation).map_err(|reason| JwksError::KeySet {
                url: jwks_uri.to_string(),
                reason,
            })?;
        if set.keys.is_empty() {
            return Err(JwksError::KeySet {
                url: jwks_uri.to_string(),
                reason: format!("no usable signing key ({skipped} skipped)"),
            });
        }
        let count = set.keys.len();
        self.current.store(Some(Arc::new(set)));
        self.generation.store(generation, Ordering::Release);
        self.metrics
            .jwks_refreshed(&self.issuer_id, count, crate::clock::unix_secs_f64());
        tracing::info!(issuer = %self.issuer_id, keys = count, skipped, "JWKS loaded");
        Ok(())
    }

    async fn discover(&self, url: &Url) -> Result<Url, JwksError> {
        let md = discovery::fetch(
            &self.client,
            url,
            &self.issuer,
            self.allow_http,
            self.fetch_timeout,
        )
        .await?;
        md.jwks_uri.ok_or_else(|| JwksError::KeySet {
            url: url.to_string(),
            reason: "the discovery document has no jwks_uri".to_owned(),
        })
    }

    /// The generation a kid-miss saw, for [`Jwks::refresh_for_unknown_kid`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keeps the key set fresh until the returned task is aborted: the first fetch at once, then
    /// every `jwks_refresh` (or the server's shorter max-age, but never more often than
    /// `jwks_min_refresh`); after a failure, retries back off from 1 s to `jwks_min_refresh`.
    pub fn spawn_refresh(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut backoff = Duration::from_secs(1);
            if self.is_ready() {
                // Fetched already (a reload's prefetch): the next refresh is due later.
                tokio::time::sleep(self.refresh_every.max(self.min_refresh)).await;
            }
            loop {
                let wait = match self.refresh().await {
                    Ok(max_age) => {
                        backoff = Duration::from_secs(1);
                        let every =
                            max_age.map_or(self.refresh_every, |a| a.min(self.refresh_every));
                        every.max(self.min_refresh).max(Duration::from_secs(1))
                    }
                    Err(_) => {
                        let wait = backoff;
                        backoff = (backoff * 2).min(self.min_refresh.max(Duration::from_secs(1)));
                        wait
                    }
                };
                tokio::time::sleep(wait).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rsa_jwk(kid: &str) -> Value {
        // A syntactically valid RSA public key (n and e from RFC 7517 appendix A.1).
        json!({
            "kty": "RSA", "kid": kid, "use": "sig",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB"
        })
    }

    #[test]
    fn parses_and_skips_unusable_keys() {
        let body = json!({"keys": [
            rsa_jwk("a"),
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "RSA", "use": "enc", "kid": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "alg": "RSA-OAEP", "kid": "oaep", "n": "AQAB", "e": "AQAB"},
            {"kty": "weird"},
            "not an object",
        ]});
        let (set, skipped) = KeySet::parse(body.to_string().as_bytes(), 1).unwrap();
        assert_eq!(set.keys.len(), 1);
        assert_eq!(skipped, 5);
    }

    #[test]
    fn lookup_by_kid_and_family() {
        let body = json!({"keys": [rsa_jwk("a"), rsa_jwk("b")]});
        let (set, _) = KeySet::parse(body.to_string().as_bytes(), 1).unwrap();
        assert!(
            matches!(set.find(Some("a"), Algorithm::RS256), Lookup::Found(k) if k.kid.as_deref() == Some("a"))
        );
        assert!(matches!(
            set.find(Some("zz"), Algorithm::RS256),
            Lookup::Unknown
        ));
        // The right kid with an algorithm of another family is not a match (no RSA/EC mix-up).
        assert!(matches!(
            set.find(Some("a"), Algorithm::ES256),
            Lookup::Unknown
        ));
        assert!(matches!(
            set.find(None, Algorithm::RS256),
            Lookup::Ambiguous
        ));
    }

    #[test]
    fn lookup_without_kid_takes_the_only_key() {
        let body = json!({"keys": [rsa_jwk("only")]});
        let (set, _) = KeySet::parse(body.to_string().as_bytes(), 1).unwrap();
        assert!(matches!(set.find(None, Algorithm::PS256), Lookup::Found(_)));
    }

    #[test]
    fn declared_alg_must_equal_the_tokens() {
        let mut k = rsa_jwk("a");
        k["alg"] = json!("RS256");
        let (set, _) = KeySet::parse(json!({"keys": [k]}).to_string().as_bytes(), 1).unwrap();
        assert!(matches!(
            set.find(Some("a"), Algorithm::RS256),
            Lookup::Found(_)
        ));
        assert!(matches!(
            set.find(Some("a"), Algorithm::PS256),
            Lookup::Unknown
        ));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(KeySet::parse(b"<html>", 1).is_err());
        assert!(KeySet::parse(b"{}", 1).is_err());
    }
}
