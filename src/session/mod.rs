//! Upstream sessions: each OAuth grant mapped to the legacy API's session cookies (shared design
//! §6). One session per grant, or several addressed by handle cookies when the token carries the
//! concurrent scope; tollgate logs in and out itself and never holds more sessions than the
//! licence's seats.
//!
//! | module | concern |
//! |---|---|
//! | [`grant`] | the grant key: HMAC of issuer, upstream and the grant's identifier |
//! | [`handle`] | concurrent-mode handle cookies |
//! | [`intercept`] | which request paths are the upstream's login and logout calls |
//! | [`sanitize`] | upstream error answers without the upstream's exception details |
//! | [`jar`] | one session's cookie jar |
//! | [`login`] | the login and logout calls and the classification of login answers |
//! | [`store`] | the session table behind a store trait, and the in-memory store |
//! | [`redis`] | the store in Redis, shared by several replicas |
//! | [`pool`] | per-upstream coordination: leases, logins, seats, eviction, expiry, logout |
//! | [`flow`] | the forwarding step for routes whose upstream has sessions |

pub mod flow;
pub mod grant;
pub mod handle;
pub mod intercept;
pub mod jar;
pub mod login;
pub mod pool;
pub mod redis;
pub mod sanitize;
pub mod store;

pub use flow::forward;
pub use pool::Pool;

/// Every way the session layer refuses or fails a request (design §6.10). The mapping to status,
/// `error` code and `Retry-After` is in `crate::error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("the token carries no grant identifier")]
    NoGrant,
    #[error("the session handle is not valid for this grant")]
    InvalidHandle,
    #[error("a session handle is required")]
    HandleRequired,
    #[error("the grant's upstream session is busy")]
    GrantBusy,
    #[error("the grant holds its maximum number of upstream sessions")]
    GrantSessionLimit { retry_after: u64 },
    #[error("every upstream session seat is in use")]
    CapacityExhausted,
    #[error("the upstream has no free session seat")]
    SeatsExhausted,
    #[error("the upstream throttles logins")]
    Throttled { retry_after: u64 },
    #[error("the upstream session expired and the request body cannot be replayed")]
    SessionExpired,
    #[error("the upstream refused the service credentials")]
    LoginFailed { retry_after: u64 },
    #[error("the upstream login failed")]
    LoginError,
    #[error("the upstream still refused the session after a fresh login")]
    AuthFailed,
    #[error("the login name does not match the token")]
    LoginIdentityMismatch,
    #[error("the session store is unavailable")]
    Store(String),
    /// Internal: the session vanished while waiting; the lease is tried again.
    #[error("the session ended while waiting")]
    Gone,
}

impl From<store::StoreError> for SessionError {
    fn from(e: store::StoreError) -> Self {
        SessionError::Store(e.to_string())
    }
}

/// Response header on a response served by an upstream session created during the request.
pub const SESSION_HEADER: &str = "tollgate-session";
/// Response header on an intercepted (managed) login call.
pub const LOGIN_HEADER: &str = "tollgate-login";
