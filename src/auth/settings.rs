//! The settings authentication runs on, one [`IssuerConfig`] per configured issuer: how its
//! tokens are validated (local JWT, RFC 7662 introspection, or `auto`), where its keys come from,
//! and how tollgate authenticates to its introspection endpoint.
//!
//! These are runtime values, already validated: the configuration's issuer section builds them
//! from the `[[issuer]]` tables, and the `config` module re-exports them. Authentication consumes
//! them and never imports the configuration.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use url::Url;

use crate::secret::Secret;

/// Where an issuer's key set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `GET {issuer}/.well-known/openid-configuration`, then its `jwks_uri`.
    Discovery(Url),
    Jwks(Url),
}

/// How an issuer's tokens are validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidationMode {
    /// Locally, as JWTs against the issuer's key set.
    Jwt,
    /// By RFC 7662 introspection, JWTs included (for revocation).
    Introspection,
    /// A JWS with this issuer's `iss` and a known key locally; anything else by introspection.
    Auto,
}

/// How tollgate authenticates to the introspection endpoint.
#[derive(Clone)]
pub enum ClientAuth {
    /// HTTP Basic with the form-urlencoded client id and secret (RFC 6749 §2.3.1).
    Basic(Secret),
    /// `client_id` and `client_secret` in the form body.
    Post(Secret),
    /// A fresh RFC 7523 client assertion per request, signed with this key.
    PrivateKeyJwt {
        key: Arc<jsonwebtoken::EncodingKey>,
        alg: Algorithm,
        kid: Option<String>,
    },
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientAuth::Basic(_) => f.write_str("client_secret_basic"),
            ClientAuth::Post(_) => f.write_str("client_secret_post"),
            ClientAuth::PrivateKeyJwt { alg, .. } => write!(f, "private_key_jwt({alg:?})"),
        }
    }
}

/// `[issuer.introspection]`, validated.
#[derive(Debug, Clone)]
pub struct IntrospectionConfig {
    /// `None`: the discovery document's `introspection_endpoint`.
    pub endpoint: Option<Url>,
    pub client_id: String,
    pub auth: ClientAuth,
    pub timeout: Duration,
    pub cache_max_ttl: Duration,
    pub negative_ttl: Duration,
    pub serve_stale: Duration,
    pub cache_capacity: u64,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
}

#[derive(Debug, Clone)]
pub struct IssuerConfig {
    pub id: Arc<str>,
    /// The exact `iss` value.
    pub issuer: String,
    /// The discovery document, when `discovery = true`.
    pub discovery: Option<Url>,
    /// Where JWT keys come from; `None` when the issuer validates by introspection only.
    pub keys: Option<KeySource>,
    pub validation: ValidationMode,
    pub introspection: Option<IntrospectionConfig>,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub leeway: Duration,
    pub jwks_refresh: Duration,
    pub jwks_min_refresh: Duration,
    pub require_typ: bool,
    pub allow_http: bool,
    pub fetch_timeout: Duration,
}
