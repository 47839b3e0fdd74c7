//! The run's settings: the knobs read from the environment (`LOAD_SECONDS`, `LOAD_CONNECTIONS`,
//! `LOAD_THREADS`, `LOAD_STORE_LINGER`), the choice of scenarios (`LOAD_SCENARIOS`), how wrk's load is split over
//! several wrk processes, and the sizes that are fixed rather than knobs.

use anyhow::bail;

use crate::harness::{positive, Selection};
use crate::wrk::WrkLoad;

/// The wrk warm-up before each measurement. Fixed: it only has to fill the caches and the
/// connection pools, whatever the measured length.
pub(crate) const WARMUP_SECONDS: u64 = 2;
/// How many distinct tokens the 10k scenarios cycle through.
pub(crate) const TOKEN_COUNT: usize = 10_000;
/// How many sessions (pre-made, and grants) the legacy scenarios cycle through.
pub(crate) const LEGACY_SESSIONS: usize = 100;
/// How many grants the `sessions-queued-*` scenarios share all the connections between, so that
/// each grant's requests queue for its one session.
pub(crate) const QUEUED_GRANTS: usize = 8;

/// The knobs, from the environment.
pub(crate) struct Settings {
    /// `LOAD_SECONDS`: measured seconds per scenario.
    pub(crate) seconds: u64,
    /// `LOAD_CONNECTIONS`: wrk's `-c`.
    pub(crate) connections: u64,
    /// `LOAD_THREADS`: wrk's `-t`.
    pub(crate) threads: u64,
    /// `LOAD_STORE_LINGER`: `[store] linger` of the Redis rows (humantime, `0s` to keep no
    /// place); the default when unset.
    pub(crate) store_linger: Option<String>,
    /// `LOAD_SCENARIOS`: the scenarios to measure (comma-separated names); all when unset.
    only: Selection,
}

impl Settings {
    pub(crate) fn from_env() -> anyhow::Result<Settings> {
        let s = Settings {
            seconds: positive("LOAD_SECONDS", 10)?,
            connections: positive("LOAD_CONNECTIONS", 64)?,
            threads: positive("LOAD_THREADS", 2)?,
            store_linger: std::env::var("LOAD_STORE_LINGER")
                .ok()
                .filter(|v| !v.trim().is_empty()),
            only: Selection::from_env("LOAD_SCENARIOS"),
        };
        if s.connections < s.threads {
            bail!(
                "LOAD_CONNECTIONS must be at least LOAD_THREADS ({})",
                s.threads
            );
        }
        Ok(s)
    }

    /// True when scenario `name` is to be measured.
    pub(crate) fn selected(&self, name: &str) -> bool {
        self.only.contains(name)
    }

    /// wrk's load for one scenario spread over `replicas` wrk processes: each gets its share of
    /// the threads (at least one) and connections, and thread numbers following the previous
    /// process's.
    pub(crate) fn split(&self, replicas: u64) -> anyhow::Result<Vec<WrkLoad>> {
        let threads = (self.threads / replicas).max(1);
        let connections = self.connections / replicas;
        if connections < threads {
            bail!(
                "LOAD_CONNECTIONS ({}) is too low to split over {replicas} wrk processes",
                self.connections
            );
        }
        Ok((0..replicas)
            .map(|i| WrkLoad {
                threads,
                connections,
                thread_base: i * threads,
            })
            .collect())
    }

    /// wrk's load for one scenario in one wrk process.
    pub(crate) fn load(&self) -> WrkLoad {
        WrkLoad {
            threads: self.threads,
            connections: self.connections,
            thread_base: 0,
        }
    }
}
