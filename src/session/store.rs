//! Where the session table lives. [`SessionStore`] is the seam between the session logic and its
//! state: the seat count, the session records (owner grant, mode, state, jar, times) and the
//! per-session in-flight leases that serialise a grant's requests. [`MemoryStore`] keeps them in
//! this process; a shared store (Redis, for several replicas) implements the same operations
//! atomically with TTL-bounded leases.
//!
//! Every operation that decides something (take a seat, create a record under the per-grant cap,
//! take an evictable session) is one atomic step of the store, so two callers can never both win.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Semaphore;

use super::grant::GrantKey;
use super::handle::Nonce;
use super::jar::Jar;

/// Where one upstream session lives: a grant, and in concurrent mode one of its handles.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SlotKey {
    pub grant: GrantKey,
    pub handle: Option<Nonce>,
}

/// The life of an upstream session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Created; no login has succeeded yet (or the upstream session expired).
    NeedsLogin,
    /// A login is running.
    LoggingIn,
    Active,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::NeedsLogin => "needs_login",
            SessionState::LoggingIn => "logging_in",
            SessionState::Active => "active",
        }
    }
}

/// One upstream session as the store keeps it. Times are Unix milliseconds so that a shared
/// store can hold them.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// Unique for the life of the record: a slot reused after a logout gets a new id.
    pub id: u64,
    pub concurrent: bool,
    pub state: SessionState,
    pub jar: Jar,
    /// True while the record holds a seat (from the start of its login until its logout).
    pub seated: bool,
    pub created_ms: u64,
    pub last_used_ms: u64,
    /// When a `202 Accepted` (a long-running operation) was last seen.
    pub last_op_ms: Option<u64>,
    pub in_flight: u32,
    pub queued: u32,
    /// `token` grant keys: the session ends with its access token, at this time.
    pub retire_at_ms: Option<u64>,
    /// How many times the jar was written back (a shared store keeps the freshest copy when
    /// sessions are registered again after a loss).
    pub jar_version: u64,
}

/// Why [`SessionStore::take_expired`] took a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Idle,
    Age,
    /// The access token that named the session (`token` grant keys) expired.
    TokenExpired,
}

impl SessionRecord {
    pub fn new(id: u64, concurrent: bool, now_ms: u64) -> Self {
        SessionRecord {
            id,
            concurrent,
            state: SessionState::NeedsLogin,
            jar: Jar::default(),
            seated: false,
            created_ms: now_ms,
            last_used_ms: now_ms,
            last_op_ms: None,
            in_flight: 0,
            queued: 0,
            retire_at_ms: None,
            jar_version: 0,
        }
    }

    /// Requests holding or waiting for this session.
    pub fn users(&self) -> u32 {
        self.in_flight + self.queued
    }
}

pub use crate::fleet::connection::StoreError;

/// The result of [`SessionStore::create`].
#[derive(Debug)]
pub enum Created {
    /// The record was stored.
    New(SessionRecord),
    /// Another request created the slot first: use its record.
    Existing(SessionRecord),
    /// The grant already has its maximum number of sessions; the earliest idle expiry among them.
    GrantFull { earliest_idle_ms: u64 },
}

/// Why no in-flight lease was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseRefused {
    /// The queue is full, or the wait ran out.
    Busy,
    /// The session was removed while waiting.
    Gone,
    /// The store could not be asked (a shared store is down).
    Unavailable,
    /// The grant already holds its maximum number of sessions; the earliest idle expiry among
    /// them (last use, Unix ms).
    GrantFull { earliest_idle_ms: u64 },
}

/// The result of [`SessionStore::remove_unused`].
#[derive(Debug)]
pub enum Removal {
    /// The record was removed; the caller retires it.
    Removed(SessionRecord),
    /// A request holds or waits for the session: nothing was removed.
    Busy,
    /// No record with that id is at the slot any more.
    Gone,
}

/// The seats of one upstream in this process: the session ids holding one. Shared by the
/// memory stores of one upstream across reloads, so that a pool being retired and its successor
/// count against one cap.
#[derive(Debug, Default)]
pub struct SeatTable {
    holders: Mutex<std::collections::HashSet<u64>>,
}

impl SeatTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<u64>> {
        self.holders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How an in-flight lease ends.
#[derive(Debug, Default)]
pub struct Release {
    /// The answer was `202 Accepted` (a long-running operation is under way).
    pub op: bool,
    /// The jar as the answer left it, when it changed.
    pub jar: Option<Jar>,
}

/// A held in-flight lease. Release it with [`SessionStore::release`]; a lease dropped without
/// release (its request was cancelled) is released by its drop.
pub struct InFlight {
    pub slot: SlotKey,
    pub id: u64,
    /// Gives the place back.
    finish: Option<Box<dyn FnOnce(Release) + Send + Sync>>,
    /// Turns true when a shared store could not keep the lease (it expired during an outage
    /// and another request took the place): the request must stop using the session.
    lost: Option<tokio::sync::watch::Receiver<bool>>,
}

impl InFlight {
    /// A lease whose release runs `finish`.
    pub fn new(slot: SlotKey, id: u64, finish: Box<dyn FnOnce(Release) + Send + Sync>) -> Self {
        InFlight {
            slot,
            id,
            finish: Some(finish),
            lost: None,
        }
    }

    /// The same lease, with a signal that it was lost.
    pub fn with_lost(mut self, lost: tokio::sync::watch::Receiver<bool>) -> Self {
        self.lost = Some(lost);
        self
    }

    /// A receiver that turns true if the store lost this lease (`None`: it cannot be lost).
    pub fn lost(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.lost.clone()
    }

    /// Gives the place back now.
    pub fn finish(mut self, how: Release) {
        if let Some(f) = self.finish.take() {
            f(how);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(f) = self.finish.take() {
            f(Release::default());
        }
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A request's hold on its slot's session: the record as it was when the place was granted.
#[derive(Debug)]
pub struct Leased {
    pub record: SessionRecord,
    pub in_flight: InFlight,
    /// The record was created by this call.
    pub created: bool,
}

/// What periodic upkeep found.
#[derive(Debug, Default)]
pub struct Maintenance {
    /// Records of logins whose replica is gone (their seats are given back by the caller).
    pub abandoned: Vec<SessionRecord>,
    /// The store lost its state (it came back empty, or as another instance) since the last
    /// upkeep.
    pub reset: bool,
    /// Sessions this replica logged in or used lately that the store no longer has, though
    /// nobody removed them: they hold seats at the upstream that the fleet no longer counts.
    pub lost: Vec<(SlotKey, SessionRecord)>,
}

/// What [`SessionStore::restore`] did with a lost session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// Registered again, with its seat.
    Registered,
    /// Its slot is taken by a newer session, or no seat is free: the caller logs it out.
    NoRoom,
}

/// Session counts for the gauges, read in one step.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub needs_login: usize,
    pub logging_in: usize,
    pub active: usize,
    pub seats: u32,
}

/// A change to one record, applied atomically by the store. A shared store may run it again on
/// a fresh copy when another writer got there first (compare and set), so it must depend only
/// on the record it is given.
pub type Edit = Box<dyn Fn(&mut SessionRecord) + Send + Sync + 'static>;

/// The operations the session layer needs from its state.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Takes a seat for session `holder` if fewer than `cap` are in use.
    async fn take_seat(&self, cap: u32, holder: u64) -> Result<bool, StoreError>;
    async fn release_seat(&self, holder: u64) -> Result<(), StoreError>;
    async fn seats_in_use(&self) -> Result<u32, StoreError>;

    async fn get(&self, slot: &SlotKey) -> Result<Option<SessionRecord>, StoreError>;
    /// Stores `record` at `slot` unless the slot is taken or the grant already holds
    /// `grant_cap` sessions. The session gets `max_in_flight` in-flight places.
    async fn create(
        &self,
        slot: &SlotKey,
        record: SessionRecord,
        grant_cap: u32,
        max_in_flight: u32,
    ) -> Result<Created, StoreError>;
    /// Applies `f` to the record at `slot` if it still has id `id`; returns the updated record.
    async fn update(
        &self,
        slot: &SlotKey,
        id: u64,
        f: Edit,
    ) -> Result<Option<SessionRecord>, StoreError>;
    /// Removes the record at `slot` if it still has id `id`. Only one caller gets it back.
    async fn remove(&self, slot: &SlotKey, id: u64) -> Result<Option<SessionRecord>, StoreError>;
    /// Removes the record at `slot` if it still has id `id` and no request holds or waits for
    /// it, in one atomic step: a logout can then never meet a request on its session.
    async fn remove_unused(&self, slot: &SlotKey, id: u64) -> Result<Removal, StoreError>;
    /// Every record.
    async fn list(&self) -> Result<Vec<(SlotKey, SessionRecord)>, StoreError>;
    /// Atomically removes and returns the least-recently-used session that may be evicted: no
    /// request in flight or queued, idle at least `min_idle_ms`, no 202 seen within `op_ttl_ms`.
    async fn take_evictable(
        &self,
        now_ms: u64,
        min_idle_ms: u64,
        op_ttl_ms: u64,
    ) -> Result<Option<(SlotKey, SessionRecord)>, StoreError>;
    /// Atomically removes and returns every unused session idle for `idle_ms`, older than
    /// `max_age_ms`, or past its `retire_at_ms`.
    async fn take_expired(
        &self,
        now_ms: u64,
        idle_ms: u64,
        max_age_ms: u64,
    ) -> Result<Vec<(SlotKey, SessionRecord, Expiry)>, StoreError>;

    /// Finds the slot's session, or creates it from `template` (unless the grant already holds
    /// `grant_cap` sessions), and waits (FIFO, across replicas for a shared store) for one of
    /// its `max` in-flight places, queueing at most `max_queue` requests and waiting at most
    /// `wait`.
    async fn lease(
        &self,
        slot: &SlotKey,
        template: SessionRecord,
        grant_cap: u32,
        max: u32,
        max_queue: u32,
        wait: Duration,
    ) -> Result<Leased, LeaseRefused>;
    /// Gives the place back and records the use time (and a 202, and the jar, when given).
    async fn release(&self, lease: InFlight, how: Release);
    /// Requests waiting for their session, over all sessions.
    async fn queue_depth(&self) -> Result<u32, StoreError>;
    /// Cross-replica single-flight of logins: true when the caller may log session `id` in now
    /// (it holds the lock until [`SessionStore::unlock_login`], or until its lease runs out).
    async fn lock_login(&self, slot: &SlotKey, id: u64) -> Result<bool, StoreError>;
    async fn unlock_login(&self, slot: &SlotKey, id: u64) -> Result<(), StoreError>;
    /// Periodic upkeep: removes (and returns) the records of logins a crashed replica left
    /// unfinished, so that their seats can be given back, and tells whether the store lost its
    /// state. By default a store never loses anything and nothing is abandoned.
    async fn maintain(&self) -> Result<Maintenance, StoreError> {
        Ok(Maintenance::default())
    }
    /// Registers a lost session again (with its seat, within `seat_cap` and the grant's
    /// `grant_cap`), so that it is counted and used as before.
    async fn restore(
        &self,
        _slot: &SlotKey,
        _record: SessionRecord,
        _grant_cap: u32,
        _seat_cap: u32,
    ) -> Result<Restored, StoreError> {
        Ok(Restored::NoRoom)
    }
    /// The counts behind the session gauges.
    async fn stats(&self) -> Result<Stats, StoreError> {
        let all = self.list().await?;
        let count = |s: SessionState| all.iter().filter(|(_, r)| r.state == s).count();
        Ok(Stats {
            needs_login: count(SessionState::NeedsLogin),
            logging_in: count(SessionState::LoggingIn),
            active: count(SessionState::Active),
            seats: self.seats_in_use().await?,
        })
    }
    /// Starts the store's own background work (a shared store renews its leases); idempotent.
    fn start(self: Arc<Self>) {}

    // --- the credential gate, fleet-wide (design §6.5.3) ---
    //
    // By default a store shares nothing: within one process the pool's own gate is the whole
    // truth. A shared store makes the cooldown, the "credentials proven" mark and the trial lock
    // hold for every replica. `fp` names a credential set (a keyed digest, never the secret).

    /// Until when (Unix ms) logins with credential set `fp` are refused, fleet-wide.
    async fn credential_cooldown(&self, _fp: &str) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
    /// Opens the cooldown of `fp` until `until_ms` (and forgets that it was proven).
    async fn open_credential_cooldown(&self, _fp: &str, _until_ms: u64) -> Result<(), StoreError> {
        Ok(())
    }
    /// True once some replica logged in with `fp` (since its last credential failure).
    async fn credentials_proven(&self, _fp: &str) -> Result<bool, StoreError> {
        Ok(false)
    }
    async fn mark_credentials_proven(&self, _fp: &str) -> Result<(), StoreError> {
        Ok(())
    }
    /// The fleet-wide single-flight of unproven logins: true when the caller may try `fp` now
    /// (until [`SessionStore::unlock_credential_trial`], or `ttl`).
    async fn lock_credential_trial(&self, _fp: &str, _ttl: Duration) -> Result<bool, StoreError> {
        Ok(true)
    }
    async fn unlock_credential_trial(&self, _fp: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

// === impl MemoryStore ===

#[derive(Default)]
struct Inner {
    /// The sum of every record's `queued`, kept so the gauge costs no scan.
    queued_total: u32,
    records: HashMap<SlotKey, SessionRecord>,
    /// One FIFO semaphore per live record id: the in-flight places.
    gates: HashMap<u64, Arc<Semaphore>>,
}

/// The in-process store: one replica, no network.
#[derive(Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    seats: Arc<SeatTable>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store whose seats are `seats` (shared with the other stores of the same upstream).
    pub fn with_seats(seats: Arc<SeatTable>) -> Self {
        MemoryStore {
            inner: Arc::default(),
            seats,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        lock_inner(&self.inner)
    }
}

impl MemoryStore {
    /// Waits (FIFO) for one of session `id`'s `max` in-flight places, queueing at most
    /// `max_queue` requests and waiting at most `wait`.
    pub async fn acquire(
        &self,
        slot: &SlotKey,
        id: u64,
        max: u32,
        max_queue: u32,
        wait: Duration,
    ) -> Result<InFlight, LeaseRefused> {
        let gate = {
            let mut g = self.lock();
            let gate = g.gates.get(&id).cloned().ok_or(LeaseRefused::Gone)?;
            let r = g
                .records
                .get_mut(slot)
                .filter(|r| r.id == id)
                .ok_or(LeaseRefused::Gone)?;
            if r.in_flight >= max && r.queued >= max_queue {
                return Err(LeaseRefused::Busy);
            }
            r.queued += 1;
            g.queued_total += 1;
            gate
        };
        let mut queued = Queued {
            inner: self.inner.clone(),
            slot: slot.clone(),
            id,
            armed: true,
        };
        let permit = tokio::time::timeout(wait, gate.acquire_owned()).await;
        queued.armed = false;
        let mut g = self.lock();
        g.queued_total = g.queued_total.saturating_sub(1);
        let record = g.records.get_mut(slot).filter(|r| r.id == id);
        match (permit, record) {
            (Ok(Ok(p)), Some(r)) => {
                r.queued = r.queued.saturating_sub(1);
                r.in_flight += 1;
                let inner = self.inner.clone();
                let key = slot.clone();
                Ok(InFlight::new(
                    slot.clone(),
                    id,
                    Box::new(move |how: Release| {
                        let now = crate::clock::unix_ms();
                        let mut g = lock_inner(&inner);
                        if let Some(r) = g.records.get_mut(&key).filter(|r| r.id == id) {
                            r.in_flight = r.in_flight.saturating_sub(1);
                            r.last_used_ms = now;
                            if how.op {
                                r.last_op_ms = Some(now);
                            }
                            if let Some(jar) = how.jar {
                                r.jar = jar;
                            }
                        }
                        drop(g);
                        drop(p);
                    }),
                ))
            }
            (Ok(Ok(_)), None) | (Ok(Err(_)), _) => Err(LeaseRefused::Gone),
            (Err(_), record) => {
                if let Some(r) = record {
                    r.queued = r.queued.saturating_sub(1);
                }
                Err(LeaseRefused::Busy)
            }
        }
    }
}

fn lock_inner(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Takes a request off a session's queue if its wait is cancelled (the client went away).
struct Queued {
    inner: Arc<Mutex<Inner>>,
    slot: SlotKey,
    id: u64,
    armed: bool,
}

impl Drop for Queued {
    fn drop(&mut self) {
        if self.armed {
            let mut g = lock_inner(&self.inner);
            if let Some(r) = g.records.get_mut(&self.slot).filter(|r| r.id == self.id) {
                r.queued = r.queued.saturating_sub(1);
            }
            g.queued_total = g.queued_total.saturating_sub(1);
        }
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn take_seat(&self, cap: u32, holder: u64) -> Result<bool, StoreError> {
        let mut seats = self.seats.lock();
        if seats.contains(&holder) {
            return Ok(true);
        }
        if seats.len() < cap as usize {
            seats.insert(holder);
            Ok(true)
        } else {
            Ok(false)
        }
    }

    async fn release_seat(&self, holder: u64) -> Result<(), StoreError> {
        self.seats.lock().remove(&holder);
        Ok(())
    }

    async fn seats_in_use(&self) -> Result<u32, StoreError> {
        Ok(u32::try_from(self.seats.lock().len()).unwrap_or(u32::MAX))
    }

    async fn get(&self, slot: &SlotKey) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self.lock().records.get(slot).cloned())
    }

    async fn create(
        &self,
        slot: &SlotKey,
        record: SessionRecord,
        grant_cap: u32,
        max_in_flight: u32,
    ) -> Result<Created, StoreError> {
        let mut g = self.lock();
        if let Some(existing) = g.records.get(slot) {
            return Ok(Created::Existing(existing.clone()));
        }
        let of_grant: Vec<&SessionRecord> = g
            .records
            .iter()
            .filter(|(k, _)| k.grant == slot.grant)
            .map(|(_, r)| r)
            .collect();
        if of_grant.len() >= grant_cap as usize {
            let earliest_idle_ms = of_grant.iter().map(|r| r.last_used_ms).min().unwrap_or(0);
            return Ok(Created::GrantFull { earliest_idle_ms });
        }
        g.gates
            .insert(record.id, Arc::new(Semaphore::new(max_in_flight as usize)));
        g.records.insert(slot.clone(), record.clone());
        Ok(Created::New(record))
    }

    async fn update(
        &self,
        slot: &SlotKey,
        id: u64,
        f: Edit,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let mut g = self.lock();
        match g.records.get_mut(slot) {
            Some(r) if r.id == id => {
                f(r);
                Ok(Some(r.clone()))
            }
            _ => Ok(None),
        }
    }

    async fn remove(&self, slot: &SlotKey, id: u64) -> Result<Option<SessionRecord>, StoreError> {
        let mut g = self.lock();
        if g.records.get(slot).is_some_and(|r| r.id == id) {
            if let Some(gate) = g.gates.remove(&id) {
                gate.close();
            }
            return Ok(g.records.remove(slot));
        }
        Ok(None)
    }

    async fn remove_unused(&self, slot: &SlotKey, id: u64) -> Result<Removal, StoreError> {
        let mut g = self.lock();
        match g.records.get(slot) {
            Some(r) if r.id == id && r.users() > 0 => Ok(Removal::Busy),
            Some(r) if r.id == id => {
                if let Some(gate) = g.gates.remove(&id) {
                    gate.close();
                }
                Ok(g.records
                    .remove(slot)
                    .map_or(Removal::Gone, Removal::Removed))
            }
            _ => Ok(Removal::Gone),
        }
    }

    async fn list(&self) -> Result<Vec<(SlotKey, SessionRecord)>, StoreError> {
        Ok(self
            .lock()
            .records
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn take_evictable(
        &self,
        now_ms: u64,
        min_idle_ms: u64,
        op_ttl_ms: u64,
    ) -> Result<Option<(SlotKey, SessionRecord)>, StoreError> {
        let mut g = self.lock();
        let victim = g
            .records
            .iter()
            .filter(|(_, r)| {
                // Only a logged-in session frees a seat when it goes.
                r.users() == 0
                    && r.seated
                    && r.state == SessionState::Active
                    && now_ms.saturating_sub(r.last_used_ms) >= min_idle_ms
                    && r.last_op_ms
                        .is_none_or(|op| now_ms.saturating_sub(op) >= op_ttl_ms)
            })
            .min_by_key(|(_, r)| r.last_used_ms)
            .map(|(k, _)| k.clone());
        Ok(victim.and_then(|k| {
            let r = g.records.remove(&k)?;
            if let Some(gate) = g.gates.remove(&r.id) {
                gate.close();
            }
            Some((k, r))
        }))
    }

    async fn take_expired(
        &self,
        now_ms: u64,
        idle_ms: u64,
        max_age_ms: u64,
    ) -> Result<Vec<(SlotKey, SessionRecord, Expiry)>, StoreError> {
        let mut g = self.lock();
        let due: Vec<(SlotKey, Expiry)> = g
            .records
            .iter()
            .filter(|(_, r)| r.users() == 0 && r.state != SessionState::LoggingIn)
            .filter_map(|(k, r)| {
                if r.retire_at_ms.is_some_and(|t| now_ms >= t) {
                    Some((k.clone(), Expiry::TokenExpired))
                } else if now_ms.saturating_sub(r.last_used_ms) >= idle_ms {
                    Some((k.clone(), Expiry::Idle))
                } else if now_ms.saturating_sub(r.created_ms) >= max_age_ms {
                    Some((k.clone(), Expiry::Age))
                } else {
                    None
                }
            })
            .collect();
        Ok(due
            .into_iter()
            .filter_map(|(k, why)| {
                let r = g.records.remove(&k)?;
                if let Some(gate) = g.gates.remove(&r.id) {
                    gate.close();
                }
                Some((k, r, why))
            })
            .collect())
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
        let (id, created) = match self.get(slot).await.ok().flatten() {
            Some(r) => (r.id, false),
            None => match self.create(slot, template, grant_cap, max).await {
                Ok(Created::New(r)) => (r.id, true),
                Ok(Created::Existing(r)) => (r.id, false),
                Ok(Created::GrantFull { earliest_idle_ms }) => {
                    return Err(LeaseRefused::GrantFull { earliest_idle_ms })
                }
                Err(_) => return Err(LeaseRefused::Unavailable),
            },
        };
        let in_flight = self.acquire(slot, id, max, max_queue, wait).await?;
        let record = self
            .lock()
            .records
            .get(slot)
            .filter(|r| r.id == id)
            .cloned()
            .ok_or(LeaseRefused::Gone)?;
        Ok(Leased {
            record,
            in_flight,
            created,
        })
    }

    async fn release(&self, lease: InFlight, how: Release) {
        lease.finish(how);
    }

    async fn queue_depth(&self) -> Result<u32, StoreError> {
        Ok(self.lock().queued_total)
    }

    // One process: the pool's own per-slot lock already makes logins single-flight, and no
    // other process holds leases.
    async fn lock_login(&self, _: &SlotKey, _: u64) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn unlock_login(&self, _: &SlotKey, _: u64) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(g: &str, h: Option<u8>) -> SlotKey {
        SlotKey {
            grant: GrantKey(g.to_owned()),
            handle: h.map(|b| [b; 16]),
        }
    }

    #[tokio::test]
    async fn seats_never_exceed_the_cap() {
        let s = MemoryStore::new();
        assert!(s.take_seat(2, 1).await.unwrap());
        assert!(
            s.take_seat(2, 1).await.unwrap(),
            "a holder's second take is its own seat"
        );
        assert!(s.take_seat(2, 2).await.unwrap());
        assert!(!s.take_seat(2, 3).await.unwrap());
        s.release_seat(1).await.unwrap();
        s.release_seat(1).await.unwrap();
        assert_eq!(
            s.seats_in_use().await.unwrap(),
            1,
            "releasing twice frees one seat"
        );
        assert!(s.take_seat(2, 3).await.unwrap());
        assert_eq!(s.seats_in_use().await.unwrap(), 2);
        // Stores of one upstream share their seats (a reload's old and new pool).
        let table = Arc::new(SeatTable::default());
        let (old, new) = (
            MemoryStore::with_seats(table.clone()),
            MemoryStore::with_seats(table),
        );
        assert!(old.take_seat(1, 10).await.unwrap());
        assert!(!new.take_seat(1, 11).await.unwrap());
        old.release_seat(10).await.unwrap();
        assert!(new.take_seat(1, 11).await.unwrap());
    }

    #[tokio::test]
    async fn create_respects_the_slot_and_the_grant_cap() {
        let s = MemoryStore::new();
        assert!(matches!(
            s.create(&slot("g", Some(1)), SessionRecord::new(1, true, 10), 2, 1)
                .await
                .unwrap(),
            Created::New(_)
        ));
        assert!(
            matches!(s.create(&slot("g", Some(1)), SessionRecord::new(2, true, 10), 2, 1).await.unwrap(), Created::Existing(r) if r.id == 1)
        );
        assert!(matches!(
            s.create(&slot("g", Some(2)), SessionRecord::new(3, true, 20), 2, 1)
                .await
                .unwrap(),
            Created::New(_)
        ));
        assert!(matches!(
            s.create(&slot("g", Some(3)), SessionRecord::new(4, true, 30), 2, 1)
                .await
                .unwrap(),
            Created::GrantFull {
                earliest_idle_ms: 10
            }
        ));
        assert!(matches!(
            s.create(&slot("other", None), SessionRecord::new(5, false, 30), 1, 1)
                .await
                .unwrap(),
            Created::New(_)
        ));
    }

    #[tokio::test]
    async fn in_flight_places_are_fifo_and_bounded() {
        let s = Arc::new(MemoryStore::new());
        let k = slot("g", None);
        s.create(&k, SessionRecord::new(1, false, 0), 1, 1)
            .await
            .unwrap();
        let first = s
            .acquire(&k, 1, 1, 4, Duration::from_secs(1))
            .await
            .unwrap();
        // Four wait, one after the other; each records when it got the place and holds it a
        // moment, so a waiter served out of turn shows in the order.
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for n in 0..4u64 {
            let (s2, k2, order) = (s.clone(), k.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let lease = s2.acquire(&k2, 1, 1, 4, Duration::from_secs(5)).await?;
                order.lock().unwrap().push(n);
                tokio::time::sleep(Duration::from_millis(5)).await;
                s2.release(lease, Release::default()).await;
                Ok::<_, LeaseRefused>(())
            }));
            // Queued in this order before the next one arrives.
            while s.get(&k).await.unwrap().unwrap().queued <= u32::try_from(n).unwrap() {
                tokio::task::yield_now().await;
            }
        }
        // The queue is full: the next is refused at once.
        assert_eq!(
            s.acquire(&k, 1, 1, 4, Duration::from_secs(1))
                .await
                .unwrap_err(),
            LeaseRefused::Busy
        );
        s.release(first, Release::default()).await;
        for w in waiters {
            w.await.unwrap().unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            vec![0, 1, 2, 3],
            "first come, first served"
        );
        // A wait that runs out is Busy and leaves no queued count behind.
        let held = s
            .acquire(&k, 1, 1, 5, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(
            s.acquire(&k, 1, 1, 5, Duration::from_millis(20))
                .await
                .unwrap_err(),
            LeaseRefused::Busy
        );
        assert_eq!(s.get(&k).await.unwrap().unwrap().queued, 0);
        s.release(
            held,
            Release {
                op: true,
                jar: Some(Jar::from_text("a\t/\t1")),
            },
        )
        .await;
        let r = s.get(&k).await.unwrap().unwrap();
        assert_eq!(r.in_flight, 0);
        assert!(r.last_used_ms > 0 && r.last_op_ms == Some(r.last_used_ms));
        assert_eq!(
            r.jar,
            Jar::from_text("a\t/\t1"),
            "the jar came back with the release"
        );
    }

    #[tokio::test]
    async fn removal_of_an_unused_session_is_atomic_with_its_use() {
        let s = MemoryStore::new();
        let k = slot("g", None);
        s.create(&k, SessionRecord::new(1, false, 0), 1, 1)
            .await
            .unwrap();
        let lease = s
            .acquire(&k, 1, 1, 5, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(matches!(
            s.remove_unused(&k, 1).await.unwrap(),
            Removal::Busy
        ));
        s.release(lease, Release::default()).await;
        assert!(matches!(
            s.remove_unused(&k, 1).await.unwrap(),
            Removal::Removed(r) if r.id == 1
        ));
        assert!(matches!(
            s.remove_unused(&k, 1).await.unwrap(),
            Removal::Gone
        ));
    }

    #[tokio::test]
    async fn eviction_takes_the_lru_unused_session_only() {
        let s = MemoryStore::new();
        let (a, b) = (slot("a", None), slot("b", None));
        let mut old = SessionRecord::new(1, false, 0);
        old.state = SessionState::Active;
        old.seated = true;
        let mut newer = SessionRecord::new(2, false, 0);
        newer.state = SessionState::Active;
        newer.seated = true;
        newer.last_used_ms = 500;
        s.create(&a, old, 1, 1).await.unwrap();
        s.create(&b, newer, 1, 1).await.unwrap();
        // A record that never logged in holds no seat: evicting it would free nothing.
        s.create(&slot("c", None), SessionRecord::new(3, false, 0), 1, 1)
            .await
            .unwrap();
        let lease = s
            .acquire(&a, 1, 1, 5, Duration::from_secs(1))
            .await
            .unwrap();
        // `a` is older but busy: `b` goes.
        let (k, r) = s.take_evictable(10_000, 2_000, 0).await.unwrap().unwrap();
        assert_eq!((k, r.id), (b.clone(), 2));
        assert!(
            s.take_evictable(10_000, 2_000, 0).await.unwrap().is_none(),
            "a is in use"
        );
        s.release(
            lease,
            Release {
                op: true,
                jar: None,
            },
        )
        .await;
        let now = crate::clock::unix_ms();
        assert!(
            s.take_evictable(now + 3_000, 2_000, 600_000)
                .await
                .unwrap()
                .is_none(),
            "a 202 was seen recently"
        );
        assert!(s
            .take_evictable(now + 700_000, 2_000, 600_000)
            .await
            .unwrap()
            .is_some());
    }

    #[tokio::test]
    async fn cancelled_waiters_and_dropped_leases_leave_no_count_behind() {
        let s = Arc::new(MemoryStore::new());
        let k = slot("g", None);
        s.create(&k, SessionRecord::new(1, false, 0), 1, 1)
            .await
            .unwrap();
        let held = s
            .acquire(&k, 1, 1, 5, Duration::from_secs(1))
            .await
            .unwrap();
        let (s2, k2) = (s.clone(), k.clone());
        let waiter =
            tokio::spawn(async move { s2.acquire(&k2, 1, 1, 5, Duration::from_secs(30)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(s.get(&k).await.unwrap().unwrap().queued, 1);
        assert_eq!(s.queue_depth().await.unwrap(), 1);
        // The client goes away while queued.
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(s.get(&k).await.unwrap().unwrap().queued, 0);
        assert_eq!(s.queue_depth().await.unwrap(), 0);
        // A lease dropped without release (a cancelled request) gives its place back.
        drop(held);
        let r = s.get(&k).await.unwrap().unwrap();
        assert_eq!(r.users(), 0);
        assert!(s
            .acquire(&k, 1, 1, 5, Duration::from_millis(50))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn waiters_on_a_removed_session_learn_it_is_gone() {
        let s = Arc::new(MemoryStore::new());
        let k = slot("g", None);
        s.create(&k, SessionRecord::new(7, false, 0), 1, 1)
            .await
            .unwrap();
        let held = s
            .acquire(&k, 7, 1, 5, Duration::from_secs(1))
            .await
            .unwrap();
        let (s2, k2) = (s.clone(), k.clone());
        let waiter =
            tokio::spawn(async move { s2.acquire(&k2, 7, 1, 5, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(s.remove(&k, 7).await.unwrap().is_some());
        assert!(
            s.remove(&k, 7).await.unwrap().is_none(),
            "only one remover wins"
        );
        assert_eq!(waiter.await.unwrap().unwrap_err(), LeaseRefused::Gone);
        s.release(held, Release::default()).await;
    }

    #[tokio::test]
    async fn expiry_by_idle_time_and_by_age() {
        let s = MemoryStore::new();
        let mut idle = SessionRecord::new(1, false, 0);
        idle.state = SessionState::Active;
        let mut old = SessionRecord::new(2, false, 0);
        old.state = SessionState::Active;
        old.last_used_ms = 9_000;
        let mut fresh = SessionRecord::new(3, false, 8_000);
        fresh.state = SessionState::Active;
        fresh.last_used_ms = 9_000;
        s.create(&slot("a", None), idle, 1, 1).await.unwrap();
        s.create(&slot("b", None), old, 1, 1).await.unwrap();
        s.create(&slot("c", None), fresh, 1, 1).await.unwrap();
        let mut token = SessionRecord::new(4, false, 9_000);
        token.state = SessionState::Active;
        token.last_used_ms = 9_900;
        token.retire_at_ms = Some(9_990);
        s.create(&slot("d", None), token, 1, 1).await.unwrap();
        let mut out: Vec<(u64, Expiry)> = s
            .take_expired(10_000, 5_000, 9_500)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, r, why)| (r.id, why))
            .collect();
        out.sort_unstable_by_key(|(id, _)| *id);
        assert_eq!(
            out,
            vec![
                (1, Expiry::Idle),
                (2, Expiry::Age),
                (4, Expiry::TokenExpired)
            ]
        );
        assert_eq!(s.list().await.unwrap().len(), 1);
    }
}
