//! The lease path: one script finds or creates the slot's record and grants an in-flight place,
//! or queues the request's ticket (FIFO in Redis, across replicas). A queued request waits for
//! its wake from [`crate::fleet::Fleet`], or gives up at its deadline; a request that goes away
//! at any point takes its ticket off the queue ([`Pending`]). A lease that met a store which
//! lost its state repairs it first (`upkeep`); a jar this replica already has at the stored
//! version is not sent again (`recent`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::super::store::{InFlight, LeaseRefused, Leased, Release, SessionRecord, SlotKey};
use super::codec::{args, fields, pairs, plain_record, slot_text};
use super::guards::Kind;
use super::parked::{Keep, Turn};
use super::release::{cancel, Owed};
#[cfg(doc)]
use super::SessionStore;
use super::{lock, RedisStore};
use crate::fleet::membership::Wake;

/// [`SessionStore::lease`].
pub(super) async fn lease(
    store: &RedisStore,
    slot: &SlotKey,
    template: SessionRecord,
    grant_cap: u32,
    max: u32,
    max_queue: u32,
    wait: Duration,
) -> Result<Leased, LeaseRefused> {
    let s = slot_text(slot);
    let deadline = tokio::time::Instant::now() + wait;
    let keeping = store.parked.enabled(max);
    if keeping {
        let owed = match store.parked.take_or_wait(&s, max_queue) {
            Turn::Kept(place) => Some((Owed::place(store.releaser(), &s, place), false)),
            Turn::Wait(turn) => {
                let _waiting = Waiting::count(&store.queued_here);
                let mut owed = Owed::turn(store.releaser(), &s, turn);
                match tokio::time::timeout_at(deadline, owed.handed()).await {
                    Ok(true) => Some((owed, true)),
                    // The place went back to Redis: ask there, in its queue's order.
                    Ok(false) => None,
                    // A place handed on meanwhile goes back with `owed`.
                    Err(_) => return Err(LeaseRefused::Busy),
                }
            }
            Turn::Full => return Err(LeaseRefused::Busy),
            Turn::Ask => None,
        };
        if let Some((owed, handed)) = owed {
            if let Some(leased) = store.reuse(slot, &s, owed, handed).await {
                return Ok(leased);
            }
        }
    }
    let rec = store.keys.record(&s);
    let (slots, grant) = (store.keys.slots(), store.keys.grant(&slot.grant));
    let (prefix, global) = (store.keys.prefix.clone(), store.keys.global.clone());
    let ticket = store.fleet.ticket();
    let lease = store.lease_ms();
    let flat = args(fields(&template, &store.sealer, &rec), &["created", "used"]);
    // Registered before the ticket can be queued, so that no wake is missed; the guard
    // takes the ticket off the queue if this request goes away while it waits.
    let wake = store.fleet.expect(&ticket);
    // Watched from before the ticket can be queued too: a waiter behind it may be told at
    // the very moment it is granted.
    let wanted = keeping.then(|| store.fleet.watch(&ticket, &store.parked.nudge));
    let mut pending = Pending {
        store,
        ticket: ticket.clone(),
        rec: rec.clone(),
        armed: true,
        watched: keeping,
        here: None,
    };
    let sent = std::time::Instant::now();
    let epoch_key = store.keys.epoch();
    let mut reply: Vec<String> = Vec::new();
    let fresh = format!("{:032x}", rand::random::<u128>());
    let (cached_id, cached_jv) = store.recent.latest(&s);
    let mut with_fields = false;
    for _ in 0..3 {
        let known = lock(&store.epoch).clone();
        let script = &store.scripts.lease;
        let (text, t2) = (s.clone(), ticket.clone());
        let (rec, slots, grant, epoch_key) = (&rec, &slots, &grant, &epoch_key);
        let (prefix, global, fresh) = (&prefix, &global, &fresh);
        let (cached_id, cached_jv) = (&cached_id, &cached_jv);
        let flat: &[String] = if with_fields { &flat } else { &[] };
        reply = store
            .redis
            .run("lease", |mut c| async move {
                let mut inv = script.key(rec);
                inv.key(slots)
                    .key(grant)
                    .key(epoch_key)
                    .arg(prefix)
                    .arg(global)
                    .arg(&text)
                    .arg(grant_cap)
                    .arg(max)
                    .arg(max_queue)
                    .arg(&t2)
                    .arg(lease)
                    .arg(&known)
                    .arg(fresh)
                    .arg(cached_id)
                    .arg(cached_jv);
                for f in flat {
                    inv.arg(f);
                }
                inv.invoke_async(&mut c).await
            })
            .await
            .map_err(|_| LeaseRefused::Unavailable)?;
        match reply.first().map(String::as_str) {
            Some("create") => with_fields = true,
            // The store lost its state since this replica last looked: before anything is
            // created in the empty store, what this replica knows is registered again.
            Some("reset") => store
                .repair_reset()
                .await
                .map_err(|_| LeaseRefused::Unavailable)?,
            _ => break,
        }
    }
    let mut it = reply.into_iter();
    // From here the script's answer is known: only a queued ticket needs undoing.
    let code = it.next().unwrap_or_default();
    let created = it.next().as_deref() == Some("1");
    if code == "1" || code == "0" {
        if let Some(epoch) = it.next() {
            let mut known = lock(&store.epoch);
            if known.is_empty() {
                *known = epoch;
            }
        }
    }
    let keep = wanted.map(|wanted| Keep::new(sent, Arc::from(lock(&store.epoch).as_str()), wanted));
    match code.as_str() {
        "1" => {
            pending.granted();
            let how = it.next().unwrap_or_default();
            let map = pairs(it.collect());
            if how == "cached" {
                // The jar did not change since this replica last had it.
                let id = map
                    .get("id")
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                let jv = map
                    .get("jv")
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                let jar = store.recent.jar(&s, id, jv);
                match jar {
                    Some(jar) => {
                        let Some(mut record) = plain_record(&map) else {
                            // Unreadable: the place Redis granted goes back at once.
                            drop(store.in_flight(slot, &s, id, ticket, None));
                            return Err(LeaseRefused::Gone);
                        };
                        record.jar = jar;
                        return Ok(store.granted(slot, &s, record, ticket, created, keep));
                    }
                    // Forgotten meanwhile: read it whole.
                    None => match store.read_stored(&s).await {
                        Ok(Some(stored)) if stored.record.id == id => {
                            return Ok(store.granted(
                                slot,
                                &s,
                                stored.record,
                                ticket,
                                created,
                                keep,
                            ));
                        }
                        _ => {
                            drop(store.in_flight(slot, &s, id, ticket, None));
                            return Err(LeaseRefused::Gone);
                        }
                    },
                }
            }
            let Some(stored) = store.decode(&s, &map) else {
                // Lost (its jar does not open): the place is given back and the record
                // taken away, never forwarded.
                if let Some(id) = map.get("id").and_then(|v| v.parse::<u64>().ok()) {
                    drop(store.in_flight(slot, &s, id, ticket, None));
                    let _ = store.remove_text(&s, id).await;
                }
                return Err(LeaseRefused::Gone);
            };
            Ok(store.granted(slot, &s, stored.record, ticket, created, keep))
        }
        "0" => {
            let id: u64 = it
                .next()
                .and_then(|v| v.parse().ok())
                .ok_or(LeaseRefused::Unavailable)?;
            pending.queued(id);
            let how = match store.wait_turn(&pending.rec, &ticket, wake, deadline).await {
                Ok(how) => how,
                Err(e) => {
                    // Already off the queue (cancelled, or the session is gone).
                    pending.armed = false;
                    return Err(e);
                }
            };
            pending.granted();
            let in_flight = store.in_flight(slot, &s, id, ticket, keep);
            // Handed over by this replica's own release: the record is as this replica knows
            // it, without asking Redis again.
            let known = match how {
                Wake::Handed { jar_version } => store
                    .recent
                    .record(&s, id)
                    .filter(|r| r.jar_version == jar_version),
                _ => None,
            };
            if let Some(record) = known {
                return Ok(Leased {
                    record,
                    in_flight,
                    created,
                });
            }
            match store.read(&s).await {
                Ok(Some(record)) if record.id == id => {
                    store.recent.remember(slot, &record);
                    Ok(Leased {
                        record,
                        in_flight,
                        created,
                    })
                }
                Ok(_) => Err(LeaseRefused::Gone),
                Err(_) => Err(LeaseRefused::Unavailable),
            }
        }
        "-2" => {
            pending.disarm();
            Err(LeaseRefused::Busy)
        }
        "2" => {
            pending.disarm();
            Err(LeaseRefused::GrantFull {
                earliest_idle_ms: it.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            })
        }
        _ => Err(LeaseRefused::Unavailable),
    }
}

impl RedisStore {
    /// The lease of a place granted on `record`, which this replica now remembers.
    fn granted(
        &self,
        slot: &SlotKey,
        s: &str,
        record: SessionRecord,
        ticket: String,
        created: bool,
        keep: Option<Keep>,
    ) -> Leased {
        self.recent.remember(slot, &record);
        let in_flight = self.in_flight(slot, s, record.id, ticket, keep);
        Leased {
            record,
            in_flight,
            created,
        }
    }

    /// The lease of a granted ticket: released by [`SessionStore::release`] or its drop; with
    /// `keep`, its place may be kept for this replica's next request on the session.
    fn in_flight(
        &self,
        slot: &SlotKey,
        s: &str,
        id: u64,
        ticket: String,
        keep: Option<Keep>,
    ) -> InFlight {
        match &keep {
            None => self.fleet.unwatch(&ticket),
            Some(k) => self.parked.hold(s, &k.wanted),
        }
        let lost = self.holdings.granted(&ticket, s, id);
        let releaser = self.releaser().clone();
        let s = s.to_owned();
        InFlight::new(
            slot.clone(),
            id,
            Box::new(move |how: Release| releaser.release(s, id, ticket, how, keep)),
        )
        .with_lost(lost)
    }

    /// The lease of a place this replica kept, if it may still be used: else the place goes
    /// back first (and the caller asks Redis).
    async fn reuse(
        &self,
        slot: &SlotKey,
        s: &str,
        mut owed: Owed<'_>,
        handed: bool,
    ) -> Option<Leased> {
        let place = owed.peek()?;
        // A place handed by the request before may be wanted elsewhere: this request waited
        // from before that, and goes first.
        let mut usable = {
            let epoch = lock(&self.epoch);
            if handed {
                self.parked.current(&place.keep, &epoch)
            } else {
                self.parked.fresh(&place.keep, &epoch)
            }
        } && self.holdings.holds(&place.ticket);
        if usable && self.parked.stale(&place.keep) {
            // Granted long ago, or its jar unwritten for a linger: renewed (and the jar
            // written) by the one request that holds the place, so writes stay in order and
            // the requests of this replica waiting behind it keep their turn here.
            usable = owed.refresh().await;
        }
        let place = owed.take()?;
        let record = usable.then(|| self.recent.record(s, place.id)).flatten();
        match record {
            Some(record) => Some(Leased {
                in_flight: self.in_flight(slot, s, place.id, place.ticket, Some(place.keep)),
                record,
                created: false,
            }),
            None => {
                self.releaser().give_back_place(s, place).await;
                None
            }
        }
    }

    /// Gives back the places kept for at least `idle` (before an eviction).
    pub(super) async fn settle_idle(&self, idle: Duration) {
        let releaser = self.releaser();
        for (s, place) in self.parked.idle(idle) {
            releaser.give_back_place(&s, place).await;
        }
    }

    /// Gives back the kept place of slot `s`, if any (before the session is removed).
    pub(super) async fn settle_slot(&self, s: &str) {
        if let Some(place) = self.parked.take(s) {
            self.releaser().give_back_place(s, place).await;
        }
    }

    /// Waits for the wake of a queued ticket (FIFO: the place is handed over in Redis), or
    /// gives up at `deadline` (taking the ticket off the queue).
    async fn wait_turn(
        &self,
        rec: &str,
        ticket: &str,
        wake: tokio::sync::oneshot::Receiver<Wake>,
        deadline: tokio::time::Instant,
    ) -> Result<Wake, LeaseRefused> {
        match tokio::time::timeout_at(deadline, wake).await {
            Ok(Ok(how @ (Wake::Granted | Wake::Handed { .. }))) => Ok(how),
            Ok(Ok(Wake::Gone)) => Err(LeaseRefused::Gone),
            // The fleet dropped the waiter (shutdown) or the wait ran out: off the queue.
            Ok(Err(_)) | Err(_) => {
                self.fleet.forget(ticket);
                self.holdings.drop_ticket(ticket);
                cancel(self.releaser(), rec, ticket).await;
                Err(LeaseRefused::Busy)
            }
        }
    }
}

/// [`SessionStore::settle`]: every kept place goes back, and none is kept any more.
pub(super) async fn settle(store: &RedisStore) {
    let releaser = store.releaser();
    for (s, place) in store.parked.close() {
        releaser.give_back_place(&s, place).await;
    }
}

/// One request of this replica waiting for its session, counted while it waits.
struct Waiting(Arc<AtomicU32>);

impl Waiting {
    fn count(here: &Arc<AtomicU32>) -> Waiting {
        here.fetch_add(1, Ordering::Relaxed);
        Waiting(here.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A lease request in progress. Dropped before it got its place (the client went away while it
/// waited, or even before the lease script's answer arrived), it takes its ticket off the queue
/// and gives back a place granted to it, on its own task; it keeps this replica's count of
/// waiting requests.
struct Pending<'a> {
    store: &'a RedisStore,
    ticket: String,
    rec: String,
    armed: bool,
    /// Its ticket is watched for waiters (`Fleet::watch`) until it becomes a lease.
    watched: bool,
    here: Option<Arc<AtomicU32>>,
}

impl Pending<'_> {
    fn queued(&mut self, id: u64) {
        self.store.holdings.hold(&self.ticket, Kind::Queued, "", id);
        let count = self.store.queued_here.clone();
        count.fetch_add(1, Ordering::Relaxed);
        self.here = Some(count);
    }

    /// The ticket was refused: nothing to undo.
    fn disarm(&mut self) {
        self.store.fleet.forget(&self.ticket);
        self.armed = false;
    }

    /// The ticket became a lease: nothing to undo, and its lease watches it now.
    fn granted(&mut self) {
        self.disarm();
        self.watched = false;
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(count) = self.here.take() {
            count.fetch_sub(1, Ordering::Relaxed);
        }
        if self.watched {
            self.store.fleet.unwatch(&self.ticket);
        }
        if !self.armed {
            return;
        }
        self.store.fleet.forget(&self.ticket);
        self.store.holdings.drop_ticket(&self.ticket);
        let releaser = self.store.releaser().clone();
        let (rec, ticket) = (self.rec.clone(), self.ticket.clone());
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { cancel(&releaser, &rec, &ticket).await });
        }
    }
}
