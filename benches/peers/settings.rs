//! The run's settings: the knobs read from the environment (`PEERS_WARMUP`, `PEERS_SECONDS`,
//! `PEERS_ROUNDS`, `PEERS_ROWS`, `PEERS_OUT`) and the method's fixed parts (which core runs
//! what, wrk's load, the token counts), which are not knobs so that every published run is
//! measured the same way.

use std::path::{Path, PathBuf};

use crate::harness::{positive, Selection};
use crate::wrk::WrkLoad;

/// The core every gateway runs on, alone.
pub(crate) const GATEWAY_CPU: u32 = 0;
/// The core of everything else: wrk, the upstream nginx, the JWKS and introspection servers,
/// the fake legacy API (this process).
pub(crate) const LOAD_CPU: u32 = 1;
/// wrk's `-c`; its `-t` is 1 (one core for the load).
pub(crate) const CONNECTIONS: u64 = 64;
/// How many distinct tokens the "10k" rows cycle through.
pub(crate) const TOKEN_COUNT: usize = 10_000;
/// How many grants (and pre-made sessions) the legacy rows cycle through.
pub(crate) const LEGACY_GRANTS: usize = 100;

/// The knobs, from the environment.
pub(crate) struct Settings {
    /// `PEERS_WARMUP`: seconds of wrk before each measurement (not measured).
    pub(crate) warmup: u64,
    /// `PEERS_SECONDS`: measured seconds per row and round.
    pub(crate) seconds: u64,
    /// `PEERS_ROUNDS`: how many times every row is measured (interleaved); the report gives
    /// the medians.
    pub(crate) rounds: u64,
    /// `PEERS_ROWS`: the rows to run (comma-separated names); all when unset.
    only: Selection,
    /// `PEERS_OUT`: where the results go. By default `benches/results/`, and then
    /// `docs/performance.md` is updated too; elsewhere (a quick run) it is left alone.
    pub(crate) out: PathBuf,
    pub(crate) update_page: bool,
    /// `PEERS_KEEP=1`: keep the run's directory (every configuration, token file and gateway
    /// log) instead of deleting it, to look into a failure.
    pub(crate) keep: bool,
    /// `PEERS_TOLLGATE`: another tollgate binary to measure (an older build, for before/after).
    pub(crate) tollgate: Option<PathBuf>,
}

impl Settings {
    pub(crate) fn from_env() -> anyhow::Result<Settings> {
        let out = std::env::var_os("PEERS_OUT").map(PathBuf::from);
        Ok(Settings {
            warmup: positive("PEERS_WARMUP", 2)?,
            seconds: positive("PEERS_SECONDS", 10)?,
            rounds: positive("PEERS_ROUNDS", 3)?,
            only: Selection::from_env("PEERS_ROWS"),
            update_page: out.is_none(),
            keep: std::env::var("PEERS_KEEP").is_ok_and(|v| v == "1"),
            tollgate: std::env::var_os("PEERS_TOLLGATE").map(PathBuf::from),
            out: out.unwrap_or_else(|| repo().join("benches/results")),
        })
    }

    /// True when row `name` is to be run.
    pub(crate) fn selected(&self, name: &str) -> bool {
        self.only.contains(name)
    }

    /// wrk's load: one thread (the load core), `CONNECTIONS` connections.
    pub(crate) fn load(&self) -> WrkLoad {
        WrkLoad {
            threads: 1,
            connections: CONNECTIONS,
            thread_base: 0,
        }
    }
}

/// The repository's root (the package's directory).
pub(crate) fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}
