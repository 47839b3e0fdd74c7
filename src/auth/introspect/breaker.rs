//! The introspection breaker: after `breaker_failures` consecutive failed calls, calls fail fast
//! for `breaker_cooldown`; then one probe at a time decides whether it closes again. A probe whose
//! request was dropped never reports, so it is given up a second after the call timeout.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

#[derive(Debug)]
enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is in flight since this instant.
    HalfOpen {
        since: Instant,
    },
}

/// Fails calls fast after repeated failures; one probe at a time closes it again.
pub(super) struct Breaker {
    state: Mutex<BreakerState>,
    threshold: u32,
    cooldown: Duration,
    /// A probe that never reports (its request was dropped) is given up after this.
    probe_timeout: Duration,
}

/// Whether an admitted call is the half-open probe.
#[derive(Debug, Clone, Copy)]
pub(super) struct Admitted {
    probe: bool,
}

// === impl Breaker ===

impl Breaker {
    pub(super) fn new(threshold: u32, cooldown: Duration, call_timeout: Duration) -> Self {
        Breaker {
            state: Mutex::new(BreakerState::Closed { failures: 0 }),
            threshold,
            cooldown,
            probe_timeout: call_timeout + Duration::from_secs(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits a call, or says how many seconds until the next probe may run.
    pub(super) fn admit(&self) -> Result<Admitted, u64> {
        let mut s = self.lock();
        let now = Instant::now();
        match *s {
            BreakerState::Closed { .. } => Ok(Admitted { probe: false }),
            BreakerState::Open { until } if now < until => Err(secs_ceil(until - now)),
            BreakerState::HalfOpen { since } if now.duration_since(since) < self.probe_timeout => {
                Err(1)
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => {
                *s = BreakerState::HalfOpen { since: now };
                Ok(Admitted { probe: true })
            }
        }
    }

    pub(super) fn success(&self, metrics: &Metrics, issuer: &str) {
        let mut s = self.lock();
        if !matches!(*s, BreakerState::Closed { .. }) {
            tracing::info!(issuer, "introspection breaker closed");
            metrics.introspection_breaker(issuer, false);
        }
        *s = BreakerState::Closed { failures: 0 };
    }

    pub(super) fn failure(&self, admitted: Admitted, metrics: &Metrics, issuer: &str) {
        let mut s = self.lock();
        let open = match *s {
            BreakerState::Closed { failures } => {
                let failures = failures + 1;
                *s = BreakerState::Closed { failures };
                failures >= self.threshold
            }
            BreakerState::HalfOpen { .. } => admitted.probe,
            BreakerState::Open { .. } => false,
        };
        if open {
            *s = BreakerState::Open {
                until: Instant::now() + self.cooldown,
            };
            tracing::warn!(issuer, cooldown = ?self.cooldown, "introspection breaker open");
            metrics.introspection_breaker(issuer, true);
        }
    }
}

fn secs_ceil(d: Duration) -> u64 {
    let s = d.as_secs();
    if d.subsec_nanos() > 0 {
        s + 1
    } else {
        s.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_the_threshold_and_probes_one_at_a_time() {
        let m = Metrics::new().unwrap();
        let b = Breaker::new(3, Duration::from_millis(50), Duration::from_millis(10));
        for _ in 0..2 {
            let a = b.admit().unwrap();
            b.failure(a, &m, "erp");
        }
        let a = b.admit().unwrap();
        b.failure(a, &m, "erp");
        assert!(b.admit().is_err(), "open after 3 failures");
        std::thread::sleep(Duration::from_millis(60));
        let probe = b.admit().unwrap();
        assert!(probe.probe);
        assert!(b.admit().is_err(), "only one probe at a time");
        b.failure(probe, &m, "erp");
        assert!(b.admit().is_err(), "a failed probe opens it again");
        std::thread::sleep(Duration::from_millis(60));
        let probe = b.admit().unwrap();
        assert!(probe.probe);
        b.success(&m, "erp");
        assert!(b.admit().is_ok());
        assert!(matches!(*b.lock(), BreakerState::Closed { failures: 0 }));
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let m = Metrics::new().unwrap();
        let b = Breaker::new(2, Duration::from_secs(60), Duration::from_millis(10));
        let a = b.admit().unwrap();
        b.failure(a, &m, "erp");
        b.success(&m, "erp");
        let a = b.admit().unwrap();
        b.failure(a, &m, "erp");
        assert!(
            b.admit().is_ok(),
            "one failure after a success does not open it"
        );
    }
}
