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
use crate::config::{Credentials, SessionConfig};
use crate::session::login::{self, LoginOutcome};
use crate::session::store::millis;
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
    /// set's cooldown is open, and, until the credentials are proven by one success, one
    /// attempt at a time across every grant (and, with a shared store, every replica). A wrong
    /// password is then tried once, not once per waiting grant, and the account never locks.
    pub(super) async fn gated_login(
        &self,
        creds: &Credentials,
    ) -> Result<LoginOutcome, SessionError> {
        self.check_circuit().await?;
        if self.is_proven().await {
            let outcome = login::login(&self.upstream, &self.cfg, creds).await;
            self.after_login(&outcome).await;
            return Ok(outcome);
        }
        let _local = self.trial.lock().await;
        let deadline = Instant::now() + self.cfg.login_timeout + Duration::from_secs(5);
        let ttl = self.cfg.login_timeout + Duration::from_secs(5);
        let fleet_proven = loop {
            // The trial before this one may have opened the cooldown or proven the set.
            self.check_circuit().await?;
            if self.is_proven().await {
                break true;
            }
            if self
                .store
                .lock_credential_trial(&self.credential_fp, ttl)
                .await?
            {
                break false;
            }
            if Instant::now() > deadline {
                return Err(SessionError::LoginError);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let outcome = login::login(&self.upstream, &self.cfg, creds).await;
        self.after_login(&outcome).await;
        if !fleet_proven {
            if let Err(e) = self
                .store
                .unlock_credential_trial(&self.credential_fp)
                .await
            {
                tracing::warn!(upstream = %self.upstream_id, error = %e, "credential trial lock release failed; it expires by itself");
            }
        }
        Ok(outcome)
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
        self.check_local_circuit()?;
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
        Ok(())
    }

    fn check_local_circuit(&self) -> Result<(), SessionError> {
        let mut c = lock(&self.circuit);
        let now = Instant::now();
        if let Some(until) = c.open_until {
            if now < until {
                return Err(SessionError::LoginFailed {
                    retry_after: (until - now).as_secs().max(1),
                });
            }
            c.open_until = None;
            self.metrics
                .upstream_login_circuit(&self.upstream_id, false);
        }
        if c.backoff_until.is_some_and(|u| now < u) {
            return Err(SessionError::LoginError);
        }
        Ok(())
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
