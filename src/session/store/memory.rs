//! The in-process store: one replica, no network. Each record's in-flight places are a FIFO
//! semaphore; the seats are a [`SeatTable`] shared by the stores of one upstream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Semaphore;

use super::{
    Created, Edit, Expiry, InFlight, LeaseRefused, Leased, Release, Removal, SessionRecord,
    SessionState, SessionStore, SlotKey, StoreError,
};

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

// === impl MemoryStore ===

/// The maps of the store, looked up several times by every request of a session route. Their
/// keys are grant keys (an HMAC under the gateway's key), gateway-issued handle nonces and
/// record ids: nothing a client can choose, so a fast seeded hash serves where the standard
/// library's SipHash, built to resist chosen keys, cost about 4k instructions a request.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct Inner {
    /// The sum of every record's `queued`, kept so the gauge costs no scan.
    queued_total: u32,
    records: FastMap<SlotKey, SessionRecord>,
    /// One FIFO semaphore per live record id: the in-flight places.
    gates: FastMap<u64, Arc<Semaphore>>,
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
    /// [`MemoryStore::enter`] without the record, for the tests of the queue.
    #[cfg(test)]
    pub async fn acquire(
        &self,
        slot: &SlotKey,
        id: u64,
        max: u32,
        max_queue: u32,
        wait: Duration,
    ) -> Result<InFlight, LeaseRefused> {
        let (in_flight, _) = self.enter(slot, id, max, max_queue, wait).await?;
        Ok(in_flight)
    }

    /// Waits (FIFO) for one of session `id`'s `max` in-flight places, queueing at most
    /// `max_queue` requests and waiting at most `wait`; returns the place and a copy of the
    /// session's record as it is when the place is had, taken under the same lock (a lease
    /// needs both; one lookup fewer a request).
    async fn enter(
        &self,
        slot: &SlotKey,
        id: u64,
        max: u32,
        max_queue: u32,
        wait: Duration,
    ) -> Result<(InFlight, SessionRecord), LeaseRefused> {
        let gate = {
            let mut g = self.lock();
            let Inner {
                queued_total,
                records,
                gates,
            } = &mut *g;
            let gate = gates.get(&id).ok_or(LeaseRefused::Gone)?;
            let r = records
                .get_mut(slot)
                .filter(|r| r.id == id)
                .ok_or(LeaseRefused::Gone)?;
            // A free place is taken at once, under this lock, without queueing or a timer
            // (most requests find one).
            if let Some((p, record)) = take_free(gate, r) {
                drop(g);
                return Ok((self.place(slot, id, p), record));
            }
            if r.in_flight >= max && r.queued >= max_queue {
                return Err(LeaseRefused::Busy);
            }
            r.queued += 1;
            *queued_total += 1;
            gate.clone()
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
                let record = r.clone();
                drop(g);
                Ok((self.place(slot, id, p), record))
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

    /// The in-flight place `p` of record `id` (counted in its `in_flight` already).
    fn place(&self, slot: &SlotKey, id: u64, p: tokio::sync::OwnedSemaphorePermit) -> InFlight {
        let place = Place {
            inner: self.inner.clone(),
            permit: p,
        };
        InFlight::memory(slot.clone(), id, place)
    }
}

/// A request's in-flight place on one of the store's records (its lease, [`InFlight`], knows
/// which).
pub(super) struct Place {
    inner: Arc<Mutex<Inner>>,
    permit: tokio::sync::OwnedSemaphorePermit,
}

impl Place {
    /// Counts the place out of record `id`, notes the use and writes back the jar the request
    /// changed; then the permit goes to the next request waiting.
    pub(super) fn finish(self, slot: &SlotKey, id: u64, how: Release) {
        let now = crate::clock::unix_ms();
        let mut g = lock_inner(&self.inner);
        if let Some(r) = g.records.get_mut(slot).filter(|r| r.id == id) {
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
        drop(self.permit);
    }
}

/// A free in-flight place of record `r` (whose gate is `gate`), counted in, and a copy of the
/// record as it is then; `None` when every place is taken. The semaphore is fair: a place
/// given back goes to its waiters first, so a free one means none wait, and taking it never
/// overtakes the queue.
fn take_free(
    gate: &Arc<Semaphore>,
    r: &mut SessionRecord,
) -> Option<(tokio::sync::OwnedSemaphorePermit, SessionRecord)> {
    let p = gate.clone().try_acquire_owned().ok()?;
    r.in_flight += 1;
    Some((p, r.clone()))
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
        // Only the id is needed here: the record is copied once, below, when its place is had.
        let existing = self.lock().records.get(slot).map(|r| r.id);
        let (id, created) = match existing {
            Some(id) => (id, false),
            None => match self.create(slot, template, grant_cap, max).await {
                Ok(Created::New(r)) => (r.id, true),
                Ok(Created::Existing(r)) => (r.id, false),
                Ok(Created::GrantFull { earliest_idle_ms }) => {
                    return Err(LeaseRefused::GrantFull { earliest_idle_ms })
                }
                Err(_) => return Err(LeaseRefused::Unavailable),
            },
        };
        let (in_flight, record) = self.enter(slot, id, max, max_queue, wait).await?;
        Ok(Leased {
            record,
            in_flight,
            created,
        })
    }

    fn lease_at_once(&self, slot: &SlotKey) -> Option<Leased> {
        let mut g = self.lock();
        let Inner { records, gates, .. } = &mut *g;
        let r = records.get_mut(slot)?;
        let (p, record) = take_free(gates.get(&r.id)?, r)?;
        drop(g);
        Some(Leased {
            in_flight: self.place(slot, record.id, p),
            record,
            created: false,
        })
    }

    async fn release(&self, lease: InFlight, how: Release) {
        lease.finish(how);
    }

    fn release_at_once(&self, lease: InFlight, how: Release) -> Option<(InFlight, Release)> {
        lease.finish(how);
        None
    }

    fn queue_depth(&self) -> u32 {
        self.lock().queued_total
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
mod tests;
