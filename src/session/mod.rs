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
//! | [`capture`] | passive mode: the client's own login call becomes the slot's session |
//! | [`step`] | the layer's two steps of the request pipeline: `lease` and `settle` |
//! | `body` | request bodies the layer must read whole (a replay, a passive login) |
//!
//! The layer answers to the pipeline only through [`step`]'s two functions and its own error
//! type, [`SessionError`], which `crate::error` maps to HTTP.

mod body;
pub mod capture;
pub mod grant;
pub mod handle;
pub mod intercept;
pub mod jar;
pub mod login;
pub mod pool;
pub mod redis;
pub mod sanitize;
pub mod step;
pub mod store;

pub use pool::Pool;
pub use step::{lease, settle, Edits, Lease, Leased, Settled, Step};

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
    /// Passive mode: the upstream ended the session, and only the client can log in again.
    #[error("the upstream session has ended; sign in again")]
    SignedOut,
    /// Passive mode: the upstream refused the client's own login (answered with the upstream's
    /// status, never its body).
    #[error("{refused}")]
    LoginRefused {
        status: http::StatusCode,
        refused: RefusedLogin,
        /// The upstream's `Retry-After`, passed on as it came.
        retry_after: Option<http::HeaderValue>,
    },
    /// A login call on a route without a bearer token: a session needs a grant to belong to.
    #[error("a bearer token is required")]
    GrantRequired,
    /// The request body could not be read to its end (the client went away, or its framing
    /// was broken) while the session layer kept it for a replay or a login check.
    #[error("the request body could not be read")]
    BodyRead,
    #[error("the session store is unavailable")]
    Store(String),
    /// Internal: the session vanished while waiting; the lease is tried again.
    #[error("the session ended while waiting")]
    Gone,
}

/// Why the upstream refused a client's own (passive) login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefusedLogin {
    #[error("the upstream has no free session seat")]
    SeatLimit,
    #[error("the upstream refused the credentials")]
    BadCredentials,
    #[error("the upstream throttles logins")]
    Throttled,
    #[error("the upstream login failed")]
    Error,
}

impl From<crate::fleet::StoreError> for SessionError {
    fn from(e: store::StoreError) -> Self {
        SessionError::Store(e.to_string())
    }
}

/// The session profile of an upstream: a keyed digest of what makes its sessions what they are
/// (its URL, its login and logout paths, how sessions are created, the service credentials and
/// the cookies that prove a login). Two configurations with the same profile share their
/// sessions: a reload that changes only limits or timeouts keeps them; one that changes the
/// profile retires them.
pub fn profile(url: &str, cfg: &crate::config::SessionConfig, master: &[u8; 32]) -> String {
    use aws_lc_rs::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA256, master);
    let mut ctx = hmac::Context::with_key(&key);
    let creds = cfg.credentials.as_ref();
    let parts = [
        Some("tollgate session profile v1"),
        Some(url),
        Some(cfg.login_path.as_str()),
        Some(cfg.logout_path.as_str()),
        Some(match cfg.creation {
            crate::config::Creation::Active => "active",
            crate::config::Creation::Passive => "passive",
        }),
        creds.map(|c| c.name.as_str()),
        creds.map(|c| c.password.expose()),
        creds.and_then(|c| c.tenant.as_deref()),
        creds.and_then(|c| c.branch.as_deref()),
        creds.and_then(|c| c.locale.as_deref()),
    ];
    for p in parts {
        let v = p.unwrap_or("\0");
        ctx.update(&(v.len() as u64).to_be_bytes());
        ctx.update(v.as_bytes());
    }
    for m in &cfg.marker_cookies {
        ctx.update(&(m.len() as u64).to_be_bytes());
        ctx.update(m.as_bytes());
    }
    ctx.sign()
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Response header on a response served by an upstream session created during the request.
pub const SESSION_HEADER: &str = "tollgate-session";
/// Response header on an intercepted (managed) login call.
pub const LOGIN_HEADER: &str = "tollgate-login";
