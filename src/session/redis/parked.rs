//! Places kept after their request: when a request ends, this replica may keep its session's
//! in-flight place for `[store] linger`, so that its own next request on that session takes it
//! without a round trip to Redis (and the release makes none either). Only a single-request
//! session (`max_inflight = 1`) whose request changed nothing in the record is kept.
//!
//! A kept place is still a lease in Redis, renewed like any other, so the session counts as in
//! use there: nobody evicts it, expires it or hands it to another request meanwhile. It goes
//! back (the usual release: use time recorded, the place handed to the next waiter) when:
//! - `linger` passes without a request of this replica taking it;
//! - a request queues behind it, on any replica (the store's `w` wake): the queue stays FIFO
//!   across replicas, and a waiter elsewhere waits no longer than without keeping;
//! - a third of `lease_ttl` passed since Redis granted it: the place is never used on a lease
//!   that Redis might have let expire, and the record's use time and upkeep get their turn;
//! - the store lost its state (the epoch changed), the lease was lost, or the session is no
//!   longer one this replica knows as logged in;
//! - this replica removes the session (`remove_unused`) or leaves the fleet
//!   ([`SessionStore::settle`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::fleet::membership::Wanted;
use crate::session::jar::Jar;
#[cfg(doc)]
use crate::session::store::SessionStore;

use super::lock;
use super::release::Releaser;
use crate::session::store::Release;

/// What a granted place carries so that it can be kept after its request.
#[derive(Debug, Clone)]
pub(super) struct Keep {
    /// When the lease script that granted it was sent (its Redis expiry is later than this
    /// plus `lease_ttl`).
    pub granted: Instant,
    /// The store's epoch when it was granted.
    pub epoch: Arc<str>,
    /// Set when a request queues behind the place.
    pub wanted: Arc<Wanted>,
    /// The jar as the last request on the kept place left it, not yet written to Redis (it is
    /// written when the place goes back).
    pub jar: Option<Jar>,
    /// Since when the jar in Redis is behind: a place is kept at most `linger` past that, so
    /// that a crash of this replica loses at most that much of a jar's history.
    pub dirty_since: Option<Instant>,
}

impl Keep {
    /// A place granted at `granted` under `epoch`, watched by `wanted`.
    pub(super) fn new(granted: Instant, epoch: Arc<str>, wanted: Arc<Wanted>) -> Keep {
        Keep {
            granted,
            epoch,
            wanted,
            jar: None,
            dirty_since: None,
        }
    }
}

/// A place kept for this replica's next request on its session.
#[derive(Debug)]
pub(super) struct Place {
    pub id: u64,
    pub ticket: String,
    pub keep: Keep,
    /// When it was kept (it goes back `linger` later unless a request takes it).
    kept_at: Instant,
}

/// The kept places of one store, by slot text, shared with the releases of its leases. One
/// sweeper task per store gives back what lingered too long or is wanted elsewhere
/// ([`Parked::sweep`]), so that keeping a place costs no task and no timer.
#[derive(Debug, Clone)]
pub(super) struct Parked {
    places: Arc<Mutex<HashMap<String, Place>>>,
    /// Wakes the sweeper: a place was kept into an empty table, or a kept place is wanted.
    pub nudge: Arc<Notify>,
    /// Set when the replica leaves: nothing is kept any more.
    closed: Arc<AtomicBool>,
    /// How long a place is kept without a request taking it.
    pub linger: Duration,
    /// How long after its grant a place may still be kept.
    pub hold: Duration,
}

impl Parked {
    pub(super) fn new(linger: Duration, lease_ttl: Duration) -> Parked {
        Parked {
            places: Arc::default(),
            nudge: Arc::default(),
            closed: Arc::default(),
            linger,
            hold: lease_ttl / 3,
        }
    }

    /// Whether places may be kept at all, for sessions of `max` in-flight places.
    pub(super) fn enabled(&self, max: u32) -> bool {
        max == 1 && !self.linger.is_zero() && self.open()
    }

    /// True while places may be kept (the replica has not begun to leave).
    pub(super) fn open(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }

    /// Keeps nothing from now on, and takes every kept place.
    pub(super) fn close(&self) -> Vec<(String, Place)> {
        self.closed.store(true, Ordering::Release);
        lock(&self.places).drain().collect()
    }

    /// True while a place granted at `keep.granted` may still be kept (or taken).
    pub(super) fn fresh(&self, keep: &Keep, epoch: &str) -> bool {
        !keep.wanted.is_set()
            && keep.granted.elapsed() < self.hold
            && keep.dirty_since.is_none_or(|t| t.elapsed() < self.linger)
            && *keep.epoch == *epoch
    }

    /// Keeps the place of slot `s`.
    pub(super) fn put(&self, s: &str, id: u64, ticket: String, keep: Keep) {
        let mut places = lock(&self.places);
        let first = places.is_empty();
        let old = places.insert(
            s.to_owned(),
            Place {
                id,
                ticket,
                keep,
                kept_at: Instant::now(),
            },
        );
        drop(places);
        debug_assert!(old.is_none(), "one place per single-request session");
        if first {
            // The sweeper sleeps without a deadline while nothing is kept.
            self.nudge.notify_one();
        }
    }

    /// Takes the kept place of slot `s`, if any.
    pub(super) fn take(&self, s: &str) -> Option<Place> {
        lock(&self.places).remove(s)
    }

    /// Takes the places due back at `now` (lingered `linger`, or wanted elsewhere); tells when
    /// the next one is due (`None`: nothing kept).
    pub(super) fn due(&self, now: Instant) -> (Vec<(String, Place)>, Option<Instant>) {
        let mut places = lock(&self.places);
        let due: Vec<String> = places
            .iter()
            .filter(|(_, p)| p.keep.wanted.is_set() || now >= p.kept_at + self.linger)
            .map(|(s, _)| s.clone())
            .collect();
        let taken = due
            .into_iter()
            .filter_map(|s| places.remove_entry(&s))
            .collect();
        let next = places.values().map(|p| p.kept_at + self.linger).min();
        (taken, next)
    }

    /// Takes the places kept for at least `idle`.
    pub(super) fn idle(&self, idle: Duration) -> Vec<(String, Place)> {
        let now = Instant::now();
        let mut places = lock(&self.places);
        let idle: Vec<String> = places
            .iter()
            .filter(|(_, p)| now.duration_since(p.kept_at) >= idle)
            .map(|(s, _)| s.clone())
            .collect();
        idle.into_iter()
            .filter_map(|s| places.remove_entry(&s))
            .collect()
    }

    /// How many places are kept (tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        lock(&self.places).len()
    }
}

/// The sweeper of one store's kept places: gives back those that lingered `linger` or that a
/// request queued behind, waking at the next deadline or when nudged. It ends with the store.
pub(super) async fn sweep(parked: Parked, releaser: Releaser) {
    loop {
        // Registered before the table is read, so that a nudge in between is not missed.
        let nudged = parked.nudge.notified();
        tokio::pin!(nudged);
        nudged.as_mut().enable();
        let (due, next) = parked.due(Instant::now());
        for (s, place) in due {
            let how = Release {
                op: false,
                jar: place.keep.jar,
            };
            releaser.clone().give_back(s, place.id, place.ticket, how);
        }
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at.into()) => {}
                    () = &mut nudged => {}
                }
            }
            None => nudged.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep(granted: Instant) -> Keep {
        Keep::new(granted, Arc::from("e1"), Arc::new(Wanted::default()))
    }

    #[test]
    fn only_single_request_sessions_are_kept_and_only_with_a_linger() {
        let p = Parked::new(Duration::from_millis(250), Duration::from_secs(30));
        assert!(p.enabled(1));
        assert!(!p.enabled(2), "a place of a shared session is not kept");
        assert!(!Parked::new(Duration::ZERO, Duration::from_secs(30)).enabled(1));
        assert_eq!(p.hold, Duration::from_secs(10));
    }

    #[test]
    fn a_place_is_fresh_until_wanted_too_old_or_the_store_reset() {
        let p = Parked::new(Duration::from_millis(250), Duration::from_secs(30));
        let k = keep(Instant::now());
        assert!(p.fresh(&k, "e1"));
        assert!(!p.fresh(&k, "e2"), "the store lost its state");
        let old = keep(Instant::now() - Duration::from_secs(11));
        assert!(
            !p.fresh(&old, "e1"),
            "granted more than a third of lease_ttl ago"
        );
        let dirty = Keep {
            dirty_since: Some(Instant::now() - Duration::from_millis(300)),
            ..keep(Instant::now())
        };
        assert!(
            !p.fresh(&dirty, "e1"),
            "its jar unwritten for longer than the linger"
        );
        let wanted = Arc::new(Wanted::default());
        let k = Keep {
            wanted: wanted.clone(),
            ..keep(Instant::now())
        };
        wanted.set();
        assert!(!p.fresh(&k, "e1"), "a request queued behind it");
    }

    #[test]
    fn places_are_due_back_after_their_linger_or_when_wanted() {
        let p = Parked::new(Duration::from_millis(250), Duration::from_secs(30));
        let now = Instant::now();
        assert_eq!(p.due(now).1, None, "nothing kept: no deadline");
        p.put("a|-", 1, "t1".to_owned(), keep(now));
        let wanted = Arc::new(Wanted::default());
        p.put(
            "b|-",
            2,
            "t2".to_owned(),
            Keep::new(now, Arc::from("e1"), wanted.clone()),
        );
        let (taken, next) = p.due(Instant::now());
        assert!(taken.is_empty(), "neither lingered nor wanted");
        assert!(
            next.is_some_and(|n| n > now),
            "the next is due at its linger"
        );
        wanted.set();
        let (taken, _) = p.due(Instant::now());
        assert_eq!(
            taken.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(),
            ["b|-"]
        );
        let (taken, next) = p.due(Instant::now() + Duration::from_millis(300));
        assert_eq!(taken.len(), 1, "a lingered");
        assert_eq!(next, None);
        assert_eq!(p.take("a|-").map(|pl| pl.id), None);
        p.put("d|-", 4, "t4".to_owned(), keep(now));
        assert!(p.idle(Duration::from_secs(2)).is_empty(), "kept just now");
        assert_eq!(p.idle(Duration::ZERO).len(), 1, "idle for any time at all");
        p.put("c|-", 3, "t3".to_owned(), keep(now));
        assert_eq!(p.take("c|-").map(|pl| pl.id), Some(3), "a request takes it");
        p.put("a|-", 1, "t1".to_owned(), keep(now));
        assert!(p.open());
        assert_eq!(p.close().len(), 1, "closing takes what is kept");
        assert!(!p.enabled(1) && !p.open(), "and keeps nothing more");
        assert_eq!(p.len(), 0);
    }
}
