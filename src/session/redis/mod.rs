//! The session table in Redis, shared by every replica (the `[store] kind = "redis"` setting).
//!
//! Every decision is one Lua script (`scripts`), atomic on the Redis server and timed by its
//! clock: taking a seat under the cap, finding or creating a record and granting an in-flight
//! place (one round trip for the common request), queueing, handing a freed place to the next
//! waiter, taking an evictable or expired session. A request that has to wait is woken through
//! [`crate::fleet::Fleet`]; the queue's order lives in Redis, so it is FIFO across replicas.
//! Leases (in-flight places, queue tickets, login locks) expire after `lease_ttl` unless this
//! replica renews them (`guards`); a crashed replica's leases come back by themselves and its
//! unfinished logins are cleaned up by the others' upkeep.
//!
//! Sessions live in a namespace per upstream *profile* (URL, credentials, paths): a reload that
//! changes only limits or timeouts keeps them; one that changes the profile leaves the old
//! namespace to be logged out when no replica serves it any more. Seats are counted per
//! upstream, across profiles.
//!
//! Jars are sealed at rest ([`crate::fleet::seal`]). A record whose jar does not open is
//! treated as lost: never forwarded, its seat given back.
//!
//! Layout, under `{key_prefix}s:{upstream}:` (seats, credential gate) and
//! `{key_prefix}s:{upstream}:p:{profile}:` (`P`, everything else):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `seats` | sorted set | seat holders (session ids) by expiry |
//! | `c:{fp}:cooldown`, `c:{fp}:proven`, `c:{fp}:trial` | strings | the credential gate (fleet-wide) |
//! | `P slots` | set | every slot key |
//! | `P r:{slot}` | hash | the record: id, concurrent, state, sealed jar, seated, times |
//! | `P g:{grant}` | set | the slot keys of one grant (the per-grant cap) |
//! | `P f:{id}` | sorted set | in-flight tickets by expiry |
//! | `P w:{id}` / `P q:{id}` | list / sorted set | the FIFO queue of tickets / their expiry |
//! | `P l:{id}` | string | the login lock's token (with a TTL) |
//! | `P t:{id}` | string | a tombstone: the session was removed by tollgate (with a TTL) |
//!
//! The store also keeps the epoch (`{key_prefix}epoch`, a random value written once) and, in
//! this process, the sessions it logged in or used lately with their jars: when the epoch
//! changes (Redis came back empty, or another instance answers) or a remembered record vanished
//! without a tombstone, those sessions are registered again within the cap, or logged out by
//! the pool when there is no room (see [`SessionStore::maintain`]).
//!
//! | module | concern |
//! |---|---|
//! | `keys` | the key names of the layout above |
//! | `codec` | records as hashes: slot text, fields, the sealed jar, script arguments |
//! | `scripts` | the Lua scripts |
//! | `records` | reading, creating, editing and taking away records |
//! | `seats` | the upstream's seats, and the gauge counts |
//! | `lease` | finding or creating the slot's session and waiting for a place |
//! | `release` | giving a place back (or keeping it), and taking a ticket off the queue |
//! | `parked` | places kept after their request for this replica's next one |
//! | `guards` | what this replica holds in the store |
//! | `renewal` | the background task that keeps those holdings alive |
//! | `locks` | locks held by a token, and the login lock |
//! | `recent` | this replica's memory of the sessions it used lately, with their jars |
//! | `upkeep` | periodic upkeep, and the repair after a store loss |
//! | `gate` | the credential gate, fleet-wide |

mod codec;
mod gate;
mod guards;
mod keys;
mod lease;
mod locks;
mod parked;
mod recent;
mod records;
mod release;
mod renewal;
mod scripts;
mod seats;
mod upkeep;

use crate::clock::millis;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::store::{
    Created, Edit, Expiry, InFlight, LeaseRefused, Leased, Maintenance, Release, Removal, Restored,
    SessionRecord, SessionStore, SlotKey, Stats, StoreError,
};
use crate::fleet::seal::Sealer;
use crate::fleet::{Fleet, RedisHandle};
use codec::slot_text;
use guards::Holdings;
use keys::Keys;
use parked::Parked;
use recent::Recent;
use scripts::Scripts;

/// The session store of one upstream profile, in Redis.
pub struct RedisStore {
    redis: RedisHandle,
    fleet: Arc<Fleet>,
    keys: Keys,
    lease_ttl: Duration,
    /// How long a removed session's tombstone, and a used session's memory, last.
    remember: Duration,
    max_inflight: u32,
    scripts: Scripts,
    sealer: Arc<Sealer>,
    holdings: Holdings,
    /// This replica's login locks: token by session id.
    login_tokens: Mutex<HashMap<u64, String>>,
    /// This replica's credential trial locks: token by credential set.
    trial_tokens: Mutex<HashMap<String, String>>,
    /// The sessions this replica logged in or used lately, with their jars.
    recent: Recent,
    /// Sessions re-registered (or found without room) by a request that met a reset store,
    /// for the next upkeep to report and finish.
    repaired: Mutex<(bool, Vec<(SlotKey, SessionRecord)>)>,
    /// One repair at a time.
    repairing: tokio::sync::Mutex<()>,
    /// Caps for re-registering: seats of the upstream, sessions of a concurrent-mode grant.
    seat_cap: u32,
    grant_cap: u32,
    /// The store's epoch as last seen ("" before the first upkeep).
    epoch: Arc<Mutex<String>>,
    /// In-flight places kept for this replica's next request on their sessions.
    parked: Parked,
    /// Requests of this replica waiting for their session (the queue-depth gauge is per
    /// replica).
    queued_here: Arc<AtomicU32>,
    /// The renewal task and the sweeper of kept places.
    task: Mutex<Option<[tokio::task::JoinHandle<()>; 2]>>,
    /// What this store's leases are released with (made at first use).
    releaser: std::sync::OnceLock<release::Releaser>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.keys.prefix)
            .finish_non_exhaustive()
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        for t in lock(&self.task).take().into_iter().flatten() {
            t.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a store needs to know besides the connection.
#[derive(Debug, Clone)]
pub struct Namespace<'a> {
    pub upstream: &'a str,
    pub profile: &'a str,
    pub lease_ttl: Duration,
    pub idle_ttl: Duration,
    pub max_inflight: u32,
    /// `max_upstream_sessions`.
    pub seat_cap: u32,
    /// `max_sessions_per_grant` (concurrent mode).
    pub grant_cap: u32,
    /// `[store] linger`: how long a place is kept for this replica's next request.
    pub linger: Duration,
}

impl RedisStore {
    /// The store of `ns` on `fleet`'s Redis; `master` is the session master key (the jar seal
    /// is derived from it).
    pub fn new(fleet: Arc<Fleet>, ns: &Namespace<'_>, master: &[u8; 32]) -> Self {
        RedisStore {
            redis: fleet.redis().clone(),
            keys: Keys::new(fleet.key_prefix(), ns.upstream, ns.profile),
            fleet,
            lease_ttl: ns.lease_ttl,
            remember: (ns.idle_ttl + ns.lease_ttl) * 2,
            max_inflight: ns.max_inflight,
            scripts: Scripts::new(),
            sealer: Arc::new(Sealer::new(master)),
            holdings: Holdings::default(),
            login_tokens: Mutex::new(HashMap::new()),
            trial_tokens: Mutex::new(HashMap::new()),
            recent: Recent::default(),
            repaired: Mutex::new((false, Vec::new())),
            repairing: tokio::sync::Mutex::new(()),
            seat_cap: ns.seat_cap,
            grant_cap: ns.grant_cap,
            epoch: Arc::default(),
            parked: Parked::new(ns.linger, ns.lease_ttl),
            queued_here: Arc::new(AtomicU32::new(0)),
            task: Mutex::new(None),
            releaser: std::sync::OnceLock::new(),
        }
    }

    fn lease_ms(&self) -> u64 {
        millis(self.lease_ttl)
    }

    /// A seat lives as long as its record is seated (upkeep renews it every third of
    /// `lease_ttl`); its expiry only frees the seats of a fleet that is gone altogether.
    fn seat_ms(&self) -> u64 {
        3 * self.lease_ms()
    }

    fn tomb_ms(&self) -> u64 {
        millis(self.remember)
    }

    /// Loads every script into Redis, so that no request pays for a `NOSCRIPT` round trip (Redis
    /// forgets scripts when it restarts; they are then loaded again on first use).
    pub async fn load_scripts(&self) -> Result<(), StoreError> {
        for script in self.scripts.all() {
            self.redis
                .run("load_script", |mut c| async move {
                    script.load_async(&mut c).await.map(|_| ())
                })
                .await?;
        }
        Ok(())
    }
}

/// Each operation is in the module of its concern.
#[async_trait]
impl SessionStore for RedisStore {
    async fn take_seat(&self, cap: u32, holder: u64) -> Result<bool, StoreError> {
        seats::take(self, cap, holder).await
    }

    async fn release_seat(&self, holder: u64) -> Result<(), StoreError> {
        seats::release(self, holder).await
    }

    async fn seats_in_use(&self) -> Result<u32, StoreError> {
        seats::in_use(self).await
    }

    async fn get(&self, slot: &SlotKey) -> Result<Option<SessionRecord>, StoreError> {
        self.read(&slot_text(slot)).await
    }

    async fn create(
        &self,
        slot: &SlotKey,
        record: SessionRecord,
        grant_cap: u32,
        _max_in_flight: u32,
    ) -> Result<Created, StoreError> {
        records::create(self, slot, record, grant_cap).await
    }

    async fn update(
        &self,
        slot: &SlotKey,
        id: u64,
        f: Edit,
    ) -> Result<Option<SessionRecord>, StoreError> {
        records::update(self, slot, id, f).await
    }

    async fn remove(&self, slot: &SlotKey, id: u64) -> Result<Option<SessionRecord>, StoreError> {
        self.remove_text(&slot_text(slot), id).await
    }

    async fn remove_unused(&self, slot: &SlotKey, id: u64) -> Result<Removal, StoreError> {
        records::remove_unused(self, slot, id).await
    }

    async fn list(&self) -> Result<Vec<(SlotKey, SessionRecord)>, StoreError> {
        records::list(self).await
    }

    async fn take_evictable(
        &self,
        _now: u64,
        min_idle_ms: u64,
        op_ttl_ms: u64,
    ) -> Result<Option<(SlotKey, SessionRecord)>, StoreError> {
        records::take_evictable(self, min_idle_ms, op_ttl_ms).await
    }

    async fn take_expired(
        &self,
        _now: u64,
        idle_ms: u64,
        max_age_ms: u64,
    ) -> Result<Vec<(SlotKey, SessionRecord, Expiry)>, StoreError> {
        records::take_expired(self, idle_ms, max_age_ms).await
    }

    async fn lease(
        &self,
        slot: &SlotKey,
        template: SessionRecord,
        grant_cap: u32,
        max: u32,
        max_queue: u32,
        wait: Duration,
    ) -> Result<Leased, LeaseRefused> {
        lease::lease(self, slot, template, grant_cap, max, max_queue, wait).await
    }

    async fn release(&self, lease: InFlight, how: Release) {
        lease.finish(how);
    }

    async fn settle(&self) {
        lease::settle(self).await;
    }

    fn queue_depth(&self) -> u32 {
        self.queued_here.load(Ordering::Relaxed)
    }

    async fn lock_login(&self, slot: &SlotKey, id: u64) -> Result<bool, StoreError> {
        locks::lock_login(self, slot, id).await
    }

    async fn unlock_login(&self, _slot: &SlotKey, id: u64) -> Result<(), StoreError> {
        locks::unlock_login(self, id).await
    }

    async fn maintain(&self) -> Result<Maintenance, StoreError> {
        upkeep::maintain(self).await
    }

    async fn restore(
        &self,
        slot: &SlotKey,
        record: SessionRecord,
        grant_cap: u32,
        seat_cap: u32,
    ) -> Result<Restored, StoreError> {
        upkeep::restore(self, slot, record, grant_cap, seat_cap).await
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        seats::stats(self).await
    }

    fn start(self: Arc<Self>) {
        renewal::start(self);
    }

    async fn credential_cooldown(&self, fp: &str) -> Result<Option<u64>, StoreError> {
        gate::cooldown(self, fp).await
    }

    async fn open_credential_cooldown(&self, fp: &str, until_ms: u64) -> Result<(), StoreError> {
        gate::open_cooldown(self, fp, until_ms).await
    }

    async fn credentials_proven(&self, fp: &str) -> Result<bool, StoreError> {
        gate::proven(self, fp).await
    }

    async fn mark_credentials_proven(&self, fp: &str) -> Result<(), StoreError> {
        gate::mark_proven(self, fp).await
    }

    async fn lock_credential_trial(&self, fp: &str, _ttl: Duration) -> Result<bool, StoreError> {
        gate::lock_trial(self, fp).await
    }

    async fn unlock_credential_trial(&self, fp: &str) -> Result<(), StoreError> {
        gate::unlock_trial(self, fp).await
    }
}
