//! One upstream's session pool: which session a request uses, logging in (single-flight, within
//! the seat cap, evicting the least-recently-used idle session when needed), re-login after
//! expiry, and logging out (idle, age, eviction, admin, shutdown). State lives in the
//! [`SessionStore`]; this module holds only the local coordination (login locks, the credential
//! circuit, waiters for seats).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_lc_rs::hmac;
use http::header::{self, HeaderMap};
use tokio::sync::Notify;

use super::grant::{self, GrantKey};
use super::handle;
use super::jar::Jar;
use super::login::{self, LoginOutcome};
use super::store::{
    Created, Expiry, InFlight, LeaseRefused, Leased, Release, Removal, Restored, SessionRecord,
    SessionState, SessionStore, SlotKey,
};
use super::SessionError;
use crate::auth::Principal;
use crate::clock::{millis, unix_ms as now_ms};
use crate::config::{Creation, Credentials, SessionConfig, SessionMode, WithoutHandle};
use crate::metrics::Metrics;
use crate::proxy::Upstream;

/// Logouts running at once during shutdown.
const SHUTDOWN_PARALLELISM: usize = 16;
/// How long a logout waits for the requests on its session to finish.
const DRAIN_BOUND: Duration = Duration::from_secs(30);
/// How long a slot's failed login is remembered for the requests that waited behind it.
const FAILURE_MEMORY: Duration = Duration::from_secs(60);

/// The login of one session in progress: every request needing it waits for this one answer.
type Flight = tokio::sync::watch::Receiver<Option<Result<(SessionRecord, bool), SessionError>>>;

/// What [`Pool::drain_and_retire`] came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drained {
    Retired,
    /// Still in use when the wait ran out: left alone.
    Busy,
    Gone,
}

/// Why a session is retired (the `reason` label of evictions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retire {
    /// Evicted to make room under the seat cap.
    Lru,
    Idle,
    MaxAge,
    /// `token` grant keys: the session's access token expired.
    TokenExpired,
    /// The upstream said the session had ended (expiry, failed replay).
    Expired,
    /// An admin or client logout.
    Logout,
    Shutdown,
}

impl Retire {
    pub fn as_str(self) -> &'static str {
        match self {
            Retire::Lru => "lru",
            Retire::Idle => "idle",
            Retire::MaxAge => "max_age",
            Retire::TokenExpired => "token_expired",
            Retire::Expired => "expired",
            Retire::Logout => "logout",
            Retire::Shutdown => "shutdown",
        }
    }
}

/// Who a request belongs to, as the session layer sees it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub grant: GrantKey,
    pub concurrent: bool,
    pub slot: SlotKey,
    /// A handle cookie value to set on the response (concurrent mode, new handle).
    pub new_handle: Option<String>,
    /// True when the request named its session with a handle.
    pub had_handle: bool,
    /// `token` grant keys: the session ends with the token (Unix ms).
    pub retire_at_ms: Option<u64>,
}

/// A request's hold on an upstream session: the in-flight place and the jar to send.
#[derive(Debug)]
pub struct Lease {
    pub slot: SlotKey,
    pub id: u64,
    pub jar: Jar,
    pub in_flight: Option<InFlight>,
    /// The session was created (logged in) during this request: `Tollgate-Session: new`.
    pub new_session: bool,
    /// The upstream changed the jar during this request: it goes back with the release.
    pub jar_changed: bool,
}

impl Lease {
    /// Turns true if the store could not keep this lease (a shared store lost it during an
    /// outage and another request took the place).
    pub fn lost(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.in_flight.as_ref().and_then(InFlight::lost)
    }
}

#[derive(Debug, Default)]
struct Circuit {
    /// A credential failure: no login until then.
    open_until: Option<Instant>,
    /// Other failures: back off exponentially.
    backoff_until: Option<Instant>,
    backoff: Duration,
}

/// The session pool of one upstream.
pub struct Pool {
    pub upstream_id: Arc<str>,
    pub cfg: SessionConfig,
    upstream: Arc<Upstream>,
    store: Arc<dyn SessionStore>,
    grant_key: hmac::Key,
    handle_key: hmac::Key,
    metrics: Metrics,
    next_id: AtomicU64,
    /// The high 32 bits of this process's session ids.
    id_base: u64,
    /// The logins in progress, by session.
    flights: Mutex<HashMap<(SlotKey, u64), Flight>>,
    login_done: Notify,
    /// Recent failed logins by slot, for the requests that waited behind them.
    failures: Mutex<HashMap<SlotKey, (Instant, SessionError)>>,
    circuit: Mutex<Circuit>,
    /// A keyed digest naming the credential set (the fleet-wide gate's key; never the secret).
    credential_fp: String,
    /// One unproven login at a time in this process (the store's trial lock spans the fleet).
    trial: tokio::sync::Mutex<()>,
    /// A login with these credentials succeeded since their last refusal.
    proven: AtomicBool,
    /// Grants that gave up on their session (design §6.7.3): no login for them until then.
    relogin_blocked: Blocked,
    seat_freed: Notify,
    warned_subject: Mutex<HashSet<String>>,
    /// The fleet this replica belongs to (a shared store), which says whether this replica
    /// publishes the fleet-wide gauges.
    fleet: Option<Arc<crate::fleet::Fleet>>,
    /// The upstream's session profile: what makes two configurations the same sessions.
    pub profile: String,
    master: [u8; 32],
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("upstream", &self.upstream_id)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Pool {
    /// `key` is the 32-byte master key (configured or per-process random); the grant-key and
    /// handle keys are derived from it with distinct labels.
    pub fn new(
        upstream: Arc<Upstream>,
        cfg: SessionConfig,
        key: &[u8; 32],
        store: Arc<dyn SessionStore>,
        metrics: Metrics,
        fleet: Option<Arc<crate::fleet::Fleet>>,
        profile: String,
    ) -> Self {
        let upstream_id = upstream.id.clone();
        let master = hmac::Key::new(hmac::HMAC_SHA256, key);
        let derive =
            |label: &[u8]| hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&master, label).as_ref());
        metrics.declare_upstream_sessions(&upstream_id);
        let credential_fp = credential_fingerprint(&derive(b"tollgate credentials v1"), &cfg);
        Pool {
            grant_key: derive(b"tollgate grant key v1"),
            handle_key: derive(b"tollgate session handle v1"),
            upstream_id,
            upstream,
            cfg,
            store,
            metrics,
            next_id: AtomicU64::new(1),
            id_base: u64::from(rand::random::<u32>() | 1) << 32,
            flights: Mutex::new(HashMap::new()),
            login_done: Notify::new(),
            failures: Mutex::new(HashMap::new()),
            circuit: Mutex::new(Circuit::default()),
            credential_fp,
            trial: tokio::sync::Mutex::new(()),
            proven: AtomicBool::new(false),
            relogin_blocked: Blocked::default(),
            seat_freed: Notify::new(),
            warned_subject: Mutex::new(HashSet::new()),
            profile,
            fleet,
            master: *key,
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// The master key (kept by a reload's successor pool when no `handle_key_file` is set).
    pub(crate) fn master(&self) -> &[u8; 32] {
        &self.master
    }

    /// The store this pool keeps its sessions in (handed to its successor by a reload that
    /// keeps the profile).
    pub fn store(&self) -> Arc<dyn SessionStore> {
        self.store.clone()
    }

    /// Starts the background work. Each task holds only a weak reference, so it ends with the
    /// pool. Idempotent.
    ///
    /// - the sweep: idle, over-age and token-expired sessions are logged out;
    /// - the upkeep, on its own task so that slow logouts never delay it: the shared store
    ///   renews seats and finds crashed replicas' logins and lost sessions (repaired here);
    /// - the store's own lease renewal.
    pub fn start(self: &Arc<Self>) {
        let mut tasks = lock(&self.tasks);
        if !tasks.is_empty() {
            return;
        }
        self.store.clone().start();
        let every =
            (self.cfg.idle_ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let weak = Arc::downgrade(self);
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match weak.upgrade() {
                    Some(pool) => pool.sweep().await,
                    None => break,
                }
            }
        }));
        let weak = Arc::downgrade(self);
        tasks.push(tokio::spawn(async move {
            loop {
                match weak.upgrade() {
                    Some(pool) => pool.upkeep().await,
                    None => break,
                }
                tokio::time::sleep(every).await;
            }
        }));
    }

    /// Stops the background work (the pool is retired or the process leaves the fleet).
    pub fn stop(&self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }

    // === identity ===

    /// The grant, mode and session slot of a request (design §6.2–6.4).
    pub fn identify(
        &self,
        principal: &Principal,
        token_digest: &[u8; 32],
        headers: &HeaderMap,
    ) -> Result<Identity, SessionError> {
        let derived = grant::derive(
            &self.grant_key,
            &self.cfg.grant_key,
            &principal.issuer,
            &self.upstream_id,
            principal,
            token_digest,
        )
        .map_err(|_| SessionError::NoGrant)?;
        if derived.source == "subject" {
            let client = principal.client_id.as_deref().unwrap_or("-").to_owned();
            if lock(&self.warned_subject).insert(client.clone()) {
                tracing::warn!(upstream = %self.upstream_id, client_id = %client, "grant key falls back to client_id+sub: all of this user's grants in this client share one upstream session");
            }
        }
        let retire_at_ms = (derived.source == "token" && principal.expires_at != u64::MAX)
            .then(|| principal.expires_at.saturating_mul(1000));
        let grant = derived.key;
        let concurrent = match self.cfg.mode {
            SessionMode::Single => false,
            SessionMode::Concurrent => true,
            SessionMode::ByScope => principal.scopes.contains(&self.cfg.concurrent_scope),
        };
        if !concurrent {
            return Ok(Identity {
                slot: SlotKey {
                    grant: grant.clone(),
                    handle: None,
                },
                grant,
                concurrent,
                new_handle: None,
                had_handle: false,
                retire_at_ms,
            });
        }
        match cookie_value(headers, &self.cfg.handle_cookie) {
            Some(value) => {
                let nonce = handle::verify(&self.handle_key, &grant, &value)
                    .ok_or(SessionError::InvalidHandle)?;
                Ok(Identity {
                    slot: SlotKey {
                        grant: grant.clone(),
                        handle: Some(nonce),
                    },
                    grant,
                    concurrent,
                    new_handle: None,
                    had_handle: true,
                    retire_at_ms,
                })
            }
            None if self.cfg.without_handle == WithoutHandle::Reject => {
                Err(SessionError::HandleRequired)
            }
            None => {
                let (nonce, value) = handle::issue(&self.handle_key, &grant);
                Ok(Identity {
                    slot: SlotKey {
                        grant: grant.clone(),
                        handle: Some(nonce),
                    },
                    grant,
                    concurrent,
                    new_handle: Some(value),
                    had_handle: false,
                    retire_at_ms,
                })
            }
        }
    }

    /// The `Set-Cookie` value of a handle.
    pub fn handle_cookie(&self, value: &str) -> String {
        format!(
            "{}={value}; Path=/; Secure; HttpOnly; SameSite=Strict",
            self.cfg.handle_cookie
        )
    }

    /// The `Set-Cookie` value that clears the handle.
    pub fn clear_handle_cookie(&self) -> String {
        format!(
            "{}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict",
            self.cfg.handle_cookie
        )
    }

    // === leases ===

    /// Finds or creates the slot's session, waits for its in-flight place (FIFO, bounded), and
    /// makes sure it is logged in.
    pub async fn lease(self: &Arc<Self>, who: &Identity) -> Result<Lease, SessionError> {
        let started = Instant::now();
        let cap = if who.concurrent {
            self.cfg.max_sessions_per_grant
        } else {
            1
        };
        // A session may vanish between lookup and lease (evicted, logged out, its login failed):
        // look again, a few times at most.
        for _ in 0..4 {
            if let Some(e) = self.failed_since(&who.slot, started) {
                // The login this request was waiting behind failed: it shares that answer
                // rather than trying again (never a login per queued request).
                return Err(e);
            }
            let template = SessionRecord {
                retire_at_ms: who.retire_at_ms,
                ..SessionRecord::new(self.next_id(), who.concurrent, now_ms())
            };
            let leased = match self
                .store
                .lease(
                    &who.slot,
                    template,
                    cap,
                    self.cfg.max_inflight_per_session,
                    self.cfg.max_queue_per_session,
                    self.cfg.max_queue_wait,
                )
                .await
            {
                Ok(l) => l,
                Err(LeaseRefused::Busy) => return Err(SessionError::GrantBusy),
                Err(LeaseRefused::Unavailable) => {
                    return Err(SessionError::Store(
                        "the session store did not answer".to_owned(),
                    ))
                }
                Err(LeaseRefused::GrantFull { earliest_idle_ms }) => {
                    let expires = earliest_idle_ms + millis(self.cfg.idle_ttl);
                    let retry_after = expires.saturating_sub(now_ms()).div_ceil(1000).max(1);
                    return Err(SessionError::GrantSessionLimit { retry_after });
                }
                Err(LeaseRefused::Gone) => continue,
            };
            self.sample_queue().await;
            let Leased {
                record,
                in_flight,
                created,
            } = leased;
            match self.ensure_login(&who.slot, record).await {
                Ok((rec, logged_in)) => {
                    return Ok(Lease {
                        slot: who.slot.clone(),
                        id: rec.id,
                        jar: rec.jar,
                        in_flight: Some(in_flight),
                        new_session: created || logged_in,
                        jar_changed: false,
                    })
                }
                Err(SessionError::Gone) => {
                    self.store.release(in_flight, Release::default()).await;
                    continue;
                }
                Err(e) => {
                    self.store.release(in_flight, Release::default()).await;
                    return Err(e);
                }
            }
        }
        Err(self
            .failed_since(&who.slot, started)
            .unwrap_or(SessionError::CapacityExhausted))
    }

    /// Releases a lease: the in-flight place goes back, the use time is recorded (and the jar,
    /// when the upstream changed it).
    pub async fn release(&self, lease: &mut Lease, accepted_202: bool) {
        if let Some(l) = lease.in_flight.take() {
            let jar = lease.jar_changed.then(|| lease.jar.clone());
            self.store
                .release(
                    l,
                    Release {
                        op: accepted_202,
                        jar,
                    },
                )
                .await;
        }
        self.sample_queue().await;
    }

    /// A session id unique across replicas: a random per-process prefix and a counter.
    fn next_id(&self) -> u64 {
        self.id_base | (self.next_id.fetch_add(1, Ordering::Relaxed) & 0xFFFF_FFFF)
    }

    // === logins ===

    /// Makes sure session `id` of the slot is logged in. Returns the record and whether a login
    /// ran for it during this call.
    ///
    /// Logins are single-flight per slot: the first request that needs one starts it in its own
    /// task (so that it finishes, and accounts for its seat, even if that request goes away), and
    /// every request needing the same session waits for that one login and shares its answer.
    async fn ensure_login(
        self: &Arc<Self>,
        slot: &SlotKey,
        record: SessionRecord,
    ) -> Result<(SessionRecord, bool), SessionError> {
        if record.state == SessionState::Active || self.cfg.creation == Creation::Passive {
            return Ok((record, false));
        }
        let id = record.id;
        let key = (slot.clone(), id);
        let mut rx = {
            let mut flights = lock(&self.flights);
            if let Some(rx) = flights.get(&key) {
                rx.clone()
            } else {
                let (tx, rx) = tokio::sync::watch::channel(None);
                flights.insert(key.clone(), rx.clone());
                let me = self.clone();
                tokio::spawn(async move {
                    let result = me.login_if_needed(&key.0, key.1).await;
                    lock(&me.flights).remove(&key);
                    let _ = tx.send(Some(result));
                    me.login_done.notify_waiters();
                });
                rx
            }
        };
        let answer = rx
            .wait_for(Option::is_some)
            .await
            .map(|r| r.clone())
            .ok()
            .flatten();
        answer.unwrap_or(Err(SessionError::LoginError))
    }

    async fn login_if_needed(
        &self,
        slot: &SlotKey,
        id: u64,
    ) -> Result<(SessionRecord, bool), SessionError> {
        // Within this process the flight makes logins single-flight; across replicas the store's
        // login lock does, and a replica that does not get it waits for the other's login.
        let deadline = Instant::now() + self.cfg.login_timeout + Duration::from_secs(5);
        loop {
            let record = match self.store.get(slot).await? {
                Some(r) if r.id == id => r,
                _ => return Err(SessionError::Gone),
            };
            if record.state == SessionState::Active {
                return Ok((record, false));
            }
            if self.cfg.creation == Creation::Passive {
                // The client logs in itself; until it does, requests go without a session.
                return Ok((record, false));
            }
            if self.store.lock_login(slot, id).await? {
                // Another replica may have finished between the read and the lock.
                match self.store.get(slot).await? {
                    Some(r) if r.id == id && r.state == SessionState::Active => {
                        self.store.unlock_login(slot, id).await?;
                        return Ok((r, false));
                    }
                    Some(r) if r.id == id => break,
                    _ => {
                        self.store.unlock_login(slot, id).await?;
                        return Err(SessionError::Gone);
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(SessionError::LoginError);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        // The record turns Active before the login lock is released: a record that is
        // "logging in" without a lock is taken for a crashed replica's by the store's upkeep.
        let result = self.login_with_seat(slot, id).await;
        if let Err(e) = self.store.unlock_login(slot, id).await {
            tracing::warn!(upstream = %self.upstream_id, error = %e, "login lock release failed; it expires with its lease");
        }
        match result {
            Ok(record) => {
                self.sample_sessions().await;
                Ok((record, true))
            }
            Err(e) => {
                self.note_failure(slot, &e);
                self.sample_sessions().await;
                Err(e)
            }
        }
    }

    /// Takes a seat (evicting if needed), logs in, and classifies the outcome. The seat belongs
    /// to this login until the record holds it; every way out before that gives it back. A
    /// failed login deletes its record: a session that never logged in holds no seat, must not
    /// count towards the grant's cap, and is nothing to evict. An "API Login Limit" answer leads
    /// to one eviction and one retry.
    async fn login_with_seat(
        &self,
        slot: &SlotKey,
        id: u64,
    ) -> Result<SessionRecord, SessionError> {
        let Some(creds) = self.cfg.credentials.clone() else {
            return self.fail(slot, id, SessionError::LoginError).await;
        };
        // The grant gave up on its upstream session a moment ago (design §6.7.3): a fresh
        // session would be refused the same way.
        if let Err(e) = self.check_relogin_block(&slot.grant) {
            return self.fail(slot, id, e).await;
        }
        if let Err(e) = self.check_circuit().await {
            return self.fail(slot, id, e).await;
        }
        let mut retried = false;
        loop {
            if let Err(e) = self.admit(id).await {
                return self.fail(slot, id, e).await;
            }
            if let Err(e) = self.mark(slot, id, SessionState::LoggingIn, true).await {
                // Removed while waiting for the seat (cancelled, evicted, logged out).
                self.give_back_seat(id).await;
                return Err(e);
            }
            let outcome = match self.gated_login(&creds).await {
                Ok(o) => o,
                Err(e) => {
                    // The cooldown opened (or the store failed) while this login waited.
                    let failed = self.fail(slot, id, e).await;
                    self.give_back_seat(id).await;
                    return failed;
                }
            };
            match outcome {
                LoginOutcome::Ok(jar) => return self.seat_session(slot, id, jar).await,
                LoginOutcome::LoginLimit if !retried => {
                    retried = true;
                    self.give_back_seat(id).await;
                    self.mark(slot, id, SessionState::NeedsLogin, false).await?;
                    tracing::warn!(upstream = %self.upstream_id, "upstream API login limit reached below tollgate's own cap; evicting one idle session and retrying once");
                    if !self.evict_one().await {
                        return self.fail(slot, id, SessionError::SeatsExhausted).await;
                    }
                }
                other => {
                    let e = match other {
                        LoginOutcome::LoginLimit => SessionError::SeatsExhausted,
                        LoginOutcome::BadCredentials => SessionError::LoginFailed {
                            retry_after: self.cfg.login_failure_cooldown.as_secs().max(1),
                        },
                        LoginOutcome::Throttled { retry_after } => {
                            SessionError::Throttled { retry_after }
                        }
                        LoginOutcome::Error(_) | LoginOutcome::Ok(_) => SessionError::LoginError,
                    };
                    let failed = self.fail(slot, id, e).await;
                    self.give_back_seat(id).await;
                    return failed;
                }
            }
        }
    }

    /// A successful login's jar goes into its record, which now holds the seat. If the record
    /// was removed while the login ran (the request cancelled, an eviction, a logout, a reload
    /// or shutdown), the new upstream session belongs to nobody: it is logged out at once.
    async fn seat_session(
        &self,
        slot: &SlotKey,
        id: u64,
        jar: Jar,
    ) -> Result<SessionRecord, SessionError> {
        tracing::info!(upstream = %self.upstream_id, session = id, cookies = ?jar.names(), correlation = jar.correlation("ASP.NET_SessionId").as_deref().unwrap_or("-"), "upstream login");
        let kept = jar.clone();
        let created = now_ms();
        let stored = self
            .store
            .update(
                slot,
                id,
                Box::new(move |r| {
                    r.state = SessionState::Active;
                    r.jar = kept.clone();
                    r.created_ms = created;
                }),
            )
            .await;
        match stored {
            Ok(Some(record)) => Ok(record),
            Ok(None) | Err(_) => {
                tracing::info!(upstream = %self.upstream_id, session = id, "the session was removed while it logged in: logging the new upstream session out");
                self.logout_jar(&jar, Retire::Logout).await;
                self.give_back_seat(id).await;
                Err(SessionError::Gone)
            }
        }
    }

    /// Deletes the record of a login that failed, and returns the error.
    async fn fail<T>(&self, slot: &SlotKey, id: u64, e: SessionError) -> Result<T, SessionError> {
        if let Err(err) = self.store.remove(slot, id).await {
            tracing::warn!(upstream = %self.upstream_id, error = %err, "could not delete the record of a failed login; the sweep will");
        }
        Err(e)
    }

    /// The login call behind the credential gate (design §6.5.3): never while the credential
    /// set's cooldown is open, and, until the credentials are proven by one success, one
    /// attempt at a time across every grant (and, with a shared store, every replica). A wrong
    /// password is then tried once, not once per waiting grant, and the account never locks.
    async fn gated_login(&self, creds: &Credentials) -> Result<LoginOutcome, SessionError> {
        self.check_circuit().await?;
        if self.is_proven().await {
            let outcome = login::login(&self.upstream, &self.cfg, creds).await;
            self.after_login(&outcome).await;
            return Ok(outcome);
        }
        let _local = self.trial.lock().await;
        let deadline = Instant::now() + self.cfg.login_timeout + Duration::from_secs(5);
        let ttl = self.cfg.login_timeout + Duration::from_secs(5);
        let fleet_proven = loop {
            // The trial before this one may have opened the cooldown or proven the set.
            self.check_circuit().await?;
            if self.is_proven().await {
                break true;
            }
            if self
                .store
                .lock_credential_trial(&self.credential_fp, ttl)
                .await?
            {
                break false;
            }
            if Instant::now() > deadline {
                return Err(SessionError::LoginError);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let outcome = login::login(&self.upstream, &self.cfg, creds).await;
        self.after_login(&outcome).await;
        if !fleet_proven {
            if let Err(e) = self
                .store
                .unlock_credential_trial(&self.credential_fp)
                .await
            {
                tracing::warn!(upstream = %self.upstream_id, error = %e, "credential trial lock release failed; it expires by itself");
            }
        }
        Ok(outcome)
    }

    /// The credential gate's bookkeeping after a login call.
    async fn after_login(&self, outcome: &LoginOutcome) {
        self.metrics
            .upstream_login(&self.upstream_id, outcome.label());
        match outcome {
            LoginOutcome::Ok(_) => {
                self.circuit_success();
                if !self.proven.swap(true, Ordering::SeqCst) {
                    if let Err(e) = self
                        .store
                        .mark_credentials_proven(&self.credential_fp)
                        .await
                    {
                        tracing::warn!(upstream = %self.upstream_id, error = %e, "could not share that the credentials work");
                    }
                }
            }
            LoginOutcome::BadCredentials => self.open_cooldown().await,
            LoginOutcome::Error(reason) => {
                let mut c = lock(&self.circuit);
                c.backoff = (c.backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
                c.backoff_until = Some(Instant::now() + c.backoff);
                drop(c);
                tracing::warn!(upstream = %self.upstream_id, %reason, "upstream login failed");
            }
            LoginOutcome::LoginLimit | LoginOutcome::Throttled { .. } => {}
        }
    }

    async fn is_proven(&self) -> bool {
        if self.proven.load(Ordering::SeqCst) {
            return true;
        }
        let shared = self
            .store
            .credentials_proven(&self.credential_fp)
            .await
            .unwrap_or(false);
        if shared {
            self.proven.store(true, Ordering::SeqCst);
        }
        shared
    }

    /// A credential failure: no login with this credential set until the cooldown ends.
    async fn open_cooldown(&self) {
        let cooldown = self.cfg.login_failure_cooldown;
        self.proven.store(false, Ordering::SeqCst);
        lock(&self.circuit).open_until = Some(Instant::now() + cooldown);
        self.metrics.upstream_login_circuit(&self.upstream_id, true);
        tracing::error!(upstream = %self.upstream_id, ?cooldown, "upstream refused tollgate's credentials; no login is attempted until the cooldown ends (the account locks after repeated failures)");
        if let Err(e) = self
            .store
            .open_credential_cooldown(&self.credential_fp, now_ms() + millis(cooldown))
            .await
        {
            tracing::warn!(upstream = %self.upstream_id, error = %e, "could not share the credential cooldown with the other replicas");
        }
    }

    async fn mark(
        &self,
        slot: &SlotKey,
        id: u64,
        state: SessionState,
        seated: bool,
    ) -> Result<(), SessionError> {
        self.store
            .update(
                slot,
                id,
                Box::new(move |r| {
                    r.state = state;
                    r.seated = seated;
                }),
            )
            .await?
            .map(|_| ())
            .ok_or(SessionError::Gone)
    }

    /// Refuses a login while the credential cooldown is open (here or, with a shared store,
    /// anywhere in the fleet) or while failed logins back off.
    async fn check_circuit(&self) -> Result<(), SessionError> {
        self.check_local_circuit()?;
        if let Some(until) = self.store.credential_cooldown(&self.credential_fp).await? {
            let left = Duration::from_millis(until.saturating_sub(now_ms()));
            let mut c = lock(&self.circuit);
            if c.open_until.is_none() {
                self.metrics.upstream_login_circuit(&self.upstream_id, true);
            }
            c.open_until = Some(Instant::now() + left);
            self.proven.store(false, Ordering::SeqCst);
            return Err(SessionError::LoginFailed {
                retry_after: left.as_secs().max(1),
            });
        }
        Ok(())
    }

    fn check_local_circuit(&self) -> Result<(), SessionError> {
        let mut c = lock(&self.circuit);
        let now = Instant::now();
        if let Some(until) = c.open_until {
            if now < until {
                return Err(SessionError::LoginFailed {
                    retry_after: (until - now).as_secs().max(1),
                });
            }
            c.open_until = None;
            self.metrics
                .upstream_login_circuit(&self.upstream_id, false);
        }
        if c.backoff_until.is_some_and(|u| now < u) {
            return Err(SessionError::LoginError);
        }
        Ok(())
    }

    fn circuit_success(&self) {
        let mut c = lock(&self.circuit);
        c.backoff = Duration::ZERO;
        c.backoff_until = None;
    }

    /// Remembers a slot's failed login, so that the requests that were waiting for it share the
    /// answer instead of each trying a login of its own.
    fn note_failure(&self, slot: &SlotKey, e: &SessionError) {
        if matches!(e, SessionError::Gone) {
            return;
        }
        let mut failures = lock(&self.failures);
        failures.retain(|_, (at, _)| at.elapsed() < FAILURE_MEMORY);
        failures.insert(slot.clone(), (Instant::now(), e.clone()));
    }

    /// The slot's login failure since `since`, if any.
    fn failed_since(&self, slot: &SlotKey, since: Instant) -> Option<SessionError> {
        lock(&self.failures)
            .get(slot)
            .filter(|(at, _)| *at >= since)
            .map(|(_, e)| e.clone())
    }

    fn check_relogin_block(&self, grant: &GrantKey) -> Result<(), SessionError> {
        if self.relogin_blocked.is_blocked(grant) {
            Err(SessionError::AuthFailed)
        } else {
            Ok(())
        }
    }

    /// Takes a seat: at once if one is free, else by evicting the least-recently-used idle
    /// session, else by waiting (FIFO) up to `admission_wait`.
    async fn admit(&self, holder: u64) -> Result<(), SessionError> {
        let start = Instant::now();
        let deadline = start + self.cfg.admission_wait;
        loop {
            let notified = self.seat_freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self
                .store
                .take_seat(self.cfg.max_upstream_sessions, holder)
                .await?
            {
                self.metrics
                    .upstream_admission_wait(&self.upstream_id, start.elapsed().as_secs_f64());
                self.sample_seats().await;
                return Ok(());
            }
            if self.evict_one().await {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                self.metrics
                    .upstream_admission_wait(&self.upstream_id, start.elapsed().as_secs_f64());
                return Err(SessionError::CapacityExhausted);
            }
            // Wake on a freed seat, or soon anyway: a busy session may have become evictable.
            let nap = (deadline - now).min(Duration::from_millis(100));
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    async fn give_back_seat(&self, holder: u64) {
        if let Err(e) = self.store.release_seat(holder).await {
            tracing::warn!(upstream = %self.upstream_id, error = %e, "seat release failed");
        }
        self.seat_freed.notify_one();
        self.sample_seats().await;
    }

    /// Evicts the least-recently-used evictable session (logging it out). False if none.
    async fn evict_one(&self) -> bool {
        let victim = self
            .store
            .take_evictable(
                now_ms(),
                millis(self.cfg.min_idle_before_evict),
                millis(self.cfg.op_ttl),
            )
            .await;
        match victim {
            Ok(Some((_, record))) => {
                self.retire_removed(record, Retire::Lru, true).await;
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(upstream = %self.upstream_id, error = %e, "eviction failed");
                false
            }
        }
    }

    // === expiry, re-login ===

    /// True when a response to a request that carried the jar says the session has ended
    /// (design §6.7.1): 401, or a 302/303 to the login page.
    pub fn is_expired(&self, status: http::StatusCode, headers: &HeaderMap) -> bool {
        if status == http::StatusCode::UNAUTHORIZED {
            return true;
        }
        if status == http::StatusCode::FOUND || status == http::StatusCode::SEE_OTHER {
            if let Some(loc) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) {
                let path = loc
                    .parse::<http::Uri>()
                    .map(|u| u.path().to_owned())
                    .unwrap_or_else(|_| loc.to_owned());
                return self.cfg.expired_redirect.is_match(&path);
            }
        }
        false
    }

    /// The session ended upstream: its seat is presumed free (no logout call). Logs in again
    /// into the same slot, once, unless the grant's re-login is blocked.
    pub async fn relogin(self: &Arc<Self>, lease: &mut Lease) -> Result<(), SessionError> {
        self.check_relogin_block(&lease.slot.grant)?;
        self.ended_upstream(lease).await?;
        self.metrics.upstream_relogin(&self.upstream_id);
        let current = self
            .store
            .get(&lease.slot)
            .await?
            .filter(|r| r.id == lease.id)
            .ok_or(SessionError::Gone)?;
        let (record, _) = self.ensure_login(&lease.slot, current).await?;
        lease.jar = record.jar;
        lease.new_session = true;
        lease.jar_changed = false;
        Ok(())
    }

    /// The upstream ended the session (it said so, or deleted a marker cookie): the record
    /// needs a login again, and its seat is given back without a logout call (the upstream
    /// already freed it). Only the caller whose edit turned the record from active gives the
    /// seat back.
    pub async fn ended_upstream(&self, lease: &mut Lease) -> Result<(), SessionError> {
        lease.jar = Jar::default();
        lease.jar_changed = false;
        let flipped = Arc::new(AtomicBool::new(false));
        let seen = flipped.clone();
        self.store
            .update(
                &lease.slot,
                lease.id,
                Box::new(move |r| {
                    let active = r.state == SessionState::Active;
                    seen.store(active && r.seated, Ordering::SeqCst);
                    if active {
                        r.state = SessionState::NeedsLogin;
                        r.jar = Jar::default();
                        r.seated = false;
                    }
                }),
            )
            .await?;
        if flipped.load(Ordering::SeqCst) {
            self.give_back_seat(lease.id).await;
        }
        Ok(())
    }

    /// After a replay that was still unauthenticated: no re-login for this grant for a while,
    /// and the session is dropped (no logout: the upstream says it is not signed in).
    pub async fn give_up(&self, lease: &mut Lease) {
        self.relogin_blocked.block(
            &lease.slot.grant,
            Instant::now() + self.cfg.relogin_min_interval,
        );
        self.note_failure(&lease.slot, &SessionError::AuthFailed);
        self.release(lease, false).await;
        if let Ok(Some(record)) = self.store.remove(&lease.slot, lease.id).await {
            self.retire_removed(record, Retire::Expired, false).await;
        }
    }

    /// Records the upstream's `Set-Cookie`s in the session's jar (and in the lease). Returns
    /// true when they deleted a marker cookie: the upstream signed the session out.
    pub fn absorb(&self, lease: &mut Lease, headers: &HeaderMap) -> bool {
        let lines: Vec<String> = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        if lines.is_empty() {
            return false;
        }
        let (max_c, max_b) = (self.cfg.max_jar_cookies, self.cfg.max_jar_bytes);
        let had_markers = self.has_markers(&lease.jar);
        let applied = lease.jar.apply_all(
            lines.iter().map(String::as_str),
            SystemTime::now(),
            max_c,
            max_b,
        );
        if applied.overflow > 0 {
            tracing::warn!(upstream = %self.upstream_id, dropped = applied.overflow, "session jar full; cookies dropped");
        }
        // The jar goes back to the store with the release (one round trip, not two).
        lease.jar_changed |= applied.set + applied.deleted > 0;
        had_markers && !self.has_markers(&lease.jar)
    }

    fn has_markers(&self, jar: &Jar) -> bool {
        self.cfg.marker_cookies.iter().all(|m| jar.has(m))
    }

    // === passive capture ===

    /// Passive mode: takes a seat for a client's own login before that login is forwarded, so
    /// the captured session is counted from its first moment. Returns the new session's id.
    pub async fn admit_capture(&self) -> Result<u64, SessionError> {
        let id = self.next_id();
        self.admit(id).await?;
        Ok(id)
    }

    /// The forwarded login did not create a session: its seat goes back.
    pub async fn abandon_capture(&self, id: u64) {
        self.give_back_seat(id).await;
    }

    /// Stores the cookies of a client-made login as the slot's session, on the seat taken by
    /// [`Pool::admit_capture`]. A session that cannot be stored (the slot was taken meanwhile,
    /// the grant is full) is logged out at once and its seat given back. False when the answer
    /// carried no session (the marker cookies are missing): the seat goes back too.
    pub async fn capture(
        &self,
        who: &Identity,
        id: u64,
        headers: &HeaderMap,
    ) -> Result<bool, SessionError> {
        let mut jar = Jar::default();
        let lines: Vec<String> = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        jar.apply_all(
            lines.iter().map(String::as_str),
            SystemTime::now(),
            self.cfg.max_jar_cookies,
            self.cfg.max_jar_bytes,
        );
        if !self.has_markers(&jar) {
            self.give_back_seat(id).await;
            return Ok(false);
        }
        let mut record = SessionRecord::new(id, who.concurrent, now_ms());
        record.retire_at_ms = who.retire_at_ms;
        record.state = SessionState::Active;
        record.seated = true;
        record.jar = jar.clone();
        let cap = if who.concurrent {
            self.cfg.max_sessions_per_grant
        } else {
            1
        };
        let created = self
            .store
            .create(&who.slot, record, cap, self.cfg.max_inflight_per_session)
            .await;
        match created {
            Ok(Created::New(_)) => {
                self.metrics.upstream_login(&self.upstream_id, "captured");
                self.sample_sessions().await;
                Ok(true)
            }
            Ok(Created::Existing(_) | Created::GrantFull { .. }) => {
                tracing::info!(upstream = %self.upstream_id, "a captured session found its slot taken: logging it out");
                self.logout_jar(&jar, Retire::Logout).await;
                self.give_back_seat(id).await;
                Ok(false)
            }
            Err(e) => {
                self.logout_jar(&jar, Retire::Logout).await;
                self.give_back_seat(id).await;
                Err(e.into())
            }
        }
    }

    /// Passive mode: the upstream ended the session; forget it (no re-login is possible).
    pub async fn forget(&self, lease: &mut Lease) {
        self.release(lease, false).await;
        if let Ok(Some(record)) = self.store.remove(&lease.slot, lease.id).await {
            self.retire_removed(record, Retire::Expired, false).await;
        }
    }

    // === logout ===

    /// Logs out the sessions of `grant` (the one of `slot`, or every slot of the grant), each
    /// once nothing holds or waits for it. Idempotent. Returns how many were logged out, and
    /// how many were still busy when the wait ran out (they stay).
    pub async fn logout(&self, grant: &GrantKey, slot: Option<&SlotKey>) -> (usize, usize) {
        let Ok(all) = self.store.list().await else {
            return (0, 0);
        };
        let deadline = Instant::now() + DRAIN_BOUND;
        let (mut done, mut busy) = (0, 0);
        for (key, record) in all {
            if key.grant != *grant || slot.is_some_and(|s| *s != key) {
                continue;
            }
            match self
                .drain_and_retire(&key, record.id, Retire::Logout, deadline)
                .await
            {
                Drained::Retired => done += 1,
                Drained::Busy => busy += 1,
                Drained::Gone => {}
            }
        }
        (done, busy)
    }

    /// Waits (until `deadline`) for nothing to hold or wait for the session, then removes it
    /// and logs it out. The check and the removal are one atomic step of the store, so a
    /// logout never meets a request on its session.
    async fn drain_and_retire(
        &self,
        slot: &SlotKey,
        id: u64,
        reason: Retire,
        deadline: Instant,
    ) -> Drained {
        loop {
            match self.store.remove_unused(slot, id).await {
                Ok(Removal::Removed(record)) => {
                    self.retire_removed(record, reason, true).await;
                    return Drained::Retired;
                }
                Ok(Removal::Gone) => return Drained::Gone,
                Ok(Removal::Busy) | Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Ok(Removal::Busy) | Err(_) => {
                    tracing::warn!(upstream = %self.upstream_id, session = id, reason = reason.as_str(), "session still in use: not logged out (the idle sweep ends it later)");
                    return Drained::Busy;
                }
            }
        }
    }

    /// Finishes a session already removed from the store: logs it out (with two retries, after
    /// 1 s and 4 s) when it holds a seat and `call_logout`, then gives the seat back. A record
    /// removed while its login runs is left to that login, which owns the seat until then and
    /// logs the new session out when it finds the record gone.
    async fn retire_removed(&self, record: SessionRecord, reason: Retire, call_logout: bool) {
        self.metrics
            .upstream_eviction(&self.upstream_id, reason.as_str());
        if record.state == SessionState::LoggingIn {
            self.sample_sessions().await;
            return;
        }
        if record.seated {
            if call_logout && record.state == SessionState::Active && !record.jar.is_empty() {
                let ok = self.logout_jar(&record.jar, reason).await;
                tracing::info!(upstream = %self.upstream_id, session = record.id, reason = reason.as_str(), ok, correlation = record.jar.correlation("ASP.NET_SessionId").as_deref().unwrap_or("-"), "upstream logout");
            }
            self.give_back_seat(record.id).await;
        }
        self.sample_sessions().await;
    }

    /// The logout call for a jar, with two retries (after 1 s and 4 s; none at shutdown).
    async fn logout_jar(&self, jar: &Jar, reason: Retire) -> bool {
        let mut ok = login::logout(&self.upstream, &self.cfg, jar).await;
        for pause in [Duration::from_secs(1), Duration::from_secs(4)] {
            if ok || reason == Retire::Shutdown {
                break;
            }
            tokio::time::sleep(pause).await;
            ok = login::logout(&self.upstream, &self.cfg, jar).await;
        }
        self.metrics
            .upstream_logout(&self.upstream_id, if ok { "ok" } else { "failed" });
        ok
    }

    /// Retires idle and over-age sessions (and token-expired ones); run periodically.
    pub async fn sweep(&self) {
        let due = self
            .store
            .take_expired(
                now_ms(),
                millis(self.cfg.idle_ttl),
                millis(self.cfg.max_session_age),
            )
            .await;
        match due {
            Ok(list) => {
                for (_, record, why) in list {
                    let reason = match why {
                        Expiry::Idle => Retire::Idle,
                        Expiry::Age => Retire::MaxAge,
                        Expiry::TokenExpired => Retire::TokenExpired,
                    };
                    self.retire_removed(record, reason, true).await;
                }
            }
            Err(e) => {
                tracing::warn!(upstream = %self.upstream_id, error = %e, "session sweep failed")
            }
        }
    }

    /// The store's upkeep: a crashed replica's unfinished logins give their seats back, and
    /// sessions the store lost (it came back empty, or failed over to a replica that missed
    /// them) are repaired: registered again within the cap, or logged out when there is no
    /// room, so that no upstream session holds a seat the fleet does not count.
    pub async fn upkeep(&self) {
        let m = match self.store.maintain().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(upstream = %self.upstream_id, error = %e, "session store upkeep failed");
                return;
            }
        };
        for record in m.abandoned {
            self.metrics
                .upstream_eviction(&self.upstream_id, Retire::Expired.as_str());
            if record.seated {
                self.give_back_seat(record.id).await;
            }
        }
        if !m.reset && m.lost.is_empty() {
            return;
        }
        self.metrics.store_reset(&self.upstream_id);
        let (mut registered, mut logged_out) = (0, 0);
        for (slot, record) in m.lost {
            if !record.seated || record.state != SessionState::Active || record.jar.is_empty() {
                continue;
            }
            let cap = if record.concurrent {
                self.cfg.max_sessions_per_grant
            } else {
                1
            };
            let restored = self
                .store
                .restore(&slot, record.clone(), cap, self.cfg.max_upstream_sessions)
                .await;
            if matches!(restored, Ok(Restored::Registered)) {
                registered += 1;
            } else {
                self.logout_jar(&record.jar, Retire::Expired).await;
                logged_out += 1;
            }
        }
        tracing::warn!(upstream = %self.upstream_id, reset = m.reset, registered, logged_out, "the session store lost sessions this replica knew (tollgate_store_resets_total): registered them again within the cap, logged out those without room");
        self.sample_sessions().await;
    }

    /// Logs out every session, in parallel, within `bound`: first the logins in progress finish
    /// (their new sessions are logged out too), then each session once nothing uses it.
    pub async fn shutdown(self: &Arc<Self>, bound: Duration) {
        let deadline = Instant::now() + bound;
        self.wait_for_logins(deadline).await;
        let Ok(all) = self.store.list().await else {
            return;
        };
        // Bounded parallelism: a large table must not open hundreds of connections at once.
        let parallel = Arc::new(tokio::sync::Semaphore::new(SHUTDOWN_PARALLELISM));
        let mut tasks = tokio::task::JoinSet::new();
        for (slot, record) in all {
            let me = self.clone();
            let parallel = parallel.clone();
            tasks.spawn(async move {
                let _permit = parallel.acquire_owned().await;
                me.drain_and_retire(&slot, record.id, Retire::Shutdown, deadline)
                    .await;
            });
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let _ =
            tokio::time::timeout(left, async { while tasks.join_next().await.is_some() {} }).await;
    }

    /// Leaves the sessions to the fleet (this replica stops, others go on): waits for this
    /// replica's logins in progress to finish, so that they record their sessions (bounded by
    /// `bound`), then stops the background work. Nothing is logged out.
    pub async fn leave(&self, bound: Duration) {
        self.wait_for_logins(Instant::now() + bound).await;
        self.stop();
    }

    /// Waits until no login of this pool is running (or `deadline`).
    async fn wait_for_logins(&self, deadline: Instant) {
        loop {
            let done = self.login_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if lock(&self.flights).is_empty() {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), done).await;
        }
    }

    /// True while a login of this pool is running (tests and shutdown wait on it).
    pub fn logins_running(&self) -> usize {
        lock(&self.flights).len()
    }

    // === admin and metrics ===

    /// The sessions for `GET /sessions`: never a cookie value.
    pub async fn describe(&self) -> Vec<serde_json::Value> {
        let now = now_ms();
        let Ok(all) = self.store.list().await else {
            return Vec::new();
        };
        all.into_iter()
            .map(|(slot, r)| {
                serde_json::json!({
                    "grant": slot.grant.0,
                    "upstream": &*self.upstream_id,
                    "mode": if r.concurrent { "concurrent" } else { "single" },
                    "age_seconds": now.saturating_sub(r.created_ms) / 1000,
                    "idle_seconds": now.saturating_sub(r.last_used_ms) / 1000,
                    "in_flight": r.in_flight,
                    "queued": r.queued,
                    "state": r.state.as_str(),
                })
            })
            .collect()
    }

    async fn sample_seats(&self) {
        if !self.publishes() {
            return;
        }
        if let Ok(n) = self.store.seats_in_use().await {
            self.metrics.upstream_seats(&self.upstream_id, n);
        }
    }

    async fn sample_queue(&self) {
        if let Ok(queued) = self.store.queue_depth().await {
            self.metrics.upstream_queue_depth(&self.upstream_id, queued);
        }
    }

    /// True when this replica publishes the fleet-wide gauges: always with the memory store,
    /// and in a fleet only on the reporter (so that a sum over replicas is the fleet's value).
    fn publishes(&self) -> bool {
        self.fleet.as_ref().is_none_or(|f| f.is_reporter())
    }

    /// Publishes the session-count gauges by state and the seats, in one store round trip
    /// whatever the number of sessions (also called at each scrape).
    pub async fn sample_sessions(&self) {
        if !self.publishes() {
            self.metrics.withdraw_fleet_gauges(&self.upstream_id);
            return;
        }
        if let Ok(stats) = self.store.stats().await {
            for (s, n) in [
                (SessionState::Active, stats.active),
                (SessionState::LoggingIn, stats.logging_in),
                (SessionState::NeedsLogin, stats.needs_login),
            ] {
                self.metrics
                    .upstream_sessions(&self.upstream_id, s.as_str(), n);
            }
            self.metrics.upstream_seats(&self.upstream_id, stats.seats);
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().to_owned())
}

/// Grants blocked until a moment. Entries that ran out are pruned whenever one is added, so
/// the map holds only the grants blocked now.
#[derive(Debug, Default)]
struct Blocked(Mutex<HashMap<GrantKey, Instant>>);

impl Blocked {
    fn block(&self, grant: &GrantKey, until: Instant) {
        let mut m = lock(&self.0);
        let now = Instant::now();
        m.retain(|_, u| *u > now);
        m.insert(grant.clone(), until);
    }

    fn is_blocked(&self, grant: &GrantKey) -> bool {
        lock(&self.0)
            .get(grant)
            .is_some_and(|until| Instant::now() < *until)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.0).len()
    }
}

/// Names a credential set without revealing it: an HMAC over every field of the login body.
fn credential_fingerprint(key: &hmac::Key, cfg: &SessionConfig) -> String {
    let Some(c) = &cfg.credentials else {
        return "passive".to_owned();
    };
    let mut ctx = hmac::Context::with_key(key);
    for part in [
        Some(c.name.as_str()),
        Some(c.password.expose()),
        c.tenant.as_deref(),
        c.branch.as_deref(),
        c.locale.as_deref(),
    ] {
        let v = part.unwrap_or("\0");
        ctx.update(&(v.len() as u64).to_be_bytes());
        ctx.update(v.as_bytes());
    }
    ctx.sign()
        .as_ref()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_grants_are_pruned_once_their_time_is_up() {
        let b = Blocked::default();
        let (g1, g2) = (GrantKey("g1".into()), GrantKey("g2".into()));
        let now = Instant::now();
        b.block(&g1, now);
        assert!(!b.is_blocked(&g1), "a block that ran out");
        b.block(&g2, now + Duration::from_secs(60));
        assert!(b.is_blocked(&g2));
        assert_eq!(b.len(), 1, "g1 was pruned when g2 was added");
    }
}
