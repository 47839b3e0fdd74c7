//! RFC 7662 token introspection: the second way to validate a token, for opaque tokens (and for
//! JWTs when an operator wants revocation to count).
//!
//! Per issuer, one [`Introspector`] ties together:
//!
//! | module    | concern                                                                          |
//! |-----------|----------------------------------------------------------------------------------|
//! | `cache`   | answers by token digest with their freshness; the fleet-shared answers hook      |
//! | `client`  | the endpoint (configured or discovered) and the call with client authentication  |
//! | `answer`  | an RFC 7662 answer checked against the issuer and read into a [`Principal`]      |
//! | `breaker` | failing fast after repeated failures, one probe at a time to recover             |
//!
//! and adds:
//! - **Coalescing**: concurrent requests for the same uncached token share one call.
//! - **Outage policy**: a failed call (timeout, refused, 5xx, a body that is not the RFC's JSON)
//!   is a 503 with `Retry-After`, never a 401. With `serve_stale > 0`, a positive answer that
//!   went stale less than `serve_stale` ago (and never past the token's `exp`) keeps serving.

mod answer;
mod breaker;
mod cache;
mod client;

pub use answer::{interpret, Outcome};
pub use cache::SharedAnswers;
pub(crate) use client::read_answer;
pub use client::{client_assertion, CallError};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::OnceCell;

use super::fetch::IdpClient;
use super::principal::Kept;
use super::settings::{IntrospectionConfig, IssuerConfig};
use super::{AuthError, InvalidToken, Principal};
use crate::clock::unix_secs;
use crate::metrics::{CacheResult, IntrospectionResult, Metrics};
use breaker::Breaker;
use cache::{AnswerCache, Entry, Hit, Shared};
use client::IntrospectionClient;

type Flight = Arc<OnceCell<Result<Outcome, CallError>>>;

/// One issuer's introspection client, cache and breaker.
pub struct Introspector {
    issuer_id: Arc<str>,
    issuer: String,
    audiences: Vec<String>,
    leeway: u64,
    client: IntrospectionClient,
    metrics: Metrics,
    cache: AnswerCache,
    inflight: Mutex<HashMap<[u8; 32], Flight>>,
    breaker: Breaker,
    shared: Option<Shared>,
    /// What of a principal the configuration reads: an active answer is compacted to it before
    /// it is cached, as a verified JWT is (and its subject's log tag is computed once).
    kept: Option<Arc<Kept>>,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("issuer", &self.issuer_id)
            .finish_non_exhaustive()
    }
}

// === impl Introspector ===

impl Introspector {
    pub fn new(
        issuer: &IssuerConfig,
        cfg: IntrospectionConfig,
        client: IdpClient,
        metrics: Metrics,
    ) -> Self {
        metrics.declare_introspection(&issuer.id);
        Introspector {
            issuer_id: issuer.id.clone(),
            issuer: issuer.issuer.clone(),
            audiences: issuer.audiences.clone(),
            leeway: issuer.leeway.as_secs(),
            client: IntrospectionClient::new(issuer, &cfg, client),
            breaker: Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown, cfg.timeout),
            cache: AnswerCache::new(&cfg),
            metrics,
            inflight: Mutex::new(HashMap::new()),
            shared: None,
            kept: None,
        }
    }

    /// Compacts active answers to what the configuration reads before they are cached.
    pub fn with_kept(mut self, kept: Arc<Kept>) -> Self {
        self.kept = Some(kept);
        self
    }

    /// Shares positive answers with the other replicas.
    pub fn with_shared(mut self, shared: Option<Arc<dyn SharedAnswers>>) -> Self {
        self.shared = shared.map(|answers| Shared::new(answers, self.issuer_id.clone()));
        self
    }

    /// Reads one answer (from the server or another replica) against this issuer, as of now.
    fn interpret(&self, members: Map<String, Value>) -> Outcome {
        let outcome = interpret(
            members,
            &self.issuer_id,
            &self.issuer,
            &self.audiences,
            self.leeway,
            unix_secs(),
        );
        match (outcome, &self.kept) {
            (Outcome::Active(p), Some(kept)) => Outcome::Active(kept.keep(p)),
            (outcome, _) => outcome,
        }
    }

    pub fn issuer_id(&self) -> &Arc<str> {
        &self.issuer_id
    }

    /// Ready once the endpoint is known (configured, or found through discovery).
    pub fn is_ready(&self) -> bool {
        self.client.knows_endpoint()
    }

    pub fn cached_entries(&self) -> u64 {
        self.cache.len()
    }

    /// Finds the endpoint through discovery until it is known (start-up; a no-op when configured).
    pub fn spawn_resolve(self: Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        if self.is_ready() {
            return None;
        }
        Some(tokio::spawn(async move {
            let mut backoff = Duration::from_secs(1);
            while self.client.resolve().await.is_err() {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }))
    }

    /// `tollgate check --online`: finds the endpoint (discovery, when configured so) and makes
    /// one call with the configured client authentication for a token no server issued. A
    /// well-formed answer (it says inactive) passes; anything else fails, with the reason.
    pub async fn probe(&self) -> Result<String, String> {
        self.client
            .resolve()
            .await
            .map_err(|e| format!("introspection endpoint: {}", crate::net::redact_error(&e)))?;
        let token = format!("tollgate-check-{:032x}", rand::random::<u128>());
        let digest: [u8; 32] = {
            use sha2::Digest as _;
            sha2::Sha256::digest(token.as_bytes()).into()
        };
        match self.introspect_once(&token, digest).await {
            Ok(Outcome::Inactive(_)) => {
                Ok("the endpoint answered (an invalid token is inactive)".to_owned())
            }
            Ok(Outcome::Active(_)) => Err("the endpoint says a made-up token is active".to_owned()),
            Err(e) => Err(format!(
                "introspection call failed: {}",
                crate::net::redact_error(&e)
            )),
        }
    }

    /// Validates a token by introspection (from the cache when possible).
    pub async fn verify(&self, token: &str, digest: [u8; 32]) -> Result<Principal, AuthError> {
        // One look at the cache: its answer when it has one, else the entry that may still
        // serve stale if the call fails.
        let now = Instant::now();
        let cached = self.cache.get(&digest, now);
        if let Some(answer) = cached.as_ref().and_then(|e| self.hit(e, now)) {
            return answer;
        }
        match self.introspect_once(token, digest).await {
            Ok(outcome) => {
                self.metrics.token_cache("introspection", CacheResult::Miss);
                match outcome {
                    Outcome::Active(p) => Ok(p),
                    Outcome::Inactive(reason) => Err(reason.into()),
                }
            }
            Err(err) => {
                if let Some(p) = cached
                    .as_ref()
                    .and_then(|e| e.stale(Instant::now(), unix_secs()))
                {
                    self.metrics
                        .token_cache("introspection", CacheResult::StaleHit);
                    return Ok(p);
                }
                self.metrics.token_cache("introspection", CacheResult::Miss);
                let retry_after = match err {
                    CallError::BreakerOpen { retry_after } => retry_after,
                    _ => 5,
                };
                Err(AuthError::IdpUnavailable {
                    issuer: self.issuer_id.clone(),
                    retry_after,
                    what: crate::auth::Unreachable::Introspection,
                })
            }
        }
    }

    /// The cached answer for the token with this digest, if the cache can answer now (counted
    /// as a hit); `None` when the endpoint must be asked. Synchronous, so that a cached token
    /// costs no future.
    pub fn cached(&self, digest: &[u8; 32]) -> Option<Result<Principal, AuthError>> {
        let now = Instant::now();
        self.hit(&self.cache.get(digest, now)?, now)
    }

    /// What a cached entry answers at `now`, counted as a hit; `None` when it no longer may.
    fn hit(&self, entry: &Entry, now: Instant) -> Option<Result<Principal, AuthError>> {
        match entry.answer(now, unix_secs())? {
            Hit::Expired => {
                self.metrics.token_cache("introspection", CacheResult::Hit);
                Some(Err(InvalidToken::Expired.into()))
            }
            Hit::Active(p) => {
                self.metrics.token_cache("introspection", CacheResult::Hit);
                Some(Ok(p))
            }
            Hit::Inactive(reason) => {
                self.metrics
                    .token_cache("introspection", CacheResult::NegativeHit);
                Some(Err(reason.into()))
            }
        }
    }

    /// One call per token at a time: concurrent requests for the same digest await the same
    /// flight. The answer is cached before the flight ends, so later requests hit the cache.
    async fn introspect_once(&self, token: &str, digest: [u8; 32]) -> Result<Outcome, CallError> {
        let flight = {
            let mut m = self
                .inflight
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            m.entry(digest).or_default().clone()
        };
        let result = flight
            .get_or_init(|| self.call_and_cache(token, digest))
            .await
            .clone();
        let mut m = self
            .inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if m.get(&digest).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
            m.remove(&digest);
        }
        result
    }

    async fn call_and_cache(&self, token: &str, digest: [u8; 32]) -> Result<Outcome, CallError> {
        // Another replica may have asked already.
        if let Some(shared) = &self.shared {
            if let Some(members) = shared.get(&digest).await {
                let outcome = self.interpret(members);
                if let Outcome::Active(_) = &outcome {
                    let entry = self
                        .cache
                        .entry(outcome.clone(), Instant::now(), unix_secs());
                    self.cache.insert(digest, entry);
                    return Ok(outcome);
                }
            }
        }
        let probe = self
            .breaker
            .admit()
            .map_err(|retry_after| CallError::BreakerOpen { retry_after })?;
        let start = Instant::now();
        let result = self.client.call(token).await;
        let elapsed = start.elapsed().as_secs_f64();
        match result {
            Ok(members) => {
                self.breaker.success(&self.metrics, &self.issuer_id);
                let shared_text = self
                    .shared
                    .as_ref()
                    .map(|_| Value::Object(members.clone()).to_string());
                let outcome = self.interpret(members);
                let label = match outcome {
                    Outcome::Active(_) => IntrospectionResult::Active,
                    Outcome::Inactive(_) => IntrospectionResult::Inactive,
                };
                self.metrics
                    .introspection_call(&self.issuer_id, label, elapsed);
                let entry = self
                    .cache
                    .entry(outcome.clone(), Instant::now(), unix_secs());
                if let (Some(shared), Some(text), Outcome::Active(_)) =
                    (&self.shared, shared_text, &outcome)
                {
                    shared
                        .put(&digest, text, entry.fresh_for(Instant::now()))
                        .await;
                }
                self.cache.insert(digest, entry);
                Ok(outcome)
            }
            Err(e) => {
                self.breaker.failure(probe, &self.metrics, &self.issuer_id);
                self.metrics.introspection_call(
                    &self.issuer_id,
                    IntrospectionResult::Error,
                    elapsed,
                );
                tracing::warn!(issuer = %self.issuer_id, error = %e, "introspection failed");
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::principal::SubjectLogging;

    fn introspector(kept: Option<Kept>) -> Introspector {
        let cfg = crate::config::from_toml_str(
            r#"
[[issuer]]
id = "erp"
issuer = "https://erp.example.com/identity"
validation = "introspection"
audiences = ["api"]
[issuer.introspection]
endpoint = "https://erp.example.com/identity/introspect"
client_id = "gw"
client_secret = "s"

[[upstream]]
id = "erp"
url = "http://127.0.0.1:8081"

[[route]]
id = "r"
prefix = "/"
upstream = "erp"
scopes = ["api"]
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let issuer = cfg.issuers[0].clone();
        let i = issuer.introspection.clone().unwrap();
        let x = Introspector::new(&issuer, i, IdpClient::new(), Metrics::new().unwrap());
        match kept {
            Some(k) => x.with_kept(Arc::new(k)),
            None => x,
        }
    }

    fn answer() -> Map<String, Value> {
        let exp = unix_secs() + 600;
        serde_json::json!({
            "active": true, "iss": "https://erp.example.com/identity", "sub": "alice",
            "client_id": "app", "aud": "api", "scope": "api other", "exp": exp, "tenant": "t1", "email": "a@x"
        })
        .as_object()
        .unwrap()
        .clone()
    }

    #[test]
    fn an_active_answer_is_kept_to_what_the_configuration_reads() {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &[3u8; 32]);
        let logging = SubjectLogging::Hashed(Arc::new(key));
        let kept = Kept::new(["api"], ["tenant"], false).with_logging(logging.clone());
        let Outcome::Active(p) = introspector(Some(kept)).interpret(answer()) else {
            panic!("active");
        };
        assert_eq!(p.claims.len(), 1, "only the claim a route reads");
        assert_eq!(p.claims.get("tenant"), Some(&Value::from("t1")));
        assert_eq!(p.subject(), None, "no session derives from the subject");
        assert_eq!(p.client_id(), Some("app"));
        let Outcome::Active(full) = introspector(None).interpret(answer()) else {
            panic!("active");
        };
        assert_eq!(
            p.logged_subject(&logging),
            full.logged_subject(&logging),
            "the log shows the same subject tag, computed once"
        );
        assert!(full.claims.len() > 5, "without it, every member");
    }
}
