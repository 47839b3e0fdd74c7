//! The report: the markdown table of the scenarios' numbers with the ratios and counters that
//! explain them, written to `target/bench-results.md`, and the checks that fail the run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::fixtures::{
    ExportCount, Legacy, LegacyStats, LEGACY_SEATS, REDIS_PERSISTENCE, UPSTREAM_BODY,
};
use crate::machine::{command_output, cpu_model};
use crate::settings::{Settings, LEGACY_SESSIONS, QUEUED_GRANTS, TOKEN_COUNT, WARMUP_SECONDS};
use crate::wrk::{Summary, WrkLoad};
use crate::{
    JWT_BASELINE, QUEUED_MEMORY, QUEUED_REDIS, SESSIONS_BASELINE, SESSIONS_SCENARIO, STORE_MEMORY,
    STORE_REDIS_1, STORE_REDIS_2,
};

/// One scenario's measurement.
pub(crate) struct Outcome {
    pub(crate) name: &'static str,
    /// What wrk measured (the sum of its processes' for `sessions-redis-2`).
    pub(crate) wrk: Summary,
    /// Token-cache hits and misses during the measurement.
    pub(crate) cache: Option<(u64, u64)>,
    /// Introspection calls during the measurement.
    pub(crate) introspections: Option<u64>,
    /// The fake legacy API's counters, for the legacy scenarios.
    pub(crate) legacy: Option<LegacyStats>,
    /// `tollgate_store_errors_total` of the gateways, from their start to the end of the
    /// measurement (the session-store scenarios).
    pub(crate) store_errors: Option<u64>,
    /// Redis commands (a script call counts as one, plus the commands it runs) and Redis CPU
    /// µs per request while measured (the Redis session-store scenarios).
    pub(crate) store_commands: Option<(f64, f64)>,
    /// The bench process's CPU seconds (user + system) and the wall seconds of the measured run.
    pub(crate) cpu: Option<(f64, f64)>,
    /// What the gateway exported to its OTLP sink (the tracing scenarios).
    pub(crate) exported: Option<Exported>,
}

/// A tracing scenario's exports, as its OTLP sink counted them.
pub(crate) struct Exported {
    /// The gateway's `sample_ratio`.
    pub(crate) sample_ratio: f64,
    /// While measured.
    pub(crate) measured: ExportCount,
    /// From the gateway's start to the end of the measurement.
    pub(crate) since_start: ExportCount,
}

impl Exported {
    /// Whether the exports are not what the ratio calls for: anything at all with
    /// `sample_ratio = 0` (every request was sent without a parent, so nothing is sampled),
    /// nothing while measured with `sample_ratio = 1`, or a request the sink refused.
    fn wrong(&self) -> bool {
        (self.sample_ratio == 0.0 && self.since_start.requests > 0)
            || (self.sample_ratio == 1.0 && self.measured.spans == 0)
            || self.since_start.refused > 0
    }
}

/// What the report says about the session store's setup.
pub(crate) struct StoreInfo<'a> {
    pub(crate) redis_version: &'a str,
    pub(crate) redis_port: u16,
    /// The wrk processes of `sessions-redis-2`.
    pub(crate) split: Vec<WrkLoad>,
}

impl Outcome {
    /// What wrk measured, before the scenario adds its counters.
    pub(crate) fn new(name: &'static str, wrk: Summary) -> Outcome {
        Outcome {
            name,
            wrk,
            cache: None,
            introspections: None,
            legacy: None,
            store_errors: None,
            store_commands: None,
            cpu: None,
            exported: None,
        }
    }

    /// Whether this scenario fails the run: errors under load (non-2xx, socket errors, store
    /// errors); through the session layer, a leak or more than one request at a time on a
    /// session; in the session-store scenarios, a login count other than one per grant (in
    /// `legacy-sessions` the table flags it but the run goes on); in the tracing scenarios,
    /// exports other than the sampling ratio calls for ([`Exported::wrong`]).
    fn failed(&self) -> bool {
        let leaked = self.legacy.as_ref().is_some_and(|l| {
            l.role.through_sessions()
                && (l.leaks() > 0
                    || l.max_concurrency > 1
                    || (l.role == Legacy::Store && l.logins != l.expected_logins))
        });
        self.wrk.non_2xx > 0
            || self.wrk.socket_errors.is_some()
            || self.store_errors.is_some_and(|n| n > 0)
            || leaked
            || self.exported.as_ref().is_some_and(Exported::wrong)
    }

    /// The bench process's CPU µs per request completed while measured.
    fn cpu_us(&self) -> Option<f64> {
        let (cpu, _) = self.cpu?;
        Some(1e6 * cpu / self.wrk.requests.max(1) as f64)
    }

    /// The bench process's cores busy while measured (CPU seconds over wall seconds).
    fn cores(&self) -> Option<f64> {
        let (cpu, wall) = self.cpu?;
        Some(cpu / wall.max(1e-9))
    }
}

/// Fails the run when any scenario failed (see [`Outcome::failed`]), naming them.
pub(crate) fn check(outcomes: &[Outcome]) -> anyhow::Result<()> {
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.failed())
        .map(|o| o.name)
        .collect();
    if !failed.is_empty() {
        bail!(
            "errors under load (non-2xx, socket errors, store errors, session leaks, extra \
             logins, trace exports other than the sampling ratio calls for) in: {}",
            failed.join(", ")
        );
    }
    Ok(())
}

/// Writes `report` to `bench-results.md` in the target directory (`CARGO_TARGET_DIR`, else
/// `target/` of the package) and returns its path.
pub(crate) fn write(report: &str) -> anyhow::Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    std::fs::create_dir_all(&target)?;
    let results = target.join("bench-results.md");
    std::fs::write(&results, report).with_context(|| results.display().to_string())?;
    Ok(results)
}

/// `value` as a percentage of `base`; `n/a` without a base.
fn percent(value: f64, base: f64) -> String {
    if base > 0.0 {
        format!("{:.0}%", 100.0 * value / base)
    } else {
        "n/a".to_owned()
    }
}

/// `bytes` in MiB.
fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The spans a traced request to the JWT route makes (token cache hit): the server span,
/// `verify token` and `upstream request`.
const SPANS_PER_REQUEST: f64 = 3.0;

/// The tracing scenarios' notes: each against `baseline` (`jwt-10k-tokens`, tracing off) in
/// req/s, the bench process's CPU per request and latency; what each exported; how it was
/// measured.
fn tracing(md: &mut String, outcomes: &[Outcome], baseline: Option<&Outcome>) {
    let traced: Vec<(&Outcome, &Exported)> = outcomes
        .iter()
        .filter_map(|o| Some((o, o.exported.as_ref()?)))
        .collect();
    if traced.is_empty() {
        return;
    }
    let us = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1} µs"));
    let cores = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}"));
    let rows: Vec<String> = traced
        .iter()
        .map(|(o, e)| {
            let against = match baseline {
                Some(b) => format!(
                    "{} of the req/s ({:.0} vs {:.0}); bench-process CPU per request {} vs {} \
                     ({}), cores busy {} vs {}; mean latency {:.0} µs vs {:.0} µs ({}), p99 \
                     {:.2} ms vs {:.2} ms ({})",
                    percent(o.wrk.rps, b.wrk.rps),
                    o.wrk.rps,
                    b.wrk.rps,
                    us(o.cpu_us()),
                    us(b.cpu_us()),
                    o.cpu_us()
                        .zip(b.cpu_us())
                        .map_or_else(|| "n/a".to_owned(), |(o, b)| percent(o, b)),
                    cores(o.cores()),
                    cores(b.cores()),
                    1000.0 * o.wrk.mean_ms,
                    1000.0 * b.wrk.mean_ms,
                    percent(o.wrk.mean_ms, b.wrk.mean_ms),
                    o.wrk.p99_ms,
                    b.wrk.p99_ms,
                    percent(o.wrk.p99_ms, b.wrk.p99_ms),
                ),
                None => format!(
                    "{:.0} req/s, bench-process CPU per request {}, cores busy {}, mean latency \
                     {:.0} µs, p99 {:.2} ms (no ratio: `{JWT_BASELINE}` was not measured in this \
                     run; add it to `LOAD_SCENARIOS`)",
                    o.wrk.rps,
                    us(o.cpu_us()),
                    cores(o.cores()),
                    1000.0 * o.wrk.mean_ms,
                    o.wrk.p99_ms,
                ),
            };
            let m = &e.measured;
            let made = SPANS_PER_REQUEST * e.sample_ratio;
            let spans_per_request = m.spans as f64 / o.wrk.requests.max(1) as f64;
            let spans = if made > 0.0 {
                let dropped = if spans_per_request < 0.95 * made {
                    format!(
                        ": about {:.0}% of the spans made were not exported (dropped at the \
                         batch processor's full queue)",
                        100.0 * (1.0 - spans_per_request / made)
                    )
                } else {
                    ": no sign of dropped spans".to_owned()
                };
                format!(
                    ", {spans_per_request:.2} per request of the {made:.0} a request makes\
                     {dropped}"
                )
            } else {
                String::new()
            };
            let sizes = if m.requests > 0 {
                format!(
                    " ({:.1} KiB an export request, {:.0} bytes a span)",
                    m.bytes as f64 / 1024.0 / m.requests as f64,
                    m.bytes as f64 / m.spans.max(1) as f64
                )
            } else {
                String::new()
            };
            let expected = if e.sample_ratio == 0.0 && e.since_start.requests > 0 {
                " **(expected none)**"
            } else if e.sample_ratio == 1.0 && m.spans == 0 {
                " **(expected spans)**"
            } else {
                ""
            };
            let refused = if e.since_start.refused > 0 {
                format!(
                    ", **{} requests refused by the sink** (not `POST /v1/traces`, or not an \
                     export request)",
                    e.since_start.refused
                )
            } else {
                String::new()
            };
            format!(
                "{} (`sample_ratio = {:?}`): {against}; exported while measured {} requests, \
                 {:.1} MiB{sizes}, {} spans{spans}; since the gateway started {} export \
                 requests, {:.1} MiB{expected}{refused}",
                o.name,
                e.sample_ratio,
                m.requests,
                mib(m.bytes),
                m.spans,
                e.since_start.requests,
                mib(e.since_start.bytes),
            )
        })
        .collect();
    let _ = writeln!(
        md,
        "- tracing vs `{JWT_BASELINE}` (tracing off; same run, same route, same {} tokens, \
         token cache warm; gateways identical but for `[telemetry]`): {}",
        TOKEN_COUNT,
        rows.join("; ")
    );
    let bsp: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("OTEL_BSP_"))
        .map(|(k, v)| format!("`{k}={v}`"))
        .collect();
    let batching = if bsp.is_empty() {
        "the SDK's defaults (a queue of 2048 spans, exported in batches of 512 when a batch is \
         full or every 5 s; a span made while the queue is full is dropped, its making part of \
         the measured cost)"
            .to_owned()
    } else {
        format!(
            "the SDK's defaults but for {} from the environment (defaults: a queue of 2048 \
             spans, batches of 512, every 5 s)",
            bsp.join(", ")
        )
    };
    let _ = writeln!(
        md,
        "- the tracing rows: each traced gateway exports OTLP/HTTP protobuf to a sink of its own \
         in this process (`POST /v1/traces` answered 200, `application/x-protobuf`, empty body; \
         it counts requests and body bytes, and the spans by skipping over them in the protobuf, \
         not decoding them); batch span processor: {batching}. Spans a request makes: the server \
         span, `verify token`, `upstream request` ({SPANS_PER_REQUEST:.0}). The counts while \
         measured take in exports of spans queued before the window and leave out those still \
         queued at its end (up to a queue's worth either way), so the share dropped is rough. \
         CPU per request: this process's `utime + stime` (`/proc/self/stat`: the gateways, the \
         upstream, the sinks, the exporters' threads; not wrk) over the measured run divided by \
         the requests wrk completed; cores busy: that CPU time over the wall time"
    );
}

/// The report in markdown: the table, then the notes on each group of scenarios, then how and
/// where it was measured.
pub(crate) fn markdown(
    outcomes: &[Outcome],
    settings: &Settings,
    workers: usize,
    wrk_version: &str,
    store: &StoreInfo,
) -> String {
    let rps_of = |name: &str| {
        outcomes
            .iter()
            .find(|o| o.name == name)
            .map_or(0.0, |o| o.wrk.rps)
    };
    let (direct, public) = (rps_of("direct"), rps_of("public"));
    let ratio = |rps: f64, base: f64| {
        if base > 0.0 {
            format!("{:.0}%", 100.0 * rps / base)
        } else {
            "n/a".to_owned()
        }
    };
    let mut md = String::new();
    let _ = writeln!(md, "## tollgate load benchmark\n");
    let _ = writeln!(
        md,
        "| scenario | req/s | p50 ms | p99 ms | req/s vs direct | req/s vs public | non-2xx |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    for o in outcomes {
        let errors = if o.wrk.non_2xx > 0 {
            format!("**{} of {} (ERRORS)**", o.wrk.non_2xx, o.wrk.requests)
        } else {
            "0".to_owned()
        };
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.2} | {:.2} | {} | {} | {} |",
            o.name,
            o.wrk.rps,
            o.wrk.p50_ms,
            o.wrk.p99_ms,
            ratio(o.wrk.rps, direct),
            ratio(o.wrk.rps, public),
            errors
        );
    }
    md.push('\n');
    for o in outcomes {
        if let Some(e) = &o.wrk.socket_errors {
            let _ = writeln!(md, "- **{}: socket errors: {e}**", o.name);
        }
    }
    let cache: Vec<String> = outcomes
        .iter()
        .filter_map(|o| {
            let (hits, misses) = o.cache?;
            let total = (hits + misses).max(1);
            Some(format!(
                "{} {:.1}% ({misses} misses)",
                o.name,
                100.0 * hits as f64 / total as f64
            ))
        })
        .collect();
    if !cache.is_empty() {
        let _ = writeln!(
            md,
            "- token-cache hit rate while measured: {}",
            cache.join(", ")
        );
    }
    let baseline = rps_of(JWT_BASELINE);
    let introspection: Vec<String> = outcomes
        .iter()
        .filter_map(|o| {
            let calls = o.introspections?;
            Some(format!(
                "{} {} of `{JWT_BASELINE}` ({calls} introspection calls, {:.3} per request)",
                o.name,
                ratio(o.wrk.rps, baseline),
                calls as f64 / o.wrk.requests.max(1) as f64
            ))
        })
        .collect();
    if !introspection.is_empty() {
        let _ = writeln!(
            md,
            "- introspection req/s vs `{JWT_BASELINE}` (target for the cached case: within 10 %), \
             calls counted by the introspection server while measured: {}",
            introspection.join(", ")
        );
    }
    let find = |name: &str| outcomes.iter().find(|o| o.name == name);
    tracing(&mut md, outcomes, find(JWT_BASELINE));
    if let (Some(base), Some(with)) = (find(SESSIONS_BASELINE), find(SESSIONS_SCENARIO)) {
        // Little's law: at a fixed concurrency, the mean time a connection waits per request.
        let little_us = |rps: f64| 1e6 * settings.connections as f64 / rps.max(1e-9);
        let _ = writeln!(
            md,
            "- session layer (`{SESSIONS_SCENARIO}` vs `{SESSIONS_BASELINE}`, both at -c{}): \
             {} of the req/s; mean latency {:.0} µs vs {:.0} µs (wrk), {:+.0} µs per request \
             (connections / req/s: {:.0} µs vs {:.0} µs, {:+.0} µs); wall time per request \
             (1 / req/s, whole machine): {:.1} µs vs {:.1} µs, {:+.1} µs",
            settings.connections,
            ratio(with.wrk.rps, base.wrk.rps),
            1000.0 * with.wrk.mean_ms,
            1000.0 * base.wrk.mean_ms,
            1000.0 * (with.wrk.mean_ms - base.wrk.mean_ms),
            little_us(with.wrk.rps),
            little_us(base.wrk.rps),
            little_us(with.wrk.rps) - little_us(base.wrk.rps),
            1e6 / with.wrk.rps.max(1e-9),
            1e6 / base.wrk.rps.max(1e-9),
            1e6 / with.wrk.rps.max(1e-9) - 1e6 / base.wrk.rps.max(1e-9),
        );
    }
    let legacy: Vec<String> = outcomes
        .iter()
        .filter_map(|o| {
            let l = o.legacy.as_ref()?;
            let sessions = l.role.through_sessions();
            let flag = |bad: bool| if bad { " **(expected 0)**" } else { "" };
            let logins = if sessions && l.logins != l.expected_logins {
                format!(" **(expected {})**", l.expected_logins)
            } else {
                String::new()
            };
            let concurrency = if sessions {
                let flag = if l.max_concurrency > 1 {
                    " **(expected 1)**"
                } else {
                    ""
                };
                format!("{} on tollgate's sessions{flag}", l.max_concurrency)
            } else {
                format!("{} (the fake's maximum so far)", l.max_concurrency)
            };
            let shutdown = l
                .seats_after_shutdown
                .map(|n| format!(", {n} sessions left after the gateways' shutdown"))
                .unwrap_or_default();
            Some(format!(
                "{}: {} logins{logins} ({} while measured), mixed_session_cookies {}{}, \
                 foreign_cookie {}{}, authorization_header_seen {}{}, max concurrency per \
                 session {concurrency}{shutdown}",
                o.name,
                l.logins,
                l.logins_measured,
                l.mixed_session_cookies,
                flag(sessions && l.mixed_session_cookies > 0),
                l.foreign_cookie,
                flag(sessions && l.foreign_cookie > 0),
                l.authorization_header_seen,
                flag(sessions && l.authorization_header_seen > 0),
            ))
        })
        .collect();
    if !legacy.is_empty() {
        let _ = writeln!(
            md,
            "- fake legacy API (`max_api_users = {LEGACY_SEATS}`, {LEGACY_SESSIONS} sessions \
             pre-made for the first two, logged out before `{SESSIONS_SCENARIO}`; a fresh fake \
             for each `sessions-*` scenario), counted from each scenario's preflight to the end \
             of its measurement: {}",
            legacy.join("; ")
        );
    }
    let (memory, redis1, redis2) = (
        rps_of(STORE_MEMORY),
        rps_of(STORE_REDIS_1),
        rps_of(STORE_REDIS_2),
    );
    if memory > 0.0 {
        // As typed on a command line: the empty `--save` argument quoted.
        let persistence = REDIS_PERSISTENCE
            .map(|a| if a.is_empty() { "\"\"" } else { a })
            .join(" ");
        let errors: Vec<String> = outcomes
            .iter()
            .filter_map(|o| Some(format!("{} {}", o.name, o.store_errors?)))
            .collect();
        let split = |f: fn(&WrkLoad) -> u64| {
            store
                .split
                .iter()
                .map(|l| f(l).to_string())
                .collect::<Vec<_>>()
                .join("+")
        };
        let _ = writeln!(
            md,
            "- session store ({LEGACY_SESSIONS} grants, `mode = \"single\"`, a fresh fake and \
             fresh gateways per scenario): `{STORE_REDIS_1}` / `{STORE_MEMORY}` = {}, \
             `{STORE_REDIS_2}` / `{STORE_REDIS_1}` = {} (`{STORE_REDIS_2}` / `{STORE_MEMORY}` = \
             {}). `{STORE_MEMORY}` is the `{SESSIONS_SCENARIO}` setup measured again, not its \
             numbers reused ({} of its req/s). Redis: redis-server {} started by the bench on \
             127.0.0.1:{}, `{persistence}` (append-only file, fsync once a second), \
             killed at the end; a `key_prefix` per scenario, one `handle_key_file` for all, \
             default `timeout` and `lease_ttl`; `tollgate_store_errors_total` up to the end of \
             the measurement: {}",
            ratio(redis1, memory),
            ratio(redis2, redis1),
            ratio(redis2, memory),
            ratio(memory, rps_of(SESSIONS_SCENARIO)),
            store.redis_version,
            store.redis_port,
            errors.join(", "),
        );
        let commands: Vec<String> = outcomes
            .iter()
            .filter_map(|o| {
                let (commands, cpu) = o.store_commands?;
                Some(format!(
                    "{} {commands:.1} commands, {cpu:.1} µs of Redis CPU",
                    o.name
                ))
            })
            .collect();
        if !commands.is_empty() {
            let _ = writeln!(
                md,
                "- Redis commands per request while measured (`INFO stats` \
                 total_commands_processed; a script call counts once plus each command it runs, \
                 and the replicas' lease renewals and upkeep are included): {}",
                commands.join(", ")
            );
        }
        let cpu: Vec<String> = outcomes
            .iter()
            .filter(|o| o.name.starts_with("sessions-"))
            .filter_map(|o| Some(format!("{} {:.1} µs", o.name, o.cpu_us()?)))
            .collect();
        if !cpu.is_empty() {
            let _ = writeln!(
                md,
                "- the bench process's CPU per request while measured (gateways, fake legacy API \
                 and their Redis clients; not wrk, not Redis): {}",
                cpu.join(", ")
            );
        }
        let queued = |name: &str| outcomes.iter().find(|o| o.name == name);
        if let (Some(m), Some(r)) = (queued(QUEUED_MEMORY), queued(QUEUED_REDIS)) {
            let extra = r.wrk.p99_ms - m.wrk.p99_ms;
            let _ = writeln!(
                md,
                "- queued requests (`sessions-queued-*`: the same setups, all {} connections on \
                 {QUEUED_GRANTS} grants, so each grant's requests wait in its session's queue, \
                 one at a time upstream): p99 {:.2} ms with Redis against {:.2} ms in memory, \
                 {extra:+.2} ms ({}; the target is at most +2 ms); p50 {:.2} against {:.2} ms; \
                 req/s {} of memory's",
                settings.connections,
                r.wrk.p99_ms,
                m.wrk.p99_ms,
                if extra <= 2.0 { "within" } else { "**over**" },
                r.wrk.p50_ms,
                m.wrk.p50_ms,
                ratio(r.wrk.rps, m.wrk.rps),
            );
        }
        let _ = writeln!(
            md,
            "- `{STORE_REDIS_2}`: two gateways (two `App::start` in this process, each on its own \
             ephemeral listeners) sharing that Redis, loaded at the same time by two wrk \
             processes, one per gateway (`-t{} -c{}`, the same {LEGACY_SESSIONS} tokens, the \
             second starting where a second wrk thread would), the same total connections as \
             the one-gateway rows; its req/s is the SUM of the two, p50 and p99 the WORSE of the \
             two (wrk's percentiles of two runs cannot be merged; the worse one bounds the \
             fleet's), requests and non-2xx summed. No `sessions-memory-2`: with the memory \
             store each replica holds its own session table, so a grant would get a session (a \
             login, a seat) on each replica, which is not the same work",
            split(|l| l.threads),
            split(|l| l.connections),
        );
        let _ = writeln!(
            md,
            "- warm-up of the `sessions-*` rows: every token once on every gateway, one request \
             at a time (the {LEGACY_SESSIONS} logins, the token caches), not {WARMUP_SECONDS} s \
             of wrk, so that every login happens before the measurement and none of wrk's \
             requests is cut off mid-login when it exits (a request cancelled while its place \
             was being granted used to leave the place taken until `lease_ttl` with the Redis \
             store; that is fixed and tested in tests/it/redis_store.rs)"
        );
    }
    let _ = writeln!(
        md,
        "- wrk {wrk_version}: `-t{} -c{} -d{}s --latency` after a {WARMUP_SECONDS} s warm-up, \
         HTTP/1.1 keep-alive on 127.0.0.1; the JWT, introspection and legacy scenarios send their \
         tokens and cookies through `benches/tokens.lua`",
        settings.threads, settings.connections, settings.seconds
    );
    let _ = writeln!(
        md,
        "- upstream (hyper, {}-byte JSON body), JWKS server, introspection server, OTLP sinks, \
         fake legacy API and gateways share one tokio runtime ({workers} workers) in the bench process, and the \
         cores with wrk (and redis-server)",
        UPSTREAM_BODY.len()
    );
    md.push('\n');
    let nproc = command_output("nproc", &[]).unwrap_or_else(|| "unknown".to_owned());
    let kernel = command_output("uname", &["-r"]).unwrap_or_else(|| "unknown".to_owned());
    let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
        .unwrap_or_else(|| "unknown".to_owned());
    let manifest_dir = env!("CARGO_MANIFEST_DIR");
    let commit = command_output("git", &["-C", manifest_dir, "rev-parse", "--short", "HEAD"])
        .map(|c| format!(" (commit {c})"))
        .unwrap_or_default();
    let _ = writeln!(md, "- CPU: {}", cpu_model());
    let _ = writeln!(md, "- nproc: {nproc}");
    let _ = writeln!(md, "- kernel: {kernel}");
    let _ = writeln!(md, "- date: {date}");
    let _ = writeln!(md, "- tollgate: {}{commit}", tollgate::VERSION);
    md
}
