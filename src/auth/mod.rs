//! Authentication: who is calling. A bearer token becomes a [`Principal`] or an [`AuthError`].
//!
//! [`Verifier::verify`] first looks the token up in the verified-token cache, keyed by the SHA-256
//! digest of the token (never the token itself) and bounded by `server.token_cache_capacity`; an
//! entry lives until the token's `exp`, so a repeated token costs a hash and a lookup instead of a
//! signature check. On a miss it reads the unverified `iss` to pick the issuer, then verifies the
//! signature and claims against that issuer's key set ([`jwt`], [`jwks`]), or asks the issuer by
//! RFC 7662 introspection ([`introspect`]) when the issuer is configured for it or the token is
//! opaque.

pub mod bearer;
mod cache;
pub mod discovery;
pub mod fetch;
pub mod introspect;
pub mod jwks;
pub mod jwt;
pub(crate) mod members;
mod principal;
pub mod scope;
pub mod settings;
mod signature;

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

pub use bearer::{BearerError, Token};
pub use principal::{process_key, Claims, Kept, Principal, SubjectLogging, SubjectTag};
pub use scope::Scopes;

use crate::clock::unix_secs;
use crate::metrics::{CacheResult, Metrics};
use cache::TokenCache;
use fetch::IdpClient;
use introspect::Introspector;
use jwks::Jwks;
use jwt::IssuerVerifier;
use settings::{IssuerConfig, ValidationMode};

/// Why a token was not accepted. The description is what the client reads in
/// `error_description`: fixed text, never the token or anything taken from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidToken {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's issuer is not accepted")]
    UnknownIssuer,
    #[error("the token's signing algorithm is not accepted")]
    AlgorithmNotAllowed,
    #[error("the token's signing key is unknown")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not yet valid")]
    NotYetValid,
    #[error("the token's audience is not accepted")]
    WrongAudience,
    #[error("the token lacks a required claim")]
    MissingClaim,
    #[error("the token is not a JWT access token (typ at+jwt)")]
    NotAnAccessToken,
    #[error("the token uses a critical header extension that is not supported")]
    UnsupportedCritical,
    #[error("the token is not active")]
    Inactive,
}

impl InvalidToken {
    /// Every variant, so that the answers' challenges can be built once per configuration.
    pub const ALL: [InvalidToken; 12] = [
        InvalidToken::Malformed,
        InvalidToken::UnknownIssuer,
        InvalidToken::AlgorithmNotAllowed,
        InvalidToken::UnknownKey,
        InvalidToken::BadSignature,
        InvalidToken::Expired,
        InvalidToken::NotYetValid,
        InvalidToken::WrongAudience,
        InvalidToken::MissingClaim,
        InvalidToken::NotAnAccessToken,
        InvalidToken::UnsupportedCritical,
        InvalidToken::Inactive,
    ];
}

/// Every way authentication can fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Bearer(#[from] BearerError),
    #[error(transparent)]
    InvalidToken(#[from] InvalidToken),
    /// The issuer cannot answer (keys never fetched, introspection failing): the token may be
    /// fine, so this is a 503 with `Retry-After`, never a 401.
    #[error("issuer {issuer} is unavailable")]
    IdpUnavailable {
        issuer: Arc<str>,
        retry_after: u64,
        /// What could not be reached: the key set, or the introspection endpoint.
        what: Unreachable,
    },
}

/// The part of an issuer that could not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// The key set (never fetched, or failing while the token's `kid` is unknown).
    Keys,
    /// The introspection endpoint.
    Introspection,
}

impl AuthError {
    /// The reason `tollgate_auth_failures_total` counts this failure under, from a fixed set;
    /// `None` for what is not a failure of the token (no token, an IdP with no keys yet).
    pub fn failure_reason(&self) -> Option<&'static str> {
        let reason = match self {
            AuthError::Bearer(_) => return None,
            // The token's key could not be checked: counted with the unknown keys, so that a key
            // outage shows up where a rotation would.
            AuthError::IdpUnavailable {
                what: Unreachable::Keys,
                ..
            } => "key_unknown",
            AuthError::IdpUnavailable {
                what: Unreachable::Introspection,
                ..
            } => "introspection_error",
            AuthError::InvalidToken(e) => match e {
                InvalidToken::Malformed
                | InvalidToken::MissingClaim
                | InvalidToken::UnsupportedCritical => "malformed",
                InvalidToken::UnknownIssuer => "issuer",
                InvalidToken::AlgorithmNotAllowed => "algorithm",
                InvalidToken::UnknownKey => "key_unknown",
                InvalidToken::BadSignature => "signature",
                InvalidToken::Expired => "expired",
                InvalidToken::NotYetValid => "not_yet_valid",
                InvalidToken::WrongAudience => "audience",
                InvalidToken::NotAnAccessToken => "typ",
                InvalidToken::Inactive => "inactive",
            },
        };
        Some(reason)
    }
}

/// One configured issuer and the ways its tokens are validated.
struct Issuer {
    mode: ValidationMode,
    /// Local JWT validation (modes `jwt` and `auto`).
    jwt: Option<Arc<IssuerVerifier>>,
    /// RFC 7662 introspection (modes `introspection` and `auto`).
    introspector: Option<Arc<Introspector>>,
}

/// The verifier: issuers by `iss`, the verified-JWT cache, and the introspectors.
pub struct Verifier {
    by_iss: HashMap<String, Arc<Issuer>>,
    by_id: HashMap<Arc<str>, Arc<Issuer>>,
    issuers: Vec<Arc<Issuer>>,
    /// The introspector used for opaque tokens on routes that name no issuer: set when exactly
    /// one issuer introspects.
    sole_introspector: Option<Arc<Introspector>>,
    cache: TokenCache,
    metrics: Metrics,
    /// The background tasks of this verifier's issuers; they end with it (a reload replaces it).
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Verifier {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.get_mut() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
    }
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuers", &self.by_id.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(
        issuers: &[IssuerConfig],
        cache: (u64, Kept),
        client: &IdpClient,
        metrics: &Metrics,
        shared: Option<Arc<dyn introspect::SharedAnswers>>,
    ) -> Self {
        Self::with_previous(issuers, cache, client, metrics, shared, None)
    }

    /// A verifier for `issuers` that keeps the key sets of `previous` whose issuer did not
    /// change (a reload): they stay loaded, so their tokens never wait for a fetch.
    pub fn with_previous(
        issuers: &[IssuerConfig],
        (cache_capacity, keep): (u64, Kept),
        client: &IdpClient,
        metrics: &Metrics,
        shared: Option<Arc<dyn introspect::SharedAnswers>>,
        previous: Option<&Verifier>,
    ) -> Self {
        let keep = Arc::new(keep);
        let kept = |cfg: &IssuerConfig| -> Option<Arc<Jwks>> {
            previous?
                .issuers
                .iter()
                .filter_map(|i| i.jwt.as_ref())
                .find(|v| v.jwks.serves(cfg))
                .map(|v| v.jwks.clone())
        };
        let issuers: Vec<(Arc<str>, String, Arc<Issuer>)> = issuers
            .iter()
            .map(|cfg| {
                let jwt = cfg.keys.clone().map(|source| {
                    let jwks = kept(cfg).unwrap_or_else(|| {
                        Arc::new(Jwks::new(cfg, source, client.clone(), metrics.clone()))
                    });
                    Arc::new(IssuerVerifier::new(cfg, jwks))
                });
                let introspector = cfg.introspection.clone().map(|i| {
                    Arc::new(
                        Introspector::new(cfg, i, client.clone(), metrics.clone())
                            .with_shared(shared.clone())
                            .with_kept(keep.clone()),
                    )
                });
                (
                    cfg.id.clone(),
                    cfg.issuer.clone(),
                    Arc::new(Issuer {
                        mode: cfg.validation,
                        jwt,
                        introspector,
                    }),
                )
            })
            .collect();
        let introspectors: Vec<&Arc<Introspector>> = issuers
            .iter()
            .filter_map(|(_, _, i)| i.introspector.as_ref())
            .collect();
        let sole_introspector = match introspectors.as_slice() {
            [only] => Some(Arc::clone(only)),
            _ => None,
        };
        Verifier {
            by_iss: issuers
                .iter()
                .map(|(_, iss, i)| (iss.clone(), i.clone()))
                .collect(),
            by_id: issuers
                .iter()
                .map(|(id, _, i)| (id.clone(), i.clone()))
                .collect(),
            issuers: issuers.into_iter().map(|(_, _, i)| i).collect(),
            sole_introspector,
            cache: TokenCache::new(cache_capacity, keep),
            metrics: metrics.clone(),
            tasks: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Fetches every JWT issuer's key set once, concurrently, before the verifier goes live
    /// (a reload's new issuers); each fetch is bounded by its issuer's fetch timeout.
    pub async fn prefetch(&self) {
        let mut set = tokio::task::JoinSet::new();
        for i in &self.issuers {
            if let Some(j) = i.jwt.as_ref().filter(|j| !j.jwks.is_ready()) {
                let jwks = j.jwks.clone();
                set.spawn(async move {
                    let _ = jwks.refresh().await;
                });
            }
            if let Some(x) = &i.introspector {
                if let Some(t) = x.clone().spawn_resolve() {
                    let _ = t.await;
                }
            }
        }
        while set.join_next().await.is_some() {}
    }

    /// True when every issuer can validate: JWT issuers have a key set, introspection-only
    /// issuers know their endpoint (readiness).
    pub fn is_ready(&self) -> bool {
        self.issuers
            .iter()
            .all(|i| match (&i.jwt, &i.introspector) {
                (Some(j), _) => j.jwks.is_ready(),
                (None, Some(x)) => x.is_ready(),
                (None, None) => true,
            })
    }

    /// Starts every issuer's background work (JWKS refresh, introspection endpoint discovery);
    /// the tasks end when the verifier is dropped.
    pub fn spawn_background(&self) {
        let mut tasks = Vec::new();
        for i in &self.issuers {
            if let Some(j) = &i.jwt {
                tasks.push(j.jwks.clone().spawn_refresh());
            }
            if let Some(x) = &i.introspector {
                tasks.extend(x.clone().spawn_resolve());
            }
        }
        if let Ok(mut t) = self.tasks.lock() {
            t.extend(tasks);
        }
    }

    /// The key set of the issuer with this id, when it validates JWTs locally.
    pub(crate) fn jwks(&self, issuer_id: &str) -> Option<&Arc<Jwks>> {
        Some(&self.by_id.get(issuer_id)?.jwt.as_ref()?.jwks)
    }

    /// Validates a bearer token. `route_issuer` is the issuer id the route names, if any: it
    /// chooses where an opaque token is introspected.
    pub async fn verify(
        &self,
        token: Token<'_>,
        route_issuer: Option<&Arc<str>>,
    ) -> Result<Principal, AuthError> {
        self.verify_noting(token, route_issuer, &mut false).await
    }

    /// [`Verifier::verify`], setting `cached` when a cache answered (the trace shows it).
    pub async fn verify_noting(
        &self,
        token: Token<'_>,
        route_issuer: Option<&Arc<str>>,
        cached: &mut bool,
    ) -> Result<Principal, AuthError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // The verified-JWT cache first: a repeated JWT costs a hash and a lookup.
        if let Some(p) = self.cached(&digest) {
            *cached = true;
            return Ok(p);
        }
        // An opaque token (not three dot-separated parts) goes to the route's introspector, or
        // the only one: its cached answer, when it has one, needs no future either.
        if token.as_bytes().iter().filter(|b| **b == b'.').count() != 2 {
            if let Some(x) = self.introspector_for(route_issuer) {
                if let Some(answer) = x.cached(&digest) {
                    *cached = true;
                    return answer.inspect_err(|e| self.failed(x.issuer_id(), e));
                }
            }
        }
        // The slow path's future (key fetches, introspection calls) is large; boxed, it does not
        // weigh on every request's future, most of which end at the cache.
        let token = token.as_str().map_err(AuthError::from)?;
        Box::pin(self.verify_uncached(token, digest, route_issuer)).await
    }

    /// Where an opaque token is introspected: the route's issuer's introspector, or the only
    /// issuer that introspects when the route names none.
    fn introspector_for(&self, route_issuer: Option<&Arc<str>>) -> Option<&Arc<Introspector>> {
        match route_issuer {
            Some(id) => self.by_id.get(id)?.introspector.as_ref(),
            None => self.sole_introspector.as_ref(),
        }
    }

    /// The cached principal of the token with this digest, counted as a hit.
    fn cached(&self, digest: &[u8; 32]) -> Option<Principal> {
        let p = self.cache.get(digest, unix_secs())?;
        self.metrics.token_cache("jwt", CacheResult::Hit);
        Some(p)
    }

    async fn verify_uncached(
        &self,
        token: &str,
        digest: [u8; 32],
        route_issuer: Option<&Arc<str>>,
    ) -> Result<Principal, AuthError> {
        let mut payload = Vec::new();
        let unverified = jwt::peek(token, &mut payload);
        let issuer = match &unverified {
            Ok(u) => self.by_iss.get(&*u.iss),
            Err(_) => None,
        };
        let result = self
            .verify_by_issuer(token, digest, route_issuer, issuer, unverified)
            .await;
        if let Err(e) = &result {
            // Errors of a known issuer's checks were counted under its id where they arose.
            if issuer.is_none() && !matches!(e, AuthError::IdpUnavailable { .. }) {
                self.failed("unknown", e);
            }
        }
        result
    }

    /// Counts a failed token under `issuer` (its id, or `unknown`).
    fn failed(&self, issuer: &str, e: &AuthError) {
        if let Some(reason) = e.failure_reason() {
            self.metrics.auth_failure(issuer, reason);
        }
    }

    async fn verify_by_issuer(
        &self,
        token: &str,
        digest: [u8; 32],
        route_issuer: Option<&Arc<str>>,
        issuer: Option<&Arc<Issuer>>,
        unverified: Result<jwt::Unverified<'_>, InvalidToken>,
    ) -> Result<Principal, AuthError> {
        match (issuer, unverified) {
            (Some(issuer), Ok(u)) => match (issuer.mode, &issuer.jwt, &issuer.introspector) {
                (ValidationMode::Jwt, Some(v), _) => self.verify_locally(v, token, u, digest).await,
                (ValidationMode::Auto, Some(v), Some(x)) => {
                    if v.has_key(&u.header) {
                        self.verify_locally(v, token, u, digest).await
                    } else {
                        self.introspect(x, token, digest).await
                    }
                }
                (_, _, Some(x)) => self.introspect(x, token, digest).await,
                (_, Some(v), None) => self.verify_locally(v, token, u, digest).await,
                (_, None, None) => Err(InvalidToken::UnknownIssuer.into()),
            },
            // Not a JWS, or a JWS of an issuer that is not configured: an opaque token for the
            // route's issuer, or for the only issuer that introspects.
            (None, unverified) => {
                let chosen = self.introspector_for(route_issuer).cloned();
                match (chosen, unverified) {
                    (Some(x), _) => self.introspect(&x, token, digest).await,
                    // Several issuers introspect and the route names none: asking each would
                    // hand the token to issuers that never issued it.
                    (None, Err(_)) if self.by_id.values().any(|i| i.introspector.is_some()) => {
                        Err(InvalidToken::UnknownIssuer.into())
                    }
                    (None, Ok(_)) => Err(InvalidToken::UnknownIssuer.into()),
                    (None, Err(e)) => Err(e.into()),
                }
            }
            (Some(_), Err(e)) => Err(e.into()),
        }
    }

    async fn verify_locally(
        &self,
        v: &IssuerVerifier,
        token: &str,
        unverified: jwt::Unverified<'_>,
        digest: [u8; 32],
    ) -> Result<Principal, AuthError> {
        self.metrics.token_cache("jwt", CacheResult::Miss);
        let expires_at = v
            .verify(token, &unverified)
            .await
            .inspect_err(|e| self.failed(&v.id, e))?;
        let verified = (v.id.clone(), &unverified.claims, expires_at);
        Ok(self.cache.insert(digest, verified, unix_secs()))
    }

    /// An introspected principal (the introspector keeps its own cache of answers).
    async fn introspect(
        &self,
        x: &Introspector,
        token: &str,
        digest: [u8; 32],
    ) -> Result<Principal, AuthError> {
        x.verify(token, digest)
            .await
            .inspect_err(|e| self.failed(x.issuer_id(), e))
    }

    /// `tollgate check --online`: one key-set fetch per JWT issuer and one introspection call per
    /// introspecting issuer, each reported as (what, outcome).
    pub async fn probe(&self) -> Vec<(String, Result<String, String>)> {
        let mut out = Vec::new();
        for issuer in &self.issuers {
            if let Some(v) = &issuer.jwt {
                out.push((format!("issuer {}: JWKS", v.id), v.jwks.probe().await));
            }
            if let Some(x) = &issuer.introspector {
                out.push((
                    format!("issuer {}: introspection", x.issuer_id()),
                    x.probe().await,
                ));
            }
        }
        out
    }

    /// Publishes the cache sizes (called at each scrape).
    pub fn sample_gauges(&self) {
        let entries = self.cache.sweep(unix_secs());
        self.metrics.token_cache_entries("jwt", entries);
        let introspected: u64 = self
            .issuers
            .iter()
            .filter_map(|i| i.introspector.as_ref())
            .map(|x| x.cached_entries())
            .sum();
        if self.issuers.iter().any(|i| i.introspector.is_some()) {
            self.metrics
                .token_cache_entries("introspection", introspected);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{AuthError, InvalidToken, Unreachable};
    use crate::metrics::AUTH_FAILURE_REASONS;

    #[test]
    fn every_failure_reason_is_one_the_metric_declares() {
        let errors = InvalidToken::ALL.into_iter().map(AuthError::from).chain(
            [Unreachable::Keys, Unreachable::Introspection].map(|what| AuthError::IdpUnavailable {
                issuer: "erp".into(),
                retry_after: 5,
                what,
            }),
        );
        for e in errors {
            let reason = e.failure_reason().expect("a token failure");
            assert!(AUTH_FAILURE_REASONS.contains(&reason), "{reason}");
        }
        assert_eq!(
            AuthError::from(crate::auth::BearerError::Missing).failure_reason(),
            None,
            "no token is no failure of a token"
        );
    }
}
