//! Measuring: one row in one round (a fresh gateway, a wrk warm-up, the measured wrk run with the
//! gateway's CPU time read from `/proc` around it, its RSS after it), and the medians of a row's
//! rounds.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;

use crate::gateways::{self, Lab, Probe};
use crate::settings::{Settings, GATEWAY_CPU};
use crate::usage::{self, CoreTime};
use crate::wrk::{self, Headers, Wrk};
use crate::Row;

/// One row's numbers in one round.
pub(crate) struct Sample {
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) requests: u64,
    pub(crate) non_2xx: u64,
    pub(crate) socket_errors: Option<String>,
    /// The gateway's CPU seconds (user + system, its whole process tree) while measured.
    pub(crate) cpu_s: f64,
    /// The user-space part of `cpu_s`.
    pub(crate) user_s: f64,
    /// The measured run's wall time (wrk's start to its exit).
    pub(crate) wall_s: f64,
    /// The gateway's resident memory right after the measured run.
    pub(crate) rss_kib: u64,
    /// How the gateway's core was used while measured, the gateway's own time included.
    pub(crate) core: CoreTime,
}

impl Sample {
    /// The share of the gateway's core left idle while it was measured: above a few percent,
    /// the gateway had time to spare and the load generator was the bottleneck.
    pub(crate) fn idle(&self) -> f64 {
        self.core.idle / self.wall_s.max(1e-9)
    }

    /// Roughly the share of the gateway's core that other processes (and the hypervisor's
    /// steal) took while it was measured: on a shared machine, time the gateway could not have.
    pub(crate) fn others(&self) -> f64 {
        ((self.core.tasks - self.cpu_s) / self.wall_s.max(1e-9)).max(0.0)
    }
}

/// Runs `row` once: starts its gateway (ready), warms it up, measures it, stops it.
pub(crate) fn once(
    lab: &Lab,
    row: &Row,
    tokens: Option<PathBuf>,
    round: u64,
    settings: &Settings,
    wrk: &Wrk,
) -> anyhow::Result<Sample> {
    let first = match &tokens {
        Some(file) => std::fs::read_to_string(file)?
            .lines()
            .next()
            .map(str::to_owned),
        None => None,
    };
    let probe = Probe {
        path: row.path,
        token: first.as_deref(),
    };
    let tag = format!("{}-{round}", row.name);
    let mut running = gateways::start(lab, row.gateway, &tag, &probe)?;
    let headers = Headers {
        tokens,
        cookies: running.cookies.clone(),
    };
    let url = format!("http://{}{}", running.addr, row.path);
    let load = settings.load();
    wrk.run(&url, &headers, settings.warmup, &load)?;
    let pid = running.process.pid();
    let core_before = usage::core(GATEWAY_CPU);
    let (cpu_before, started) = (usage::cpu(pid), Instant::now());
    let output = wrk.run(&url, &headers, settings.seconds, &load)?;
    let (cpu_after, wall_s) = (usage::cpu(pid), started.elapsed().as_secs_f64());
    let core = usage::core(GATEWAY_CPU) - core_before;
    let rss_kib = usage::rss_kib(pid);
    if !running.process.alive() {
        bail!(
            "{} died under load: {}",
            running.process.name,
            running.process.log_tail()
        );
    }
    running.process.stop();
    let summary = wrk::parse(row.name, &output)?;
    Ok(Sample {
        rps: summary.rps,
        p50_ms: summary.p50_ms,
        p99_ms: summary.p99_ms,
        requests: summary.requests,
        non_2xx: summary.non_2xx,
        socket_errors: summary.socket_errors,
        cpu_s: cpu_after.seconds - cpu_before.seconds,
        user_s: cpu_after.user_seconds - cpu_before.user_seconds,
        wall_s,
        rss_kib,
        core,
    })
}

/// A row's rounds summed up: the median of each number over the rounds (each number's own
/// median, so the figures in one line may come from different rounds) and every error of
/// every round (req/s per round is in the report).
pub(crate) struct Medians {
    pub(crate) rps: f64,
    /// Gateway CPU µs per request.
    pub(crate) cpu_us: f64,
    /// The user-space and the kernel's part of it (each its own median).
    pub(crate) user_us: f64,
    pub(crate) kernel_us: f64,
    /// The share of its core the gateway used while measured, and the share left idle.
    pub(crate) busy: f64,
    pub(crate) idle: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) rss_mib: f64,
    /// Summed over the rounds.
    pub(crate) non_2xx: u64,
    pub(crate) socket_errors: Vec<String>,
}

impl Medians {
    /// `None` when no round succeeded.
    pub(crate) fn of(samples: &[Sample]) -> Option<Medians> {
        if samples.is_empty() {
            return None;
        }
        let of = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
        Some(Medians {
            rps: of(|s| s.rps),
            cpu_us: of(|s| 1e6 * s.cpu_s / s.requests.max(1) as f64),
            user_us: of(|s| 1e6 * s.user_s / s.requests.max(1) as f64),
            kernel_us: of(|s| 1e6 * (s.cpu_s - s.user_s) / s.requests.max(1) as f64),
            busy: of(|s| s.cpu_s / s.wall_s.max(1e-9)),
            idle: of(Sample::idle),
            p50_ms: of(|s| s.p50_ms),
            p99_ms: of(|s| s.p99_ms),
            rss_mib: of(|s| s.rss_kib as f64 / 1024.0),
            non_2xx: samples.iter().map(|s| s.non_2xx).sum(),
            socket_errors: samples
                .iter()
                .filter_map(|s| s.socket_errors.clone())
                .collect(),
        })
    }
}

/// The median (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}
