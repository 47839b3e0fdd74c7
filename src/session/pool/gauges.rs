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
                    "grant": &*slot.grant.0,
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

    pub(super) fn sample_queue(&self) {
        self.queue_gauge.set(i64::from(self.store.queue_depth()));
    }

    /// True when this replica publishes the fleet-wide gauges: always with the memory store,
    /// and in a fleet only on the reporter (so that a sum over replicas is the fleet's value).
    fn publishes(&self) -> bool {
        self.fleet.as_ref().is_none_or(|f| f.is_reporter())
    }

    /// Publishes the session-count gauges by state and the seats, in one store round trip
    /// whatever the number of sessions (also called at each scrape).
    pub async fn sample_sessions(&self) {
        // This replica's own waiters, published by every replica: sampled here too, since the
        // samples taken as leases are granted and released miss a request while it waits.
        self.sample_queue();
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

#[cfg(test)]
mod tests {
    use crate::session::pool::testing::{rig, Rig};

    /// The session and seat gauges equal the store's own count.
    async fn assert_gauges_match_the_store(r: &Rig) {
        let stats = r.pool.store.stats().await.unwrap();
        let gauge = |state: &str| {
            r.metric(&format!(
                r#"tollgate_upstream_sessions{{state="{state}",upstream="erp"}}"#
            ))
        };
        let published = (
            gauge("active"),
            gauge("logging_in"),
            gauge("needs_login"),
            r.metric(r#"tollgate_upstream_seats_in_use{upstream="erp"}"#),
        );
        let held = (
            stats.active as f64,
            stats.logging_in as f64,
            stats.needs_login as f64,
            f64::from(stats.seats),
        );
        assert_eq!(published, held);
    }

    #[tokio::test]
    async fn the_gauges_publish_what_the_store_holds() {
        let r = rig(|_| {}).await;
        let mut held = r.pool.hold(&r.who("a")).await.unwrap();
        r.idle_session("b").await;
        assert_gauges_match_the_store(&r).await;
        assert_eq!(
            r.metric(r#"tollgate_upstream_seats_in_use{upstream="erp"}"#),
            2.0
        );
        r.pool.ended_upstream(&mut held).await.unwrap();
        r.pool.sample_sessions().await;
        assert_gauges_match_the_store(&r).await;
        assert_eq!(
            r.metric(r#"tollgate_upstream_sessions{state="needs_login",upstream="erp"}"#),
            1.0
        );
        r.pool.release(&mut held, false).await;
        r.pool.logout(&held.slot.grant, None).await;
        assert_gauges_match_the_store(&r).await;
    }

    #[tokio::test]
    async fn the_queue_gauge_counts_the_requests_waiting_for_a_session() {
        const QUEUE: &str = r#"tollgate_upstream_session_queue_depth{upstream="erp"}"#;
        let r = rig(|_| {}).await;
        let mut first = r.pool.hold(&r.who("a")).await.unwrap();
        let second = r.queued("a").await;
        r.pool.sample_sessions().await;
        assert_eq!(r.metric(QUEUE), 1.0, "a scrape shows the waiting request");
        r.pool.release(&mut first, false).await;
        second.await.unwrap().unwrap();
        assert_eq!(r.metric(QUEUE), 0.0, "sampled again as the place was taken");
    }

    #[tokio::test]
    async fn the_listing_shows_each_session_but_never_a_cookie_value() {
        let r = rig(|_| {}).await;
        let held = r.pool.hold(&r.who("a")).await.unwrap();
        let list = r.pool.describe().await;
        assert_eq!(list.len(), 1);
        let s = &list[0];
        assert_eq!(s["grant"], &*held.slot.grant.0);
        assert_eq!(s["upstream"], "erp");
        assert_eq!(s["mode"], "single");
        assert_eq!(s["state"], "active");
        assert_eq!(
            (s["in_flight"].as_u64(), s["queued"].as_u64()),
            (Some(1), Some(0))
        );
        let text = serde_json::to_string(&list).unwrap();
        // The session's secrets: the values of the cookies that prove its login.
        let jar = held.jar.to_text();
        for marker in &r.pool.cfg.marker_cookies {
            let line = jar.lines().find(|l| l.starts_with(&format!("{marker}\t")));
            let value = line.unwrap().rsplit('\t').next().unwrap();
            assert!(!text.contains(value), "{marker}'s value in the listing");
        }
    }

    #[tokio::test]
    async fn a_replica_without_a_fleet_publishes() {
        let r = rig(|_| {}).await;
        assert!(r.pool.publishes());
    }
}
