//! What the pool shows of itself (design §6.12): the gauges of sessions by state, seats in use
//! and queued requests, sampled from the store whenever they may have changed (and at each
//! scrape), and the admin listing of sessions, which never holds a cookie value.
//!
//! With a shared store, the session and seat gauges are the fleet's: only the fleet's reporter
//! publishes them, so that a sum over replicas stays right.

use super::{now_ms, Pool};
use crate::session::store::SessionState;

// === impl Pool ===

impl Pool {
    /// The sessions for `GET /sessions`: never a cookie value.
    pub async fn describe(&self) -> Vec<serde_json::Value> {
        let now = now_ms();
        let Ok(all) = self.store.list().await else {
            return Vec::new();
        };
        all.into_iter()
            .map(|(slot, r)| {
                serde_json::json!({
                    "grant": slot.grant.0,
                    "upstream": &*self.upstream_id,
                    "mode": if r.concurrent { "concurrent" } else { "single" },
                    "age_seconds": now.saturating_sub(r.created_ms) / 1000,
                    "idle_seconds": now.saturating_sub(r.last_used_ms) / 1000,
                    "in_flight": r.in_flight,
                    "queued": r.queued,
                    "state": r.state.as_str(),
                })
            })
            .collect()
    }

    pub(super) async fn sample_seats(&self) {
        if !self.publishes() {
            return;
        }
        if let Ok(n) = self.store.seats_in_use().await {
            self.metrics.upstream_seats(&self.upstream_id, n);
        }
    }

    pub(super) async fn sample_queue(&self) {
        if let Ok(queued) = self.store.queue_depth().await {
            self.metrics.upstream_queue_depth(&self.upstream_id, queued);
        }
    }

    /// True when this replica publishes the fleet-wide gauges: always with the memory store,
    /// and in a fleet only on the reporter (so that a sum over replicas is the fleet's value).
    fn publishes(&self) -> bool {
        self.fleet.as_ref().is_none_or(|f| f.is_reporter())
    }

    /// Publishes the session-count gauges by state and the seats, in one store round trip
    /// whatever the number of sessions (also called at each scrape).
    pub async fn sample_sessions(&self) {
        if !self.publishes() {
            self.metrics.withdraw_fleet_gauges(&self.upstream_id);
            return;
        }
        if let Ok(stats) = self.store.stats().await {
            for (s, n) in [
                (SessionState::Active, stats.active),
                (SessionState::LoggingIn, stats.logging_in),
                (SessionState::NeedsLogin, stats.needs_login),
            ] {
                self.metrics
                    .upstream_sessions(&self.upstream_id, s.as_str(), n);
            }
            self.metrics.upstream_seats(&self.upstream_id, stats.seats);
        }
    }
}
