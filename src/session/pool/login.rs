//! Logging a session in (design §6.5, §6.7.2–6.7.3): one login per session however many
//! requests need it (single-flight), on a seat taken for it, its answer shared with every
//! request that waited for it, a failure remembered for the requests queued behind it, and the
//! re-login of a session the upstream ended, unless its grant gave up a moment ago.
//!
//! The credential gate that every login call passes is in `gate`; the seat in `admission`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{lock, now_ms, Held, Pool, Retire};
use crate::config::Creation;
use crate::session::grant::GrantKey;
use crate::session::jar::Jar;
use crate::session::login::LoginOutcome;
use crate::session::store::{SessionRecord, SessionState, SlotKey};
use crate::session::SessionError;

/// How long a slot's failed login is remembered for the requests that waited behind it.
const FAILURE_MEMORY: Duration = Duration::from_secs(60);

/// The login of one session in progress: every request needing it waits for this one answer.
pub(super) type Flight =
    tokio::sync::watch::Receiver<Option<Result<(SessionRecord, bool), SessionError>>>;

/// Grants blocked until a moment. Entries that ran out are pruned whenever one is added, so
/// the map holds only the grants blocked now.
#[derive(Debug, Default)]
pub(super) struct Blocked(Mutex<HashMap<GrantKey, Instant>>);

// === impl Blocked ===

impl Blocked {
    pub(super) fn block(&self, grant: &GrantKey, until: Instant) {
        let mut m = lock(&self.0);
        let now = Instant::now();
        m.retain(|_, u| *u > now);
        m.insert(grant.clone(), until);
    }

    fn is_blocked(&self, grant: &GrantKey) -> bool {
        lock(&self.0)
            .get(grant)
            .is_some_and(|until| Instant::now() < *until)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.0).len()
    }
}

// === impl Pool ===

impl Pool {
    /// Makes sure session `id` of the slot is logged in. Returns the record and whether a login
    /// ran for it during this call.
    ///
    /// Logins are single-flight per slot: the first request that needs one starts it in its own
    /// task (so that it finishes, and accounts for its seat, even if that request goes away), and
    /// every request needing the same session waits for that one login and shares its answer.
    pub(super) async fn ensure_login(
        self: &Arc<Self>,
        slot: &SlotKey,
        record: SessionRecord,
    ) -> Result<(SessionRecord, bool), SessionError> {
        if record.state == SessionState::Active || self.cfg.creation == Creation::Passive {
            return Ok((record, false));
        }
        let id = record.id;
        let key = (slot.clone(), id);
        let mut rx = {
            let mut flights = lock(&self.flights);
            if let Some(rx) = flights.get(&key) {
                rx.clone()
            } else {
                let (tx, rx) = tokio::sync::watch::channel(None);
                flights.insert(key.clone(), rx.clone());
                let me = self.clone();
                // The login keeps the trace of the request that started it.
                tokio::spawn(crate::telemetry::carry(async move {
                    let result = me.login_if_needed(&key.0, key.1).await;
                    lock(&me.flights).remove(&key);
                    let _ = tx.send(Some(result));
                    me.login_done.notify_waiters();
                }));
                rx
            }
        };
        let answer = rx
            .wait_for(Option::is_some)
            .await
            .map(|r| r.clone())
            .ok()
            .flatten();
        answer.unwrap_or(Err(SessionError::LoginError))
    }

    async fn login_if_needed(
        &self,
        slot: &SlotKey,
        id: u64,
    ) -> Result<(SessionRecord, bool), SessionError> {
        // Within this process the flight makes logins single-flight; across replicas the store's
        // login lock does, and a replica that does not get it waits for the other's login.
        let deadline = Instant::now() + self.cfg.login_timeout + Duration::from_secs(5);
        loop {
            let record = match self.store.get(slot).await? {
                Some(r) if r.id == id => r,
                _ => return Err(SessionError::Gone),
            };
            if record.state == SessionState::Active {
                return Ok((record, false));
            }
            if self.cfg.creation == Creation::Passive {
                // The client logs in itself; until it does, requests go without a session.
                return Ok((record, false));
            }
            if self.store.lock_login(slot, id).await? {
                // Another replica may have finished between the read and the lock.
                match self.store.get(slot).await? {
                    Some(r) if r.id == id && r.state == SessionState::Active => {
                        self.store.unlock_login(slot, id).await?;
                        return Ok((r, false));
                    }
                    Some(r) if r.id == id => break,
                    _ => {
                        self.store.unlock_login(slot, id).await?;
                        return Err(SessionError::Gone);
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(SessionError::LoginError);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        // The record turns Active before the login lock is released: a record that is
        // "logging in" without a lock is taken for a crashed replica's by the store's upkeep.
        let result = self.login_with_seat(slot, id).await;
        if let Err(e) = self.store.unlock_login(slot, id).await {
            tracing::warn!(upstream = %self.upstream_id, error = %e, "login lock release failed; it expires with its lease");
        }
        match result {
            Ok(record) => {
                self.sample_sessions().await;
                Ok((record, true))
            }
            Err(e) => {
                self.note_failure(slot, &e);
                self.sample_sessions().await;
                Err(e)
            }
        }
    }

    /// Takes a seat (evicting if needed), logs in, and classifies the outcome. The seat belongs
    /// to this login until the record holds it; every way out before that gives it back. A
    /// failed login deletes its record: a session that never logged in holds no seat, must not
    /// count towards the grant's cap, and is nothing to evict. An "API Login Limit" answer leads
    /// to one eviction and one retry.
    async fn login_with_seat(
        &self,
        slot: &SlotKey,
        id: u64,
    ) -> Result<SessionRecord, SessionError> {
        let Some(creds) = self.cfg.credentials.clone() else {
            return self.fail(slot, id, SessionError::LoginError).await;
        };
        // The grant gave up on its upstream session a moment ago (design §6.7.3): a fresh
        // session would be refused the same way.
        if let Err(e) = self.check_relogin_block(&slot.grant) {
            return self.fail(slot, id, e).await;
        }
        if let Err(e) = self.check_circuit().await {
            return self.fail(slot, id, e).await;
        }
        let mut retried = false;
        loop {
            if let Err(e) = self.admit(id).await {
                return self.fail(slot, id, e).await;
            }
            if let Err(e) = self.mark(slot, id, SessionState::LoggingIn, true).await {
                // Removed while waiting for the seat (cancelled, evicted, logged out).
                self.give_back_seat(id).await;
                return Err(e);
            }
            let outcome = match self.gated_login(&creds).await {
                Ok(o) => o,
                Err(e) => {
                    // The cooldown opened (or the store failed) while this login waited.
                    let failed = self.fail(slot, id, e).await;
                    self.give_back_seat(id).await;
                    return failed;
                }
            };
            match outcome {
                LoginOutcome::Ok(jar) => return self.seat_session(slot, id, jar).await,
                LoginOutcome::LoginLimit if !retried => {
                    retried = true;
                    self.give_back_seat(id).await;
                    self.mark(slot, id, SessionState::NeedsLogin, false).await?;
                    tracing::warn!(upstream = %self.upstream_id, "upstream API login limit reached below tollgate's own cap; evicting one idle session and retrying once");
                    if !self.evict_one().await {
                        return self.fail(slot, id, SessionError::SeatsExhausted).await;
                    }
                }
                other => {
                    let e = match other {
                        LoginOutcome::LoginLimit => SessionError::SeatsExhausted,
                        LoginOutcome::BadCredentials => SessionError::LoginFailed {
                            retry_after: self.cfg.login_failure_cooldown.as_secs().max(1),
                        },
                        LoginOutcome::Throttled { retry_after } => {
                            SessionError::Throttled { retry_after }
                        }
                        LoginOutcome::Error(_) | LoginOutcome::Ok(_) => SessionError::LoginError,
                    };
                    let failed = self.fail(slot, id, e).await;
                    self.give_back_seat(id).await;
                    return failed;
                }
            }
        }
    }

    /// A successful login's jar goes into its record, which now holds the seat. If the record
    /// was removed while the login ran (the request cancelled, an eviction, a logout, a reload
    /// or shutdown), the new upstream session belongs to nobody: it is logged out at once.
    async fn seat_session(
        &self,
        slot: &SlotKey,
        id: u64,
        jar: Jar,
    ) -> Result<SessionRecord, SessionError> {
        tracing::info!(upstream = %self.upstream_id, session = id, cookies = ?jar.names(), correlation = jar.correlation("ASP.NET_SessionId").as_deref().unwrap_or("-"), "upstream login");
        let kept = jar.clone();
        let created = now_ms();
        let stored = self
            .store
            .update(
                slot,
                id,
                Box::new(move |r| {
                    r.state = SessionState::Active;
                    r.jar = kept.clone();
                    r.created_ms = created;
                }),
            )
            .await;
        match stored {
            Ok(Some(record)) => Ok(record),
            Ok(None) | Err(_) => {
                tracing::info!(upstream = %self.upstream_id, session = id, "the session was removed while it logged in: logging the new upstream session out");
                self.logout_jar(&jar, Retire::Logout).await;
                self.give_back_seat(id).await;
                Err(SessionError::Gone)
            }
        }
    }

    /// Deletes the record of a login that failed, and returns the error.
    async fn fail<T>(&self, slot: &SlotKey, id: u64, e: SessionError) -> Result<T, SessionError> {
        // Noted before the removal wakes the requests queued on the record: each of them then
        // shares this answer instead of starting a login of its own.
        self.note_failure(slot, &e);
        if let Err(err) = self.store.remove(slot, id).await {
            tracing::warn!(upstream = %self.upstream_id, error = %err, "could not delete the record of a failed login; the sweep will");
        }
        Err(e)
    }

    async fn mark(
        &self,
        slot: &SlotKey,
        id: u64,
        state: SessionState,
        seated: bool,
    ) -> Result<(), SessionError> {
        self.store
            .update(
                slot,
                id,
                Box::new(move |r| {
                    r.state = state;
                    r.seated = seated;
                }),
            )
            .await?
            .map(|_| ())
            .ok_or(SessionError::Gone)
    }

    /// Remembers a slot's failed login, so that the requests that were waiting for it share the
    /// answer instead of each trying a login of its own.
    pub(super) fn note_failure(&self, slot: &SlotKey, e: &SessionError) {
        if matches!(e, SessionError::Gone) {
            return;
        }
        let mut failures = lock(&self.failures);
        failures.retain(|_, (at, _)| at.elapsed() < FAILURE_MEMORY);
        failures.insert(slot.clone(), (Instant::now(), e.clone()));
    }

    /// The slot's login failure since `since`, if any.
    pub(super) fn failed_since(&self, slot: &SlotKey, since: Instant) -> Option<SessionError> {
        lock(&self.failures)
            .get(slot)
            .filter(|(at, _)| *at >= since)
            .map(|(_, e)| e.clone())
    }

    fn check_relogin_block(&self, grant: &GrantKey) -> Result<(), SessionError> {
        if self.relogin_blocked.is_blocked(grant) {
            Err(SessionError::AuthFailed)
        } else {
            Ok(())
        }
    }

    /// The session ended upstream: its seat is presumed free (no logout call). Logs in again
    /// into the same slot, once, unless the grant's re-login is blocked.
    pub async fn relogin(self: &Arc<Self>, lease: &mut Held) -> Result<(), SessionError> {
        self.check_relogin_block(&lease.slot.grant)?;
        self.ended_upstream(lease).await?;
        self.metrics.upstream_relogin(&self.upstream_id);
        let current = self
            .store
            .get(&lease.slot)
            .await?
            .filter(|r| r.id == lease.id)
            .ok_or(SessionError::Gone)?;
        let (record, _) = self.ensure_login(&lease.slot, current).await?;
        lease.jar = record.jar;
        lease.new_session = true;
        lease.jar_changed = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::legacy::LegacyOptions;
    use crate::session::pool::testing::{eventually, evicting, rig, rig_with};

    fn slow_logins() -> LegacyOptions {
        LegacyOptions {
            login_delay: Duration::from_millis(200),
            ..LegacyOptions::default()
        }
    }

    #[tokio::test]
    async fn one_login_serves_every_request_that_needs_the_session() {
        let r = rig_with(slow_logins(), |c| c.max_inflight_per_session = 8).await;
        let answers = r.hold_all((0..8).map(|_| r.who("a")).collect()).await;
        let held: Vec<Held> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!(r.fake.counters().logins_ok, 1, "single-flight");
        assert!(held.iter().all(|h| h.id == held[0].id));
        assert!(held
            .iter()
            .all(|h| h.jar.to_text() == held[0].jar.to_text()));
        assert_eq!(r.pool.logins_running(), 0);
        assert_eq!(r.seats().await, 1);
    }

    #[tokio::test]
    async fn a_failed_login_is_shared_with_the_requests_queued_behind_it() {
        // Every seat upstream is taken by others and nothing of ours is idle: each login
        // attempt is refused with "API Login Limit", and nothing opens a circuit.
        let r = rig(|c| c.admission_wait = Duration::ZERO).await;
        r.fake.reserve_seats(2);
        let answers = r.hold_all((0..4).map(|_| r.who("a")).collect()).await;
        for a in answers {
            assert_eq!(a.unwrap_err(), SessionError::SeatsExhausted);
        }
        assert_eq!(
            r.fake.counters().logins_rejected_limit,
            1,
            "one attempt for the four requests of the slot"
        );
        assert!(
            r.records().await.is_empty(),
            "a failed login leaves no record"
        );
        assert_eq!(r.seats().await, 0);
    }

    #[tokio::test]
    async fn an_api_login_limit_evicts_one_idle_session_and_retries_once() {
        let r = rig(evicting(3)).await;
        let a = r.idle_session("a").await;
        r.fake.reserve_seats(1); // the upstream's two seats are now full
        let b = r.pool.hold(&r.who("b")).await.unwrap();
        let c = r.fake.counters();
        assert_eq!(
            (c.logins_rejected_limit, c.logouts, c.logins_ok),
            (1, 1, 2),
            "{c:?}"
        );
        assert!(r.record(&a.slot).await.is_none(), "a was evicted for b");
        // Nothing idle is left: one refused attempt, then the error.
        assert_eq!(
            r.pool.hold(&r.who("c")).await.unwrap_err(),
            SessionError::SeatsExhausted
        );
        assert_eq!(r.fake.counters().logins_rejected_limit, 2);
        assert!(r.record(&b.slot).await.is_some());
        assert_eq!(r.seats().await, 1);
    }

    #[tokio::test]
    async fn relogin_signs_in_again_into_the_same_slot_without_a_logout() {
        let r = rig(|_| {}).await;
        let mut held = r.pool.hold(&r.who("a")).await.unwrap();
        let (id, before) = (held.id, held.jar.to_text());
        r.fake.expire(None);
        r.pool.relogin(&mut held).await.unwrap();
        assert_eq!(held.id, id, "the same session record");
        assert!(held.new_session);
        assert_ne!(held.jar.to_text(), before, "a fresh jar");
        let c = r.fake.counters();
        assert_eq!((c.logins_ok, c.logouts), (2, 0), "{c:?}");
        assert_eq!(r.seats().await, 1);
        assert_eq!(
            r.metric(r#"tollgate_upstream_relogins_total{upstream="erp"}"#),
            1.0
        );
    }

    #[tokio::test]
    async fn a_grant_that_gave_up_gets_no_login_until_its_block_ends() {
        let r = rig(|c| c.relogin_min_interval = Duration::from_secs(3600)).await;
        let mut held = r.pool.hold(&r.who("a")).await.unwrap();
        // The upstream refused the session even after a fresh login.
        r.fake.expire(None);
        r.pool.give_up(&mut held).await;
        assert_eq!(
            r.pool.hold(&r.who("a")).await.unwrap_err(),
            SessionError::AuthFailed
        );
        let mut other = r.pool.hold(&r.who("b")).await.unwrap();
        assert_eq!(
            r.pool.relogin(&mut held).await.unwrap_err(),
            SessionError::AuthFailed
        );
        assert_eq!(
            r.fake.counters().logins_ok,
            2,
            "a's blocked attempts never reached it"
        );
        r.pool.release(&mut other, false).await;
        // Once the block ends, the grant logs in again.
        r.pool
            .relogin_blocked
            .block(&held.slot.grant, Instant::now());
        r.pool.hold(&r.who("a")).await.unwrap();
        assert_eq!(r.fake.counters().logins_ok, 3);
    }

    #[tokio::test]
    async fn a_session_removed_while_it_logs_in_is_logged_out_when_the_login_ends() {
        let r = rig_with(slow_logins(), |_| {}).await;
        let who = r.who("a");
        let pool = r.pool.clone();
        let request = tokio::spawn({
            let who = who.clone();
            async move { pool.hold(&who).await }
        });
        eventually("the login runs", || async {
            r.record(&who.slot)
                .await
                .is_some_and(|s| s.state == SessionState::LoggingIn)
        })
        .await;
        // The client goes away, then the grant is logged out while its login still runs.
        request.abort();
        let _ = request.await;
        assert_eq!(r.pool.logout(&who.grant, None).await, (1, 0));
        eventually("the login ends", || async { r.pool.logins_running() == 0 }).await;
        let c = r.fake.counters();
        assert_eq!((c.logins_ok, c.logouts), (1, 1), "{c:?}");
        assert!(r.fake.live_sessions().is_empty(), "no orphan upstream");
        assert_eq!(r.seats().await, 0);
        assert!(r.records().await.is_empty());
    }

    #[test]
    fn blocked_grants_are_pruned_once_their_time_is_up() {
        let b = Blocked::default();
        let (g1, g2) = (GrantKey("g1".into()), GrantKey("g2".into()));
        let now = Instant::now();
        b.block(&g1, now);
        assert!(!b.is_blocked(&g1), "a block that ran out");
        b.block(&g2, now + Duration::from_secs(60));
        assert!(b.is_blocked(&g2));
        assert_eq!(b.len(), 1, "g1 was pruned when g2 was added");
    }
}
