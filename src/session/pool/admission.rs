//! Admission (design §6.3, §6.8): a request's in-flight place on its slot's session (FIFO,
//! bounded by the store), and the seats that cap the upstream sessions of the licence. A seat is
//! taken at once when one is free, else by evicting the least-recently-used idle session, else
//! after a bounded wait; a session with a request in flight or queued is never evicted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{now_ms, Identity, Pool, Retire};
use crate::session::jar::Jar;
use crate::session::store::{
    millis, InFlight, LeaseRefused, Leased, Release, SessionRecord, SlotKey,
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
            let template = SessionRecord {
                retire_at_ms: who.retire_at_ms,
                ..SessionRecord::new(self.next_id(), who.concurrent, now_ms())
            };
            let leased = match self
                .store
                .lease(
                    &who.slot,
                    template,
                    cap,
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
                Err(LeaseRefused::GrantFull { earliest_idle_ms }) => {
                    let expires = earliest_idle_ms + millis(self.cfg.idle_ttl);
                    let retry_after = expires.saturating_sub(now_ms()).div_ceil(1000).max(1);
                    return Err(SessionError::GrantSessionLimit { retry_after });
                }
                Err(LeaseRefused::Gone) => continue,
            };
            self.sample_queue().await;
            let Leased {
                record,
                in_flight,
                created,
            } = leased;
            match self.ensure_login(&who.slot, record).await {
                Ok((rec, logged_in)) => {
                    return Ok(Held {
                        slot: who.slot.clone(),
                        id: rec.id,
                        jar: rec.jar,
                        in_flight: Some(in_flight),
                        new_session: created || logged_in,
                        jar_changed: false,
                    })
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
        if let Some(l) = lease.in_flight.take() {
            let jar = lease.jar_changed.then(|| lease.jar.clone());
            self.store
                .release(
                    l,
                    Release {
                        op: accepted_202,
                        jar,
                    },
                )
                .await;
        }
        self.sample_queue().await;
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
