//! Where the session table lives. [`SessionStore`] is the seam between the session logic and its
//! state: the seat count, the session records (owner grant, mode, state, jar, times) and the
//! per-session in-flight leases that serialise a grant's requests. [`MemoryStore`] keeps them in
//! this process; a shared store (Redis, for several replicas) implements the same operations
//! atomically with TTL-bounded leases.
//!
//! Every operation that decides something (take a seat, create a record under the per-grant cap,
//! take an evictable session) is one atomic step of the store, so two callers can never both win.
//!
//! | module | concern |
//! |---|---|
//! | `record` | slot keys, session states, the record and its edits |
//! | `lease` | in-flight leases: how they are held, released and refused |
//! | `outcome` | the results of creation, removal, expiry, upkeep and restoration; gauge counts |
//! | `memory` | the in-process store and its seat table |

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

mod lease;
mod memory;
mod outcome;
mod record;

pub use lease::{InFlight, LeaseRefused, Leased, Release};
pub use memory::{MemoryStore, SeatTable};
pub use outcome::{Created, Expiry, Maintenance, Removal, Restored, Stats};
pub use record::{Edit, SessionRecord, SessionState, SlotKey};

pub use crate::fleet::connection::StoreError;

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
    /// [`SessionStore::lease`] done here and now when the store needs no round trip and no
    /// wait for it: the slot's session exists and one of its in-flight places is free. `None`
    /// otherwise (and by default), and nothing changed: then [`SessionStore::lease`]. Most
    /// requests of a busy session route find their session so, without a future to box.
    fn lease_at_once(&self, _slot: &SlotKey) -> Option<Leased> {
        None
    }
    /// Gives the place back and records the use time (and a 202, and the jar, when given). A
    /// shared store may keep the place a moment for this replica's next request on the session
    /// (see [`SessionStore::settle`]).
    async fn release(&self, lease: InFlight, how: Release);
    /// [`SessionStore::release`] done here and now when the store needs no round trip for
    /// it: `None` then, else the lease and its release handed back for the async one. A
    /// lease that ends with its answer's body is given back this way, without a future to
    /// box. By default a store always needs the round trip.
    fn release_at_once(&self, lease: InFlight, how: Release) -> Option<(InFlight, Release)> {
        Some((lease, how))
    }
    /// Gives back every place kept for this replica's next requests (the replica leaves). By
    /// default a store keeps none.
    async fn settle(&self) {}
    /// This replica's requests waiting for their session, over all sessions. Counted in this
    /// process by every store, so read without a round trip or a future: it is sampled twice a
    /// request.
    fn queue_depth(&self) -> u32;
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
