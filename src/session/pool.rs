//! One upstream's session pool: which session a request uses, logging in (single-flight, within
//! the seat cap, evicting the least-recently-used idle session when needed), re-login after
//! expiry, and logging out (idle, age, eviction, admin, shutdown). State lives in the
//! [`SessionStore`]; this module holds only the local coordination (login locks, the credential
//! circuit, waiters for seats).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use http::header::{self, HeaderMap};
use tokio::sync::Notify;

use super::grant::{self, GrantKey};
use super::handle;
use super::jar::Jar;
use super::login::{self, LoginOutcome};
use super::store::{
    millis, Created, Expiry, InFlight, LeaseRefused, SessionRecord, SessionState, SessionStore,
    SlotKey,
};
use super::SessionError;
use crate::auth::Principal;
use crate::config::{Creation, SessionConfig, SessionMode, WithoutHandle};
use crate::metrics::Metrics;
use crate::proxy::Upstream;

/// Logouts running at once during shutdown.
const SHUTDOWN_PARALLELISM: usize = 16;

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
    login_locks: Mutex<HashMap<SlotKey, Arc<tokio::sync::Mutex<()>>>>,
    circuit: Mutex<Circuit>,
    relogin_blocked: Mutex<HashMap<GrantKey, Instant>>,
    seat_freed: Notify,
    warned_subject: Mutex<HashSet<String>>,
    sweeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(t) = lock(&self.sweeper).take() {
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
    ) -> Self {
        let upstream_id = upstream.id.clone();
        let master = hmac::Key::new(hmac::HMAC_SHA256, key);
        let derive =
            |label: &[u8]| hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&master, label).as_ref());
        metrics.declare_upstream_sessions(&upstream_id);
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
            login_locks: Mutex::new(HashMap::new()),
            circuit: Mutex::new(Circuit::default()),
            relogin_blocked: Mutex::new(HashMap::new()),
            seat_freed: Notify::new(),
            warned_subject: Mutex::new(HashSet::new()),
            sweeper: Mutex::new(None),
        }
    }

    /// Starts the sweeper (idle, over-age and token-expired sessions are logged out; a shared
    /// store's upkeep runs). It holds only a weak reference, so it ends with the pool. Idempotent.
    pub fn start(self: &Arc<Self>) {
        let mut slot = lock(&self.sweeper);
        if slot.is_some() {
            return;
        }
        let every =
            (self.cfg.idle_ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let weak = Arc::downgrade(self);
        *slot = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match weak.upgrade() {
                    Some(pool) => pool.sweep().await,
                    None => break,
                }
            }
        }));
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
        // A session may vanish between lookup and lease (evicted, logged out): look again, a few
        // times at most.
        for _ in 0..4 {
            let (record, created) = self.find_or_create(who).await?;
            let in_flight = match self
                .store
                .acquire(
                    &who.slot,
                    record.id,
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
                Err(LeaseRefused::Gone) => continue,
            };
            self.sample_queue().await;
            match self.ensure_login(&who.slot, record.id).await {
                Ok((rec, logged_in)) => {
                    return Ok(Lease {
                        slot: who.slot.clone(),
                        id: rec.id,
                        jar: rec.jar,
                        in_flight: Some(in_flight),
                        new_session: created || logged_in,
                    })
                }
                Err(SessionError::Gone) => {
                    self.store.release(in_flight, now_ms(), false).await;
                    continue;
                }
                Err(e) => {
                    self.store.release(in_flight, now_ms(), false).await;
                    return Err(e);
                }
            }
        }
        Err(SessionError::CapacityExhausted)
    }

    /// Releases a lease: the in-flight place goes back, the use time is recorded.
    pub async fn release(&self, lease: &mut Lease, accepted_202: bool) {
        if let Some(l) = lease.in_flight.take() {
            self.store.release(l, now_ms(), accepted_202).await;
        }
        self.sample_queue().await;
    }

    async fn find_or_create(&self, who: &Identity) -> Result<(SessionRecord, bool), SessionError> {
        if let Some(r) = self.store.get(&who.slot).await? {
            return Ok((r, false));
        }
        let id = self.next_id();
        let cap = if who.concurrent {
            self.cfg.max_sessions_per_grant
        } else {
            1
        };
        match self
            .store
            .create(
                &who.slot,
                SessionRecord {
                    retire_at_ms: who.retire_at_ms,
                    ..SessionRecord::new(id, who.concurrent, now_ms())
                },
                cap,
                self.cfg.max_inflight_per_session,
            )
            .await?
        {
            Created::New(r) => Ok((r, true)),
            Created::Existing(r) => Ok((r, false)),
            Created::GrantFull { earliest_idle_ms } => {
                let expires = earliest_idle_ms + millis(self.cfg.idle_ttl);
                let retry_after = expires.saturating_sub(now_ms()).div_ceil(1000).max(1);
                Err(SessionError::GrantSessionLimit { retry_after })
            }
        }
    }

    /// A session id unique across replicas: a random per-process prefix and a counter.
    fn next_id(&self) -> u64 {
        self.id_base | (self.next_id.fetch_add(1, Ordering::Relaxed) & 0xFFFF_FFFF)
    }

    fn login_lock(&self, slot: &SlotKey) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.login_locks)
            .entry(slot.clone())
            .or_default()
            .clone()
    }

    /// Logs the slot's session in unless it already is (single-flight per slot). Returns the
    /// record and whether this call logged it in.
    /// Runs [`Pool::login_if_needed`] in its own task: a login, once started, finishes and
    /// records its seat even if the request that started it goes away.
    async fn ensure_login(
        self: &Arc<Self>,
        slot: &SlotKey,
        id: u64,
    ) -> Result<(SessionRecord, bool), SessionError> {
        let me = self.clone();
        let slot = slot.clone();
        tokio::spawn(async move { me.login_if_needed(&slot, id).await })
            .await
            .unwrap_or(Err(SessionError::LoginError))
    }

    async fn login_if_needed(
        &self,
        slot: &SlotKey,
        id: u64,
    ) -> Result<(SessionRecord, bool), SessionError> {
        let lock = self.login_lock(slot);
        let _guard = lock.lock().await;
        // Within this process the lock above makes logins single-flight; across replicas the
        // store's login lock does, and a replica that does not get it waits for the other's
        // login to finish.
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
        let result = match self.login_with_seat(slot, id).await {
            Ok(jar) => self
                .store
                .update(
                    slot,
                    id,
                    Box::new(move |r| {
                        r.state = SessionState::Active;
                        r.jar = jar;
                        r.created_ms = now_ms();
                    }),
                )
                .await
                .map_err(SessionError::from)
                .and_then(|r| r.ok_or(SessionError::Gone)),
            Err(e) => Err(e),
        };
        if let Err(e) = self.store.unlock_login(slot, id).await {
            tracing::warn!(upstream = %self.upstream_id, error = %e, "login lock release failed; it expires with its lease");
        }
        let updated = result?;
        self.sample_sessions().await;
        Ok((updated, true))
    }

    /// Takes a seat (evicting if needed), logs in, and classifies the outcome; on failure the
    /// seat is given back. An "API Login Limit" answer leads to one eviction and one retry.
    async fn login_with_seat(&self, slot: &SlotKey, id: u64) -> Result<Jar, SessionError> {
        let Some(creds) = self.cfg.credentials.clone() else {
            return Err(SessionError::LoginError);
        };
        self.check_circuit()?;
        let upstream = self.upstream()?;
        let mut retried = false;
        loop {
            self.admit(id).await?;
            self.mark(slot, id, SessionState::LoggingIn, true).await?;
            let outcome = login::login(&upstream, &self.cfg, &creds).await;
            self.metrics
                .upstream_login(&self.upstream_id, outcome.label());
            match outcome {
                LoginOutcome::Ok(jar) => {
                    self.circuit_success();
                    tracing::info!(upstream = %self.upstream_id, session = id, cookies = ?jar.names(), correlation = jar.correlation("ASP.NET_SessionId").as_deref().unwrap_or("-"), "upstream login");
                    return Ok(jar);
                }
                other => {
                    self.mark(slot, id, SessionState::NeedsLogin, false).await?;
                    self.give_back_seat(id).await;
                    match other {
                        LoginOutcome::LoginLimit if !retried => {
                            retried = true;
                            tracing::warn!(upstream = %self.upstream_id, "upstream API login limit reached below tollgate's own cap; evicting one idle session and retrying once");
                            if !self.evict_one().await {
                                return Err(SessionError::SeatsExhausted);
                            }
                        }
                        LoginOutcome::LoginLimit => return Err(SessionError::SeatsExhausted),
                        LoginOutcome::BadCredentials => {
                            let until = Instant::now() + self.cfg.login_failure_cooldown;
                            lock(&self.circuit).open_until = Some(until);
                            self.metrics.upstream_login_circuit(&self.upstream_id, true);
                            tracing::error!(upstream = %self.upstream_id, cooldown = ?self.cfg.login_failure_cooldown, "upstream refused tollgate's credentials; no login is attempted until the cooldown ends (the account locks after repeated failures)");
                            return Err(SessionError::LoginFailed {
                                retry_after: self.cfg.login_failure_cooldown.as_secs().max(1),
                            });
                        }
                        LoginOutcome::Throttled { retry_after } => {
                            return Err(SessionError::Throttled { retry_after })
                        }
                        LoginOutcome::Error(reason) => {
                            let mut c = lock(&self.circuit);
                            c.backoff = (c.backoff * 2)
                                .clamp(Duration::from_secs(1), Duration::from_secs(60));
                            c.backoff_until = Some(Instant::now() + c.backoff);
                            drop(c);
                            tracing::warn!(upstream = %self.upstream_id, %reason, "upstream login failed");
                            return Err(SessionError::LoginError);
                        }
                        LoginOutcome::Ok(_) => return Err(SessionError::LoginError),
                    }
                }
            }
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

    fn upstream(&self) -> Result<Arc<Upstream>, SessionError> {
        Ok(self.upstream.clone())
    }

    fn check_circuit(&self) -> Result<(), SessionError> {
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
        if lock(&self.relogin_blocked)
            .get(&lease.slot.grant)
            .is_some_and(|until| Instant::now() < *until)
        {
            return Err(SessionError::AuthFailed);
        }
        let was_seated = self
            .store
            .update(
                &lease.slot,
                lease.id,
                Box::new(|r| {
                    r.state = SessionState::NeedsLogin;
                    r.jar = Jar::default();
                }),
            )
            .await?
            .is_some_and(|r| r.seated);
        if was_seated {
            self.mark(&lease.slot, lease.id, SessionState::NeedsLogin, false)
                .await?;
            self.give_back_seat(lease.id).await;
        }
        self.metrics.upstream_relogin(&self.upstream_id);
        let (record, _) = self.ensure_login(&lease.slot, lease.id).await?;
        lease.jar = record.jar;
        lease.new_session = true;
        Ok(())
    }

    /// After a replay that was still unauthenticated: no re-login for this grant for a while,
    /// and the session is dropped (no logout: the upstream says it is not signed in).
    pub async fn give_up(&self, lease: &mut Lease) {
        lock(&self.relogin_blocked).insert(
            lease.slot.grant.clone(),
            Instant::now() + self.cfg.relogin_min_interval,
        );
        self.release(lease, false).await;
        if let Ok(Some(record)) = self.store.remove(&lease.slot, lease.id).await {
            self.retire_removed(record, Retire::Expired, false).await;
        }
    }

    /// Records the upstream's `Set-Cookie`s in the session's jar (and in the lease).
    pub async fn absorb(&self, lease: &mut Lease, headers: &HeaderMap) {
        let lines: Vec<String> = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        if lines.is_empty() {
            return;
        }
        let (max_c, max_b) = (self.cfg.max_jar_cookies, self.cfg.max_jar_bytes);
        let applied = lease.jar.apply_all(
            lines.iter().map(String::as_str),
            SystemTime::now(),
            max_c,
            max_b,
        );
        if applied.overflow > 0 {
            tracing::warn!(upstream = %self.upstream_id, dropped = applied.overflow, "session jar full; cookies dropped");
        }
        let jar = lease.jar.clone();
        let _ = self
            .store
            .update(&lease.slot, lease.id, Box::new(move |r| r.jar = jar))
            .await;
    }

    // === passive capture ===

    /// Stores the cookies of a client-made login as the slot's session (logging out a session
    /// the slot already had). Returns false when no session could be made (no seat).
    pub async fn capture(&self, who: &Identity, headers: &HeaderMap) -> Result<(), SessionError> {
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
        if !self.cfg.marker_cookies.iter().all(|m| jar.has(m)) {
            return Ok(());
        }
        if let Some(old) = self.store.get(&who.slot).await? {
            if let Some(r) = self.store.remove(&who.slot, old.id).await? {
                self.retire_removed(r, Retire::Logout, true).await;
            }
        }
        let id = self.next_id();
        self.admit(id).await?;
        let mut record = SessionRecord::new(id, who.concurrent, now_ms());
        record.retire_at_ms = who.retire_at_ms;
        record.state = SessionState::Active;
        record.seated = true;
        record.jar = jar;
        let cap = if who.concurrent {
            self.cfg.max_sessions_per_grant
        } else {
            1
        };
        match self
            .store
            .create(&who.slot, record, cap, self.cfg.max_inflight_per_session)
            .await?
        {
            Created::New(_) => {
                self.metrics.upstream_login(&self.upstream_id, "captured");
                self.sample_sessions().await;
                Ok(())
            }
            Created::Existing(_) | Created::GrantFull { .. } => {
                self.give_back_seat(id).await;
                Ok(())
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

    /// Logs out the sessions of `who` (the slot, or every slot of the grant when `all`) once
    /// their in-flight requests are done. Idempotent.
    pub async fn logout(&self, grant: &GrantKey, slot: Option<&SlotKey>) -> usize {
        let Ok(all) = self.store.list().await else {
            return 0;
        };
        let mut n = 0;
        for (key, record) in all {
            if key.grant != *grant || slot.is_some_and(|s| *s != key) {
                continue;
            }
            if self.drain_and_retire(key, record.id, Retire::Logout).await {
                n += 1;
            }
        }
        n
    }

    /// Waits (bounded) until nothing uses the session, then removes and logs it out.
    async fn drain_and_retire(&self, slot: SlotKey, id: u64, reason: Retire) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.store.get(&slot).await {
                Ok(Some(r)) if r.id == id && r.users() > 0 && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Ok(Some(r)) if r.id == id => break,
                _ => return false,
            }
        }
        match self.store.remove(&slot, id).await {
            Ok(Some(record)) => {
                self.retire_removed(record, reason, true).await;
                true
            }
            _ => false,
        }
    }

    /// Finishes a session already removed from the store: logs it out (with two retries, after
    /// 1 s and 4 s) when it holds a seat and `call_logout`, then gives the seat back.
    async fn retire_removed(&self, record: SessionRecord, reason: Retire, call_logout: bool) {
        lock(&self.login_locks).retain(|_, l| Arc::strong_count(l) > 1);
        self.metrics
            .upstream_eviction(&self.upstream_id, reason.as_str());
        if record.seated {
            if call_logout && record.state == SessionState::Active && !record.jar.is_empty() {
                let ok = match self.upstream() {
                    Ok(upstream) => {
                        let mut ok = login::logout(&upstream, &self.cfg, &record.jar).await;
                        for pause in [Duration::from_secs(1), Duration::from_secs(4)] {
                            if ok || reason == Retire::Shutdown {
                                break;
                            }
                            tokio::time::sleep(pause).await;
                            ok = login::logout(&upstream, &self.cfg, &record.jar).await;
                        }
                        ok
                    }
                    Err(_) => false,
                };
                self.metrics
                    .upstream_logout(&self.upstream_id, if ok { "ok" } else { "failed" });
                tracing::info!(upstream = %self.upstream_id, session = record.id, reason = reason.as_str(), ok, correlation = record.jar.correlation("ASP.NET_SessionId").as_deref().unwrap_or("-"), "upstream logout");
            }
            self.give_back_seat(record.id).await;
        }
        self.sample_sessions().await;
    }

    /// Retires idle and over-age sessions, and the logins a crashed replica left behind; run
    /// periodically.
    pub async fn sweep(&self) {
        match self.store.maintain(now_ms()).await {
            Ok(abandoned) => {
                for record in abandoned {
                    self.retire_removed(record, Retire::Expired, false).await;
                }
            }
            Err(e) => {
                tracing::warn!(upstream = %self.upstream_id, error = %e, "session store upkeep failed")
            }
        }
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

    /// Logs out every session, in parallel, within `bound`.
    pub async fn shutdown(self: &Arc<Self>, bound: Duration) {
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
                if let Ok(Some(r)) = me.store.remove(&slot, record.id).await {
                    me.retire_removed(r, Retire::Shutdown, true).await;
                }
            });
        }
        let _ =
            tokio::time::timeout(bound, async { while tasks.join_next().await.is_some() {} }).await;
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
        if let Ok(n) = self.store.seats_in_use().await {
            self.metrics.upstream_seats(&self.upstream_id, n);
        }
    }

    async fn sample_queue(&self) {
        if let Ok(queued) = self.store.queue_depth().await {
            self.metrics.upstream_queue_depth(&self.upstream_id, queued);
        }
    }

    /// Publishes the session-count gauges by state (also called at each scrape).
    pub async fn sample_sessions(&self) {
        if let Ok(all) = self.store.list().await {
            let count = |s: SessionState| all.iter().filter(|(_, r)| r.state == s).count();
            for s in [
                SessionState::Active,
                SessionState::LoggingIn,
                SessionState::NeedsLogin,
            ] {
                self.metrics
                    .upstream_sessions(&self.upstream_id, s.as_str(), count(s));
            }
        }
        self.sample_seats().await;
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
