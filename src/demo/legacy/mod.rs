//! The fake legacy API: an in-process imitation of MYOB Acumatica's contract-based REST API
//! session behaviour (design: `session-mapping.md`, section 7), used by `tollgate demo` and by the
//! integration tests of the gateway's upstream session mapping.
//!
//! Why a fake and not a stub: every rule the gateway follows exists because of something the
//! real API does to a careless client. Seats are licence-limited and leak when a client does not
//! sign out (or signs out without `Content-Length`, which IIS answers with `411`); three wrong
//! passwords lock the account; ASP.NET serialises the requests of one session; a long-running
//! operation pins the client to one session; sessions close by themselves when idle. The fake does
//! all of that, deterministically (an injectable clock, see [`FakeLegacy::advance_clock`]), and
//! counts what a correct gateway must never cause (see [`Counters`]): mixed session cookies,
//! cookies it never issued, an `Authorization` header reaching it, parallel requests on one
//! session.
//!
//! Endpoints (paths are matched without case, a trailing slash is ignored):
//! - `POST /entity/auth/login` (JSON or form: `name`, `password`, `tenant` or `company`,
//!   `branch`) and `POST /entity/auth/logout`;
//! - under `/entity/{endpoint}/{version}/`: `GET Echo` (who the session is), `PUT`/`GET Counter`
//!   (a per-session counter), `GET Slow?ms=` (holds the session), `GET Stream?bytes=&fault=`
//!   (a large answer, broken off with `fault=reset` or stuck halfway with `fault=stall`),
//!   `POST LongOp/Start` and
//!   `GET LongOp/Status/{id}` (a long operation that pins the session); any other path answers
//!   `200` with the session, the method and the body's length and SHA-256;
//! - `GET /health` without a session; any other path is a UI page (login redirect without a
//!   session).
//!
//! Knobs: [`LegacyOptions`] at start, changed at run time by [`FakeLegacy::configure_with`] and
//! its siblings. Tests drive it through its Rust API ([`FakeLegacy`]) or through the HTTP control
//! API under `/_fake/` (`GET /_fake/state`, `POST /_fake/expire`, `/reserve-seats`, `/config`,
//! `/reset`, `/advance-clock`, `/sign-out`). Requests to `/_fake/` are never counted by the leak
//! detectors.
//!
//! Behaviour the design left open, as decided here:
//! - session ordinals (the `session` number in answers) keep increasing across [`FakeLegacy::reset`],
//!   so a session created after a reset is never mistaken for one from before;
//! - `seats_in_use` and `peak_seats` count the fake's own live sessions; reserved seats are reported
//!   separately (`reserved_seats`) but do count against `max_api_users` at login;
//! - a session with a request in flight is never closed for idleness (ASP.NET holds it), and the
//!   idle timer restarts when a request of the session starts and when it ends;
//! - a logout is counted as a request on the session for `max_concurrency_per_session`, so a
//!   gateway that signs out of a session with a request in flight is detected;
//! - a request that queued behind the session lock while the session ended answers `401`;
//! - `requests_unauthenticated` counts every request refused for want of a session, mixed cookies
//!   included; paths outside `/entity/` answer, without a session, a `302` to
//!   `/Frames/Login.aspx` (like Acumatica's UI pages) and, with one, a generic `200`;
//! - the strict `Content-Length` rule applies to every `POST` (login, logout, data), over HTTP/1
//!   and HTTP/2 alike; only the logout's `411`s are counted (`logouts_411`);
//! - a user's empty `tenants` (or `branches`) list means every configured tenant (any branch); a
//!   requested branch the user does not have fails the login with a fake-specific message;
//! - every error body carries `exceptionMessage`, `exceptionType` and a `stackTrace`, as the real
//!   API's do: a gateway must never show them to its clients;
//! - every `renew_auth_every`-th data answer of a session (5 by default) sets a fresh `.ASPXAUTH`
//!   (forms authentication's sliding renewal); the replaced value still authenticates, but each
//!   use of it is counted in `stale_auth_cookie`, which stays 0 behind a gateway whose jar
//!   follows;
//! - a request whose session ended while it ran (a logout, a forced expiry) answers 401 and
//!   deletes `.ASPXAUTH`, as the real API fails it; `sign_out_on_next_answer` (or
//!   `POST /_fake/sign-out`) makes a session's next data answer succeed and delete `.ASPXAUTH`,
//!   ending the session upstream;
//! - with `login_limit_shape = Redirect` the "API Login Limit" is a `302` to
//!   `/Frames/Error.aspx` with the message in the query, the third shape seen in the wild;
//! - `max_requests_per_minute` limits data requests over all sessions per minute of the fake's
//!   clock; over it, `429` with `Retry-After` (the licence's request rate).
//!
//! One concern per file: this one is the public face (the options, [`FakeLegacy`], serving);
//! `routing` is the front door every request passes; `state` keeps the sessions, users,
//! counters and clock; `login` signs in and out; `session` takes a request through its session
//! and `data` answers the data endpoints; `control` is the test-control API and knobs;
//! `replies` builds the answers.

mod control;
mod data;
mod login;
mod replies;
mod routing;
mod session;
mod state;

#[cfg(test)]
mod harness;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use state::{Inner, State};

pub use state::{Counters, LegacyUser};

/// The ASP.NET session cookie: one of the two cookies that make a request authenticated.
pub const SESSION_COOKIE: &str = "ASP.NET_SessionId";
/// The forms-authentication cookie: the other one.
pub const AUTH_COOKIE: &str = ".ASPXAUTH";
/// Every cookie name the fake ever sets; any other cookie on a request is a leak.
pub const ISSUED_COOKIES: [&str; 7] = [
    SESSION_COOKIE,
    AUTH_COOKIE,
    "UserBranch",
    "Locale",
    "requestid",
    "requeststat",
    "CompanyID",
];

/// How often the background sweep closes idle sessions (besides the sweep on every request).
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// The fake's configuration (design 7.1). Defaults are Acumatica's (trial licence).
#[derive(Clone, Debug)]
pub struct LegacyOptions {
    /// Seat limit: live sessions plus reserved seats may not exceed it.
    pub max_api_users: u32,
    /// A session idle for longer than this is closed and its seat freed.
    pub idle_timeout: Duration,
    pub users: Vec<LegacyUser>,
    /// If more than one, `tenant` (alias `company`) is required at login.
    pub tenants: Vec<String>,
    /// The status of the "API Login Limit" answer (500 or 429, both seen in the wild).
    pub login_limit_status: u16,
    /// Failed logins within `lockout_reset` that lock the account (0 = never lock).
    pub lockout_threshold: u32,
    pub lockout_duration: Duration,
    pub lockout_reset: Duration,
    /// One request at a time per session (ASP.NET's exclusive session lock).
    pub serialize_per_session: bool,
    /// A `POST` with neither `Content-Length` nor `Transfer-Encoding` answers `411` (IIS).
    pub strict_content_length: bool,
    /// Fresh `requestid`/`requeststat` cookies on every response to an authenticated request.
    pub rotate_cookies: bool,
    /// How long a `LongOp` runs.
    pub long_op_duration: Duration,
    /// Every this many authenticated data answers of a session carry a renewed `.ASPXAUTH`
    /// (forms authentication's sliding expiration); 0 = never. The superseded value still
    /// authenticates, but its use is counted (`stale_auth_cookie`).
    pub renew_auth_every: u32,
    /// How the "API Login Limit" is answered: as an error body, or (`Redirect`) as a 302 to
    /// the error page with the message in its query.
    pub login_limit_shape: LimitShape,
    /// Data requests allowed per minute of the fake's clock over all sessions (the licence's
    /// request rate); more answer 429 with `Retry-After`. 0 = unlimited.
    pub max_requests_per_minute: u32,
    /// How long a login takes before it is answered (the checks and the seat happen at the
    /// end, as a real login's do).
    pub login_delay: Duration,
    /// Every request (but `/health` and the control API) answers IIS's `503 Service
    /// Unavailable`, as while the application pool is stopped.
    pub unavailable: bool,
}

/// The shape of the "API Login Limit" answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitShape {
    /// `login_limit_status` with `"API Login Limit"` in an error body.
    Error,
    /// `302` to `/Frames/Error.aspx?...&message=...concurrent API logins...`.
    Redirect,
}

impl Default for LegacyOptions {
    fn default() -> Self {
        LegacyOptions {
            max_api_users: 2,
            idle_timeout: Duration::from_secs(600),
            users: vec![LegacyUser::new("admin", "123", &["MyStore"], &["HQ"])],
            tenants: vec!["MyStore".to_owned()],
            login_limit_status: 500,
            lockout_threshold: 3,
            lockout_duration: Duration::from_secs(900),
            lockout_reset: Duration::from_secs(600),
            serialize_per_session: true,
            strict_content_length: true,
            rotate_cookies: true,
            long_op_duration: Duration::from_millis(300),
            renew_auth_every: 5,
            login_limit_shape: LimitShape::Error,
            max_requests_per_minute: 0,
            login_delay: Duration::ZERO,
            unavailable: false,
        }
    }
}

/// The fake legacy API. Cheap to clone; clones share one state.
#[derive(Clone)]
pub struct FakeLegacy {
    inner: Arc<Inner>,
}

/// Serves a fake with default options on `listener` (the demo's legacy API).
pub fn spawn(listener: TcpListener) -> JoinHandle<()> {
    FakeLegacy::new(LegacyOptions::default()).spawn(listener)
}

impl FakeLegacy {
    /// A fake with no sessions.
    pub fn new(opts: LegacyOptions) -> Self {
        FakeLegacy {
            inner: Arc::new(Inner {
                state: Mutex::new(State::new(opts)),
            }),
        }
    }

    /// Serves HTTP on `listener`, and closes idle sessions every 250 ms, until the task is aborted.
    pub fn spawn(&self, listener: TcpListener) -> JoinHandle<()> {
        let me = self.clone();
        let sweeper = self.clone();
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let _keep = tx;
            let serve = crate::server::serve(
                listener,
                rx,
                Duration::from_secs(1),
                move |req, _remote: SocketAddr| {
                    let me = me.clone();
                    async move { me.handle(req).await }
                },
            );
            let sweep = async move {
                let mut every = tokio::time::interval(SWEEP_EVERY);
                loop {
                    every.tick().await;
                    sweeper.inner.lock().sweep();
                }
            };
            tokio::select! {
                () = serve => {}
                () = sweep => {}
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::Bytes;
    use http::Request;
    use http_body_util::Full;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    #[tokio::test]
    async fn the_default_spawn_serves_the_default_fake() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = spawn(listener);
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let resp = client
            .request(
                Request::post(format!("http://{addr}/entity/auth/login"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(
                        br#"{"name":"admin","password":"123"}"#,
                    )))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        task.abort();
    }
}
