//! The fake's state: the session table, the users, the counters, the clock, and the bookkeeping
//! that keeps them consistent (idle expiry, seats, which session a request's cookies name,
//! requests in flight, the request rate).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::{LegacyOptions, AUTH_COOKIE, SESSION_COOKIE};

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

pub(super) struct Inner {
    pub(super) state: Mutex<State>,
}

impl Inner {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(super) struct Session {
    pub(super) ordinal: u64,
    pub(super) session_id: String,
    pub(super) auth: String,
    pub(super) user: String,
    pub(super) tenant: Option<String>,
    pub(super) branch: Option<String>,
    pub(super) created: Instant,
    pub(super) last_seen: Instant,
    pub(super) in_flight: u64,
    pub(super) max_in_flight: u64,
    pub(super) counter: i64,
    /// ASP.NET's exclusive per-session lock, held for the whole handling of a request.
    pub(super) lock: Arc<tokio::sync::Mutex<()>>,
    /// Long operations started in this session: id → start.
    pub(super) ops: HashMap<u64, Instant>,
    /// `.ASPXAUTH` values this session had before its current one (still accepted, counted).
    pub(super) old_auth: Vec<String>,
    /// Authenticated data answers since the last renewal.
    pub(super) answers: u32,
    /// The next data answer ends the session and deletes `.ASPXAUTH`.
    pub(super) sign_out_next: bool,
}

#[derive(Default)]
pub(super) struct Lockout {
    pub(super) failures: VecDeque<Instant>,
    pub(super) locked_until: Option<Instant>,
}

pub(super) struct State {
    pub(super) opts: LegacyOptions,
    /// Added to the real monotonic clock: see [`super::FakeLegacy::advance_clock`].
    pub(super) offset: Duration,
    pub(super) sessions: HashMap<u64, Session>,
    next_ordinal: u64,
    pub(super) next_op: u64,
    request_seq: u64,
    pub(super) reserved: u32,
    /// By lower-cased user name.
    pub(super) lockouts: HashMap<String, Lockout>,
    pub(super) counters: Counters,
    /// The request-rate window: its start and the data requests in it.
    rate_window: Option<(Instant, u32)>,
    /// Login attempts that reached the checks: when (real time) and how they ended.
    pub(super) logins: VecDeque<(Instant, &'static str)>,
    /// The `traceparent` of each login request (the last 1,000), as a traced API records it.
    pub(super) login_traceparents: VecDeque<Option<String>>,
}

pub(super) enum Auth {
    Session(u64),
    Mixed,
    None,
}

impl State {
    pub(super) fn new(opts: LegacyOptions) -> Self {
        State {
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
            login_traceparents: VecDeque::new(),
        }
    }

    pub(super) fn now(&self) -> Instant {
        let real = Instant::now();
        real.checked_add(self.offset).unwrap_or(real)
    }

    /// Closes the sessions idle for longer than `idle_timeout` (never one with a request in flight).
    pub(super) fn sweep(&mut self) {
        let now = self.now();
        let idle = self.opts.idle_timeout;
        let before = self.sessions.len();
        self.sessions
            .retain(|_, s| s.in_flight > 0 || now.saturating_duration_since(s.last_seen) <= idle);
        self.counters.expiries += (before - self.sessions.len()) as u64;
        self.update_seats();
    }

    pub(super) fn update_seats(&mut self) {
        self.counters.seats_in_use = self.sessions.len() as u64;
        self.counters.peak_seats = self.counters.peak_seats.max(self.counters.seats_in_use);
    }

    pub(super) fn next_seq(&mut self) -> u64 {
        self.request_seq += 1;
        self.request_seq
    }

    /// Opens a session with fresh cookie values and the next ordinal, which is never reused;
    /// returns the ordinal, the session id and the `.ASPXAUTH` value.
    pub(super) fn open_session(
        &mut self,
        user: String,
        tenant: Option<String>,
        branch: Option<String>,
        now: Instant,
    ) -> (u64, String, String) {
        let ordinal = self.next_ordinal;
        self.next_ordinal += 1;
        let session_id = random_session_id();
        let auth = random_hex(4);
        self.sessions.insert(
            ordinal,
            Session {
                ordinal,
                session_id: session_id.clone(),
                auth: auth.clone(),
                user,
                tenant,
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
        self.update_seats();
        (ordinal, session_id, auth)
    }

    /// Which live session the request's cookies name, if exactly one, by both cookies.
    pub(super) fn resolve(&self, cookies: &[(String, String)]) -> Auth {
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
    pub(super) fn uses_stale_auth(&self, ordinal: u64, cookies: &[(String, String)]) -> bool {
        let Some(s) = self.sessions.get(&ordinal) else {
            return false;
        };
        cookies
            .iter()
            .any(|(n, v)| n == AUTH_COOKIE && s.old_auth.contains(v))
    }

    /// Counts a data request against the per-minute rate; `Some(retry_after)` when over it.
    pub(super) fn over_rate(&mut self) -> Option<u64> {
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
    pub(super) fn enter(&mut self, ordinal: u64) -> Option<Arc<tokio::sync::Mutex<()>>> {
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

/// Decrements the session's in-flight count when the request ends (or is dropped).
pub(super) struct InFlight {
    pub(super) inner: Arc<Inner>,
    pub(super) ordinal: u64,
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

/// The id of the long operation running in the session, if any.
pub(super) fn running_op(s: &Session, now: Instant, duration: Duration) -> Option<u64> {
    s.ops
        .iter()
        .filter(|(_, started)| now.saturating_duration_since(**started) < duration)
        .map(|(id, _)| *id)
        .max()
}

fn random_session_id() -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz012345";
    rand::random::<[u8; 24]>()
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(b & 31)]))
        .collect()
}

/// `words` × 32 hex digits.
pub(super) fn random_hex(words: usize) -> String {
    (0..words)
        .map(|_| format!("{:032X}", rand::random::<u128>()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::demo::legacy::harness::start;

    fn cookies(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn open(st: &mut State) -> (u64, String, String) {
        let now = st.now();
        st.open_session("admin".to_owned(), None, None, now)
    }

    #[test]
    fn a_users_password_never_shows_in_debug_output() {
        let u = LegacyUser::new("admin", "s3cret", &["MyStore"], &[]);
        let shown = format!("{u:?}");
        assert!(
            shown.contains("admin") && shown.contains("MyStore"),
            "{shown}"
        );
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn a_request_names_a_session_only_by_both_of_its_cookies() {
        let mut st = State::new(LegacyOptions::default());
        let (a, sid_a, auth_a) = open(&mut st);
        let (b, sid_b, auth_b) = open(&mut st);
        assert_eq!((a, b), (1, 2));
        assert_eq!(st.counters.seats_in_use, 2);
        let both = cookies(&[(SESSION_COOKIE, &sid_a), (AUTH_COOKIE, &auth_a)]);
        assert!(matches!(st.resolve(&both), Auth::Session(1)));
        assert!(matches!(
            st.resolve(&cookies(&[(SESSION_COOKIE, &sid_a)])),
            Auth::None
        ));
        assert!(matches!(
            st.resolve(&cookies(&[(AUTH_COOKIE, &auth_b)])),
            Auth::None
        ));
        let mixed = cookies(&[(SESSION_COOKIE, &sid_a), (AUTH_COOKIE, &auth_b)]);
        assert!(matches!(st.resolve(&mixed), Auth::Mixed));
        let two = cookies(&[
            (SESSION_COOKIE, &sid_a),
            (AUTH_COOKIE, &auth_a),
            (SESSION_COOKIE, &sid_b),
        ]);
        assert!(matches!(st.resolve(&two), Auth::Mixed));
    }

    #[test]
    fn a_replaced_auth_value_still_resolves_but_is_stale() {
        let mut st = State::new(LegacyOptions::default());
        let (a, sid, old) = open(&mut st);
        let s = st.sessions.get_mut(&a).unwrap();
        s.old_auth
            .push(std::mem::replace(&mut s.auth, "NEW".to_owned()));
        let stale = cookies(&[(SESSION_COOKIE, &sid), (AUTH_COOKIE, &old)]);
        assert!(matches!(st.resolve(&stale), Auth::Session(1)));
        assert!(st.uses_stale_auth(a, &stale));
        let fresh = cookies(&[(SESSION_COOKIE, &sid), (AUTH_COOKIE, "NEW")]);
        assert!(!st.uses_stale_auth(a, &fresh));
        assert!(!st.uses_stale_auth(99, &stale));
    }

    #[test]
    fn the_sweep_spares_sessions_with_a_request_in_flight() {
        let mut st = State::new(LegacyOptions::default());
        let (busy, _, _) = open(&mut st);
        let (idle, _, _) = open(&mut st);
        assert!(st.enter(busy).is_some());
        assert!(st.enter(busy).is_some());
        assert_eq!(st.counters.max_concurrency_per_session, 2);
        st.offset = Duration::from_secs(601);
        st.sweep();
        assert!(st.sessions.contains_key(&busy));
        assert!(!st.sessions.contains_key(&idle));
        assert!(st.enter(idle).is_none());
        let c = st.counters;
        assert_eq!((c.expiries, c.seats_in_use, c.peak_seats), (1, 1, 2));
    }

    #[test]
    fn ending_a_request_restarts_the_idle_timer() {
        let inner = Arc::new(Inner {
            state: Mutex::new(State::new(LegacyOptions::default())),
        });
        let ordinal = {
            let mut st = inner.lock();
            let (ordinal, _, _) = open(&mut st);
            assert!(st.enter(ordinal).is_some());
            st.offset = Duration::from_secs(500);
            ordinal
        };
        drop(InFlight {
            inner: inner.clone(),
            ordinal,
        });
        let mut st = inner.lock();
        assert_eq!(st.sessions[&ordinal].in_flight, 0);
        // Idle for 500 s since the request ended, 1000 s since it started: still open.
        st.offset = Duration::from_secs(1000);
        st.sweep();
        assert!(st.sessions.contains_key(&ordinal));
    }

    #[test]
    fn the_request_rate_is_counted_per_minute_of_the_fake_clock() {
        let mut st = State::new(LegacyOptions {
            max_requests_per_minute: 2,
            ..LegacyOptions::default()
        });
        assert_eq!((st.over_rate(), st.over_rate()), (None, None));
        let retry = st.over_rate().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        assert_eq!(st.counters.requests_throttled, 1);
        st.offset = Duration::from_secs(60);
        assert_eq!(st.over_rate(), None);
        st.opts.max_requests_per_minute = 0;
        for _ in 0..10 {
            assert_eq!(st.over_rate(), None);
        }
        assert_eq!(st.counters.requests_throttled, 1);
    }

    #[test]
    fn only_a_long_operation_still_within_its_duration_runs() {
        let mut st = State::new(LegacyOptions::default());
        let (a, _, _) = open(&mut st);
        let now = st.now();
        let d = Duration::from_secs(10);
        let s = st.sessions.get_mut(&a).unwrap();
        assert_eq!(running_op(s, now, d), None);
        s.ops.insert(1, now);
        s.ops.insert(2, now);
        assert_eq!(running_op(s, now, d), Some(2));
        assert_eq!(running_op(s, now + d, d), None);
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
}
