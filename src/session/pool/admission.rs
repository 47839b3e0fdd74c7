//! Admission (design §6.3, §6.8): a request's in-flight place on its slot's session (FIFO,
//! bounded by the store), and the seats that cap the upstream sessions of the licence. A seat is
//! taken at once when one is free, else by evicting the least-recently-used idle session, else
//! after a bounded wait; a session with a request in flight or queued is never evicted.

use crate::clock::millis;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{now_ms, Identity, Pool, Retire};
use crate::config::Creation;
use crate::session::jar::Jar;
use crate::session::store::{
    InFlight, LeaseRefused, Leased, Release, SessionRecord, SessionState, SlotKey,
};
use crate::session::SessionError;

/// A request's hold on an upstream session: the in-flight place and the jar to send.
#[derive(Debug)]
pub struct Held {
    pub slot: SlotKey,
    pub id: u64,
    pub jar: Jar,
    pub in_flight: Option<InFlight>,
    /// The session was created (logged in) during this request: `Tollgate-Session: new`.
    pub new_session: bool,
    /// The upstream changed the jar during this request: it goes back with the release.
    pub jar_changed: bool,
}

/// What [`Pool::hold_at_once`] found.
#[derive(Debug)]
pub enum AtOnce {
    /// The place, on a session logged in already.
    Held(Held),
    /// The place, taken, on a session that still needs its login: [`Pool::hold_from`] goes on
    /// from it.
    Login(Leased),
    /// No place here and now: [`Pool::hold`].
    Wait,
}

// === impl Held ===

impl Held {
    /// Turns true if the store could not keep this lease (a shared store lost it during an
    /// outage and another request took the place).
    pub fn lost(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.in_flight.as_ref().and_then(InFlight::lost)
    }
}

// === impl Pool ===

impl Pool {
    /// Finds or creates the slot's session, waits for its in-flight place (FIFO, bounded), and
    /// makes sure it is logged in.
    pub async fn hold(self: &Arc<Self>, who: &Identity) -> Result<Held, SessionError> {
        let first = match self.hold_at_once(who) {
            AtOnce::Held(held) => return Ok(held),
            AtOnce::Login(leased) => Some(leased),
            AtOnce::Wait => None,
        };
        self.hold_from(who, first).await
    }

    /// [`Pool::hold`] without a future, when the store grants the place here and now on a
    /// session logged in already: most requests of a busy session route.
    pub fn hold_at_once(&self, who: &Identity) -> AtOnce {
        let Some(leased) = self.store.lease_at_once(&who.slot) else {
            return AtOnce::Wait;
        };
        self.sample_queue();
        // As `ensure_login` would find it: nothing to wait for.
        if leased.record.state != SessionState::Active && self.cfg.creation != Creation::Passive {
            return AtOnce::Login(leased);
        }
        AtOnce::Held(held(who, leased, false))
    }

    /// The rest of [`Pool::hold`] after [`Pool::hold_at_once`]: from the place `first` when it
    /// took one, else through the store's lease (which creates the session, or waits).
    pub async fn hold_from(
        self: &Arc<Self>,
        who: &Identity,
        mut first: Option<Leased>,
    ) -> Result<Held, SessionError> {
        let started = Instant::now();
        let cap = self.grant_cap(who.concurrent);
        // A session may vanish between lookup and lease (evicted, logged out, its login failed):
        // look again, a few times at most.
        for _ in 0..4 {
            if let Some(e) = self.failed_since(&who.slot, started) {
                // The login this request was waiting behind failed: it shares that answer
                // rather than trying again (never a login per queued request).
                return Err(e);
            }
            let leased = match first.take() {
                Some(l) => Ok(l),
                None => {
                    let template = SessionRecord {
                        retire_at_ms: who.retire_at_ms,
                        ..SessionRecord::new(self.next_id(), who.concurrent, now_ms())
                    };
                    let c = &self.cfg;
                    let (max, queue) = (c.max_inflight_per_session, c.max_queue_per_session);
                    let wait = c.max_queue_wait;
                    self.store
                        .lease(&who.slot, template, cap, max, queue, wait)
                        .await
                }
            };
            let leased = match leased {
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
            self.sample_queue();
            let Leased {
                record,
                in_flight,
                created,
            } = leased;
            match self.ensure_login(&who.slot, record).await {
                Ok((record, logged_in)) => {
                    let leased = Leased {
                        record,
                        in_flight,
                        created,
                    };
                    return Ok(held(who, leased, logged_in));
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
    pub async fn release(&self, lease: &mut Held, accepted_202: bool) {
        if let Some(rest) = give_back(lease, accepted_202) {
            self.store.release(rest.0, rest.1).await;
        }
        self.sample_queue();
    }

    /// [`Pool::release`] without waiting, when the store can give the place back here and
    /// now; else what is left to release, for [`Pool::release_rest`].
    pub fn release_at_once(
        &self,
        lease: &mut Held,
        accepted_202: bool,
    ) -> Option<(InFlight, Release)> {
        let (place, how) = give_back(lease, accepted_202)?;
        let rest = self.store.release_at_once(place, how);
        if rest.is_none() {
            self.sample_queue();
        }
        rest
    }

    /// The release [`Pool::release_at_once`] left, through the store's round trip.
    pub async fn release_rest(&self, (place, how): (InFlight, Release)) {
        self.store.release(place, how).await;
        self.sample_queue();
    }

    /// The most sessions one grant may hold: one in single mode (design §6.8.2).
    pub(super) fn grant_cap(&self, concurrent: bool) -> u32 {
        if concurrent {
            self.cfg.max_sessions_per_grant
        } else {
            1
        }
    }

    /// Takes a seat: at once if one is free, else by evicting the least-recently-used idle
    /// session, else by waiting (FIFO) up to `admission_wait`.
    pub(super) async fn admit(&self, holder: u64) -> Result<(), SessionError> {
        let start = Instant::now();
        let deadline = start + self.cfg.admission_wait;
        loop {
            // Registered before the attempt, so that a seat freed between the attempt and the
            // wait still wakes this waiter.
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

    pub(super) async fn give_back_seat(&self, holder: u64) {
        if let Err(e) = self.store.release_seat(holder).await {
            tracing::warn!(upstream = %self.upstream_id, error = %e, "seat release failed");
        }
        self.seat_freed.notify_one();
        self.sample_seats().await;
    }

    /// Evicts the least-recently-used evictable session (logging it out). False if none.
    pub(super) async fn evict_one(&self) -> bool {
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
}

/// What releasing `lease` gives back: its in-flight place, and the jar when the upstream
/// changed it. The jar goes by move: a released lease's jar is not read again, and a second
/// release finds no place and gives back nothing.
/// The hold of `who` on the place `leased`; `logged_in`: the session's login was this request's.
fn held(who: &Identity, leased: Leased, logged_in: bool) -> Held {
    Held {
        slot: who.slot.clone(),
        id: leased.record.id,
        jar: leased.record.jar,
        in_flight: Some(leased.in_flight),
        new_session: leased.created || logged_in,
        jar_changed: false,
    }
}

fn give_back(lease: &mut Held, accepted_202: bool) -> Option<(InFlight, Release)> {
    let place = lease.in_flight.take()?;
    let jar = std::mem::take(&mut lease.jar_changed).then(|| std::mem::take(&mut lease.jar));
    Some((
        place,
        Release {
            op: accepted_202,
            jar,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SessionMode;
    use crate::demo::legacy::LegacyOptions;
    use crate::session::pool::testing::{eventually, evicting, rig, rig_with};
    use http::HeaderMap;

    #[tokio::test]
    async fn a_logged_in_session_is_held_at_once_and_any_other_goes_the_long_way() {
        let r = rig(|_| {}).await;
        let who = r.who("a");
        assert!(
            matches!(r.pool.hold_at_once(&who), AtOnce::Wait),
            "no session yet: nothing is taken"
        );
        let mut held = r.pool.hold(&who).await.unwrap();
        assert!(
            matches!(r.pool.hold_at_once(&who), AtOnce::Wait),
            "the session's only place is held"
        );
        r.pool.release(&mut held, false).await;
        let AtOnce::Held(mut again) = r.pool.hold_at_once(&who) else {
            panic!("logged in, and its place free, but not held at once");
        };
        assert_eq!(again.id, held.id);
        assert!(!again.new_session);
        assert_eq!(again.jar, held.jar, "the session's jar");
        assert_eq!(r.fake.counters().logins_ok, 1);

        // The upstream ended the session: its place is had at once, and the login is the rest.
        r.pool.ended_upstream(&mut again).await.unwrap();
        r.pool.release(&mut again, false).await;
        let AtOnce::Login(first) = r.pool.hold_at_once(&who) else {
            panic!("a session to log in again is not held at once");
        };
        assert_eq!(
            r.record(&who.slot).await.unwrap().in_flight,
            1,
            "with its place"
        );
        let relogged = r.pool.hold_from(&who, Some(first)).await.unwrap();
        assert!(relogged.new_session);
        assert_eq!(r.fake.counters().logins_ok, 2);
        assert_eq!(
            r.record(&who.slot).await.unwrap().in_flight,
            1,
            "the place taken at once, not a second one"
        );
    }

    /// No eviction (sessions are never idle long enough) and no wait for a seat.
    fn no_eviction_no_wait(c: &mut crate::config::SessionConfig) {
        c.admission_wait = Duration::ZERO;
        c.min_idle_before_evict = Duration::from_secs(3600);
    }

    #[tokio::test]
    async fn seats_never_exceed_the_cap_under_concurrent_demand() {
        let opts = LegacyOptions {
            max_api_users: 10,
            ..LegacyOptions::default()
        };
        let r = rig_with(opts, no_eviction_no_wait).await;
        let whos = (0..6).map(|i| r.who(&format!("g{i}"))).collect();
        let answers = r.hold_all(whos).await;
        let held: Vec<&Held> = answers.iter().filter_map(|a| a.as_ref().ok()).collect();
        assert_eq!(held.len(), 2, "the cap is 2");
        for a in &answers {
            if let Err(e) = a {
                assert_eq!(*e, SessionError::CapacityExhausted);
            }
        }
        let c = r.fake.counters();
        assert_eq!((c.logins_ok, c.peak_seats), (2, 2), "{c:?}");
        assert_eq!(r.seats().await, 2);
        assert_eq!(
            r.records().await.len(),
            2,
            "refused sessions leave no record"
        );
    }

    #[tokio::test]
    async fn eviction_takes_the_idle_session_and_never_a_busy_one() {
        let r = rig(evicting(1)).await;
        let a = r.idle_session("a").await;
        let b = r.pool.hold(&r.who("b")).await.unwrap();
        assert!(r.record(&a.slot).await.is_none(), "the idle session went");
        assert_eq!(r.fake.counters().logouts, 1, "and was logged out");
        assert_eq!(
            r.metric(r#"tollgate_upstream_evictions_total{reason="lru",upstream="erp"}"#),
            1.0
        );
        // b is in use: c finds nothing to evict.
        assert_eq!(
            r.pool.hold(&r.who("c")).await.unwrap_err(),
            SessionError::CapacityExhausted
        );
        let c = r.fake.counters();
        assert_eq!((c.logouts, c.logins_ok, c.peak_seats), (1, 2, 1), "{c:?}");
        assert!(r.record(&b.slot).await.is_some());
        assert_eq!(r.seats().await, 1);
    }

    #[tokio::test]
    async fn a_waiting_admission_takes_the_seat_given_back() {
        let r = rig(|c| {
            c.max_upstream_sessions = 1;
            c.admission_wait = Duration::from_secs(60);
            c.min_idle_before_evict = Duration::from_secs(3600);
        })
        .await;
        let mut a = r.pool.hold(&r.who("a")).await.unwrap();
        let pool = r.pool.clone();
        let who = r.who("b");
        let b = tokio::spawn(async move { pool.hold(&who).await });
        eventually("b's session waits for a seat", || async {
            r.records().await.len() == 2
        })
        .await;
        r.pool.release(&mut a, false).await;
        assert_eq!(r.pool.logout(&a.slot.grant, None).await, (1, 0));
        let b = b.await.unwrap().unwrap();
        assert!(b.new_session);
        let c = r.fake.counters();
        assert_eq!((c.logins_ok, c.logouts, c.peak_seats), (2, 1, 1), "{c:?}");
    }

    #[tokio::test]
    async fn a_session_removed_while_a_request_waited_is_looked_up_again() {
        let r = rig(|_| {}).await;
        let first = r.pool.hold(&r.who("a")).await.unwrap();
        let second = r.queued("a").await;
        // The session goes while the second request waits for it (as an admin logout of a
        // session whose holder went astray would).
        let gone = r.pool.store.remove(&first.slot, first.id).await.unwrap();
        r.pool
            .retire_removed(gone.unwrap(), Retire::Logout, true)
            .await;
        let second = second.await.unwrap().unwrap();
        assert_ne!(second.id, first.id, "a new session in the same slot");
        assert!(second.new_session);
        let c = r.fake.counters();
        assert_eq!((c.logins_ok, c.logouts), (2, 1), "{c:?}");
        assert_eq!(r.seats().await, 1);
    }

    #[tokio::test]
    async fn release_gives_the_place_back_with_a_changed_jar_only() {
        let r = rig(|_| {}).await;
        let mut held = r.pool.hold(&r.who("a")).await.unwrap();
        assert_eq!(r.record(&held.slot).await.unwrap().in_flight, 1);
        let cookie = |name: &str| format!("{name}=1; path=/");
        let add = |held: &mut Held, name: &str| {
            held.jar.apply_all(
                std::iter::once(cookie(name).as_str()),
                std::time::SystemTime::now(),
                50,
                8192,
            );
        };
        add(&mut held, "kept");
        held.jar_changed = true;
        r.pool.release(&mut held, true).await;
        assert!(held.in_flight.is_none());
        r.pool.release(&mut held, false).await; // a second release changes nothing
        let rec = r.record(&held.slot).await.unwrap();
        assert_eq!(rec.in_flight, 0);
        assert!(rec.jar.has("kept"), "the changed jar went back");
        assert!(rec.last_op_ms.is_some(), "a 202 was recorded");

        let mut again = r.pool.hold(&r.who("a")).await.unwrap();
        assert!(again.jar.has("kept") && !again.new_session);
        add(&mut again, "dropped");
        r.pool.release(&mut again, false).await;
        assert!(!r.record(&again.slot).await.unwrap().jar.has("dropped"));
    }

    #[tokio::test]
    async fn the_queue_and_the_grants_session_cap_refuse_at_once() {
        let r = rig(|c| {
            c.max_queue_per_session = 0;
            c.mode = SessionMode::Concurrent;
            c.max_sessions_per_grant = 1;
        })
        .await;
        let first = r.who_with("a", "api", &HeaderMap::new());
        let _held = r.pool.hold(&first).await.unwrap();
        assert_eq!(
            r.pool.hold(&first).await.unwrap_err(),
            SessionError::GrantBusy
        );
        let another_handle = r.who_with("a", "api", &HeaderMap::new());
        assert!(matches!(
            r.pool.hold(&another_handle).await.unwrap_err(),
            SessionError::GrantSessionLimit { retry_after } if retry_after >= 1
        ));
        assert_eq!(r.fake.counters().logins_ok, 1);
    }
}
