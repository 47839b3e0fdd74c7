//! One upstream's session pool: which session a request uses, logging in (single-flight, within
//! the seat cap, evicting the least-recently-used idle session when needed), re-login after
//! expiry, and logging out (idle, age, eviction, admin, shutdown). State lives in the
//! [`SessionStore`]; this module holds only the local coordination (login locks, the credential
//! circuit, waiters for seats).
//!
//! A request's way through the pool, and the file that holds each part:
//!
//! | step | file |
//! |---|---|
//! | grant key, mode, slot, handle cookie of the request | `identify` |
//! | the in-flight place on the slot's session, and a seat for a new one | `admission` |
//! | the one login of a session, its failure shared with the requests behind it | `login` |
//! | the credential set's gate: trial, cooldown, back-off | `gate` |
//! | what the upstream's answer says: expiry, cookies for the jar | `answer` |
//! | passive mode: the client's own login stored as the slot's session | `capture` |
//! | logout, sweep, store repair, shutdown, sessions the upstream ended | `retire` |
//! | the gauges and the admin listing | `gauges` |
//!
//! This file is the pool itself: its state, its construction, and the background tasks.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::hmac;
use tokio::sync::Notify;

use super::grant::GrantKey;
use super::store::{SessionStore, SlotKey};
use super::SessionError;
use crate::config::SessionConfig;
use crate::metrics::Metrics;
use crate::proxy::Upstream;

mod admission;
mod answer;
mod capture;
mod gate;
mod gauges;
mod identify;
mod login;
mod retire;
#[cfg(test)]
pub(super) mod testing;

pub use admission::{AtOnce, Held};
pub(crate) use answer::set_cookies;
pub use identify::{cookie_value, Identity};
pub use retire::Retire;

/// Unix milliseconds now (the crate's one clock, under the name the pool's files use).
pub(crate) use crate::clock::unix_ms as now_ms;

/// The session pool of one upstream.
pub struct Pool {
    pub upstream_id: Arc<str>,
    pub cfg: SessionConfig,
    /// `cfg`'s login and logout paths, cut into segments once.
    pub actions: super::intercept::Actions,
    pub(in crate::session) upstream: Arc<Upstream>,
    store: Arc<dyn SessionStore>,
    grant_key: hmac::Key,
    /// Grant keys already signed, by their message ([`grant::write_message`]): a grant's requests
    /// would otherwise each compute the same HMAC. Bounded; a key not found is signed again.
    grant_keys: quick_cache::sync::Cache<Vec<u8>, GrantKey>,
    handle_key: hmac::Key,
    metrics: Metrics,
    /// `tollgate_upstream_session_queue_depth` of this upstream, resolved once (see
    /// `sample_queue`).
    queue_gauge: prometheus::IntGauge,
    next_id: AtomicU64,
    /// The high 32 bits of this process's session ids.
    id_base: u64,
    /// The logins in progress, by session.
    flights: Mutex<HashMap<(SlotKey, u64), login::Flight>>,
    login_done: Notify,
    /// Recent failed logins by slot, for the requests that waited behind them.
    failures: Mutex<HashMap<SlotKey, (std::time::Instant, SessionError)>>,
    circuit: Mutex<gate::Circuit>,
    /// A keyed digest naming the credential set (the fleet-wide gate's key; never the secret).
    credential_fp: String,
    /// The login lanes taken in this process (the store's lane locks span the fleet).
    lanes: Mutex<HashSet<u32>>,
    lane_freed: Notify,
    /// A login with these credentials succeeded since their last refusal.
    proven: AtomicBool,
    /// Grants that gave up on their session (design §6.7.3): no login for them until then.
    relogin_blocked: login::Blocked,
    seat_freed: Notify,
    warned_subject: Mutex<HashSet<String>>,
    /// Sessions the store lost that have no room left but that a request of this replica still
    /// used at the last upkeep: a later upkeep logs them out once nothing here uses them.
    lost_in_use: Mutex<Vec<(SlotKey, super::store::SessionRecord)>>,
    /// The fleet this replica belongs to (a shared store), which says whether this replica
    /// publishes the fleet-wide gauges.
    fleet: Option<Arc<crate::fleet::Fleet>>,
    /// The upstream's session profile: what makes two configurations the same sessions.
    pub profile: String,
    master: [u8; 32],
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// How many grant keys a pool remembers: four per seat, and at least 1024. A grant holds at
/// most its sessions' seats, so this covers every grant with a session and as many waiting;
/// each entry is about 200 bytes.
fn grant_keys_capacity(cfg: &SessionConfig) -> usize {
    usize::try_from(cfg.max_upstream_sessions)
        .unwrap_or(usize::MAX)
        .saturating_mul(4)
        .max(1024)
}

// === impl Pool ===

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

/// A poisoned lock still guards consistent data here (every critical section is a few
/// assignments), so a panic elsewhere must not take the pool down with it.
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
        let queue_gauge = metrics.upstream_queue_gauge(&upstream_id);
        let credential_fp = gate::credential_fingerprint(&derive(b"tollgate credentials v1"), &cfg);
        Pool {
            grant_key: derive(b"tollgate grant key v1"),
            grant_keys: quick_cache::sync::Cache::new(grant_keys_capacity(&cfg)),
            handle_key: derive(b"tollgate session handle v1"),
            upstream_id,
            upstream,
            actions: super::intercept::Actions::new(&cfg.login_path, &cfg.logout_path),
            cfg,
            store,
            queue_gauge,
            metrics,
            next_id: AtomicU64::new(1),
            id_base: u64::from(rand::random::<u32>() | 1) << 32,
            flights: Mutex::new(HashMap::new()),
            login_done: Notify::new(),
            failures: Mutex::new(HashMap::new()),
            circuit: Mutex::new(gate::Circuit::default()),
            credential_fp,
            lanes: Mutex::new(HashSet::new()),
            lane_freed: Notify::new(),
            proven: AtomicBool::new(false),
            relogin_blocked: login::Blocked::default(),
            seat_freed: Notify::new(),
            warned_subject: Mutex::new(HashSet::new()),
            lost_in_use: Mutex::new(Vec::new()),
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

    /// A session id unique across replicas: a random per-process prefix and a counter.
    fn next_id(&self) -> u64 {
        self.id_base | (self.next_id.fetch_add(1, Ordering::Relaxed) & 0xFFFF_FFFF)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{eventually, rig};
    use super::*;

    #[tokio::test]
    async fn start_is_idempotent_and_its_sweep_retires_idle_sessions() {
        let r = rig(|c| c.idle_ttl = Duration::ZERO).await;
        r.pool.start();
        r.pool.start();
        assert_eq!(lock(&r.pool.tasks).len(), 2, "one sweep, one upkeep");
        r.idle_session("a").await;
        eventually(
            "the background sweep signs the idle session out",
            || async { r.fake.counters().logouts == 1 },
        )
        .await;
        assert!(r.records().await.is_empty());
        r.pool.stop();
        assert!(lock(&r.pool.tasks).is_empty());
    }

    #[tokio::test]
    async fn session_ids_carry_the_process_prefix_and_never_repeat() {
        let r = rig(|_| {}).await;
        let ids: HashSet<u64> = (0..1000).map(|_| r.pool.next_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| id >> 32 == r.pool.id_base >> 32));
        assert_ne!(r.pool.id_base, 0);
    }

    #[tokio::test]
    async fn pools_with_one_master_key_agree_on_grants_and_handles() {
        // A restart (or a reload) with the configured key keeps every grant key and handle.
        let (one, two) = (rig(|_| {}).await, rig(|_| {}).await);
        assert_eq!(one.pool.master(), &[7; 32]);
        let grant = one.who("a").grant;
        assert_eq!(two.who("a").grant, grant);
        let (nonce, value) = crate::session::handle::issue(&one.pool.handle_key, &grant);
        assert_eq!(
            crate::session::handle::verify(&two.pool.handle_key, &grant, &value),
            Some(nonce)
        );
        // The two derived keys are distinct: a grant key is never a valid handle tag.
        let tag = |k: &hmac::Key| hmac::sign(k, b"x").as_ref().to_vec();
        assert_ne!(tag(&one.pool.grant_key), tag(&one.pool.handle_key));
    }
}
