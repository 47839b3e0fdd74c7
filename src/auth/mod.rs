//! Authentication: who is calling. A bearer token becomes a [`Principal`] or an [`AuthError`].
//!
//! [`Verifier::verify`] first looks the token up in the verified-token cache, keyed by the SHA-256
//! digest of the token (never the token itself) and bounded by `server.token_cache_capacity`; an
//! entry lives until the token's `exp`, so a repeated token costs a hash and a lookup instead of a
//! signature check. On a miss it reads the unverified `iss` to pick the issuer, then verifies the
//! signature and claims against that issuer's key set ([`jwt`], [`jwks`]).

pub mod bearer;
pub mod fetch;
pub mod jwks;
pub mod jwt;
pub mod scope;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub use bearer::{BearerError, Token};
pub use scope::Scopes;

use crate::config::IssuerConfig;
use crate::metrics::{CacheResult, Metrics};
use fetch::IdpClient;
use jwks::Jwks;
use jwt::IssuerVerifier;

/// A verified caller: the issuer that vouched for it, its scopes and its claims.
pub struct Principal {
    /// The configured issuer id (not the `iss` URL).
    pub issuer: Arc<str>,
    pub subject: Option<Box<str>>,
    pub client_id: Option<Box<str>>,
    pub scopes: Scopes,
    /// Every claim of the token, for route claim checks and identity headers.
    pub claims: Map<String, Value>,
    /// The token's `exp`, Unix seconds.
    pub expires_at: u64,
}

impl Principal {
    pub fn new(issuer: Arc<str>, claims: Map<String, Value>, expires_at: u64) -> Self {
        let text = |k: &str| claims.get(k).and_then(Value::as_str).map(Box::from);
        Principal {
            issuer,
            subject: text("sub"),
            client_id: text("client_id").or_else(|| text("azp")),
            scopes: Scopes::from_claims(&claims),
            expires_at,
            claims,
        }
    }
}

impl std::fmt::Debug for Principal {
    // Claims may hold personal data; Debug shows only what identifies the grant.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("issuer", &self.issuer)
            .field("subject", &self.subject)
            .field("client_id", &self.client_id)
            .field("scopes", &self.scopes)
            .field("claims", &format_args!("<{} claims>", self.claims.len()))
            .finish()
    }
}

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
    #[error("the token was not issued by the issuer this route accepts")]
    WrongIssuerForRoute,
}

/// Every way authentication can fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Bearer(#[from] BearerError),
    #[error(transparent)]
    InvalidToken(#[from] InvalidToken),
    /// The issuer's keys were never fetched: the token may be fine, so this is a 503.
    #[error("the keys of issuer {issuer} are not available yet")]
    IdpUnavailable { issuer: Arc<str> },
}

/// The verifier: issuers by `iss`, and the verified-token cache.
pub struct Verifier {
    by_iss: HashMap<String, Arc<IssuerVerifier>>,
    issuers: Vec<Arc<IssuerVerifier>>,
    cache: Cache<[u8; 32], Arc<Principal>>,
    metrics: Metrics,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuers", &self.issuers)
            .finish_non_exhaustive()
    }
}

/// Each entry expires at its token's `exp`.
struct UntilExp;

impl moka::Expiry<[u8; 32], Arc<Principal>> for UntilExp {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        p: &Arc<Principal>,
        _: Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(
            p.expires_at.saturating_sub(jwt::now_unix()),
        ))
    }
}

impl Verifier {
    pub fn new(
        issuers: &[IssuerConfig],
        cache_capacity: u64,
        client: &IdpClient,
        metrics: &Metrics,
    ) -> Self {
        let issuers: Vec<Arc<IssuerVerifier>> = issuers
            .iter()
            .map(|cfg| {
                let jwks = Arc::new(Jwks::new(cfg, client.clone(), metrics.clone()));
                Arc::new(IssuerVerifier::new(cfg, jwks))
            })
            .collect();
        let by_iss = issuers.iter().map(|v| (v.iss.clone(), v.clone())).collect();
        Verifier {
            by_iss,
            issuers,
            cache: Cache::builder()
                .max_capacity(cache_capacity)
                .expire_after(UntilExp)
                .build(),
            metrics: metrics.clone(),
        }
    }

    pub fn issuers(&self) -> &[Arc<IssuerVerifier>] {
        &self.issuers
    }

    /// True when every issuer has a usable key set (readiness).
    pub fn is_ready(&self) -> bool {
        self.issuers.iter().all(|i| i.jwks.is_ready())
    }

    /// Starts every issuer's background JWKS refresh.
    pub fn spawn_refreshers(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.issuers
            .iter()
            .map(|i| i.jwks.clone().spawn_refresh())
            .collect()
    }

    /// Verifies a bearer token, from the cache when it was verified before.
    pub async fn verify(&self, token: Token<'_>) -> Result<Arc<Principal>, AuthError> {
        let token = token.as_str();
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(p) = self.cache.get(&digest) {
            if p.expires_at > jwt::now_unix() {
                self.metrics.token_cache("jwt", CacheResult::Hit);
                return Ok(p);
            }
        }
        self.metrics.token_cache("jwt", CacheResult::Miss);

        let unverified = jwt::peek(token)?;
        let issuer = self
            .by_iss
            .get(&unverified.iss)
            .ok_or(InvalidToken::UnknownIssuer)?;
        let principal = Arc::new(issuer.verify(token, &unverified.header).await?);
        if principal.expires_at > jwt::now_unix() {
            self.cache.insert(digest, principal.clone());
        }
        Ok(principal)
    }

    /// Approximate number of cached verified tokens (for the entries gauge).
    pub fn cached_tokens(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }
}
