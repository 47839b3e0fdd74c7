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
//! Tests drive it through its Rust API ([`FakeLegacy`]) or through the HTTP control API under
//! `/_fake/` (`GET /_fake/state`, `POST /_fake/expire`, `/reserve-seats`, `/config`, `/reset`,
//! `/advance-clock`). Requests to `/_fake/` are never counted by the leak detectors.
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

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::{proxy, Body};

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

/// Request bodies the fake parses (login, control API) are read up to this size.
const MAX_BODY: usize = 64 * 1024;
/// How often the background sweep closes idle sessions (besides the sweep on every request).
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// Upper bound of `Slow?ms=`.
const MAX_SLOW_MS: u64 = 60_000;
/// .NET ticks (100 ns since 0001-01-01) at the Unix epoch.
const DOTNET_TICKS_AT_UNIX_EPOCH: u128 = 621_355_968_000_000_000;

const INVALID_CREDENTIALS: &str = "Error: Invalid credentials. Please try again.";
const NO_COMPANY: &str = "A proper company ID cannot be determined for the request.";
const LOGIN_LIMIT: &str = "API Login Limit";
const LOCKED_OUT: &str = "Error: Your account is locked out.";
const OPERATION_RUNNING: &str = "The previous operation has not been completed yet.";
const DENIED: &str = "Authorization has been denied for this request.";
const THROTTLED: &str = "The number of requests per minute has exceeded the limit of the license.";
/// Where the login limit redirects in the `Redirect` shape.
const LIMIT_REDIRECT: &str = "/Frames/Error.aspx?exceptionID=PX.Data.PXException&typeID=Login&message=Login%20failed.%20The%20number%20of%20concurrent%20API%20logins%20exceeds%20the%20license%20limit.";
/// The stack trace every error body carries (the gateway must never pass it on).
const STACK_TRACE: &str = "   at PX.Api.ContractBased.WebApi.Controllers.AuthController.Login(LoginRequest request)\r\n   at lambda_method(Closure , Object , Object[] )\r\n   at System.Web.Http.Controllers.ReflectedHttpActionDescriptor.ActionExecutor.Execute(Object instance, Object[] arguments)";

/// One account of the fake.
#[derive(Clone, PartialEq, Eq)]
pub struct LegacyUser {
    pub name: String,
    pub password: String,
    /// Tenants the user may sign in to; empty = every configured tenant.
    pub tenants: Vec<String>,
    /// Branches the user may choose; the first is the default; empty = any branch, none by default.
    pub branches: Vec<String>,
}

impl LegacyUser {
    /// A user with the given tenants and branches.
    pub fn new(name: &str, password: &str, tenants: &[&str], branches: &[&str]) -> Self {
        LegacyUser {
            name: name.to_owned(),
            password: password.to_owned(),
            tenants: tenants.iter().map(|t| (*t).to_owned()).collect(),
            branches: branches.iter().map(|b| (*b).to_owned()).collect(),
        }
    }
}

impl fmt::Debug for LegacyUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LegacyUser")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .field("tenants", &self.tenants)
            .field("branches", &self.branches)
            .finish()
    }
}

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

/// What the fake observed (design 7.6). The leak detectors (`mixed_session_cookies`,
/// `foreign_cookie`, `authorization_header_seen`) stay 0 behind a correct gateway, and so does
/// `max_concurrency_per_session` above 1 when the gateway serialises.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Requests carrying the session cookie of one live session and `.ASPXAUTH` of another.
    pub mixed_session_cookies: u64,
    /// Requests carrying a cookie name the fake never issues.
    pub foreign_cookie: u64,
    /// Requests carrying an `Authorization` header.
    pub authorization_header_seen: u64,
    /// Highest number of simultaneous requests observed on one session (counted before the lock).
    pub max_concurrency_per_session: u64,
    pub logins_ok: u64,
    pub logins_rejected_limit: u64,
    pub logins_bad_credentials: u64,
    pub logins_locked: u64,
    pub logouts: u64,
    /// Logouts refused for want of `Content-Length` (their seat stays taken).
    pub logouts_411: u64,
    /// Sessions closed without a logout: idle timeout or forced expiry.
    pub expiries: u64,
    /// Live sessions (reserved seats not included).
    pub seats_in_use: u64,
    pub peak_seats: u64,
    /// Requests refused for want of a valid session (401, or 302 to the login page).
    pub requests_unauthenticated: u64,
    /// Requests authenticated by a `.ASPXAUTH` value the fake had already replaced: a client
    /// whose jar does not follow the renewals (stays 0 behind a correct gateway).
    pub stale_auth_cookie: u64,
    /// `.ASPXAUTH` renewals sent.
    pub auth_renewed: u64,
    /// Data requests refused by the request-rate limit (429).
    pub requests_throttled: u64,
    /// Requests whose session ended while they were being handled (answered 401).
    pub ended_mid_request: u64,
    /// Sessions ended by a data answer deleting `.ASPXAUTH` (see `sign_out_on_next_answer`).
    pub signed_out_by_answer: u64,
}

/// The fake legacy API. Cheap to clone; clones share one state.
#[derive(Clone)]
pub struct FakeLegacy {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
}

struct Session {
    ordinal: u64,
    session_id: String,
    auth: String,
    user: String,
    tenant: Option<String>,
    branch: Option<String>,
    created: Instant,
    last_seen: Instant,
    in_flight: u64,
    max_in_flight: u64,
    counter: i64,
    /// ASP.NET's exclusive per-session lock, held for the whole handling of a request.
    lock: Arc<tokio::sync::Mutex<()>>,
    /// Long operations started in this session: id → start.
    ops: HashMap<u64, Instant>,
    /// `.ASPXAUTH` values this session had before its current one (still accepted, counted).
    old_auth: Vec<String>,
    /// Authenticated data answers since the last renewal.
    answers: u32,
    /// The next data answer ends the session and deletes `.ASPXAUTH`.
    sign_out_next: bool,
}

#[derive(Default)]
struct Lockout {
    failures: VecDeque<Instant>,
    locked_until: Option<Instant>,
}

struct State {
    opts: LegacyOptions,
    /// Added to the real monotonic clock: see [`FakeLegacy::advance_clock`].
    offset: Duration,
    sessions: HashMap<u64, Session>,
    next_ordinal: u64,
    next_op: u64,
    request_seq: u64,
    reserved: u32,
    /// By lower-cased user name.
    lockouts: HashMap<String, Lockout>,
    counters: Counters,
    /// The request-rate window: its start and the data requests in it.
    rate_window: Option<(Instant, u32)>,
    /// Login attempts that reached the checks: when (real time) and how they ended.
    logins: VecDeque<(Instant, &'static str)>,
}

enum Auth {
    Session(u64),
    Mixed,
    None,
}

impl State {
    fn now(&self) -> Instant {
        let real = Instant::now();
        real.checked_add(self.offset).unwrap_or(real)
    }

    /// Closes the sessions idle for longer than `idle_timeout` (never one with a request in flight).
    fn sweep(&mut self) {
        let now = self.now();
        let idle = self.opts.idle_timeout;
        let before = self.sessions.len();
        self.sessions
            .retain(|_, s| s.in_flight > 0 || now.saturating_duration_since(s.last_seen) <= idle);
        self.counters.expiries += (before - self.sessions.len()) as u64;
        self.update_seats();
    }

    fn update_seats(&mut self) {
        self.counters.seats_in_use = self.sessions.len() as u64;
        self.counters.peak_seats = self.counters.peak_seats.max(self.counters.seats_in_use);
    }

    fn next_seq(&mut self) -> u64 {
        self.request_seq += 1;
        self.request_seq
    }

    /// Which live session the request's cookies name, if exactly one, by both cookies.
    fn resolve(&self, cookies: &[(String, String)]) -> Auth {
        let mut by_id = BTreeSet::new();
        let mut by_auth = BTreeSet::new();
        for (name, value) in cookies {
            if name == SESSION_COOKIE {
                by_id.extend(
                    self.sessions
                        .values()
                        .filter(|s| s.session_id == *value)
                        .map(|s| s.ordinal),
                );
            } else if name == AUTH_COOKIE {
                by_auth.extend(
                    self.sessions
                        .values()
                        .filter(|s| s.auth == *value || s.old_auth.contains(value))
                        .map(|s| s.ordinal),
                );
            }
        }
        let named: BTreeSet<u64> = by_id.union(&by_auth).copied().collect();
        if named.len() > 1 {
            return Auth::Mixed;
        }
        match (by_id.first(), by_auth.first()) {
            (Some(a), Some(b)) if a == b => Auth::Session(*a),
            _ => Auth::None,
        }
    }

    /// True when the request's `.ASPXAUTH` is one its session has since replaced.
    fn uses_stale_auth(&self, ordinal: u64, cookies: &[(String, String)]) -> bool {
        let Some(s) = self.sessions.get(&ordinal) else {
            return false;
        };
        cookies
            .iter()
            .any(|(n, v)| n == AUTH_COOKIE && s.old_auth.contains(v))
    }

    /// Counts a data request against the per-minute rate; `Some(retry_after)` when over it.
    fn over_rate(&mut self) -> Option<u64> {
        let limit = self.opts.max_requests_per_minute;
        if limit == 0 {
            return None;
        }
        let now = self.now();
        let minute = Duration::from_secs(60);
        let (start, n) = match self.rate_window {
            Some((start, n)) if now.saturating_duration_since(start) < minute => (start, n),
            _ => (now, 0),
        };
        if n >= limit {
            self.counters.requests_throttled += 1;
            self.rate_window = Some((start, n));
            let left = minute.saturating_sub(now.saturating_duration_since(start));
            return Some(left.as_secs().max(1));
        }
        self.rate_window = Some((start, n + 1));
        None
    }

    /// Notes that a request entered the handling of session `ordinal`.
    fn enter(&mut self, ordinal: u64) -> Option<Arc<tokio::sync::Mutex<()>>> {
        let now = self.now();
        let s = self.sessions.get_mut(&ordinal)?;
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
        s.last_seen = now;
        let (max, lock) = (s.max_in_flight, s.lock.clone());
        self.counters.max_concurrency_per_session =
            self.counters.max_concurrency_per_session.max(max);
        Some(lock)
    }
}

/// Records a login attempt (the most recent 10,000 are kept).
fn note_login(log: &mut VecDeque<(Instant, &'static str)>, outcome: &'static str) {
    if log.len() >= 10_000 {
        log.pop_front();
    }
    log.push_back((Instant::now(), outcome));
}

/// Decrements the session's in-flight count when the request ends (or is dropped).
struct InFlight {
    inner: Arc<Inner>,
    ordinal: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        let now = st.now();
        if let Some(s) = st.sessions.get_mut(&self.ordinal) {
            s.in_flight = s.in_flight.saturating_sub(1);
            s.last_seen = now;
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Serves a fake with default options on `listener` (the demo's legacy API).
pub fn spawn(listener: TcpListener) -> JoinHandle<()> {
    FakeLegacy::new(LegacyOptions::default()).spawn(listener)
}

/// Where a request goes.
enum Route {
    Health,
    Login,
    Logout,
    /// `/entity/auth/...` other than login and logout, or a wrong method on them.
    AuthOther {
        known: bool,
    },
    /// `/entity/{endpoint}/{version}/...`: `prefix` is `/entity/{endpoint}/{version}`.
    Data {
        prefix: String,
        op: DataOp,
    },
    /// Any other path (UI pages): login redirect without a session.
    Page,
}

enum DataOp {
    Echo,
    CounterIncrement,
    CounterRead,
    Slow,
    LongOpStart,
    LongOpStatus(Option<u64>),
    LongOpOther,
    Generic,
}

impl Route {
    fn of(method: &Method, path: &str) -> Route {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let is = |i: usize, name: &str| segs.get(i).is_some_and(|s| s.eq_ignore_ascii_case(name));
        if segs.len() == 1 && is(0, "health") && (method == Method::GET || method == Method::HEAD) {
            return Route::Health;
        }
        if !is(0, "entity") {
            return Route::Page;
        }
        if is(1, "auth") {
            let post = method == Method::POST;
            return match segs.len() {
                3 if is(2, "login") && post => Route::Login,
                3 if is(2, "logout") && post => Route::Logout,
                3 if is(2, "login") || is(2, "logout") => Route::AuthOther { known: true },
                _ => Route::AuthOther { known: false },
            };
        }
        let prefix = format!(
            "/{}",
            segs.iter().take(3).copied().collect::<Vec<_>>().join("/")
        );
        let rest = segs.get(3..).unwrap_or(&[]);
        let r = |i: usize, name: &str| rest.get(i).is_some_and(|s| s.eq_ignore_ascii_case(name));
        let op = match rest.len() {
            1 if r(0, "Echo") && method == Method::GET => DataOp::Echo,
            1 if r(0, "Counter") && method == Method::PUT => DataOp::CounterIncrement,
            1 if r(0, "Counter") && method == Method::GET => DataOp::CounterRead,
            1 if r(0, "Slow") && method == Method::GET => DataOp::Slow,
            2 if r(0, "LongOp") && r(1, "Start") && method == Method::POST => DataOp::LongOpStart,
            3 if r(0, "LongOp") && r(1, "Status") && method == Method::GET => {
                DataOp::LongOpStatus(rest.get(2).and_then(|id| id.parse().ok()))
            }
            n if n >= 1 && r(0, "LongOp") => DataOp::LongOpOther,
            _ => DataOp::Generic,
        };
        Route::Data { prefix, op }
    }
}

struct LoginForm {
    name: String,
    password: String,
    tenant: Option<String>,
    branch: Option<String>,
}

enum LoginOutcome {
    Ok {
        session_id: String,
        auth: String,
        branch_no: usize,
        tenant: Option<String>,
        seq: u64,
    },
    Refused(StatusCode, &'static str),
    /// The login limit as a redirect to the error page.
    LimitRedirect,
    BadBranch(String),
}

impl FakeLegacy {
    /// A fake with no sessions.
    pub fn new(opts: LegacyOptions) -> Self {
        FakeLegacy {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    opts,
                    offset: Duration::ZERO,
                    sessions: HashMap::new(),
                    next_ordinal: 1,
                    next_op: 1,
                    request_seq: 0,
                    reserved: 0,
                    lockouts: HashMap::new(),
                    counters: Counters::default(),
                    rate_window: None,
                    logins: VecDeque::new(),
                }),
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

    /// Answers one request (the whole fake: legacy API and control API).
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        if path == "/_fake" || path.starts_with("/_fake/") {
            return self.control(req, &path).await;
        }
        let cookies = parse_cookies(req.headers());
        let strict = {
            let mut st = self.inner.lock();
            st.sweep();
            if cookies
                .iter()
                .any(|(name, _)| !ISSUED_COOKIES.contains(&name.as_str()))
            {
                st.counters.foreign_cookie += 1;
            }
            if req.headers().contains_key(header::AUTHORIZATION) {
                st.counters.authorization_header_seen += 1;
            }
            st.opts.strict_content_length
        };
        let route = Route::of(req.method(), &path);
        if self.inner.lock().opts.unavailable && !matches!(route, Route::Health) {
            return service_unavailable();
        }
        if strict && req.method() == Method::POST && !has_length(req.headers()) {
            if matches!(route, Route::Logout) {
                self.inner.lock().counters.logouts_411 += 1;
            }
            return length_required();
        }
        match route {
            Route::Health => json_response(StatusCode::OK, &json!({"status": "ok"})),
            Route::Login => self.login(req).await,
            Route::Logout => self.logout(&cookies),
            Route::AuthOther { known: true } => json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"message": format!("The requested resource does not support http method '{}'.", req.method())}),
            ),
            Route::AuthOther { known: false } => not_found(),
            Route::Data { prefix, op } => {
                self.session_request(req, &cookies, Some((prefix, op)))
                    .await
            }
            Route::Page => self.session_request(req, &cookies, None).await,
        }
    }

    /// The same JSON as `GET /_fake/state`.
    pub fn state(&self) -> Value {
        let mut st = self.inner.lock();
        st.sweep();
        let now = st.now();
        let mut sessions: Vec<&Session> = st.sessions.values().collect();
        sessions.sort_by_key(|s| s.ordinal);
        let sessions: Vec<Value> = sessions
            .iter()
            .map(|s| {
                json!({
                    "session": s.ordinal,
                    "user": s.user,
                    "tenant": s.tenant,
                    "branch": s.branch,
                    "created_ms_ago": millis(now.saturating_duration_since(s.created)),
                    "idle_ms": millis(now.saturating_duration_since(s.last_seen)),
                    "in_flight": s.in_flight,
                    "max_in_flight": s.max_in_flight,
                    "counter": s.counter,
                    "long_op_running": running_op(s, now, st.opts.long_op_duration).is_some(),
                })
            })
            .collect();
        let mut locked: Vec<&str> = st
            .lockouts
            .iter()
            .filter(|(_, l)| l.locked_until.is_some_and(|t| t > now))
            .map(|(name, _)| name.as_str())
            .collect();
        locked.sort_unstable();
        json!({
            "counters": serde_json::to_value(st.counters).unwrap_or(Value::Null),
            "sessions": sessions,
            "reserved_seats": st.reserved,
            "max_api_users": st.opts.max_api_users,
            "locked_users": locked,
            "clock_offset_ms": millis(st.offset),
        })
    }

    /// The counters, after closing idle sessions.
    pub fn counters(&self) -> Counters {
        let mut st = self.inner.lock();
        st.sweep();
        st.counters
    }

    /// Closes session `session` (by ordinal), or every session for `None`, without a logout:
    /// the seat is freed and the closing counted in `expiries`.
    pub fn expire(&self, session: Option<u64>) {
        self.expire_sessions(session);
    }

    fn expire_sessions(&self, session: Option<u64>) -> usize {
        let mut st = self.inner.lock();
        let n = match session {
            None => {
                let n = st.sessions.len();
                st.sessions.clear();
                n
            }
            Some(ordinal) => usize::from(st.sessions.remove(&ordinal).is_some()),
        };
        st.counters.expiries += n as u64;
        st.update_seats();
        n
    }

    /// Session `session`'s next data answer ends it: the answer is served and deletes
    /// `.ASPXAUTH` (the upstream signing the session out by itself). False if no such session.
    pub fn sign_out_on_next_answer(&self, session: u64) -> bool {
        let mut st = self.inner.lock();
        match st.sessions.get_mut(&session) {
            Some(s) => {
                s.sign_out_next = true;
                true
            }
            None => false,
        }
    }

    /// The login attempts so far, oldest first: when they were answered (on the real clock)
    /// and how (`ok`, `bad_credentials`, `limit`, `locked`). Tests check the spacing of
    /// refused attempts with it.
    pub fn login_attempts(&self) -> Vec<(Instant, &'static str)> {
        self.inner.lock().logins.iter().copied().collect()
    }

    /// Replaces the password of user `name` (the account's password changed upstream).
    pub fn set_password(&self, name: &str, password: &str) {
        let mut st = self.inner.lock();
        for u in &mut st.opts.users {
            if u.name.eq_ignore_ascii_case(name) {
                u.password = password.to_owned();
            }
        }
    }

    /// The live sessions' ordinals, in order.
    pub fn live_sessions(&self) -> Vec<u64> {
        let mut st = self.inner.lock();
        st.sweep();
        let mut v: Vec<u64> = st.sessions.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Seats held by "other integrations" (replaces the previous number).
    pub fn reserve_seats(&self, n: u32) {
        self.inner.lock().reserved = n;
    }

    /// Changes options at run time, as `POST /_fake/config` does.
    pub fn configure_with(&self, change: impl FnOnce(&mut LegacyOptions)) {
        let mut st = self.inner.lock();
        change(&mut st.opts);
        st.sweep();
    }

    /// The status of the "API Login Limit" answer (an invalid status is answered as 500).
    pub fn set_login_limit_status(&self, s: u16) {
        self.inner.lock().opts.login_limit_status = s;
    }

    pub fn set_idle_timeout(&self, d: Duration) {
        let mut st = self.inner.lock();
        st.opts.idle_timeout = d;
        st.sweep();
    }

    /// Moves the fake's clock forward: idle expiry, lockouts and long operations use the real
    /// monotonic clock plus the sum of all advances.
    pub fn advance_clock(&self, d: Duration) {
        let mut st = self.inner.lock();
        st.offset = st.offset.saturating_add(d);
        st.sweep();
    }

    /// Drops all sessions, counters, lockouts and reserved seats. Options (including those changed
    /// at run time), the clock and the session ordinals are kept.
    pub fn reset(&self) {
        let mut st = self.inner.lock();
        st.sessions.clear();
        st.counters = Counters::default();
        st.lockouts.clear();
        st.reserved = 0;
    }

    async fn login(&self, req: Request<Incoming>) -> Response<Body> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let body = match read_limited(req.into_body()).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let Some(form) = parse_login(content_type.as_deref(), &body) else {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"message": "The request is invalid."}),
            );
        };
        let delay = self.inner.lock().opts.login_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match self.try_login(&form) {
            LoginOutcome::Ok {
                session_id,
                auth,
                branch_no,
                tenant,
                seq,
            } => {
                let mut resp = empty(StatusCode::NO_CONTENT);
                let h = resp.headers_mut();
                add_cookie(
                    h,
                    &format!("{SESSION_COOKIE}={session_id}; path=/; HttpOnly; SameSite=Lax"),
                );
                add_cookie(h, &format!("{AUTH_COOKIE}={auth}; path=/; HttpOnly"));
                add_cookie(h, &format!("UserBranch={branch_no}; path=/"));
                add_cookie(h, "Locale=Culture=en-US&TimeZone=GMTM0800A; path=/");
                add_request_cookies(h, seq, "/entity/auth/login");
                if let Some(t) = tenant {
                    add_cookie(h, &format!("CompanyID={t}; path=/"));
                }
                resp
            }
            LoginOutcome::Refused(status, text) => px_error(status, text),
            LoginOutcome::LimitRedirect => {
                let mut r = empty(StatusCode::FOUND);
                r.headers_mut()
                    .insert(header::LOCATION, HeaderValue::from_static(LIMIT_REDIRECT));
                r
            }
            LoginOutcome::BadBranch(b) => px_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("Error: The branch '{b}' is not available to the user."),
            ),
        }
    }

    /// The login checks, in Acumatica's order: lockout, credentials, tenant, seat.
    fn try_login(&self, form: &LoginForm) -> LoginOutcome {
        let mut guard = self.inner.lock();
        guard.sweep();
        let now = guard.now();
        let st = &mut *guard;
        let key = form.name.to_lowercase();

        let lockout = st.lockouts.entry(key).or_default();
        match lockout.locked_until {
            Some(until) if until > now => {
                st.counters.logins_locked += 1;
                note_login(&mut st.logins, "locked");
                return LoginOutcome::Refused(StatusCode::INTERNAL_SERVER_ERROR, LOCKED_OUT);
            }
            Some(_) => *lockout = Lockout::default(),
            None => {}
        }

        let Some(user) = st
            .opts
            .users
            .iter()
            .find(|u| u.name.eq_ignore_ascii_case(&form.name) && u.password == form.password)
        else {
            st.counters.logins_bad_credentials += 1;
            note_login(&mut st.logins, "bad_credentials");
            let reset = st.opts.lockout_reset;
            while lockout
                .failures
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) > reset)
            {
                lockout.failures.pop_front();
            }
            lockout.failures.push_back(now);
            let threshold = st.opts.lockout_threshold as usize;
            if threshold > 0 && lockout.failures.len() >= threshold {
                lockout.failures.clear();
                lockout.locked_until = now.checked_add(st.opts.lockout_duration);
            }
            return LoginOutcome::Refused(StatusCode::INTERNAL_SERVER_ERROR, INVALID_CREDENTIALS);
        };
        lockout.failures.clear();

        let Some(tenant) = determine_tenant(&st.opts.tenants, user, form.tenant.as_deref()) else {
            return LoginOutcome::Refused(StatusCode::INTERNAL_SERVER_ERROR, NO_COMPANY);
        };
        let Some((branch, branch_no)) = determine_branch(user, form.branch.as_deref()) else {
            return LoginOutcome::BadBranch(form.branch.clone().unwrap_or_default());
        };

        let taken = st.sessions.len() as u64 + u64::from(st.reserved);
        if taken >= u64::from(st.opts.max_api_users) {
            st.counters.logins_rejected_limit += 1;
            note_login(&mut st.logins, "limit");
            if st.opts.login_limit_shape == LimitShape::Redirect {
                return LoginOutcome::LimitRedirect;
            }
            let status = StatusCode::from_u16(st.opts.login_limit_status)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return LoginOutcome::Refused(status, LOGIN_LIMIT);
        }

        let ordinal = st.next_ordinal;
        st.next_ordinal += 1;
        let session_id = random_session_id();
        let auth = random_hex(4);
        let user_name = user.name.clone();
        st.sessions.insert(
            ordinal,
            Session {
                ordinal,
                session_id: session_id.clone(),
                auth: auth.clone(),
                user: user_name,
                tenant: tenant.clone(),
                branch,
                created: now,
                last_seen: now,
                in_flight: 0,
                max_in_flight: 0,
                counter: 0,
                lock: Arc::new(tokio::sync::Mutex::new(())),
                ops: HashMap::new(),
                old_auth: Vec::new(),
                answers: 0,
                sign_out_next: false,
            },
        );
        st.counters.logins_ok += 1;
        note_login(&mut st.logins, "ok");
        st.update_seats();
        let seq = st.next_seq();
        LoginOutcome::Ok {
            session_id,
            auth,
            branch_no,
            // CompanyID is set only when the client named a tenant.
            tenant: form.tenant.as_ref().and(tenant),
            seq,
        }
    }

    /// Ends the session at once (not behind its lock); idempotent.
    fn logout(&self, cookies: &[(String, String)]) -> Response<Body> {
        let ended = {
            let mut st = self.inner.lock();
            match st.resolve(cookies) {
                Auth::Session(ordinal) => {
                    // Counted as a request on the session: signing out of a session with a
                    // request in flight shows as concurrency.
                    if st.enter(ordinal).is_some() {
                        st.sessions.remove(&ordinal);
                    }
                    st.counters.logouts += 1;
                    st.update_seats();
                    let rotate = st.opts.rotate_cookies;
                    Some((rotate, st.next_seq()))
                }
                Auth::Mixed => {
                    st.counters.mixed_session_cookies += 1;
                    None
                }
                Auth::None => None,
            }
        };
        let mut resp = empty(StatusCode::NO_CONTENT);
        if let Some((rotate, seq)) = ended {
            add_cookie(
                resp.headers_mut(),
                &format!("{AUTH_COOKIE}=; expires=Thu, 01-Jan-1970 00:00:00 GMT; path=/"),
            );
            if rotate {
                add_request_cookies(resp.headers_mut(), seq, "/entity/auth/logout");
            }
        }
        resp
    }

    /// A request that needs a session: a data endpoint (`data` is `Some`) or a page.
    async fn session_request(
        &self,
        req: Request<Incoming>,
        cookies: &[(String, String)],
        data: Option<(String, DataOp)>,
    ) -> Response<Body> {
        let refuse = |data: &Option<(String, DataOp)>, path: &str| match data {
            Some(_) => json_response(StatusCode::UNAUTHORIZED, &json!({"message": DENIED})),
            None => login_redirect(path),
        };
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_owned();
        let entered = {
            let mut st = self.inner.lock();
            let entered = match st.resolve(cookies) {
                Auth::Session(ordinal) => st
                    .enter(ordinal)
                    .map(|lock| (ordinal, lock, st.opts.serialize_per_session)),
                Auth::Mixed => {
                    st.counters.mixed_session_cookies += 1;
                    None
                }
                Auth::None => None,
            };
            if entered.is_none() {
                st.counters.requests_unauthenticated += 1;
            }
            entered
        };
        let Some((ordinal, lock, serialize)) = entered else {
            return refuse(&data, &path);
        };
        let _in_flight = InFlight {
            inner: self.inner.clone(),
            ordinal,
        };
        let _turn = if serialize {
            Some(lock.lock_owned().await)
        } else {
            None
        };
        let throttled = {
            let mut st = self.inner.lock();
            if !st.sessions.contains_key(&ordinal) {
                // The session ended while this request waited for its turn.
                st.counters.requests_unauthenticated += 1;
                None
            } else {
                if st.uses_stale_auth(ordinal, cookies) {
                    st.counters.stale_auth_cookie += 1;
                }
                Some(if data.is_some() { st.over_rate() } else { None })
            }
        };
        let retry_after = match throttled {
            None => return refuse(&data, &path),
            Some(r) => r,
        };
        if let Some(secs) = retry_after {
            let mut r = json_response(
                StatusCode::TOO_MANY_REQUESTS,
                &json!({"message": THROTTLED}),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return r;
        }
        let (body_bytes, body_sha256) = drain(body).await;
        let is_data = data.is_some();
        let mut resp = match data {
            None => json_response(
                StatusCode::OK,
                &json!({"session": ordinal, "path": path, "method": parts.method.as_str(), "body_bytes": body_bytes, "body_sha256": body_sha256}),
            ),
            Some((prefix, op)) => {
                self.data_op(ordinal, &prefix, op, &parts, body_bytes, &body_sha256)
                    .await
            }
        };
        // What the session came to while the request ran: ended (logout, expiry), signed out
        // by this very answer, due for a renewed `.ASPXAUTH`, or simply on.
        let mut st = self.inner.lock();
        let renew_every = st.opts.renew_auth_every;
        let rotate = st.opts.rotate_cookies;
        let ended = match st.sessions.get_mut(&ordinal) {
            None => true,
            Some(s) if s.sign_out_next => {
                st.sessions.remove(&ordinal);
                st.counters.signed_out_by_answer += 1;
                st.counters.expiries += 1;
                st.update_seats();
                delete_auth_cookie(resp.headers_mut());
                false
            }
            Some(s) => {
                s.answers += 1;
                if is_data && renew_every > 0 && s.answers >= renew_every {
                    s.answers = 0;
                    let fresh = random_hex(4);
                    let old = std::mem::replace(&mut s.auth, fresh.clone());
                    // Old tickets lapse in time; the last few are kept to recognise them.
                    if s.old_auth.len() >= 16 {
                        s.old_auth.remove(0);
                    }
                    s.old_auth.push(old);
                    add_cookie(
                        resp.headers_mut(),
                        &format!("{AUTH_COOKIE}={fresh}; path=/; HttpOnly"),
                    );
                    st.counters.auth_renewed += 1;
                }
                false
            }
        };
        if ended {
            // The real API fails a request whose session ended under it: not signed in.
            st.counters.ended_mid_request += 1;
            st.counters.requests_unauthenticated += 1;
            drop(st);
            let mut r = if is_data {
                json_response(StatusCode::UNAUTHORIZED, &json!({"message": DENIED}))
            } else {
                login_redirect(&path)
            };
            delete_auth_cookie(r.headers_mut());
            return r;
        }
        let seq = rotate.then(|| st.next_seq());
        drop(st);
        if let Some(seq) = seq {
            add_request_cookies(resp.headers_mut(), seq, &path);
        }
        resp
    }

    async fn data_op(
        &self,
        ordinal: u64,
        prefix: &str,
        op: DataOp,
        parts: &http::request::Parts,
        body_bytes: u64,
        body_sha256: &str,
    ) -> Response<Body> {
        match op {
            DataOp::Slow => {
                let ms = parts.uri.query().and_then(|q| {
                    url::form_urlencoded::parse(q.as_bytes())
                        .find(|(k, _)| k == "ms")
                        .map(|(_, v)| v.parse::<u64>().ok())
                });
                let ms = match ms {
                    None => 0,
                    Some(Some(ms)) => ms.min(MAX_SLOW_MS),
                    Some(None) => {
                        return json_response(
                            StatusCode::BAD_REQUEST,
                            &json!({"message": "ms must be a number of milliseconds."}),
                        )
                    }
                };
                tokio::time::sleep(Duration::from_millis(ms)).await;
                json_response(StatusCode::OK, &json!({"session": ordinal}))
            }
            op => self.data_op_now(ordinal, prefix, op, parts, body_bytes, body_sha256),
        }
    }

    /// The data operations that do not wait.
    fn data_op_now(
        &self,
        ordinal: u64,
        prefix: &str,
        op: DataOp,
        parts: &http::request::Parts,
        body_bytes: u64,
        body_sha256: &str,
    ) -> Response<Body> {
        let mut guard = self.inner.lock();
        let now = guard.now();
        let st = &mut *guard;
        let long_op_duration = st.opts.long_op_duration;
        let Some(s) = st.sessions.get_mut(&ordinal) else {
            // Ended during this request: the caller answers 401.
            return empty(StatusCode::UNAUTHORIZED);
        };
        let running = running_op(s, now, long_op_duration);
        let is_long_op = matches!(
            op,
            DataOp::LongOpStart | DataOp::LongOpStatus(_) | DataOp::LongOpOther
        );
        if let Some(id) = running {
            let own_status = matches!(op, DataOp::LongOpStatus(Some(x)) if x == id);
            if is_long_op && !own_status {
                return px_error(StatusCode::INTERNAL_SERVER_ERROR, OPERATION_RUNNING);
            }
        }
        match op {
            DataOp::Echo => json_response(
                StatusCode::OK,
                &json!({"session": ordinal, "user": s.user, "tenant": s.tenant, "branch": s.branch}),
            ),
            DataOp::CounterIncrement => {
                s.counter += 1;
                json_response(
                    StatusCode::OK,
                    &json!({"session": ordinal, "counter": s.counter}),
                )
            }
            DataOp::CounterRead => json_response(
                StatusCode::OK,
                &json!({"session": ordinal, "counter": s.counter}),
            ),
            DataOp::LongOpStart => {
                let id = st.next_op;
                st.next_op += 1;
                s.ops.insert(id, now);
                let mut resp = empty(StatusCode::ACCEPTED);
                if let Ok(v) = HeaderValue::from_str(&format!("{prefix}/LongOp/Status/{id}")) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                resp
            }
            DataOp::LongOpStatus(id) => match id.and_then(|id| s.ops.get(&id)) {
                Some(started) if now.saturating_duration_since(*started) < long_op_duration => {
                    empty(StatusCode::ACCEPTED)
                }
                Some(_) => empty(StatusCode::NO_CONTENT),
                None => not_found(),
            },
            DataOp::LongOpOther | DataOp::Generic | DataOp::Slow => json_response(
                StatusCode::OK,
                &json!({"session": ordinal, "path": parts.uri.path(), "method": parts.method.as_str(), "body_bytes": body_bytes, "body_sha256": body_sha256}),
            ),
        }
    }

    /// `/_fake/...`.
    async fn control(&self, req: Request<Incoming>, path: &str) -> Response<Body> {
        let sub = path.strip_prefix("/_fake").unwrap_or_default();
        let method = req.method().clone();
        if sub == "/state" {
            return if method == Method::GET {
                json_response(StatusCode::OK, &self.state())
            } else {
                control_error(StatusCode::METHOD_NOT_ALLOWED, "use GET")
            };
        }
        if !matches!(
            sub,
            "/expire" | "/reserve-seats" | "/config" | "/reset" | "/advance-clock" | "/sign-out"
        ) {
            return control_error(StatusCode::NOT_FOUND, "unknown control endpoint");
        }
        if method != Method::POST {
            return control_error(StatusCode::METHOD_NOT_ALLOWED, "use POST");
        }
        let body = match read_limited(req.into_body()).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let v: Value = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            match serde_json::from_slice(&body) {
                Ok(v @ Value::Object(_)) => v,
                _ => return control_error(StatusCode::BAD_REQUEST, "body must be a JSON object"),
            }
        };
        match sub {
            "/expire" => {
                let which = if v["all"] == Value::Bool(true) {
                    None
                } else if let Some(n) = v["session"].as_u64() {
                    Some(n)
                } else {
                    return control_error(
                        StatusCode::BAD_REQUEST,
                        "expected {\"session\": <ordinal>} or {\"all\": true}",
                    );
                };
                let n = self.expire_sessions(which);
                json_response(StatusCode::OK, &json!({"expired": n}))
            }
            "/reserve-seats" => match v["n"].as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) => {
                    self.reserve_seats(n);
                    json_response(StatusCode::OK, &json!({"reserved_seats": n}))
                }
                None => control_error(StatusCode::BAD_REQUEST, "expected {\"n\": <seats>}"),
            },
            "/advance-clock" => match v["ms"].as_u64() {
                Some(ms) => {
                    self.advance_clock(Duration::from_millis(ms));
                    json_response(StatusCode::OK, &json!({"advanced_ms": ms}))
                }
                None => control_error(StatusCode::BAD_REQUEST, "expected {\"ms\": <millis>}"),
            },
            "/reset" => {
                self.reset();
                json_response(StatusCode::OK, &json!({"reset": true}))
            }
            "/sign-out" => match v["session"].as_u64() {
                Some(n) if self.sign_out_on_next_answer(n) => {
                    json_response(StatusCode::OK, &json!({"sign_out_next": n}))
                }
                Some(_) => control_error(StatusCode::NOT_FOUND, "no such session"),
                None => control_error(StatusCode::BAD_REQUEST, "expected {\"session\": <ordinal>}"),
            },
            _ => self.configure(&v),
        }
    }

    /// `POST /_fake/config`: validates every member first, then applies them all.
    fn configure(&self, v: &Value) -> Response<Body> {
        let Some(obj) = v.as_object() else {
            return control_error(StatusCode::BAD_REQUEST, "body must be a JSON object");
        };
        let mut st = self.inner.lock();
        let mut opts = st.opts.clone();
        for (key, value) in obj {
            let ok = match key.as_str() {
                "login_limit_status" => value
                    .as_u64()
                    .and_then(|s| u16::try_from(s).ok())
                    .filter(|s| StatusCode::from_u16(*s).is_ok())
                    .map(|s| opts.login_limit_status = s),
                "idle_timeout_ms" => value
                    .as_u64()
                    .map(|ms| opts.idle_timeout = Duration::from_millis(ms)),
                "long_op_duration_ms" => value
                    .as_u64()
                    .map(|ms| opts.long_op_duration = Duration::from_millis(ms)),
                "max_api_users" => value
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .map(|n| opts.max_api_users = n),
                "serialize_per_session" => value.as_bool().map(|b| opts.serialize_per_session = b),
                "rotate_cookies" => value.as_bool().map(|b| opts.rotate_cookies = b),
                "strict_content_length" => value.as_bool().map(|b| opts.strict_content_length = b),
                "renew_auth_every" => value
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .map(|n| opts.renew_auth_every = n),
                "max_requests_per_minute" => value
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .map(|n| opts.max_requests_per_minute = n),
                "login_delay_ms" => value
                    .as_u64()
                    .map(|ms| opts.login_delay = Duration::from_millis(ms)),
                "unavailable" => value.as_bool().map(|b| opts.unavailable = b),
                "login_limit_shape" => match value.as_str() {
                    Some("error") => Some(LimitShape::Error),
                    Some("redirect") => Some(LimitShape::Redirect),
                    _ => None,
                }
                .map(|shape| opts.login_limit_shape = shape),
                _ => {
                    return control_error(StatusCode::BAD_REQUEST, &format!("unknown option {key}"))
                }
            };
            if ok.is_none() {
                return control_error(StatusCode::BAD_REQUEST, &format!("invalid value for {key}"));
            }
        }
        st.opts = opts;
        st.sweep();
        let o = &st.opts;
        json_response(
            StatusCode::OK,
            &json!({
                "login_limit_status": o.login_limit_status,
                "idle_timeout_ms": millis(o.idle_timeout),
                "long_op_duration_ms": millis(o.long_op_duration),
                "max_api_users": o.max_api_users,
                "serialize_per_session": o.serialize_per_session,
                "rotate_cookies": o.rotate_cookies,
                "strict_content_length": o.strict_content_length,
                "renew_auth_every": o.renew_auth_every,
                "login_delay_ms": millis(o.login_delay),
                "unavailable": o.unavailable,
                "max_requests_per_minute": o.max_requests_per_minute,
                "login_limit_shape": match o.login_limit_shape {
                    LimitShape::Error => "error",
                    LimitShape::Redirect => "redirect",
                },
            }),
        )
    }
}

/// The id of the long operation running in the session, if any.
fn running_op(s: &Session, now: Instant, duration: Duration) -> Option<u64> {
    s.ops
        .iter()
        .filter(|(_, started)| now.saturating_duration_since(**started) < duration)
        .map(|(id, _)| *id)
        .max()
}

/// The tenant of the session (`None` only when no tenant is configured and none was named), or
/// `None` when it cannot be determined.
fn determine_tenant(
    tenants: &[String],
    user: &LegacyUser,
    requested: Option<&str>,
) -> Option<Option<String>> {
    let allowed =
        |t: &str| user.tenants.is_empty() || user.tenants.iter().any(|u| u.eq_ignore_ascii_case(t));
    match requested {
        Some(r) => tenants
            .iter()
            .find(|t| t.eq_ignore_ascii_case(r) && allowed(t))
            .map(|t| Some(t.clone())),
        None => match tenants {
            [] => Some(None),
            [only] if allowed(only) => Some(Some(only.clone())),
            _ => None,
        },
    }
}

/// The branch of the session and its number (the `UserBranch` cookie), or `None` when the user
/// does not have the requested branch.
fn determine_branch(user: &LegacyUser, requested: Option<&str>) -> Option<(Option<String>, usize)> {
    match requested {
        Some(r) if user.branches.is_empty() => Some((Some(r.to_owned()), 1)),
        Some(r) => user
            .branches
            .iter()
            .position(|b| b.eq_ignore_ascii_case(r))
            .map(|i| (user.branches.get(i).cloned(), i + 1)),
        None => Some((
            user.branches.first().cloned(),
            usize::from(!user.branches.is_empty()),
        )),
    }
}

/// `name`, `password` (required strings), `tenant` or `company`, `branch` from a JSON or
/// form-encoded body; field names are case-insensitive (ASP.NET model binding).
fn parse_login(content_type: Option<&str>, body: &[u8]) -> Option<LoginForm> {
    let ct = content_type.unwrap_or("").to_ascii_lowercase();
    let fields: HashMap<String, String> = if ct.starts_with("application/x-www-form-urlencoded") {
        url::form_urlencoded::parse(body)
            .map(|(k, v)| (k.to_lowercase(), v.into_owned()))
            .collect()
    } else if ct.is_empty() || ct.starts_with("application/json") || ct.contains("+json") {
        match serde_json::from_slice::<Value>(body).ok()? {
            Value::Object(m) => m
                .into_iter()
                .filter_map(|(k, v)| match v {
                    Value::String(s) => Some((k.to_lowercase(), s)),
                    _ => None,
                })
                .collect(),
            _ => return None,
        }
    } else {
        return None;
    };
    let opt = |k: &str| fields.get(k).filter(|v| !v.is_empty()).cloned();
    Some(LoginForm {
        name: fields.get("name")?.clone(),
        password: fields.get("password")?.clone(),
        tenant: opt("tenant").or_else(|| opt("company")),
        branch: opt("branch"),
    })
}

/// Every cookie of every `Cookie` header, leniently: pieces split on `;`, name and value split at
/// the first `=` (a piece without `=` is a name with an empty value).
fn parse_cookies(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for v in headers.get_all(header::COOKIE) {
        let text = String::from_utf8_lossy(v.as_bytes());
        for piece in text.split(';') {
            let piece = piece.trim();
            if piece.is_empty() {
                continue;
            }
            let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
            out.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    out
}

fn has_length(headers: &HeaderMap) -> bool {
    headers.contains_key(header::CONTENT_LENGTH) || headers.contains_key(header::TRANSFER_ENCODING)
}

async fn read_limited(body: Incoming) -> Result<Bytes, Response<Body>> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(_) => Err(json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({"message": "The request body is too large."}),
        )),
    }
}

/// Reads and discards a body of any size; returns its length and SHA-256 (hex), so that tests
/// can check that a body arrived byte for byte.
async fn drain(mut body: Incoming) -> (u64, String) {
    use sha2::Digest as _;
    let mut n = 0u64;
    let mut digest = sha2::Sha256::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    n += d.len() as u64;
                    digest.update(d);
                }
            }
            Err(_) => break,
        }
    }
    let hex = digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (n, hex)
}

fn random_session_id() -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz012345";
    rand::random::<[u8; 24]>()
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(b & 31)]))
        .collect()
}

/// `words` × 32 hex digits.
fn random_hex(words: usize) -> String {
    (0..words)
        .map(|_| format!("{:032X}", rand::random::<u128>()))
        .collect()
}

fn dotnet_ticks() -> u128 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    DOTNET_TICKS_AT_UNIX_EPOCH + since_epoch.as_nanos() / 100
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn add_cookie(headers: &mut HeaderMap, cookie: &str) {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        headers.append(header::SET_COOKIE, v);
    }
}

/// Fresh `requestid` and `requeststat` cookies.
fn add_request_cookies(headers: &mut HeaderMap, seq: u64, path: &str) {
    add_cookie(
        headers,
        &format!("requestid={:032X}; path=/", rand::random::<u128>()),
    );
    add_cookie(
        headers,
        &format!(
            "requeststat=+st:{seq}+sc:~{path}+start:{}+tg:; path=/",
            dotnet_ticks()
        ),
    );
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(proxy::full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(proxy::full(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// An error in Acumatica's shape, stack trace included.
fn px_error(status: StatusCode, text: &str) -> Response<Body> {
    json_response(
        status,
        &json!({
            "message": "An error has occurred.",
            "exceptionMessage": text,
            "exceptionType": "PX.Data.PXException",
            "stackTrace": STACK_TRACE,
        }),
    )
}

/// The deletion of `.ASPXAUTH` that a signed-out session's answers carry.
fn delete_auth_cookie(headers: &mut HeaderMap) {
    add_cookie(
        headers,
        &format!("{AUTH_COOKIE}=; expires=Thu, 01-Jan-1970 00:00:00 GMT; path=/"),
    );
}

fn not_found() -> Response<Body> {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"message": "No HTTP resource was found that matches the request URI."}),
    )
}

/// IIS's answer while the application pool is stopped.
fn service_unavailable() -> Response<Body> {
    let mut r = Response::new(proxy::full(
        "<h2>Service Unavailable</h2><hr><p>HTTP Error 503. The service is unavailable.</p>",
    ));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=us-ascii"),
    );
    r
}

/// IIS's answer to a `POST` without a length.
fn length_required() -> Response<Body> {
    let mut r = Response::new(proxy::full(
        "<h2>Length Required</h2><hr><p>HTTP Error 411. The request must be chunked or have a content length.</p>",
    ));
    *r.status_mut() = StatusCode::LENGTH_REQUIRED;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=us-ascii"),
    );
    r
}

/// What Acumatica's UI pages answer without a session.
fn login_redirect(path: &str) -> Response<Body> {
    let encoded: String = url::form_urlencoded::byte_serialize(path.as_bytes()).collect();
    let mut r = empty(StatusCode::FOUND);
    if let Ok(v) = HeaderValue::from_str(&format!("/Frames/Login.aspx?ReturnUrl={encoded}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn control_error(status: StatusCode, text: &str) -> Response<Body> {
    json_response(status, &json!({"error": text}))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::SocketAddr;

    use http_body_util::Full;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Reply {
        status: u16,
        headers: HeaderMap,
        body: String,
    }

    impl Reply {
        fn json(&self) -> Value {
            serde_json::from_str(&self.body).unwrap_or(Value::Null)
        }

        fn set_cookies(&self) -> Vec<String> {
            self.headers
                .get_all(header::SET_COOKIE)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect()
        }

        /// A `Cookie` header built from the `Set-Cookie`s (name=value of each).
        fn jar(&self) -> String {
            self.set_cookies()
                .iter()
                .map(|c| c.split(';').next().unwrap().to_owned())
                .collect::<Vec<_>>()
                .join("; ")
        }

        fn exception(&self) -> String {
            self.json()["exceptionMessage"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        }
    }

    struct Running {
        fake: FakeLegacy,
        addr: SocketAddr,
        base: String,
        client: Client<HttpConnector, Full<Bytes>>,
        task: JoinHandle<()>,
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn start(opts: LegacyOptions) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = FakeLegacy::new(opts);
        let task = fake.spawn(listener);
        Running {
            fake,
            addr,
            base: format!("http://{addr}"),
            client: Client::builder(TokioExecutor::new()).build_http(),
            task,
        }
    }

    const ECHO: &str = "/entity/Default/24.200.001/Echo";

    impl Running {
        async fn call(
            &self,
            method: &str,
            path: &str,
            headers: &[(&str, &str)],
            body: &str,
        ) -> Reply {
            let mut b = Request::builder()
                .method(method)
                .uri(format!("{}{path}", self.base));
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            // hyper's client sends no Content-Length for an empty body; IIS wants one on a POST.
            if method == "POST"
                && !headers
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            {
                b = b.header("content-length", body.len());
            }
            let resp = self
                .client
                .request(b.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
                .await
                .unwrap();
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            Reply {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            }
        }

        async fn login_as(&self, name: &str, password: &str, tenant: Option<&str>) -> Reply {
            let mut body = json!({"name": name, "password": password});
            if let Some(t) = tenant {
                body["tenant"] = json!(t);
            }
            self.call(
                "POST",
                "/entity/auth/login",
                &[("content-type", "application/json")],
                &body.to_string(),
            )
            .await
        }

        /// Logs in as admin; returns the jar as a `Cookie` header.
        async fn login(&self) -> String {
            let r = self.login_as("admin", "123", Some("MyStore")).await;
            assert_eq!(r.status, 204, "{}", r.body);
            r.jar()
        }

        async fn echo(&self, cookie: &str) -> Reply {
            self.call("GET", ECHO, &[("cookie", cookie)], "").await
        }

        async fn logout(&self, cookie: &str) -> Reply {
            self.call(
                "POST",
                "/entity/auth/logout",
                &[("cookie", cookie), ("content-length", "0")],
                "",
            )
            .await
        }

        /// Sends `request` as written on a fresh connection; returns the raw answer.
        async fn raw(&self, request: &str) -> String {
            let mut s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
            s.write_all(request.as_bytes()).await.unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.unwrap();
            String::from_utf8_lossy(&buf).into_owned()
        }
    }

    fn cookie_value<'a>(jar: &'a str, name: &str) -> &'a str {
        jar.split("; ")
            .find_map(|c| c.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
            .unwrap()
    }

    #[tokio::test]
    async fn login_sets_the_seven_cookies_and_takes_a_seat() {
        let f = start(LegacyOptions::default()).await;
        let r = f.login_as("admin", "123", Some("MyStore")).await;
        assert_eq!(r.status, 204);
        assert!(r.body.is_empty());
        let c = r.set_cookies();
        assert_eq!(c.len(), 7, "{c:?}");
        let sid = c[0]
            .strip_prefix("ASP.NET_SessionId=")
            .and_then(|r| r.strip_suffix("; path=/; HttpOnly; SameSite=Lax"))
            .unwrap();
        assert_eq!(sid.len(), 24);
        assert!(sid
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'0'..=b'5').contains(&b)));
        let auth = c[1]
            .strip_prefix(".ASPXAUTH=")
            .and_then(|r| r.strip_suffix("; path=/; HttpOnly"))
            .unwrap();
        assert!(!auth.is_empty() && auth.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(c[2], "UserBranch=1; path=/");
        assert_eq!(c[3], "Locale=Culture=en-US&TimeZone=GMTM0800A; path=/");
        let rid = c[4]
            .strip_prefix("requestid=")
            .and_then(|r| r.strip_suffix("; path=/"))
            .unwrap();
        assert_eq!(rid.len(), 32);
        assert!(rid.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(
            c[5].starts_with("requeststat=+st:")
                && c[5].contains("+sc:~/entity/auth/login+start:")
                && c[5].ends_with("+tg:; path=/"),
            "{}",
            c[5]
        );
        assert_eq!(c[6], "CompanyID=MyStore; path=/");
        let n = f.fake.counters();
        assert_eq!((n.logins_ok, n.seats_in_use, n.peak_seats), (1, 1, 1));

        // Without a tenant (one configured): no CompanyID, the session is still in MyStore.
        let r = f.login_as("admin", "123", None).await;
        assert_eq!(r.status, 204);
        assert_eq!(r.set_cookies().len(), 6);
        let e = f.echo(&r.jar()).await;
        assert_eq!(e.json()["tenant"], "MyStore");
        assert_eq!(e.json()["branch"], "HQ");
        assert_eq!(f.fake.counters().seats_in_use, 2);
    }

    #[tokio::test]
    async fn login_with_a_live_sessions_cookies_still_opens_a_new_session() {
        let f = start(LegacyOptions {
            max_api_users: 5,
            ..LegacyOptions::default()
        })
        .await;
        let jar = f.login().await;
        let r = f
            .call(
                "POST",
                "/entity/auth/login",
                &[("content-type", "application/json"), ("cookie", &jar)],
                r#"{"name":"admin","password":"123"}"#,
            )
            .await;
        assert_eq!(r.status, 204);
        assert_eq!(f.echo(&jar).await.json()["session"], 1);
        assert_eq!(f.echo(&r.jar()).await.json()["session"], 2);
        assert_eq!(f.fake.counters().seats_in_use, 2);
    }

    #[tokio::test]
    async fn login_accepts_forms_and_refuses_garbage() {
        let f = start(LegacyOptions::default()).await;
        let form = [("content-type", "application/x-www-form-urlencoded")];
        let r = f
            .call(
                "POST",
                "/entity/auth/login",
                &form,
                "name=admin&password=123&company=MyStore&locale=en-US",
            )
            .await;
        assert_eq!(r.status, 204, "{}", r.body);
        assert!(r.jar().contains("CompanyID=MyStore"));
        let json = [("content-type", "application/json")];
        for (headers, body) in [
            (&json[..], "{not json"),
            (&json[..], r#"{"name":"admin"}"#),
            (&json[..], r#"["admin","123"]"#),
            (&form[..], "password=123"),
            (
                &[("content-type", "text/plain")][..],
                r#"{"name":"admin","password":"123"}"#,
            ),
        ] {
            let r = f.call("POST", "/entity/auth/login", headers, body).await;
            assert_eq!(r.status, 400, "{body}");
        }
        let big = "x".repeat(MAX_BODY + 1);
        assert_eq!(
            f.call("POST", "/entity/auth/login", &json, &big)
                .await
                .status,
            413
        );
        let n = f.fake.counters();
        assert_eq!((n.logins_ok, n.logins_bad_credentials), (1, 0));
        assert_eq!(
            f.call("GET", "/entity/auth/login", &[], "").await.status,
            405
        );
    }

    #[tokio::test]
    async fn three_wrong_passwords_lock_the_account() {
        let f = start(LegacyOptions::default()).await;
        for _ in 0..3 {
            let r = f.login_as("admin", "wrong", None).await;
            assert_eq!(r.status, 500);
            assert_eq!(r.exception(), INVALID_CREDENTIALS);
            assert_eq!(r.json()["message"], "An error has occurred.");
            assert_eq!(r.json()["exceptionType"], "PX.Data.PXException");
        }
        let r = f.login_as("admin", "123", None).await;
        assert_eq!(r.status, 500);
        assert_eq!(r.exception(), LOCKED_OUT);
        let n = f.fake.counters();
        assert_eq!(
            (
                n.logins_bad_credentials,
                n.logins_locked,
                n.logins_ok,
                n.seats_in_use
            ),
            (3, 1, 0, 0)
        );
        assert_eq!(f.fake.state()["locked_users"], json!(["admin"]));
        f.fake.advance_clock(Duration::from_secs(901));
        assert_eq!(f.login_as("admin", "123", None).await.status, 204);
    }

    #[tokio::test]
    async fn failures_older_than_the_reset_window_do_not_lock() {
        let f = start(LegacyOptions::default()).await;
        for _ in 0..2 {
            assert_eq!(
                f.login_as("admin", "x", None).await.exception(),
                INVALID_CREDENTIALS
            );
        }
        f.fake.advance_clock(Duration::from_secs(601));
        assert_eq!(
            f.login_as("admin", "x", None).await.exception(),
            INVALID_CREDENTIALS
        );
        assert_eq!(f.login_as("admin", "123", None).await.status, 204);
        // A success clears the failures.
        for _ in 0..2 {
            assert_eq!(
                f.login_as("admin", "x", None).await.exception(),
                INVALID_CREDENTIALS
            );
        }
        assert_eq!(f.login_as("admin", "123", None).await.status, 204);
    }

    #[tokio::test]
    async fn a_tenant_is_required_when_there_are_several() {
        let f = start(LegacyOptions {
            tenants: vec!["MyStore".to_owned(), "Other".to_owned()],
            users: vec![
                LegacyUser::new("admin", "123", &[], &["HQ", "EAST"]),
                LegacyUser::new("clerk", "c", &["MyStore"], &[]),
            ],
            ..LegacyOptions::default()
        })
        .await;
        let r = f.login_as("admin", "123", None).await;
        assert_eq!((r.status, r.exception().as_str()), (500, NO_COMPANY));
        let r = f.login_as("clerk", "c", Some("Other")).await;
        assert_eq!((r.status, r.exception().as_str()), (500, NO_COMPANY));
        let r = f
            .call(
                "POST",
                "/entity/auth/login",
                &[("content-type", "application/json")],
                r#"{"name":"ADMIN","password":"123","company":"other","branch":"east"}"#,
            )
            .await;
        assert_eq!(r.status, 204, "{}", r.body);
        let jar = r.jar();
        assert_eq!(cookie_value(&jar, "CompanyID"), "Other");
        assert_eq!(cookie_value(&jar, "UserBranch"), "2");
        let e = f.echo(&jar).await.json();
        assert_eq!(
            e,
            json!({"session": 1, "user": "admin", "tenant": "Other", "branch": "EAST"})
        );
        let n = f.fake.counters();
        assert_eq!((n.logins_ok, n.logins_bad_credentials), (1, 0));
    }

    #[tokio::test]
    async fn the_seat_limit_answers_api_login_limit() {
        let f = start(LegacyOptions::default()).await;
        let a = f.login().await;
        let _b = f.login().await;
        let r = f.login_as("admin", "123", None).await;
        assert_eq!((r.status, r.exception().as_str()), (500, LOGIN_LIMIT));
        f.fake.set_login_limit_status(429);
        assert_eq!(f.login_as("admin", "123", None).await.status, 429);
        assert_eq!(f.logout(&a).await.status, 204);
        // One seat free, but held by another integration.
        let r = f
            .call("POST", "/_fake/reserve-seats", &[], r#"{"n":1}"#)
            .await;
        assert_eq!(r.status, 200);
        let r = f.login_as("admin", "123", None).await;
        assert_eq!((r.status, r.exception().as_str()), (429, LOGIN_LIMIT));
        f.fake.reserve_seats(0);
        assert_eq!(f.login_as("admin", "123", None).await.status, 204);
        let n = f.fake.counters();
        assert_eq!(
            (
                n.logins_ok,
                n.logins_rejected_limit,
                n.seats_in_use,
                n.peak_seats
            ),
            (3, 3, 2, 2)
        );
        // The status can be set over HTTP too; nonsense is refused.
        let r = f
            .call(
                "POST",
                "/_fake/config",
                &[],
                r#"{"login_limit_status":500}"#,
            )
            .await;
        assert_eq!(r.json()["login_limit_status"], 500);
        let r = f
            .call(
                "POST",
                "/_fake/config",
                &[],
                r#"{"login_limit_status":1000}"#,
            )
            .await;
        assert_eq!(r.status, 400);
        let r = f.call("POST", "/_fake/config", &[], r#"{"bogus":1}"#).await;
        assert_eq!(r.status, 400);
        assert_eq!(f.login_as("admin", "123", None).await.status, 500);
    }

    #[tokio::test]
    async fn data_needs_both_cookies_of_one_live_session() {
        let f = start(LegacyOptions::default()).await;
        let jar = f.login().await;
        let ok = f.echo(&jar).await;
        assert_eq!(ok.status, 200);
        assert_eq!(
            ok.json(),
            json!({"session": 1, "user": "admin", "tenant": "MyStore", "branch": "HQ"})
        );
        // Fresh request cookies on every authenticated answer.
        let rotated = ok.set_cookies();
        assert_eq!(rotated.len(), 2, "{rotated:?}");
        assert!(rotated[0].starts_with("requestid="));
        assert!(rotated[1].contains(&format!("+sc:~{ECHO}+")));

        let no = f.echo("").await;
        assert_eq!(no.status, 401);
        assert_eq!(no.json(), json!({"message": DENIED}));
        assert!(no.set_cookies().is_empty());
        let only_sid = format!("ASP.NET_SessionId={}", cookie_value(&jar, SESSION_COOKIE));
        assert_eq!(f.echo(&only_sid).await.status, 401);
        let only_auth = format!(".ASPXAUTH={}", cookie_value(&jar, AUTH_COOKIE));
        assert_eq!(f.echo(&only_auth).await.status, 401);
        // Two Cookie headers are merged.
        let r = f
            .call(
                "GET",
                ECHO,
                &[("cookie", &only_sid), ("cookie", &only_auth)],
                "",
            )
            .await;
        assert_eq!(r.status, 200);
        // Pages outside /entity redirect to the login page.
        let page = f.call("GET", "/Main?ScreenId=AR303000", &[], "").await;
        assert_eq!(page.status, 302);
        assert_eq!(
            page.headers.get("location").unwrap(),
            "/Frames/Login.aspx?ReturnUrl=%2FMain"
        );
        assert_eq!(
            f.call("GET", "/Main", &[("cookie", &jar)], "").await.status,
            200
        );
        assert_eq!(f.fake.counters().requests_unauthenticated, 4);
        let h = f.call("GET", "/health", &[], "").await;
        assert_eq!((h.status, h.json()), (200, json!({"status": "ok"})));

        // Generic data paths answer 200 with the session.
        let r = f
            .call(
                "PUT",
                "/entity/Default/24.200.001/Customer",
                &[("cookie", &jar)],
                "{\"a\":1}",
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["session"], 1);
        assert_eq!(r.json()["path"], "/entity/Default/24.200.001/Customer");
        assert_eq!(r.json()["body_bytes"], 7);
        // Without rotation (and renewal), no Set-Cookie at all.
        f.call(
            "POST",
            "/_fake/config",
            &[],
            r#"{"rotate_cookies":false,"renew_auth_every":0}"#,
        )
        .await;
        assert!(f.echo(&jar).await.set_cookies().is_empty());
    }

    #[tokio::test]
    async fn mixed_session_cookies_are_detected() {
        let f = start(LegacyOptions::default()).await;
        let a = f.login().await;
        let b = f.login().await;
        let mixed = format!(
            "ASP.NET_SessionId={}; .ASPXAUTH={}",
            cookie_value(&a, SESSION_COOKIE),
            cookie_value(&b, AUTH_COOKIE)
        );
        let r = f.echo(&mixed).await;
        assert_eq!(r.status, 401);
        let n = f.fake.counters();
        assert_eq!(
            (n.mixed_session_cookies, n.requests_unauthenticated),
            (1, 1)
        );
        // Both jars in one request are mixed too.
        assert_eq!(f.echo(&format!("{a}; {b}")).await.status, 401);
        assert_eq!(f.fake.counters().mixed_session_cookies, 2);
        assert_eq!(f.fake.counters().foreign_cookie, 0);
    }

    #[tokio::test]
    async fn counters_are_per_session() {
        let f = start(LegacyOptions::default()).await;
        let a = f.login().await;
        let b = f.login().await;
        let path = "/entity/Default/24.200.001/Counter";
        for want in 1..=3 {
            let r = f.call("PUT", path, &[("cookie", &a)], "{}").await;
            assert_eq!(r.json(), json!({"session": 1, "counter": want}));
        }
        let r = f.call("PUT", path, &[("cookie", &b)], "").await;
        assert_eq!(r.json(), json!({"session": 2, "counter": 1}));
        let r = f.call("GET", path, &[("cookie", &a)], "").await;
        assert_eq!(r.json(), json!({"session": 1, "counter": 3}));
    }

    #[tokio::test]
    async fn logout_needs_a_content_length() {
        let f = start(LegacyOptions::default()).await;
        let jar = f.login().await;
        let raw = f
            .raw(&format!(
                "POST /entity/auth/logout HTTP/1.1\r\nHost: x\r\nCookie: {jar}\r\nConnection: close\r\n\r\n"
            ))
            .await;
        assert!(raw.starts_with("HTTP/1.1 411"), "{raw}");
        let n = f.fake.counters();
        assert_eq!((n.logouts_411, n.logouts, n.seats_in_use), (1, 0, 1));
        assert_eq!(f.echo(&jar).await.status, 200);

        let r = f.logout(&jar).await;
        assert_eq!(r.status, 204);
        assert!(r
            .set_cookies()
            .contains(&".ASPXAUTH=; expires=Thu, 01-Jan-1970 00:00:00 GMT; path=/".to_owned()));
        let n = f.fake.counters();
        assert_eq!((n.logouts, n.seats_in_use, n.expiries), (1, 0, 0));
        assert_eq!(f.echo(&jar).await.status, 401);
        // Idempotent, and a chunked POST is fine too.
        let again = f.logout(&jar).await;
        assert_eq!(again.status, 204);
        assert!(again.set_cookies().is_empty());
        let raw = f
            .raw("POST /entity/auth/logout HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n")
            .await;
        assert!(raw.starts_with("HTTP/1.1 204"), "{raw}");
        assert_eq!(f.fake.counters().logouts, 1);
        // Without the strict rule, no length is fine.
        f.call(
            "POST",
            "/_fake/config",
            &[],
            r#"{"strict_content_length":false}"#,
        )
        .await;
        let jar = f.login().await;
        let raw = f
            .raw(&format!(
                "POST /entity/auth/logout HTTP/1.1\r\nHost: x\r\nCookie: {jar}\r\nConnection: close\r\n\r\n"
            ))
            .await;
        assert!(raw.starts_with("HTTP/1.1 204"), "{raw}");
        assert_eq!(f.fake.counters().seats_in_use, 0);
    }

    #[tokio::test]
    async fn idle_sessions_expire_on_the_fake_clock() {
        let f = start(LegacyOptions::default()).await;
        let jar = f.login().await;
        f.fake.advance_clock(Duration::from_secs(400));
        assert_eq!(f.echo(&jar).await.status, 200);
        f.fake.advance_clock(Duration::from_secs(400));
        assert_eq!(
            f.echo(&jar).await.status,
            200,
            "a request restarts the idle timer"
        );
        f.fake.advance_clock(Duration::from_secs(601));
        let n = f.fake.counters();
        assert_eq!((n.expiries, n.seats_in_use, n.logouts), (1, 0, 0));
        assert_eq!(f.echo(&jar).await.status, 401);

        // Over HTTP: a shorter timeout, then the clock.
        let jar = f.login().await;
        let r = f
            .call("POST", "/_fake/config", &[], r#"{"idle_timeout_ms":1500}"#)
            .await;
        assert_eq!(r.json()["idle_timeout_ms"], 1500);
        f.call("POST", "/_fake/advance-clock", &[], r#"{"ms":1000}"#)
            .await;
        assert_eq!(f.fake.counters().seats_in_use, 1);
        f.call("POST", "/_fake/advance-clock", &[], r#"{"ms":600}"#)
            .await;
        assert_eq!(f.fake.counters().seats_in_use, 0);
        assert_eq!(f.fake.counters().expiries, 2);
        assert_eq!(f.echo(&jar).await.status, 401);
    }

    #[tokio::test]
    async fn concurrency_per_session_is_measured_before_the_lock() {
        let f = start(LegacyOptions::default()).await;
        let jar = f.login().await;
        let slow = "/entity/Default/24.200.001/Slow?ms=150";
        let started = Instant::now();
        let h = [("cookie", jar.as_str())];
        let (a, b) = tokio::join!(f.call("GET", slow, &h, ""), f.call("GET", slow, &h, ""));
        assert_eq!((a.status, b.status), (200, 200));
        assert_eq!(a.json(), json!({"session": 1}));
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "serialised"
        );
        assert_eq!(f.fake.counters().max_concurrency_per_session, 2);
        let state = f.fake.state();
        assert_eq!(state["sessions"][0]["max_in_flight"], 2);
        assert_eq!(state["sessions"][0]["in_flight"], 0);

        // One at a time stays at 1.
        f.fake.reset();
        let jar = f.login().await;
        for _ in 0..3 {
            f.call("GET", slow, &[("cookie", &jar)], "").await;
        }
        assert_eq!(f.fake.counters().max_concurrency_per_session, 1);
        assert_eq!(
            f.call(
                "GET",
                "/entity/Default/1/Slow?ms=x",
                &[("cookie", &jar)],
                ""
            )
            .await
            .status,
            400
        );
    }

    #[tokio::test]
    async fn logout_does_not_wait_for_the_session_lock() {
        let f = start(LegacyOptions::default()).await;
        let jar = f.login().await;
        let h = [("cookie", jar.as_str())];
        let slow = f.call("GET", "/entity/Default/24.200.001/Slow?ms=300", &h, "");
        let logout = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let started = Instant::now();
            let r = f.logout(&jar).await;
            (r, started.elapsed())
        };
        let (slow, (out, took)) = tokio::join!(slow, logout);
        assert_eq!(out.status, 204);
        assert!(took < Duration::from_millis(200), "{took:?}");
        // The request whose session ended under it fails as the real API fails it.
        assert_eq!(slow.status, 401, "{}", slow.body);
        assert!(slow
            .set_cookies()
            .iter()
            .any(|c| c.starts_with(".ASPXAUTH=;")));
        let n = f.fake.counters();
        assert_eq!((n.logouts, n.seats_in_use), (1, 0));
        assert_eq!(n.ended_mid_request, 1);
        // The logout was seen while a request was in flight.
        assert_eq!(n.max_concurrency_per_session, 2);
    }

    #[tokio::test]
    async fn long_operations_pin_the_session() {
        let f = start(LegacyOptions::default()).await;
        let a = f.login().await;
        let b = f.login().await;
        let r = f
            .call(
                "POST",
                "/entity/Default/24.200.001/LongOp/Start",
                &[("cookie", &a), ("content-length", "0")],
                "",
            )
            .await;
        assert_eq!(r.status, 202);
        let status = r
            .headers
            .get("location")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            status.starts_with("/entity/Default/24.200.001/LongOp/Status/"),
            "{status}"
        );
        assert_eq!(
            f.call("GET", &status, &[("cookie", &a)], "").await.status,
            202
        );
        assert_eq!(
            f.call("GET", &status, &[("cookie", &b)], "").await.status,
            404
        );
        let again = f
            .call(
                "POST",
                "/entity/Default/24.200.001/LongOp/Start",
                &[("cookie", &a)],
                "",
            )
            .await;
        assert_eq!(
            (again.status, again.exception().as_str()),
            (500, OPERATION_RUNNING)
        );
        // Other endpoints of the session still work; another session may start its own.
        assert_eq!(f.echo(&a).await.status, 200);
        let other = f
            .call(
                "POST",
                "/entity/Default/24.200.001/LongOp/Start",
                &[("cookie", &b)],
                "",
            )
            .await;
        assert_eq!(other.status, 202);
        f.fake.advance_clock(Duration::from_secs(1));
        assert_eq!(
            f.call("GET", &status, &[("cookie", &a)], "").await.status,
            204
        );
        assert_eq!(
            f.call("GET", &status, &[("cookie", &b)], "").await.status,
            404
        );
        let next = f
            .call(
                "POST",
                "/entity/Default/24.200.001/LongOp/Start",
                &[("cookie", &a)],
                "",
            )
            .await;
        assert_eq!(next.status, 202);
    }

    #[tokio::test]
    async fn leaks_are_counted_but_not_on_the_control_api() {
        let f = start(LegacyOptions::default()).await;
        let jar = f.login().await;
        let r = f.echo(&format!("{jar}; gw_sess=abc")).await;
        assert_eq!(r.status, 200);
        f.call(
            "GET",
            ECHO,
            &[("cookie", &jar), ("authorization", "Bearer x")],
            "",
        )
        .await;
        f.call(
            "GET",
            "/_fake/state",
            &[("cookie", "gw_sess=1"), ("authorization", "Bearer x")],
            "",
        )
        .await;
        let n = f.fake.counters();
        assert_eq!((n.foreign_cookie, n.authorization_header_seen), (1, 1));
        assert_eq!(n.mixed_session_cookies, 0);
        // A lone name without '=' is a cookie too; empty pieces are not.
        f.echo(&format!("{jar};;  ; odd")).await;
        assert_eq!(f.fake.counters().foreign_cookie, 2);
    }

    #[tokio::test]
    async fn the_control_api_shows_and_changes_state() {
        let f = start(LegacyOptions::default()).await;
        let a = f.login().await;
        let _b = f.login().await;
        f.call("PUT", "/entity/Default/1/Counter", &[("cookie", &a)], "")
            .await;
        let s = f.call("GET", "/_fake/state", &[], "").await;
        assert_eq!(s.status, 200);
        let s = s.json();
        assert_eq!(s["counters"], f.fake.state()["counters"]);
        assert_eq!(s["counters"]["logins_ok"], 2);
        assert_eq!(s["counters"]["seats_in_use"], 2);
        assert_eq!(s["reserved_seats"], 0);
        let first = &s["sessions"][0];
        assert_eq!(first["session"], 1);
        assert_eq!(first["user"], "admin");
        assert_eq!(first["tenant"], "MyStore");
        assert_eq!(first["in_flight"], 0);
        assert_eq!(first["counter"], 1);
        assert!(first["created_ms_ago"].is_u64() && first["idle_ms"].is_u64());
        assert_eq!(s["sessions"][1]["session"], 2);

        let r = f
            .call("POST", "/_fake/expire", &[], r#"{"session":1}"#)
            .await;
        assert_eq!(r.json(), json!({"expired": 1}));
        assert_eq!(f.echo(&a).await.status, 401);
        let n = f.fake.counters();
        assert_eq!((n.expiries, n.seats_in_use, n.logouts), (1, 1, 0));
        let r = f
            .call("POST", "/_fake/expire", &[], r#"{"all":true}"#)
            .await;
        assert_eq!(r.json(), json!({"expired": 1}));
        assert_eq!(f.call("POST", "/_fake/expire", &[], "{}").await.status, 400);
        assert_eq!(
            f.call("POST", "/_fake/expire", &[], "nope").await.status,
            400
        );
        assert_eq!(f.call("POST", "/_fake/nothing", &[], "").await.status, 404);
        assert_eq!(f.call("GET", "/_fake/reset", &[], "").await.status, 405);

        f.fake.reserve_seats(1);
        f.login_as("admin", "x", None).await;
        assert_eq!(f.call("POST", "/_fake/reset", &[], "").await.status, 200);
        assert_eq!(f.fake.counters(), Counters::default());
        let s = f.fake.state();
        assert_eq!(s["reserved_seats"], 0);
        assert_eq!(s["sessions"], json!([]));
        // Ordinals keep counting after a reset.
        let c = f.login().await;
        assert_eq!(f.echo(&c).await.json()["session"], 3);

        // serialize_per_session off: parallel requests really run in parallel.
        f.call(
            "POST",
            "/_fake/config",
            &[],
            r#"{"serialize_per_session":false}"#,
        )
        .await;
        let slow = "/entity/Default/1/Slow?ms=200";
        let started = Instant::now();
        let h = [("cookie", c.as_str())];
        let _ = tokio::join!(f.call("GET", slow, &h, ""), f.call("GET", slow, &h, ""));
        assert!(started.elapsed() < Duration::from_millis(390));
        assert_eq!(f.fake.counters().max_concurrency_per_session, 2);
    }

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

    #[tokio::test]
    async fn error_bodies_carry_the_exception_and_a_stack_trace() {
        let f = start(LegacyOptions::default()).await;
        let r = f.login_as("admin", "wrong", None).await;
        assert_eq!(r.status, 500);
        let v = r.json();
        assert_eq!(v["exceptionType"], "PX.Data.PXException");
        assert!(v["stackTrace"].as_str().unwrap().contains("   at PX."));
    }

    #[tokio::test]
    async fn login_and_logout_route_without_case_and_with_a_trailing_slash() {
        let f = start(LegacyOptions::default()).await;
        let body = r#"{"name":"admin","password":"123"}"#;
        let r = f
            .call(
                "POST",
                "/Entity/AUTH/Login/",
                &[("content-type", "application/json")],
                body,
            )
            .await;
        assert_eq!(r.status, 204, "{}", r.body);
        let jar = r.jar();
        let out = f
            .call(
                "POST",
                "/ENTITY/auth/LOGOUT/",
                &[("cookie", &jar), ("content-length", "0")],
                "",
            )
            .await;
        assert_eq!(out.status, 204);
        assert_eq!(f.fake.counters().logouts, 1);
    }

    #[tokio::test]
    async fn auth_cookies_are_renewed_and_the_old_ones_counted() {
        let f = start(LegacyOptions {
            renew_auth_every: 2,
            rotate_cookies: false,
            ..LegacyOptions::default()
        })
        .await;
        let jar = f.login().await;
        assert!(f.echo(&jar).await.set_cookies().is_empty());
        let renewed = f.echo(&jar).await;
        let fresh = renewed.set_cookies();
        assert_eq!(fresh.len(), 1, "{fresh:?}");
        let new_auth = fresh[0].split(';').next().unwrap().to_owned();
        assert!(new_auth.starts_with(".ASPXAUTH=") && new_auth.len() > 20);
        // The replaced value still authenticates, and is counted.
        assert_eq!(f.echo(&jar).await.status, 200);
        assert_eq!(f.fake.counters().stale_auth_cookie, 1);
        let followed = format!(
            "ASP.NET_SessionId={}; {new_auth}",
            cookie_value(&jar, "ASP.NET_SessionId")
        );
        assert_eq!(f.echo(&followed).await.status, 200);
        let c = f.fake.counters();
        assert_eq!((c.stale_auth_cookie, c.auth_renewed), (1, 2), "{c:?}");
    }

    #[tokio::test]
    async fn a_session_signed_out_by_an_answer_deletes_its_cookie() {
        let f = start(LegacyOptions::default()).await;
        let jar = f.login().await;
        assert!(f.fake.sign_out_on_next_answer(1));
        let last = f.echo(&jar).await;
        assert_eq!(last.status, 200);
        assert!(last
            .set_cookies()
            .iter()
            .any(|c| c.starts_with(".ASPXAUTH=;") && c.contains("1970")));
        assert_eq!(f.echo(&jar).await.status, 401);
        let c = f.fake.counters();
        assert_eq!((c.signed_out_by_answer, c.seats_in_use), (1, 0), "{c:?}");
        // Over the control API too.
        let jar = f.login().await;
        let r = f
            .call("POST", "/_fake/sign-out", &[], r#"{"session":2}"#)
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(f
            .echo(&jar)
            .await
            .set_cookies()
            .iter()
            .any(|c| c.starts_with(".ASPXAUTH=;")));
        assert_eq!(
            f.call("POST", "/_fake/sign-out", &[], r#"{"session":2}"#)
                .await
                .status,
            404
        );
    }

    #[tokio::test]
    async fn the_login_limit_can_be_a_redirect_to_the_error_page() {
        let f = start(LegacyOptions {
            max_api_users: 1,
            login_limit_shape: LimitShape::Redirect,
            ..LegacyOptions::default()
        })
        .await;
        f.login().await;
        let r = f.login_as("admin", "123", None).await;
        assert_eq!(r.status, 302);
        let loc = r.headers.get("location").unwrap().to_str().unwrap();
        assert!(
            loc.starts_with("/Frames/Error.aspx?") && loc.contains("concurrent%20API%20logins"),
            "{loc}"
        );
        assert_eq!(f.fake.counters().logins_rejected_limit, 1);
    }

    #[tokio::test]
    async fn data_requests_are_limited_per_minute() {
        let f = start(LegacyOptions {
            max_requests_per_minute: 2,
            ..LegacyOptions::default()
        })
        .await;
        let jar = f.login().await;
        for _ in 0..2 {
            assert_eq!(f.echo(&jar).await.status, 200);
        }
        let r = f.echo(&jar).await;
        assert_eq!(r.status, 429);
        let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        // Logins and logouts are not data requests; a new minute starts afresh.
        f.fake.advance_clock(Duration::from_secs(61));
        let jar = f.login().await;
        assert_eq!(f.echo(&jar).await.status, 200);
        assert_eq!(f.fake.counters().requests_throttled, 1);
    }

    #[tokio::test]
    async fn an_unavailable_upstream_and_a_slow_login() {
        let f = start(LegacyOptions {
            unavailable: true,
            ..LegacyOptions::default()
        })
        .await;
        assert_eq!(f.login_as("admin", "123", None).await.status, 503);
        assert_eq!(f.call("GET", "/health", &[], "").await.status, 200);
        f.fake.configure_with(|o| {
            o.unavailable = false;
            o.login_delay = Duration::from_millis(150);
        });
        let started = Instant::now();
        assert_eq!(f.login_as("admin", "123", None).await.status, 204);
        assert!(started.elapsed() >= Duration::from_millis(150));
    }
}
