//! RFC 7662 token introspection: the second way to validate a token, for opaque tokens (and for
//! JWTs when an operator wants revocation to count).
//!
//! Per issuer:
//! - **Cache** (moka, bounded), keyed by the SHA-256 digest of the token, never the token. A
//!   positive answer is fresh for `min(exp - now, cache_max_ttl)`; an `active: false` answer for
//!   `negative_ttl`. After the token's `exp` the entry still answers "expired" without a call.
//!   Errors are never cached.
//! - **Coalescing**: concurrent requests for the same uncached token share one call.
//! - **Outage policy**: a failed call (timeout, refused, 5xx, a body that is not the RFC's JSON)
//!   is a 503 with `Retry-After`, never a 401. With `serve_stale > 0`, a positive answer that
//!   went stale less than `serve_stale` ago (and never past the token's `exp`) keeps serving.
//! - **Breaker**: after `breaker_failures` consecutive failures, calls fail fast for
//!   `breaker_cooldown`; then one probe at a time decides whether it closes again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::HeaderValue;
use jsonwebtoken::Header;
use serde_json::{json, Map, Value};
use tokio::sync::OnceCell;
use url::Url;

use super::fetch::{FetchError, IdpClient};
use super::settings::{ClientAuth, IntrospectionConfig, IssuerConfig};
use super::{discovery, AuthError, InvalidToken, Principal};
use crate::clock::unix_secs;
use crate::metrics::{CacheResult, IntrospectionResult, Metrics};

/// What the introspection endpoint said about a token (after tollgate's own checks).
#[derive(Debug, Clone)]
pub enum Outcome {
    Active(Arc<Principal>),
    Inactive(InvalidToken),
}

/// Why a call produced no answer. Logged; the client sees 503.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("introspection endpoint unknown: {0}")]
    NoEndpoint(String),
    #[error("introspection call failed: {0}")]
    Fetch(String),
    #[error("introspection answer is not RFC 7662 JSON: {0}")]
    Malformed(String),
    #[error("introspection breaker open")]
    BreakerOpen { retry_after: u64 },
    #[error("cannot sign the client assertion: {0}")]
    Assertion(String),
}

struct Entry {
    outcome: Outcome,
    fresh_until: Instant,
    /// Until when a positive answer may be served while calls fail.
    stale_until: Instant,
    /// How long moka keeps the entry.
    keep: Duration,
}

struct KeepFor;

impl moka::Expiry<[u8; 32], Arc<Entry>> for KeepFor {
    fn expire_after_create(&self, _: &[u8; 32], e: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(e.keep)
    }
}

type Flight = Arc<OnceCell<Result<Outcome, CallError>>>;

/// Positive introspection answers shared between replicas through a shared store, keyed by
/// issuer and token digest (never the token).
#[async_trait::async_trait]
pub trait SharedAnswers: Send + Sync {
    /// The members of a shared answer, if one is stored.
    async fn get(&self, key: &str) -> Option<String>;
    /// Stores the members of a positive answer for `ttl`.
    async fn put(&self, key: &str, members: String, ttl: Duration);
}

/// One issuer's introspection client, cache and breaker.
pub struct Introspector {
    issuer_id: Arc<str>,
    issuer: String,
    audiences: Vec<String>,
    leeway: u64,
    cfg: IntrospectionConfig,
    discovery: Option<Url>,
    allow_http: bool,
    fetch_timeout: Duration,
    client: IdpClient,
    metrics: Metrics,
    endpoint: ArcSwapOption<Url>,
    resolving: tokio::sync::Mutex<()>,
    cache: moka::sync::Cache<[u8; 32], Arc<Entry>>,
    inflight: Mutex<HashMap<[u8; 32], Flight>>,
    breaker: Breaker,
    shared: Option<Arc<dyn SharedAnswers>>,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("issuer", &self.issuer_id)
            .finish_non_exhaustive()
    }
}

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
            endpoint: ArcSwapOption::new(cfg.endpoint.clone().map(Arc::new)),
            breaker: Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown, cfg.timeout),
            cache: moka::sync::Cache::builder()
                .max_capacity(cfg.cache_capacity)
                .expire_after(KeepFor)
                .build(),
            cfg,
            discovery: issuer.discovery.clone(),
            allow_http: issuer.allow_http,
            fetch_timeout: issuer.fetch_timeout,
            client,
            metrics,
            resolving: tokio::sync::Mutex::new(()),
            inflight: Mutex::new(HashMap::new()),
            shared: None,
        }
    }

    /// Shares positive answers with the other replicas.
    pub fn with_shared(mut self, shared: Option<Arc<dyn SharedAnswers>>) -> Self {
        self.shared = shared;
        self
    }

    /// Reads one answer (from the server or another replica) against this issuer, as of now.
    fn interpret(&self, members: serde_json::Map<String, Value>) -> Outcome {
        interpret(
            members,
            &self.issuer_id,
            &self.issuer,
            &self.audiences,
            self.leeway,
            unix_secs(),
        )
    }

    fn shared_key(&self, digest: &[u8; 32]) -> String {
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("i:{}:{hex}", self.issuer_id)
    }

    pub fn issuer_id(&self) -> &Arc<str> {
        &self.issuer_id
    }

    /// Ready once the endpoint is known (configured, or found through discovery).
    pub fn is_ready(&self) -> bool {
        self.endpoint.load().is_some()
    }

    pub fn cached_entries(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// Finds the endpoint through discovery until it is known (start-up; a no-op when configured).
    pub fn spawn_resolve(self: Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        if self.is_ready() {
            return None;
        }
        Some(tokio::spawn(async move {
            let mut backoff = Duration::from_secs(1);
            while self.resolve().await.is_err() {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }))
    }

    async fn resolve(&self) -> Result<Arc<Url>, CallError> {
        if let Some(u) = self.endpoint.load_full() {
            return Ok(u);
        }
        let _guard = self.resolving.lock().await;
        if let Some(u) = self.endpoint.load_full() {
            return Ok(u);
        }
        let Some(doc) = &self.discovery else {
            return Err(CallError::NoEndpoint(
                "no endpoint and no discovery".to_owned(),
            ));
        };
        let md = discovery::fetch(&self.client, doc, &self.issuer, self.allow_http, self.fetch_timeout)
            .await
            .map_err(|e| {
                tracing::warn!(issuer = %self.issuer_id, error = %e, "introspection endpoint discovery failed");
                CallError::NoEndpoint(e.to_string())
            })?;
        let url = Arc::new(md.introspection_endpoint.ok_or_else(|| {
            CallError::NoEndpoint("the discovery document has no introspection_endpoint".to_owned())
        })?);
        tracing::info!(issuer = %self.issuer_id, endpoint = %url, "introspection endpoint discovered");
        self.endpoint.store(Some(url.clone()));
        Ok(url)
    }

    /// Validates a token by introspection (from the cache when possible).
    pub async fn verify(&self, token: &str, digest: [u8; 32]) -> Result<Arc<Principal>, AuthError> {
        let cached = self.cache.get(&digest);
        if let Some(e) = &cached {
            let now = Instant::now();
            match &e.outcome {
                Outcome::Active(p) if p.expires_at <= unix_secs() => {
                    self.metrics.token_cache("introspection", CacheResult::Hit);
                    return Err(InvalidToken::Expired.into());
                }
                Outcome::Active(p) if now < e.fresh_until => {
                    self.metrics.token_cache("introspection", CacheResult::Hit);
                    return Ok(p.clone());
                }
                Outcome::Inactive(reason) if now < e.fresh_until => {
                    self.metrics
                        .token_cache("introspection", CacheResult::NegativeHit);
                    return Err((*reason).into());
                }
                Outcome::Active(_) | Outcome::Inactive(_) => {}
            }
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
                if let Some(p) = cached.as_ref().and_then(|e| self.stale(e)) {
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
                })
            }
        }
    }

    /// A positive answer that may still be served while calls fail.
    fn stale(&self, e: &Entry) -> Option<Arc<Principal>> {
        match &e.outcome {
            Outcome::Active(p) if Instant::now() < e.stale_until && p.expires_at > unix_secs() => {
                Some(p.clone())
            }
            Outcome::Active(_) | Outcome::Inactive(_) => None,
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
            let text = shared.get(&self.shared_key(&digest)).await;
            if let Some(Value::Object(members)) = text.and_then(|t| serde_json::from_str(&t).ok()) {
                let outcome = self.interpret(members);
                if let Outcome::Active(_) = &outcome {
                    self.cache
                        .insert(digest, Arc::new(self.entry(outcome.clone())));
                    return Ok(outcome);
                }
            }
        }
        let probe = self
            .breaker
            .admit()
            .map_err(|retry_after| CallError::BreakerOpen { retry_after })?;
        let start = Instant::now();
        let result = self.call(token).await;
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
                let entry = self.entry(outcome.clone());
                if let (Some(shared), Some(text), Outcome::Active(_)) =
                    (&self.shared, shared_text, &outcome)
                {
                    let fresh = entry.fresh_until.saturating_duration_since(Instant::now());
                    if !fresh.is_zero() {
                        shared.put(&self.shared_key(&digest), text, fresh).await;
                    }
                }
                self.cache.insert(digest, Arc::new(entry));
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

    fn entry(&self, outcome: Outcome) -> Entry {
        let now = Instant::now();
        match &outcome {
            Outcome::Active(p) => {
                let left = Duration::from_secs(p.expires_at.saturating_sub(unix_secs()));
                let fresh = left.min(self.cfg.cache_max_ttl);
                let stale = (fresh + self.cfg.serve_stale).min(left);
                Entry {
                    fresh_until: now + fresh,
                    stale_until: now + stale,
                    // Past exp (when exp comes before the cache limit) the entry answers
                    // "expired" for a minute without a call.
                    keep: fresh.max(stale) + Duration::from_secs(60),
                    outcome,
                }
            }
            Outcome::Inactive(_) => Entry {
                fresh_until: now + self.cfg.negative_ttl,
                stale_until: now,
                keep: self.cfg.negative_ttl,
                outcome,
            },
        }
    }

    /// The HTTP exchange: `POST` form `token=…&token_type_hint=access_token` with client
    /// authentication, expecting 200 and a JSON object with a boolean `active`.
    async fn call(&self, token: &str) -> Result<Map<String, Value>, CallError> {
        let endpoint = self.resolve().await?;
        let (form, authorization) = self.request_body(token, &endpoint)?;
        let fetched = self
            .client
            .post_form(&endpoint, form, authorization, self.cfg.timeout)
            .await
            .map_err(|e| match e {
                FetchError::Status { status, .. } if status.as_u16() == 401 => {
                    tracing::error!(issuer = %self.issuer_id, "the introspection endpoint refused tollgate's client authentication");
                    CallError::Fetch(e.to_string())
                }
                other => CallError::Fetch(other.to_string()),
            })?;
        let value: Value = serde_json::from_slice(&fetched.body)
            .map_err(|e| CallError::Malformed(e.to_string()))?;
        match value {
            Value::Object(m) if m.get("active").is_some_and(Value::is_boolean) => Ok(m),
            _ => Err(CallError::Malformed(
                "no boolean `active` member".to_owned(),
            )),
        }
    }
}

impl Introspector {
    /// The form body and `Authorization` header of one call, with the configured client
    /// authentication.
    fn request_body(
        &self,
        token: &str,
        endpoint: &Url,
    ) -> Result<(String, Option<HeaderValue>), CallError> {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("token", token);
        form.append_pair("token_type_hint", "access_token");
        let mut authorization = None;
        match &self.cfg.auth {
            ClientAuth::Basic(secret) => {
                authorization = Some(basic(&self.cfg.client_id, secret.expose()));
            }
            ClientAuth::Post(secret) => {
                form.append_pair("client_id", &self.cfg.client_id);
                form.append_pair("client_secret", secret.expose());
            }
            ClientAuth::PrivateKeyJwt { key, alg, kid } => {
                let assertion = client_assertion(
                    &self.cfg.client_id,
                    endpoint.as_str(),
                    key,
                    *alg,
                    kid.as_deref(),
                )?;
                form.append_pair("client_id", &self.cfg.client_id);
                form.append_pair(
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                );
                form.append_pair("client_assertion", &assertion);
            }
        }
        Ok((form.finish(), authorization))
    }
}

/// `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1).
fn basic(id: &str, secret: &str) -> HeaderValue {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let value = format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
    );
    let mut v = HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    v.set_sensitive(true);
    v
}

/// An RFC 7523 client assertion: iss = sub = client_id, aud = the endpoint, 60 s lifetime,
/// a unique jti.
pub fn client_assertion(
    client_id: &str,
    audience: &str,
    key: &jsonwebtoken::EncodingKey,
    alg: jsonwebtoken::Algorithm,
    kid: Option<&str>,
) -> Result<String, CallError> {
    let now = unix_secs();
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let claims = json!({
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": now,
        "exp": now + 60,
        "jti": format!("{:032x}", rand::random::<u128>()),
    });
    jsonwebtoken::encode(&header, &claims, key).map_err(|e| CallError::Assertion(e.to_string()))
}

/// Turns an RFC 7662 answer into an outcome: `active: false`, a past `exp`, a future `nbf`, or an
/// `iss`/`aud` that does not match the issuer's configuration are all "inactive". Claims for
/// policy and identity headers are the other members; scopes come from `scope`.
pub fn interpret(
    mut members: Map<String, Value>,
    issuer_id: &Arc<str>,
    issuer: &str,
    audiences: &[String],
    leeway: u64,
    now: u64,
) -> Outcome {
    if members.remove("active") != Some(Value::Bool(true)) {
        return Outcome::Inactive(InvalidToken::Inactive);
    }
    let exp = members.get("exp").and_then(Value::as_f64).map(|e| e as u64);
    if exp.is_some_and(|e| e <= now) {
        return Outcome::Inactive(InvalidToken::Expired);
    }
    if members
        .get("nbf")
        .and_then(Value::as_f64)
        .is_some_and(|nbf| nbf > (now + leeway) as f64)
    {
        return Outcome::Inactive(InvalidToken::NotYetValid);
    }
    if let Some(iss) = members.get("iss") {
        if iss.as_str() != Some(issuer) {
            return Outcome::Inactive(InvalidToken::UnknownIssuer);
        }
    }
    if let Some(aud) = members.get("aud") {
        let ok = match aud {
            Value::String(a) => audiences.iter().any(|x| x == a),
            Value::Array(list) => list
                .iter()
                .filter_map(Value::as_str)
                .any(|a| audiences.iter().any(|x| x == a)),
            _ => false,
        };
        if !ok {
            return Outcome::Inactive(InvalidToken::WrongAudience);
        }
    }
    // Without exp, the answer counts until the cache's own limit (cache_max_ttl) ends it.
    let expires_at = exp.unwrap_or(u64::MAX);
    Outcome::Active(Arc::new(Principal::new(
        issuer_id.clone(),
        members,
        expires_at,
    )))
}

// === breaker ===

#[derive(Debug)]
enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is in flight since this instant.
    HalfOpen {
        since: Instant,
    },
}

/// Fails calls fast after repeated failures; one probe at a time closes it again.
struct Breaker {
    state: Mutex<BreakerState>,
    threshold: u32,
    cooldown: Duration,
    /// A probe that never reports (its request was dropped) is given up after this.
    probe_timeout: Duration,
}

/// Whether an admitted call is the half-open probe.
#[derive(Debug, Clone, Copy)]
struct Admitted {
    probe: bool,
}

impl Breaker {
    fn new(threshold: u32, cooldown: Duration, call_timeout: Duration) -> Self {
        Breaker {
            state: Mutex::new(BreakerState::Closed { failures: 0 }),
            threshold,
            cooldown,
            probe_timeout: call_timeout + Duration::from_secs(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits a call, or says how many seconds until the next probe may run.
    fn admit(&self) -> Result<Admitted, u64> {
        let mut s = self.lock();
        let now = Instant::now();
        match *s {
            BreakerState::Closed { .. } => Ok(Admitted { probe: false }),
            BreakerState::Open { until } if now < until => Err(secs_ceil(until - now)),
            BreakerState::HalfOpen { since } if now.duration_since(since) < self.probe_timeout => {
                Err(1)
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => {
                *s = BreakerState::HalfOpen { since: now };
                Ok(Admitted { probe: true })
            }
        }
    }

    fn success(&self, metrics: &Metrics, issuer: &str) {
        let mut s = self.lock();
        if !matches!(*s, BreakerState::Closed { .. }) {
            tracing::info!(issuer, "introspection breaker closed");
            metrics.introspection_breaker(issuer, false);
        }
        *s = BreakerState::Closed { failures: 0 };
    }

    fn failure(&self, admitted: Admitted, metrics: &Metrics, issuer: &str) {
        let mut s = self.lock();
        let open = match *s {
            BreakerState::Closed { failures } => {
                let failures = failures + 1;
                *s = BreakerState::Closed { failures };
                failures >= self.threshold
            }
            BreakerState::HalfOpen { .. } => admitted.probe,
            BreakerState::Open { .. } => false,
        };
        if open {
            *s = BreakerState::Open {
                until: Instant::now() + self.cooldown,
            };
            tracing::warn!(issuer, cooldown = ?self.cooldown, "introspection breaker open");
            metrics.introspection_breaker(issuer, true);
        }
    }
}

fn secs_ceil(d: Duration) -> u64 {
    let s = d.as_secs();
    if d.subsec_nanos() > 0 {
        s + 1
    } else {
        s.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Arc<str> {
        Arc::from("erp")
    }

    fn answer(v: Value) -> Outcome {
        interpret(
            v.as_object().unwrap().clone(),
            &id(),
            "https://idp",
            &["api".to_owned()],
            5,
            1_000,
        )
    }

    #[test]
    fn active_answers_become_principals() {
        let Outcome::Active(p) = answer(
            json!({"active": true, "scope": "api erp:write", "sub": "u1", "client_id": "c", "exp": 2_000, "iss": "https://idp", "aud": ["x", "api"], "tenant": "MyStore"}),
        ) else {
            panic!("active expected")
        };
        assert!(p.scopes.contains("erp:write"));
        assert_eq!(p.subject.as_deref(), Some("u1"));
        assert_eq!(p.client_id.as_deref(), Some("c"));
        assert_eq!(p.expires_at, 2_000);
        assert_eq!(p.claims["tenant"], "MyStore");
        assert!(!p.claims.contains_key("active"));
    }

    #[test]
    fn inactive_expired_and_mismatched_answers() {
        assert!(matches!(
            answer(json!({"active": false})),
            Outcome::Inactive(InvalidToken::Inactive)
        ));
        assert!(matches!(
            answer(json!({"active": "true"})),
            Outcome::Inactive(InvalidToken::Inactive)
        ));
        assert!(matches!(
            answer(json!({"active": true, "exp": 999})),
            Outcome::Inactive(InvalidToken::Expired)
        ));
        assert!(matches!(
            answer(json!({"active": true, "nbf": 2_000})),
            Outcome::Inactive(InvalidToken::NotYetValid)
        ));
        assert!(matches!(
            answer(json!({"active": true, "iss": "https://other"})),
            Outcome::Inactive(InvalidToken::UnknownIssuer)
        ));
        assert!(matches!(
            answer(json!({"active": true, "aud": "other"})),
            Outcome::Inactive(InvalidToken::WrongAudience)
        ));
        assert!(matches!(
            answer(json!({"active": true, "aud": 5})),
            Outcome::Inactive(InvalidToken::WrongAudience)
        ));
        assert!(matches!(
            answer(json!({"active": true})),
            Outcome::Active(_)
        ));
    }

    #[test]
    fn basic_credentials_are_form_encoded() {
        let v = basic("client:1", "s3cr&t");
        let b64 = v.to_str().unwrap().strip_prefix("Basic ").unwrap();
        assert_eq!(
            String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap(),
            "client%3A1:s3cr%26t"
        );
        assert!(v.is_sensitive());
    }

    #[test]
    fn breaker_opens_after_the_threshold_and_probes_one_at_a_time() {
        let m = Metrics::new().unwrap();
        let b = Breaker::new(3, Duration::from_millis(50), Duration::from_millis(10));
        for _ in 0..2 {
            let a = b.admit().unwrap();
            b.failure(a, &m, "erp");
        }
        let a = b.admit().unwrap();
        b.failure(a, &m, "erp");
        assert!(b.admit().is_err(), "open after 3 failures");
        std::thread::sleep(Duration::from_millis(60));
        let probe = b.admit().unwrap();
        assert!(probe.probe);
        assert!(b.admit().is_err(), "only one probe at a time");
        b.failure(probe, &m, "erp");
        assert!(b.admit().is_err(), "a failed probe opens it again");
        std::thread::sleep(Duration::from_millis(60));
        let probe = b.admit().unwrap();
        assert!(probe.probe);
        b.success(&m, "erp");
        assert!(b.admit().is_ok());
        assert!(matches!(*b.lock(), BreakerState::Closed { failures: 0 }));
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let m = Metrics::new().unwrap();
        let b = Breaker::new(2, Duration::from_secs(60), Duration::from_millis(10));
        let a = b.admit().unwrap();
        b.failure(a, &m, "erp");
        b.success(&m, "erp");
        let a = b.admit().unwrap();
        b.failure(a, &m, "erp");
        assert!(
            b.admit().is_ok(),
            "one failure after a success does not open it"
        );
    }
}
