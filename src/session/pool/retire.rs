//! The end of sessions (design §6.9): logout of a grant's sessions (admin, client, reload), the
//! periodic sweep of idle, over-age and token-expired ones, the repair of sessions a shared
//! store lost, graceful shutdown and leaving the fleet, and the sessions the upstream ended by
//! itself (no logout call then: its seat is already free upstream).
//!
//! A logout never meets a request on its session: the store removes a record only once nothing
//! holds or waits for it, and a seat goes back only once its session is logged out (or known to
//! be gone upstream), so the seat count never drops below what the upstream counts.

use crate::clock::millis;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{lock, now_ms, Held, Pool};
use crate::session::grant::GrantKey;
use crate::session::jar::Jar;
use crate::session::login;
use crate::session::store::{Expiry, Removal, Restored, SessionRecord, SessionState, SlotKey};
use crate::session::SessionError;

/// Logouts running at once during shutdown.
const SHUTDOWN_PARALLELISM: usize = 16;
/// How long a logout waits for the requests on its session to finish.
const DRAIN_BOUND: Duration = Duration::from_secs(30);

/// Why a session is retired (the `reason` label of evictions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retire {
    /// Evicted to make room under the seat cap.
    Lru,
    Idle,
    MaxAge,
    /// `token` grant keys: the session's access token expired.
    TokenExpired,
    /// The upstream said the session had ended (expiry, failed replay).
    Expired,
    /// An admin or client logout.
    Logout,
    Shutdown,
}

/// What [`Pool::drain_and_retire`] came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drained {
    Retired,
    /// Still in use when the wait ran out: left alone.
    Busy,
    Gone,
}

// === impl Retire ===

impl Retire {
    pub fn as_str(self) -> &'static str {
        match self {
            Retire::Lru => "lru",
            Retire::Idle => "idle",
            Retire::MaxAge => "max_age",
            Retire::TokenExpired => "token_expired",
            Retire::Expired => "expired",
            Retire::Logout => "logout",
            Retire::Shutdown => "shutdown",
        }
    }
}

// === impl Pool ===

impl Pool {
    /// Logs out the sessions of `grant` (the one of `slot`, or every slot of the grant), each
    /// once nothing holds or waits for it. Idempotent. Returns how many were logged out, and
    /// how many were still busy when the wait ran out (they stay).
    pub async fn logout(&self, grant: &GrantKey, slot: Option<&SlotKey>) -> (usize, usize) {
        let Ok(all) = self.store.list().await else {
            return (0, 0);
        };
        let deadline = Instant::now() + DRAIN_BOUND;
        let (mut done, mut busy) = (0, 0);
        for (key, record) in all {
            if key.grant != *grant || slot.is_some_and(|s| *s != key) {
                continue;
            }
            match self
                .drain_and_retire(&key, record.id, Retire::Logout, deadline)
                .await
            {
                Drained::Retired => done += 1,
                Drained::Busy => busy += 1,
                Drained::Gone => {}
            }
        }
        (done, busy)
    }

    /// Waits (until `deadline`) for nothing to hold or wait for the session, then removes it
    /// and logs it out. The check and the removal are one atomic step of the store, so a
    /// logout never meets a request on its session.
    async fn drain_and_retire(
        &self,
        slot: &SlotKey,
        id: u64,
        reason: Retire,
        deadline: Instant,
    ) -> Drained {
        loop {
            match self.store.remove_unused(slot, id).await {
                Ok(Removal::Removed(record)) => {
                    self.retire_removed(record, reason, true).await;
                    return Drained::Retired;
                }
                Ok(Removal::Gone) => return Drained::Gone,
                Ok(Removal::Busy) | Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Ok(Removal::Busy) | Err(_) => {
                    tracing::warn!(upstream = %self.upstream_id, session = id, reason = reason.as_str(), "session still in use: not logged out (the idle sweep ends it later)");
                    return Drained::Busy;
                }
            }
        }
    }

    /// Finishes a session already removed from the store: logs it out (with two retries, after
    /// 1 s and 4 s) when it holds a seat and `call_logout`, then gives the seat back. A record
    /// removed while its login runs is left to that login, which owns the seat until then and
    /// logs the new session out when it finds the record gone.
    pub(super) async fn retire_removed(
        &self,
        record: SessionRecord,
        reason: Retire,
        call_logout: bool,
    ) {
        self.metrics
            .upstream_eviction(&self.upstream_id, reason.as_str());
        if record.state == SessionState::LoggingIn {
            self.sample_sessions().await;
            return;
        }
        if record.seated {
            if call_logout && record.state == SessionState::Active && !record.jar.is_empty() {
                let ok = self.logout_jar(&record.jar, reason).await;
                tracing::info!(upstream = %self.upstream_id, session = record.id, reason = reason.as_str(), ok, correlation = record.jar.correlation("ASP.NET_SessionId").as_deref().unwrap_or("-"), "upstream logout");
            }
            self.give_back_seat(record.id).await;
        }
        self.sample_sessions().await;
    }

    /// The logout call for a jar, with two retries (after 1 s and 4 s; none at shutdown).
    pub(super) async fn logout_jar(&self, jar: &Jar, reason: Retire) -> bool {
        let mut ok = login::logout(&self.upstream, &self.cfg, jar).await;
        for pause in [Duration::from_secs(1), Duration::from_secs(4)] {
            if ok || reason == Retire::Shutdown {
                break;
            }
            tokio::time::sleep(pause).await;
            ok = login::logout(&self.upstream, &self.cfg, jar).await;
        }
        self.metrics
            .upstream_logout(&self.upstream_id, if ok { "ok" } else { "failed" });
        ok
    }

    /// Retires idle and over-age sessions (and token-expired ones); run periodically.
    pub async fn sweep(&self) {
        let due = self
            .store
            .take_expired(
                now_ms(),
                millis(self.cfg.idle_ttl),
                millis(self.cfg.max_session_age),
            )
            .await;
        match due {
            Ok(list) => {
                for (_, record, why) in list {
                    let reason = match why {
                        Expiry::Idle => Retire::Idle,
                        Expiry::Age => Retire::MaxAge,
                        Expiry::TokenExpired => Retire::TokenExpired,
                    };
                    self.retire_removed(record, reason, true).await;
                }
            }
            Err(e) => {
                tracing::warn!(upstream = %self.upstream_id, error = %e, "session sweep failed")
            }
        }
    }

    /// The store's upkeep: a crashed replica's unfinished logins give their seats back, and
    /// sessions the store lost (it came back empty, or failed over to a replica that missed
    /// them) are repaired: registered again within the cap, or logged out when there is no
    /// room, so that no upstream session holds a seat the fleet does not count.
    pub async fn upkeep(&self) {
        let m = match self.store.maintain().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(upstream = %self.upstream_id, error = %e, "session store upkeep failed");
                return;
            }
        };
        for record in m.abandoned {
            self.metrics
                .upstream_eviction(&self.upstream_id, Retire::Expired.as_str());
            if record.seated {
                self.give_back_seat(record.id).await;
            }
        }
        let waited = std::mem::take(&mut *lock(&self.lost_in_use));
        let event = m.reset || !m.lost.is_empty();
        if !event && waited.is_empty() {
            return;
        }
        if event {
            self.metrics.store_reset(&self.upstream_id);
        }
        let (mut registered, mut logged_out, mut in_use) = (0, 0, Vec::new());
        for (slot, record) in m.lost.into_iter().chain(waited) {
            if !record.seated || record.state != SessionState::Active || record.jar.is_empty() {
                continue;
            }
            let cap = self.grant_cap(record.concurrent);
            let restored = self
                .store
                .restore(&slot, record.clone(), cap, self.cfg.max_upstream_sessions)
                .await;
            match restored {
                Ok(Restored::Registered) => registered += 1,
                // A request here still uses it (its lease began before the loss): a logout now
                // would meet that request on the upstream session.
                Ok(Restored::InUse) => in_use.push((slot, record)),
                Ok(Restored::NoRoom) | Err(_) => {
                    self.logout_jar(&record.jar, Retire::Expired).await;
                    logged_out += 1;
                }
            }
        }
        let waiting = in_use.len();
        lock(&self.lost_in_use).extend(in_use);
        if event {
            tracing::warn!(upstream = %self.upstream_id, reset = m.reset, registered, logged_out, waiting, "the session store lost sessions this replica knew (tollgate_store_resets_total): registered them again within the cap, logged out those without room (those a request here still uses once it ends)");
        } else if logged_out + registered > 0 {
            tracing::info!(upstream = %self.upstream_id, registered, logged_out, waiting, "lost sessions a request here was still using: registered again or logged out now that it ended");
        }
        self.sample_sessions().await;
    }

    /// Logs out every session, in parallel, within `bound`: first the logins in progress finish
    /// (their new sessions are logged out too), then each session once nothing uses it.
    pub async fn shutdown(self: &Arc<Self>, bound: Duration) {
        let deadline = Instant::now() + bound;
        self.wait_for_logins(deadline).await;
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left, self.store.settle()).await;
        self.log_out_lost_in_use().await;
        let Ok(all) = self.store.list().await else {
            return;
        };
        // Bounded parallelism: a large table must not open hundreds of connections at once.
        let parallel = Arc::new(tokio::sync::Semaphore::new(SHUTDOWN_PARALLELISM));
        let mut tasks = tokio::task::JoinSet::new();
        for (slot, record) in all {
            let me = self.clone();
            let parallel = parallel.clone();
            tasks.spawn(async move {
                let _permit = parallel.acquire_owned().await;
                me.drain_and_retire(&slot, record.id, Retire::Shutdown, deadline)
                    .await;
            });
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let _ =
            tokio::time::timeout(left, async { while tasks.join_next().await.is_some() {} }).await;
    }

    /// Leaves the sessions to the fleet (this replica stops, others go on): waits for this
    /// replica's logins in progress to finish, so that they record their sessions (bounded by
    /// `bound`), then stops the background work. Nothing is logged out.
    pub async fn leave(&self, bound: Duration) {
        let deadline = Instant::now() + bound;
        self.wait_for_logins(deadline).await;
        // The places kept for this replica's next requests go back to the fleet now.
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left, self.store.settle()).await;
        self.log_out_lost_in_use().await;
        self.stop();
    }

    /// Logs out the lost sessions without room that waited for a request of this replica
    /// ([`Pool::upkeep`]): no other replica knows them, so they would otherwise hold their
    /// upstream seats until the upstream's own idle timeout. The requests are over by now (the
    /// server stops before its pools).
    async fn log_out_lost_in_use(&self) {
        let waited = std::mem::take(&mut *lock(&self.lost_in_use));
        for (_, record) in waited {
            self.logout_jar(&record.jar, Retire::Shutdown).await;
        }
    }

    /// Waits until no login of this pool is running (or `deadline`).
    async fn wait_for_logins(&self, deadline: Instant) {
        loop {
            let done = self.login_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if lock(&self.flights).is_empty() {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), done).await;
        }
    }

    /// True while a login of this pool is running (tests and shutdown wait on it).
    pub fn logins_running(&self) -> usize {
        lock(&self.flights).len()
    }

    /// The upstream ended the session (it said so, or deleted a marker cookie): the record
    /// needs a login again, and its seat is given back without a logout call (the upstream
    /// already freed it). Only the caller whose edit turned the record from active gives the
    /// seat back.
    pub async fn ended_upstream(&self, lease: &mut Held) -> Result<(), SessionError> {
        lease.jar = Jar::default();
        lease.jar_changed = false;
        let flipped = Arc::new(AtomicBool::new(false));
        let seen = flipped.clone();
        self.store
            .update(
                &lease.slot,
                lease.id,
                Box::new(move |r| {
                    let active = r.state == SessionState::Active;
                    seen.store(active && r.seated, Ordering::SeqCst);
                    if active {
                        r.state = SessionState::NeedsLogin;
                        r.jar = Jar::default();
                        r.seated = false;
                    }
                }),
            )
            .await?;
        if flipped.load(Ordering::SeqCst) {
            self.give_back_seat(lease.id).await;
        }
        Ok(())
    }

    /// After a replay that was still unauthenticated: no re-login for this grant for a while,
    /// and the session is dropped (no logout: the upstream says it is not signed in).
    pub async fn give_up(&self, lease: &mut Held) {
        self.relogin_blocked.block(
            &lease.slot.grant,
            Instant::now() + self.cfg.relogin_min_interval,
        );
        self.note_failure(&lease.slot, &SessionError::AuthFailed);
        self.drop_session(lease).await;
    }

    /// Passive mode: the upstream ended the session; forget it (no re-login is possible).
    pub async fn forget(&self, lease: &mut Held) {
        self.drop_session(lease).await;
    }

    /// Removes the lease's session (no logout: the upstream says it is not signed in), then
    /// gives the place back. In this order, a request queued behind the lease learns that the
    /// session is gone instead of taking the place on a session the upstream already refused.
    async fn drop_session(&self, lease: &mut Held) {
        let removed = self.store.remove(&lease.slot, lease.id).await;
        self.release(lease, false).await;
        if let Ok(Some(record)) = removed {
            self.retire_removed(record, Retire::Expired, false).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SessionMode;
    use crate::demo::legacy::LegacyOptions;
    use crate::session::pool::testing::{rig, rig_with};

    fn three_seats() -> LegacyOptions {
        LegacyOptions {
            max_api_users: 3,
            ..LegacyOptions::default()
        }
    }

    #[tokio::test]
    async fn logout_signs_out_once_and_gives_the_seat_back() {
        let r = rig(|_| {}).await;
        let a = r.idle_session("a").await;
        assert_eq!(r.pool.logout(&a.slot.grant, None).await, (1, 0));
        assert_eq!(
            r.pool.logout(&a.slot.grant, None).await,
            (0, 0),
            "idempotent"
        );
        let c = r.fake.counters();
        assert_eq!((c.logouts, c.logouts_411), (1, 0), "{c:?}");
        assert!(r.fake.live_sessions().is_empty());
        assert_eq!(r.seats().await, 0);
        assert!(r.records().await.is_empty());
    }

    #[tokio::test]
    async fn a_logout_waits_for_the_request_on_its_session() {
        let r = rig(|_| {}).await;
        let mut held = r.pool.hold(&r.who("a")).await.unwrap();
        // With no time left to wait, a busy session is left alone.
        let now = Instant::now();
        let drained = r
            .pool
            .drain_and_retire(&held.slot, held.id, Retire::Logout, now)
            .await;
        assert_eq!(drained, Drained::Busy);
        assert!(r.record(&held.slot).await.is_some());
        // With time, the logout waits until the request ends.
        let pool = r.pool.clone();
        let grant = held.slot.grant.clone();
        let logout = tokio::spawn(async move { pool.logout(&grant, None).await });
        tokio::task::yield_now().await;
        assert_eq!(r.fake.counters().logouts, 0, "never under a request");
        r.pool.release(&mut held, false).await;
        assert_eq!(logout.await.unwrap(), (1, 0));
        assert_eq!(r.fake.counters().logouts, 1);
        assert_eq!(r.seats().await, 0);
    }

    #[tokio::test]
    async fn a_logout_touches_only_its_slot_or_its_grant() {
        let r = rig_with(three_seats(), |c| {
            c.mode = SessionMode::Concurrent;
            c.max_upstream_sessions = 3;
        })
        .await;
        let a1 = r.idle_session("a").await;
        let a2 = r.idle_session("a").await;
        let b = r.idle_session("b").await;
        assert_ne!(a1.slot, a2.slot);
        assert_eq!(r.pool.logout(&a1.slot.grant, Some(&a1.slot)).await, (1, 0));
        assert!(r.record(&a2.slot).await.is_some());
        assert_eq!(r.pool.logout(&a1.slot.grant, None).await, (1, 0));
        let left: Vec<SlotKey> = r.records().await.into_iter().map(|(k, _)| k).collect();
        assert_eq!(left, vec![b.slot]);
        let c = r.fake.counters();
        assert_eq!((c.logouts, c.seats_in_use), (2, 1), "{c:?}");
    }

    #[tokio::test]
    async fn the_sweep_retires_idle_over_age_and_token_expired_sessions_only() {
        type Tweak = fn(&mut crate::config::SessionConfig);
        let idle: Tweak = |c| c.idle_ttl = Duration::ZERO;
        let age: Tweak = |c| c.max_session_age = Duration::ZERO;
        let token: Tweak = |_| {};
        for (tweak, retire_at_ms, reason) in [
            (idle, None, "idle"),
            (age, None, "max_age"),
            (token, Some(1), "token_expired"),
        ] {
            let r = rig(tweak).await;
            let mut who = r.who("a");
            who.retire_at_ms = retire_at_ms;
            let mut due = r.pool.hold(&who).await.unwrap();
            r.pool.release(&mut due, false).await;
            let mut busy_who = r.who("b");
            busy_who.retire_at_ms = retire_at_ms;
            let busy = r.pool.hold(&busy_who).await.unwrap();
            r.pool.sweep().await;
            assert!(r.record(&due.slot).await.is_none(), "{reason}");
            assert!(r.record(&busy.slot).await.is_some(), "{reason}: in use");
            assert_eq!(r.fake.counters().logouts, 1, "{reason}");
            assert_eq!(r.seats().await, 1, "{reason}");
            let series =
                format!(r#"tollgate_upstream_evictions_total{{reason="{reason}",upstream="erp"}}"#);
            assert_eq!(r.metric(&series), 1.0, "{reason}");
        }
    }

    #[tokio::test]
    async fn a_session_the_upstream_ended_gives_its_seat_back_without_a_logout() {
        let r = rig(|_| {}).await;
        let mut held = r.pool.hold(&r.who("a")).await.unwrap();
        r.pool.ended_upstream(&mut held).await.unwrap();
        assert!(held.jar.is_empty() && !held.jar_changed);
        let rec = r.record(&held.slot).await.unwrap();
        assert_eq!(rec.state, SessionState::NeedsLogin);
        assert!(!rec.seated && rec.jar.is_empty());
        assert_eq!(r.seats().await, 0);
        // Told twice (two requests saw the end), nothing more happens.
        r.pool.ended_upstream(&mut held).await.unwrap();
        assert_eq!(r.seats().await, 0);
        assert_eq!(r.fake.counters().logouts, 0);
    }

    #[tokio::test]
    async fn giving_up_or_forgetting_drops_the_session_without_a_logout() {
        let r = rig(|_| {}).await;
        let mut a = r.pool.hold(&r.who("a")).await.unwrap();
        let mut b = r.pool.hold(&r.who("b")).await.unwrap();
        r.pool.give_up(&mut a).await;
        r.pool.forget(&mut b).await;
        assert!(a.in_flight.is_none() && b.in_flight.is_none());
        assert!(r.records().await.is_empty());
        assert_eq!(r.seats().await, 0);
        assert_eq!(r.fake.counters().logouts, 0);
        assert_eq!(
            r.metric(r#"tollgate_upstream_evictions_total{reason="expired",upstream="erp"}"#),
            2.0
        );
        // Forgetting blocks nothing: b signs in again at its next request.
        r.fake.expire(None);
        assert!(r.pool.hold(&r.who("b")).await.is_ok());
    }

    #[tokio::test]
    async fn shutdown_signs_out_every_session_once_its_request_ends() {
        let r = rig_with(three_seats(), |c| c.max_upstream_sessions = 3).await;
        r.idle_session("a").await;
        r.idle_session("b").await;
        let mut busy = r.pool.hold(&r.who("c")).await.unwrap();
        let pool = r.pool.clone();
        let shutdown = tokio::spawn(async move { pool.shutdown(Duration::from_secs(60)).await });
        tokio::task::yield_now().await;
        r.pool.release(&mut busy, false).await;
        shutdown.await.unwrap();
        let c = r.fake.counters();
        assert_eq!((c.logouts, c.seats_in_use), (3, 0), "{c:?}");
        assert!(r.records().await.is_empty());
        assert_eq!(r.seats().await, 0);
    }

    #[tokio::test]
    async fn leaving_signs_nothing_out_and_stops_the_background_work() {
        let r = rig(|_| {}).await;
        r.pool.start();
        r.idle_session("a").await;
        r.pool.leave(Duration::from_secs(60)).await;
        assert!(lock(&r.pool.tasks).is_empty());
        assert_eq!(r.fake.counters().logouts, 0);
        assert_eq!(
            r.records().await.len(),
            1,
            "the session stays for the fleet"
        );
    }

    #[test]
    fn retire_reasons_are_the_metric_labels() {
        let all = [
            (Retire::Lru, "lru"),
            (Retire::Idle, "idle"),
            (Retire::MaxAge, "max_age"),
            (Retire::TokenExpired, "token_expired"),
            (Retire::Expired, "expired"),
            (Retire::Logout, "logout"),
            (Retire::Shutdown, "shutdown"),
        ];
        for (r, label) in all {
            assert_eq!(r.as_str(), label);
        }
    }
}
