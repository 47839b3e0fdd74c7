//! Places kept after their request: when a request ends, this replica may keep its session's
//! in-flight place for `[store] linger`, so that its own next request on that session takes it
//! without a round trip to Redis (and the release makes none either); a request of this
//! replica that arrives while another of it holds the place waits behind it here, in order,
//! and is handed the place directly. Only single-request sessions (`max_inflight = 1`) are
//! kept, and never after a 202.
//!
//! A kept place is still a lease in Redis, renewed like any other, so the session counts as in
//! use there: nobody evicts it, expires it or hands it to another request meanwhile. It goes
//! back (the usual release: use time recorded, the jar written, the place handed to the next
//! waiter in Redis) when:
//! - `linger` passes without a request of this replica taking it (the sweeper, one task per
//!   store);
//! - a request queues behind it on another replica, or on this one through Redis (the
//!   store's `w` or `G` wake): only this replica's requests that waited from before that go
//!   first, so the order stays FIFO across replicas up to the wake's delivery;
//! - a request of this replica takes a place granted (or renewed) a third of `lease_ttl` ago,
//!   and Redis does not renew it (`REFRESH`: only while the lease is still this ticket's and
//!   has not run out), so that a place is never used on a lease Redis might have let expire;
//! - the store lost its state (the epoch changed), the lease was lost, or the session is no
//!   longer one this replica knows as logged in;
//! - this replica removes or evicts the session, or leaves the fleet
//!   ([`SessionStore::settle`]).
//!
//! A jar the upstream changed meanwhile stays in this replica's memory (`recent`); the request
//! that takes the place a `linger` after the first change writes it first (with the same
//! `REFRESH`), so the writes of one place stay in order.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

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

impl Place {
    pub(super) fn new(id: u64, ticket: String, keep: Keep) -> Place {
        Place {
            id,
            ticket,
            keep,
            kept_at: Instant::now(),
        }
    }

    /// What giving it back sends: its id, its ticket, the jar it left unwritten, and how long
    /// ago its last request ended (the session's use time).
    pub(super) fn back(self) -> (u64, String, Release, u64) {
        let idle = crate::clock::millis(self.kept_at.elapsed());
        let how = Release {
            op: false,
            jar: self.keep.jar,
        };
        (self.id, self.ticket, how, idle)
    }
}

/// What a request of this replica gets on a slot whose place this replica may have.
pub(super) enum Turn {
    /// The kept place.
    Kept(Place),
    /// A wait behind the request of this replica that holds the place: the place comes
    /// through, or the sender goes away when the place goes back to Redis (then ask Redis).
    Wait(oneshot::Receiver<Place>),
    /// As many requests of this replica wait already.
    Full,
    /// This replica does not have the place (or a request elsewhere waits for it): ask Redis.
    Ask,
}

/// This replica's requests waiting behind the one of it that holds a slot's place.
#[derive(Debug, Default)]
struct LocalQueue {
    /// In their order, with the time each began to wait.
    waiters: VecDeque<(Instant, oneshot::Sender<Place>)>,
    /// The held place's watch: once a request elsewhere waits, nobody more queues here.
    wanted: Arc<Wanted>,
}

/// The kept places, and the local queues behind held ones, by slot text (one lock: a request
/// that finds neither must not miss a place kept meanwhile).
#[derive(Debug, Default)]
struct Inner {
    places: HashMap<String, Place>,
    local: HashMap<String, LocalQueue>,
}

/// The kept places of one store, by slot text, shared with the releases of its leases. One
/// sweeper task per store gives back what lingered too long or is wanted elsewhere
/// ([`Parked::sweep`]), so that keeping a place costs no task and no timer.
#[derive(Debug, Clone)]
pub(super) struct Parked {
    inner: Arc<Mutex<Inner>>,
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
            inner: Arc::default(),
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
        let mut inner = lock(&self.inner);
        inner.local.clear();
        inner.places.drain().collect()
    }

    /// True while a place may be taken by a request of this replica without waiting behind
    /// a request elsewhere: nobody queued behind it, and the store's state is the same.
    pub(super) fn fresh(&self, keep: &Keep, epoch: &str) -> bool {
        !keep.wanted.is_set() && self.current(keep, epoch)
    }

    /// True while a place may still be used by this replica's requests (those that waited from
    /// before a request elsewhere queued among them): the store's state is the one it was
    /// granted in.
    pub(super) fn current(&self, keep: &Keep, epoch: &str) -> bool {
        *keep.epoch == *epoch
    }

    /// True when the request that takes the place must renew it in Redis first: it was
    /// granted (or last renewed) `hold` ago, so that a place is never used on a lease Redis
    /// may have let expire; or its jar has been unwritten for `linger`.
    pub(super) fn stale(&self, keep: &Keep) -> bool {
        keep.granted.elapsed() >= self.hold || self.overdue(keep)
    }

    /// True when the jar a place carries has been unwritten for `linger`.
    fn overdue(&self, keep: &Keep) -> bool {
        keep.jar.is_some() && keep.dirty_since.is_some_and(|t| t.elapsed() >= self.linger)
    }

    /// Hands the place of slot `s` to the first request of this replica waiting behind it
    /// that began to wait before `before` (any, without it); returns it when none took it.
    pub(super) fn hand(&self, s: &str, mut place: Place, before: Option<Instant>) -> Option<Place> {
        let mut inner = lock(&self.inner);
        let Some(queue) = inner.local.get_mut(s) else {
            return Some(place);
        };
        while let Some((since, waiter)) = queue.waiters.pop_front() {
            if before.is_some_and(|b| since > b) {
                // It came after a request elsewhere: that one goes first (in Redis).
                queue.waiters.push_front((since, waiter));
                break;
            }
            match waiter.send(place) {
                Ok(()) => return None,
                Err(back) => place = back,
            }
        }
        Some(place)
    }

    /// Keeps the place of slot `s` (a request of this replica waiting behind it takes it
    /// first).
    pub(super) fn put(&self, s: &str, id: u64, ticket: String, keep: Keep) {
        let place = Place::new(id, ticket, keep);
        let Some(place) = self.hand(s, place, None) else {
            return;
        };
        let mut inner = lock(&self.inner);
        let first = inner.places.is_empty();
        let old = inner.places.insert(s.to_owned(), place);
        drop(inner);
        debug_assert!(old.is_none(), "one place per single-request session");
        if first {
            // The sweeper sleeps without a deadline while nothing is kept.
            self.nudge.notify_one();
        }
    }

    /// Takes the kept place of slot `s`, if any.
    pub(super) fn take(&self, s: &str) -> Option<Place> {
        lock(&self.inner).places.remove(s)
    }

    /// For a request of this replica on slot `s`: the kept place, or a wait behind the
    /// request of this replica that holds it (unless a request elsewhere waits for it, or
    /// `max_queue` of this replica's already wait).
    pub(super) fn take_or_wait(&self, s: &str, max_queue: u32) -> Turn {
        let mut inner = lock(&self.inner);
        if let Some(place) = inner.places.remove(s) {
            return Turn::Kept(place);
        }
        match inner.local.get_mut(s) {
            Some(q) if !q.wanted.is_set() => {
                if q.waiters.len() >= max_queue as usize {
                    return Turn::Full;
                }
                let (tx, rx) = oneshot::channel();
                q.waiters.push_back((Instant::now(), tx));
                Turn::Wait(rx)
            }
            _ => Turn::Ask,
        }
    }

    /// A request of this replica holds the place of slot `s`, watched by `wanted`: this
    /// replica's next requests on it wait behind it, in order.
    pub(super) fn hold(&self, s: &str, wanted: &Arc<Wanted>) {
        let mut inner = lock(&self.inner);
        match inner.local.get_mut(s) {
            // The place passed from one request of this replica to the next.
            Some(q) => {
                if !Arc::ptr_eq(&q.wanted, wanted) {
                    q.wanted = wanted.clone();
                }
            }
            None => {
                let q = LocalQueue {
                    waiters: VecDeque::new(),
                    wanted: wanted.clone(),
                };
                inner.local.insert(s.to_owned(), q);
            }
        }
    }

    /// The place of slot `s` goes back to Redis: this replica's requests waiting behind it ask
    /// Redis (they queue there, behind any request of another replica).
    pub(super) fn let_go(&self, s: &str) {
        lock(&self.inner).local.remove(s);
    }

    /// Takes the places due back at `now` (lingered `linger`, or wanted elsewhere); tells when
    /// the next one is due (`None`: nothing kept).
    pub(super) fn due(&self, now: Instant) -> (Vec<(String, Place)>, Option<Instant>) {
        let linger = self.linger;
        let mut inner = lock(&self.inner);
        let taken = take_where(&mut inner.places, |p| {
            p.keep.wanted.is_set() || now >= p.kept_at + linger
        });
        let next = inner.places.values().map(|p| p.kept_at + linger).min();
        (taken, next)
    }

    /// Takes the places kept for at least `idle`.
    pub(super) fn idle(&self, idle: Duration) -> Vec<(String, Place)> {
        let now = Instant::now();
        take_where(&mut lock(&self.inner).places, |p| {
            now.duration_since(p.kept_at) >= idle
        })
    }

    /// How many requests of this replica wait behind its own place on slot `s`.
    pub(super) fn waiting(&self, s: &str) -> u32 {
        lock(&self.inner)
            .local
            .get(s)
            .map_or(0, |q| u32::try_from(q.waiters.len()).unwrap_or(u32::MAX))
    }

    /// How many places are kept (tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        lock(&self.inner).places.len()
    }
}

/// Takes out of `places` those that `pick` picks.
fn take_where(
    places: &mut HashMap<String, Place>,
    pick: impl Fn(&Place) -> bool,
) -> Vec<(String, Place)> {
    let picked: Vec<String> = places
        .iter()
        .filter(|(_, p)| pick(p))
        .map(|(s, _)| s.clone())
        .collect();
    picked
        .into_iter()
        .filter_map(|s| places.remove_entry(&s))
        .collect()
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
            releaser.clone().give_back_kept(s, place);
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
    fn a_place_is_fresh_until_wanted_or_the_store_reset_and_renewed_when_old() {
        let p = Parked::new(Duration::from_millis(250), Duration::from_secs(30));
        let k = keep(Instant::now());
        assert!(p.fresh(&k, "e1"));
        assert!(!p.fresh(&k, "e2"), "the store lost its state");
        assert!(!p.stale(&k), "granted just now");
        let old = keep(Instant::now() - Duration::from_secs(11));
        assert!(
            p.fresh(&old, "e1") && p.stale(&old),
            "granted more than a third of lease_ttl ago: renewed before use"
        );
        let dirty = Keep {
            dirty_since: Some(Instant::now() - Duration::from_millis(300)),
            jar: Some(Jar::from_text("a\t/\t1")),
            ..keep(Instant::now())
        };
        assert!(
            p.fresh(&dirty, "e1"),
            "a jar unwritten is written by the next request"
        );
        assert!(p.overdue(&dirty), "for longer than the linger: it is due");
        assert!(p.stale(&dirty), "and the place is renewed with it");
        assert!(!p.overdue(&keep(Instant::now())), "no jar to write");
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
