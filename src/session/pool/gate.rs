//! The credential gate (design §6.5.3): every login call of the pool passes it. The upstream
//! locks the service account after three refused logins, so a credential set that was refused
//! is not tried again until its cooldown ends, and a set not yet proven by one success is tried
//! by one login at a time (across every grant, and with a shared store across the fleet): a
//! wrong password costs one attempt, not one per waiting request. Other failures back off
//! exponentially.
//!
//! The credential set is named by a keyed digest, so the fleet can share its cooldown without
//! ever storing the secret.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;

use super::{lock, now_ms, Pool};
use crate::clock::millis;
use crate::config::{Credentials, SessionConfig};
use crate::session::login::{self, LoginOutcome};
use crate::session::SessionError;

/// The local state of the gate.
#[derive(Debug, Default)]
pub(super) struct Circuit {
    /// A credential failure: no login until then.
    open_until: Option<Instant>,
    /// Other failures: back off exponentially.
    backoff_until: Option<Instant>,
    backoff: Duration,
}

// === impl Pool ===

impl Pool {
    /// The login call behind the credential gate (design §6.5.3): never while the credential
    /// set's cooldown is open, and only on one of the set's login lanes: one lane until the
    /// credentials are proven by a success, then `max_parallel_logins`, in this process and,
    /// with a shared store, across the fleet. A wrong password is tried once, not once per
    /// waiting grant; a password changed upstream after it was proven is refused at most
    /// `max_parallel_logins` times before the cooldown stops the rest. Either way the account
    /// never reaches its lockout threshold.
    pub(super) async fn gated_login(
        &self,
        creds: &Credentials,
    ) -> Result<LoginOutcome, SessionError> {
        self.check_circuit().await?;
        let lane = self.take_lane().await?;
        let outcome = login::login(&self.upstream, &self.cfg, creds).await;
        self.after_login(&outcome).await;
        self.give_back_lane(lane).await;
        Ok(outcome)
    }

    /// Waits for a free login lane (bounded by the login timeout). Lane 0 is the store's trial
    /// lock of the credential set, so a replica of an earlier version and this one share it.
    async fn take_lane(&self) -> Result<u32, SessionError> {
        let ttl = self.cfg.login_timeout + Duration::from_secs(5);
        let deadline = Instant::now() + ttl;
        loop {
            let freed = self.lane_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            // The login before this one may have opened the cooldown or proven the set.
            self.check_circuit().await?;
            let open = if self.is_proven().await {
                self.cfg.max_parallel_logins.max(1)
            } else {
                1
            };
            for lane in 0..open {
                if !lock(&self.lanes).insert(lane) {
                    continue;
                }
                match self
                    .store
                    .lock_credential_trial(&self.lane_key(lane), ttl)
                    .await
                {
                    Ok(true) => return Ok(lane),
                    Ok(false) => {
                        lock(&self.lanes).remove(&lane);
                    }
                    Err(e) => {
                        lock(&self.lanes).remove(&lane);
                        return Err(e.into());
                    }
                }
            }
            let now = Instant::now();
            if now > deadline {
                return Err(SessionError::LoginError);
            }
            // Woken by a lane given back here; another replica's is seen at the next look.
            let nap = (deadline - now).min(Duration::from_millis(50));
            let _ = tokio::time::timeout(nap, freed).await;
        }
    }

    async fn give_back_lane(&self, lane: u32) {
        if let Err(e) = self
            .store
            .unlock_credential_trial(&self.lane_key(lane))
            .await
        {
            tracing::warn!(upstream = %self.upstream_id, error = %e, "login lane release failed; it expires by itself");
        }
        lock(&self.lanes).remove(&lane);
        self.lane_freed.notify_waiters();
    }

    /// The store's name of a login lane of the credential set.
    fn lane_key(&self, lane: u32) -> String {
        if lane == 0 {
            self.credential_fp.clone()
        } else {
            format!("{}:{lane}", self.credential_fp)
        }
    }

    /// The credential gate's bookkeeping after a login call.
    async fn after_login(&self, outcome: &LoginOutcome) {
        self.metrics
            .upstream_login(&self.upstream_id, outcome.label());
        match outcome {
            LoginOutcome::Ok(_) => {
                self.circuit_success();
                if !self.proven.swap(true, Ordering::SeqCst) {
                    if let Err(e) = self
                        .store
                        .mark_credentials_proven(&self.credential_fp)
                        .await
                    {
                        tracing::warn!(upstream = %self.upstream_id, error = %e, "could not share that the credentials work");
                    }
                }
            }
            LoginOutcome::BadCredentials => self.open_cooldown().await,
            LoginOutcome::Error(reason) => {
                let mut c = lock(&self.circuit);
                c.backoff = (c.backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
                c.backoff_until = Some(Instant::now() + c.backoff);
                drop(c);
                tracing::warn!(upstream = %self.upstream_id, %reason, "upstream login failed");
            }
            LoginOutcome::LoginLimit | LoginOutcome::Throttled { .. } => {}
        }
    }

    async fn is_proven(&self) -> bool {
        if self.proven.load(Ordering::SeqCst) {
            return true;
        }
        let shared = self
            .store
            .credentials_proven(&self.credential_fp)
            .await
            .unwrap_or(false);
        if shared {
            self.proven.store(true, Ordering::SeqCst);
        }
        shared
    }

    /// A credential failure: no login with this credential set until the cooldown ends.
    async fn open_cooldown(&self) {
        let cooldown = self.cfg.login_failure_cooldown;
        self.proven.store(false, Ordering::SeqCst);
        lock(&self.circuit).open_until = Some(Instant::now() + cooldown);
        self.metrics.upstream_login_circuit(&self.upstream_id, true);
        tracing::error!(upstream = %self.upstream_id, ?cooldown, "upstream refused tollgate's credentials; no login is attempted until the cooldown ends (the account locks after repeated failures)");
        if let Err(e) = self
            .store
            .open_credential_cooldown(&self.credential_fp, now_ms() + millis(cooldown))
            .await
        {
            tracing::warn!(upstream = %self.upstream_id, error = %e, "could not share the credential cooldown with the other replicas");
        }
    }

    /// Refuses a login while the credential cooldown is open (here or, with a shared store,
    /// anywhere in the fleet) or while failed logins back off.
    pub(super) async fn check_circuit(&self) -> Result<(), SessionError> {
        let closed = self.check_local_circuit()?;
        if let Some(until) = self.store.credential_cooldown(&self.credential_fp).await? {
            let left = Duration::from_millis(until.saturating_sub(now_ms()));
            let mut c = lock(&self.circuit);
            if c.open_until.is_none() {
                self.metrics.upstream_login_circuit(&self.upstream_id, true);
            }
            c.open_until = Some(Instant::now() + left);
            self.proven.store(false, Ordering::SeqCst);
            return Err(SessionError::LoginFailed {
                retry_after: left.as_secs().max(1),
            });
        }
        if closed {
            // Only now: while the fleet's cooldown is still open, the gauge stays at 1.
            self.metrics
                .upstream_login_circuit(&self.upstream_id, false);
        }
        Ok(())
    }

    /// The local circuit; true when its cooldown has just ended.
    fn check_local_circuit(&self) -> Result<bool, SessionError> {
        let mut c = lock(&self.circuit);
        let now = Instant::now();
        let mut closed = false;
        if let Some(until) = c.open_until {
            if now < until {
                return Err(SessionError::LoginFailed {
                    retry_after: (until - now).as_secs().max(1),
                });
            }
            c.open_until = None;
            closed = true;
        }
        if c.backoff_until.is_some_and(|u| now < u) {
            return Err(SessionError::LoginError);
        }
        Ok(closed)
    }

    fn circuit_success(&self) {
        let mut c = lock(&self.circuit);
        c.backoff = Duration::ZERO;
        c.backoff_until = None;
    }
}

/// Names a credential set without revealing it: an HMAC over every field of the login body.
pub(super) fn credential_fingerprint(key: &hmac::Key, cfg: &SessionConfig) -> String {
    let Some(c) = &cfg.credentials else {
        return "passive".to_owned();
    };
    let mut ctx = hmac::Context::with_key(key);
    for part in [
        Some(c.name.as_str()),
        Some(c.password.expose()),
        c.tenant.as_deref(),
        c.branch.as_deref(),
        c.locale.as_deref(),
    ] {
        let v = part.unwrap_or("\0");
        ctx.update(&(v.len() as u64).to_be_bytes());
        ctx.update(v.as_bytes());
    }
    ctx.sign()
        .as_ref()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::session::pool::testing::{rig, Rig};

    const BAD: &str = r#"tollgate_upstream_logins_total{result="bad_credentials",upstream="erp"}"#;
    const CIRCUIT: &str = r#"tollgate_upstream_login_circuit_open{upstream="erp"}"#;
    const ERRORS: &str = r#"tollgate_upstream_logins_total{result="error",upstream="erp"}"#;

    async fn room_for_all() -> Rig {
        rig(|c| c.max_upstream_sessions = 10).await
    }

    #[tokio::test]
    async fn a_wrong_password_is_tried_once_and_opens_the_cooldown() {
        let r = room_for_all().await;
        r.fake.set_password("admin", "changed");
        // Five grants at once, three requests on one of them.
        let mut whos: Vec<_> = (0..5).map(|i| r.who(&format!("g{i}"))).collect();
        whos.extend([r.who("g0"), r.who("g0")]);
        for a in r.hold_all(whos).await {
            assert!(matches!(a.unwrap_err(), SessionError::LoginFailed { .. }));
        }
        let c = r.fake.counters();
        assert_eq!((c.logins_bad_credentials, c.logins_locked), (1, 0), "{c:?}");
        assert_eq!((r.metric(BAD), r.metric(CIRCUIT)), (1.0, 1.0));
        // Later requests are refused without an attempt while the cooldown lasts.
        assert!(matches!(
            r.pool.hold(&r.who("g9")).await.unwrap_err(),
            SessionError::LoginFailed { retry_after } if retry_after > 1
        ));
        assert_eq!(r.fake.counters().logins_bad_credentials, 1);
        assert_eq!(r.seats().await, 0);
        assert!(r.records().await.is_empty());

        // The password is fixed upstream and the cooldown ends: the next login is tried.
        r.fake.set_password("admin", "123");
        lock(&r.pool.circuit).open_until = Some(Instant::now());
        assert!(r.pool.hold(&r.who("g9")).await.is_ok());
        assert_eq!(r.metric(CIRCUIT), 0.0, "the circuit closed");
        assert!(r.pool.proven.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_password_changed_after_it_was_proven_never_reaches_the_lockout() {
        let r = room_for_all().await;
        let mut first = r.pool.hold(&r.who("p")).await.unwrap();
        r.pool.release(&mut first, false).await;
        assert!(r.pool.proven.load(Ordering::SeqCst));
        // The password changes upstream; slow logins make every grant's login overlap.
        r.fake.set_password("admin", "rotated");
        r.fake
            .configure_with(|o| o.login_delay = Duration::from_millis(300));
        let whos: Vec<_> = (0..6).map(|i| r.who(&format!("g{i}"))).collect();
        for a in r.hold_all(whos).await {
            assert!(matches!(a.unwrap_err(), SessionError::LoginFailed { .. }));
        }
        let c = r.fake.counters();
        assert_eq!(
            (c.logins_bad_credentials, c.logins_locked),
            (u64::from(r.pool.cfg.max_parallel_logins), 0),
            "at most max_parallel_logins refused logins, below the lockout threshold: {c:?}"
        );
    }

    #[tokio::test]
    async fn proven_credentials_log_in_on_several_lanes_and_unproven_on_one() {
        let r = rig(|c| {
            c.max_upstream_sessions = 10;
            c.max_parallel_logins = 3;
        })
        .await;
        // Unproven: the first logins go one at a time, on lane 0.
        assert_eq!(r.pool.take_lane().await.unwrap(), 0);
        let waiting = {
            let pool = r.pool.clone();
            tokio::spawn(async move { pool.take_lane().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a second unproven login waits");
        r.pool.give_back_lane(0).await;
        assert_eq!(waiting.await.unwrap().unwrap(), 0);
        r.pool.give_back_lane(0).await;
        // Proven: up to three at once, then a fourth waits.
        r.pool.proven.store(true, Ordering::SeqCst);
        let mut lanes = Vec::new();
        for _ in 0..3 {
            lanes.push(r.pool.take_lane().await.unwrap());
        }
        lanes.sort_unstable();
        assert_eq!(lanes, [0, 1, 2]);
        let fourth = {
            let pool = r.pool.clone();
            tokio::spawn(async move { pool.take_lane().await })
        };
        tokio::task::yield_now().await;
        assert!(!fourth.is_finished());
        r.pool.give_back_lane(1).await;
        assert_eq!(fourth.await.unwrap().unwrap(), 1);
    }

    #[tokio::test]
    async fn other_failures_back_off_and_a_success_ends_the_back_off() {
        let r = room_for_all().await;
        r.fake.configure_with(|o| o.unavailable = true);
        assert_eq!(
            r.pool.hold(&r.who("a")).await.unwrap_err(),
            SessionError::LoginError
        );
        assert_eq!(r.metric(ERRORS), 1.0);
        assert_eq!(lock(&r.pool.circuit).backoff, Duration::from_secs(1));
        // While backing off, no login is tried at all.
        lock(&r.pool.circuit).backoff_until = Some(Instant::now() + Duration::from_secs(3600));
        assert_eq!(
            r.pool.hold(&r.who("b")).await.unwrap_err(),
            SessionError::LoginError
        );
        assert_eq!(r.metric(ERRORS), 1.0, "no second attempt");
        // The back-off doubles, up to a minute.
        for _ in 0..8 {
            r.pool
                .after_login(&LoginOutcome::Error("x".to_owned()))
                .await;
        }
        assert_eq!(lock(&r.pool.circuit).backoff, Duration::from_secs(60));
        // A success resets it.
        r.fake.configure_with(|o| o.unavailable = false);
        lock(&r.pool.circuit).backoff_until = None;
        assert!(r.pool.hold(&r.who("c")).await.is_ok());
        let c = lock(&r.pool.circuit);
        assert_eq!((c.backoff, c.backoff_until), (Duration::ZERO, None));
    }

    #[tokio::test]
    async fn the_credential_fingerprint_names_the_set_without_revealing_it() {
        let r = rig(|_| {}).await;
        let key = hmac::Key::new(hmac::HMAC_SHA256, &[1; 32]);
        let mut cfg = r.pool.cfg.clone();
        let fp = credential_fingerprint(&key, &cfg);
        assert_eq!(fp.len(), 24);
        assert_eq!(fp, credential_fingerprint(&key, &cfg), "stable");
        assert!(!fp.contains("123"));
        let other_key = hmac::Key::new(hmac::HMAC_SHA256, &[2; 32]);
        assert_ne!(fp, credential_fingerprint(&other_key, &cfg));
        if let Some(c) = cfg.credentials.as_mut() {
            c.password = Secret::new("124".to_owned());
        }
        assert_ne!(
            fp,
            credential_fingerprint(&key, &cfg),
            "another password, another set"
        );
        cfg.credentials = None;
        assert_eq!(credential_fingerprint(&key, &cfg), "passive");
    }
}
