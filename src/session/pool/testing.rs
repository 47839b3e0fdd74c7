//! The pool's unit-test rig, shared by the tests of every file of the pool: a real pool over the
//! memory store, in front of the fake legacy API served on a loopback port, with identities of
//! chosen grants and a bounded wait for conditions (never a sleep standing in for a signal).
//!
//! Tests read the truth from both sides: the fake's counters (what the upstream saw: logins,
//! logouts, live sessions) and the pool's store and metrics (what the gateway counts).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::{Held, Identity, Pool};
use crate::auth::Principal;
use crate::config::SessionConfig;
use crate::demo::legacy::{FakeLegacy, LegacyOptions};
use crate::metrics::Metrics;
use crate::proxy::Upstream;
use crate::session::store::{MemoryStore, SessionRecord, SlotKey};
use crate::session::SessionError;

/// The concurrent scope of the default configuration.
pub(in crate::session) const CONCURRENT: &str = "api api:concurrent_access";

/// A pool in front of a running fake.
pub(in crate::session) struct Rig {
    pub(in crate::session) pool: Arc<Pool>,
    pub(in crate::session) fake: FakeLegacy,
    pub(in crate::session) metrics: Metrics,
    task: JoinHandle<()>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A rig with the fake's defaults (2 seats, `admin`/`123`) and the pool's configuration as
/// parsed, changed by `tweak` (fields are set directly, so a test can use values the config
/// file would refuse, such as a zero wait).
pub(in crate::session) async fn rig(tweak: impl FnOnce(&mut SessionConfig)) -> Rig {
    rig_with(LegacyOptions::default(), tweak).await
}

pub(in crate::session) async fn rig_with(
    opts: LegacyOptions,
    tweak: impl FnOnce(&mut SessionConfig),
) -> Rig {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = FakeLegacy::new(opts);
    let task = fake.spawn(listener);
    let toml = format!(
        r#"
[[upstream]]
id = "erp"
url = "http://{addr}"
session = {{ max_upstream_sessions = 2, credentials = {{ name = "admin", password = "123" }} }}

[[route]]
id = "r"
prefix = "/"
upstream = "erp"
auth = "none"
"#
    );
    let config = crate::config::from_toml_str(&toml).unwrap();
    let upstream_cfg = &config.upstreams[0];
    let mut cfg = upstream_cfg.session.clone().unwrap();
    tweak(&mut cfg);
    let metrics = Metrics::new().unwrap();
    let pool = Arc::new(Pool::new(
        Arc::new(Upstream::new(upstream_cfg).unwrap()),
        cfg,
        &[7; 32],
        Arc::new(MemoryStore::new()),
        metrics.clone(),
        None,
        "test".to_owned(),
    ));
    Rig {
        pool,
        fake,
        metrics,
        task,
    }
}

/// A pool of `cap` seats that evicts an idle session at once and never waits for a seat.
pub(in crate::session) fn evicting(cap: u32) -> impl FnOnce(&mut SessionConfig) {
    move |c| {
        c.max_upstream_sessions = cap;
        c.admission_wait = Duration::ZERO;
        c.min_idle_before_evict = Duration::ZERO;
    }
}

/// The principal of a token with these claims (issuer `erp`; `exp` from the claims, else none).
pub(in crate::session) fn principal(claims: Value) -> Principal {
    let exp = claims["exp"].as_u64().unwrap_or(u64::MAX);
    let Value::Object(map) = claims else {
        panic!("claims are an object")
    };
    Principal::new("erp".into(), map, exp)
}

/// Polls `cond` until it holds, failing the test after a generous bound (a loaded machine).
pub(in crate::session) async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never came true: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// === impl Rig ===

impl Rig {
    /// The identity of grant `grant` with scope `scope` and these request headers.
    pub(in crate::session) fn who_with(
        &self,
        grant: &str,
        scope: &str,
        headers: &HeaderMap,
    ) -> Identity {
        self.pool
            .identify(
                &principal(json!({"grant_id": grant, "scope": scope})),
                "token",
                headers,
            )
            .unwrap()
    }

    /// The single-mode identity of grant `grant`.
    pub(in crate::session) fn who(&self, grant: &str) -> Identity {
        self.who_with(grant, "api", &HeaderMap::new())
    }

    /// A lease of grant `grant`'s session, given straight back: the session is idle and
    /// logged in.
    pub(in crate::session) async fn idle_session(&self, grant: &str) -> Held {
        let mut held = self.pool.hold(&self.who(grant)).await.unwrap();
        self.pool.release(&mut held, false).await;
        held
    }

    /// Holds for every identity at once, each in its own task; their answers in order.
    pub(in crate::session) async fn hold_all(
        &self,
        whos: Vec<Identity>,
    ) -> Vec<Result<Held, SessionError>> {
        let tasks: Vec<_> = whos
            .into_iter()
            .map(|who| {
                let pool = self.pool.clone();
                tokio::spawn(async move { pool.hold(&who).await })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    /// A request for grant `grant`'s session, once it waits in the session's queue (another
    /// request holds the session).
    pub(in crate::session) async fn queued(
        &self,
        grant: &str,
    ) -> JoinHandle<Result<Held, SessionError>> {
        let pool = self.pool.clone();
        let who = self.who(grant);
        let waiting = tokio::spawn(async move { pool.hold(&who).await });
        eventually("the request queues", || async {
            self.pool.store.queue_depth() == 1
        })
        .await;
        waiting
    }

    /// The store's records.
    pub(in crate::session) async fn records(&self) -> Vec<(SlotKey, SessionRecord)> {
        self.pool.store.list().await.unwrap()
    }

    /// The record at `slot`, if any.
    pub(in crate::session) async fn record(&self, slot: &SlotKey) -> Option<SessionRecord> {
        self.pool.store.get(slot).await.unwrap()
    }

    /// Seats the store counts.
    pub(in crate::session) async fn seats(&self) -> u32 {
        self.pool.store.seats_in_use().await.unwrap()
    }

    /// The value of one series (`name{labels}`, as rendered) of the pool's metrics; 0 when absent.
    pub(in crate::session) fn metric(&self, series: &str) -> f64 {
        let text = String::from_utf8(self.metrics.render()).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }
}
