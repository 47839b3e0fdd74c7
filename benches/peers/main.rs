//! tollgate and its peers side by side: nginx, HAProxy and Envoy, each as its own process pinned
//! alone to one core, measured the same way in one run, after a correctness matrix that shows
//! whether each validating gateway refuses bad tokens.
//!
//! ```text
//! cargo bench --bench peers                     # about 12 minutes after the build
//! PEERS_WARMUP=1 PEERS_SECONDS=2 PEERS_ROUNDS=1 PEERS_OUT=/tmp/peers cargo bench --bench peers
//! PEERS_ROWS=nginx,tollgate-public cargo bench --bench peers        # only these rows
//! ```
//!
//! The method (`settings.rs` fixes it): release builds; each gateway alone on CPU 0
//! (`taskset -c 0`), started fresh for each row and round; wrk (`-t1 -c64 --latency`), the
//! upstream nginx (`return 200`, a 100-byte body), the JWKS and introspection servers and the
//! fake legacy API on CPU 1 (this process pins itself there, and what it starts inherits it);
//! a warm-up, then the measured run with the gateway's CPU time read from `/proc` around it;
//! rounds interleaved, every other one in reverse row order; medians. The peers are found or installed (`apt-get`, `pip`), and a peer
//! that cannot be had is skipped with a note.
//!
//! | row                        | gateway                                                      |
//! |----------------------------|--------------------------------------------------------------|
//! | `nginx`                    | nginx, plain reverse proxy (the ratios' baseline)            |
//! | `haproxy`                  | HAProxy, no auth                                             |
//! | `haproxy-jwt`              | HAProxy `jwt_verify` + exp/iss/aud rules, 10k tokens         |
//! | `envoy-jwt`                | Envoy `jwt_authn`, 10k tokens                                |
//! | `envoy-jwt-cache`          | Envoy `jwt_authn` with `jwt_cache_config`, 10k tokens        |
//! | `hyper-floor`              | a bare hyper proxy: the least tollgate's HTTP stack costs    |
//! | `tollgate-public`          | tollgate, public route                                       |
//! | `tollgate-jwt-1`           | tollgate, JWT route, one token                               |
//! | `tollgate-jwt-10k`         | tollgate, JWT route, 10k tokens (verified-token cache warm)  |
//! | `tollgate-jwt-10k-nocache` | the same with `token_cache_capacity = 1`                     |
//! | `tollgate-es256-nocache`   | the same with ES256 tokens                                   |
//! | `tollgate-eddsa-nocache`   | the same with EdDSA (Ed25519) tokens                         |
//! | `tollgate-introspection`   | tollgate, introspection (cached), 10k opaque tokens          |
//! | `tollgate-legacy`          | tollgate in front of the fake legacy API, 100 grants         |
//! | `tollgate-sessions`        | the same with `[upstream.session]` (memory store)            |
//!
//! The results go to `benches/results/peers.md` and `peers.svg`, and into
//! `docs/performance.md`; with `PEERS_OUT` set they go there instead and `docs/` is left
//! alone. The run fails (after writing them) when a tollgate row fails, has errors under load, or
//! tollgate accepts a bad token; a peer's failures are reported, not fatal.
//!
//! Without `--bench` in its arguments (which `cargo bench` passes) the binary only prints how to
//! run it, so `cargo test --all-targets` never starts it.
//!
//! This file holds the rows and the run in order; the rest is one file per concern:
//!
//! | file              | concern                                                               |
//! |-------------------|-----------------------------------------------------------------------|
//! | `settings.rs`     | the `PEERS_*` knobs; the cores, wrk's load and the sizes (fixed)      |
//! | `install.rs`      | finding or installing the peers, their versions                       |
//! | `peer_configs.rs` | nginx's, HAProxy's and Envoy's configurations                         |
//! | `gateways.rs`     | starting each row's gateway (and the upstream) ready, on its core     |
//! | `process.rs`      | pinned processes, stopping a process tree                             |
//! | `usage.rs`        | a process tree's CPU time and RSS from `/proc`                        |
//! | `measure.rs`      | one row in one round; the medians                                     |
//! | `correctness.rs`  | the bad tokens and the matrix                                         |
//! | `floor.rs`        | one signature verification on the gateway core (`openssl speed`)      |
//! | `builds.rs`       | `tollgate` and the floor (`benches/floor`), built as a user builds    |
//! | `report.rs`       | the table, notes, versions; `peers.md`; `docs/performance.md`'s part  |
//! | `chart.rs`        | the SVG bar chart                                                     |
//!
//! Shared with `benches/load` (mounted with `#[path]`): its `fixtures.rs` (the JWKS,
//! introspection and fake legacy servers, token minting, plain HTTP), `configs.rs` (tollgate's
//! configurations) and `wrk.rs` (running wrk with `benches/tokens.lua`, parsing it), and
//! `benches/common/harness.rs` and `machine.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod builds;
mod chart;
// The load bench's modules: this bench uses part of each.
#[allow(dead_code)]
#[path = "../load/configs.rs"]
mod configs;
mod correctness;
#[allow(dead_code)]
#[path = "../load/fixtures.rs"]
mod fixtures;
mod floor;
mod gateways;
#[path = "../common/harness.rs"]
mod harness;
mod install;
#[path = "../common/machine.rs"]
mod machine;
mod measure;
mod peer_configs;
mod process;
mod report;
mod settings;
mod usage;
#[path = "../common/user_build.rs"]
mod user_build;
#[allow(dead_code)]
#[path = "../load/wrk.rs"]
mod wrk;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use jsonwebtoken::Algorithm;
use tollgate::demo::keys::{self, SigningKey};

use correctness::Matrix;
use fixtures::{API_PATH, LEGACY_PATH, PUBLIC_PATH};
use gateways::{Alg, Gateway, Lab, Probe, AUDIENCE};
use install::{Peers, Tool};
use measure::Medians;
use process::Process;
use report::{Context, RowResult, Verdict};
use settings::{Settings, GATEWAY_CPU, LEGACY_GRANTS, LOAD_CPU, TOKEN_COUNT};
use wrk::Wrk;

fn main() {
    harness::main(
        "peers",
        "benches/peers compares tollgate with its peers",
        run,
    );
}

/// One line of the table: a gateway, the path wrk requests and the tokens it sends.
pub(crate) struct Row {
    pub(crate) name: &'static str,
    /// As the table shows it (a peer's label starts with its name; the report adds the version).
    pub(crate) label: &'static str,
    pub(crate) gateway: Gateway,
    pub(crate) path: &'static str,
    pub(crate) tokens: TokenSet,
}

impl Row {
    /// Whether the row's requests carry a token (the route validates one).
    pub(crate) fn tokens_sent(&self) -> bool {
        self.tokens != TokenSet::None
    }
}

/// Which tokens wrk sends (through `benches/tokens.lua`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenSet {
    None,
    /// One RS256 token, reused.
    One,
    /// `TOKEN_COUNT` distinct tokens of an algorithm.
    Many(Alg),
    /// `TOKEN_COUNT` opaque tokens (introspection).
    Opaque,
    /// `LEGACY_GRANTS` RS256 tokens with distinct `grant_id`s.
    Grants,
}

const ROWS: [Row; 15] = [
    Row {
        name: "nginx",
        label: "nginx plain proxy",
        gateway: Gateway::Nginx,
        path: API_PATH,
        tokens: TokenSet::None,
    },
    Row {
        name: "haproxy",
        label: "HAProxy plain proxy, no auth",
        gateway: Gateway::Haproxy,
        path: API_PATH,
        tokens: TokenSet::None,
    },
    Row {
        name: "haproxy-jwt",
        label: "HAProxy jwt_verify, 10k tokens (no cache)",
        gateway: Gateway::HaproxyJwt,
        path: API_PATH,
        tokens: TokenSet::Many(Alg::Rs256),
    },
    Row {
        name: "envoy-jwt",
        label: "Envoy jwt_authn, 10k tokens, no jwt_cache",
        gateway: Gateway::EnvoyJwt,
        path: API_PATH,
        tokens: TokenSet::Many(Alg::Rs256),
    },
    Row {
        name: "envoy-jwt-cache",
        label: "Envoy jwt_authn + jwt_cache, 10k tokens",
        gateway: Gateway::EnvoyJwtCache,
        path: API_PATH,
        tokens: TokenSet::Many(Alg::Rs256),
    },
    Row {
        name: "hyper-floor",
        label: "hyper bare proxy (the forwarding floor: no gateway logic)",
        gateway: Gateway::HyperFloor,
        path: PUBLIC_PATH,
        tokens: TokenSet::None,
    },
    Row {
        name: "tollgate-public",
        label: "tollgate public route (forwarding only)",
        gateway: Gateway::TollgateJwt {
            alg: Alg::Rs256,
            cache: true,
        },
        path: PUBLIC_PATH,
        tokens: TokenSet::None,
    },
    Row {
        name: "tollgate-jwt-1",
        label: "tollgate JWT, 1 token",
        gateway: Gateway::TollgateJwt {
            alg: Alg::Rs256,
            cache: true,
        },
        path: API_PATH,
        tokens: TokenSet::One,
    },
    Row {
        name: "tollgate-jwt-10k",
        label: "tollgate JWT, 10k tokens (verified-token cache warm)",
        gateway: Gateway::TollgateJwt {
            alg: Alg::Rs256,
            cache: true,
        },
        path: API_PATH,
        tokens: TokenSet::Many(Alg::Rs256),
    },
    Row {
        name: "tollgate-jwt-10k-nocache",
        label: "tollgate JWT, 10k tokens, token_cache_capacity = 1",
        gateway: Gateway::TollgateJwt {
            alg: Alg::Rs256,
            cache: false,
        },
        path: API_PATH,
        tokens: TokenSet::Many(Alg::Rs256),
    },
    Row {
        name: "tollgate-es256-nocache",
        label: "tollgate JWT ES256, 10k tokens, token_cache_capacity = 1",
        gateway: Gateway::TollgateJwt {
            alg: Alg::Es256,
            cache: false,
        },
        path: API_PATH,
        tokens: TokenSet::Many(Alg::Es256),
    },
    Row {
        name: "tollgate-eddsa-nocache",
        label: "tollgate JWT EdDSA, 10k tokens, token_cache_capacity = 1",
        gateway: Gateway::TollgateJwt {
            alg: Alg::EdDsa,
            cache: false,
        },
        path: API_PATH,
        tokens: TokenSet::Many(Alg::EdDsa),
    },
    Row {
        name: "tollgate-introspection",
        label: "tollgate introspection, 10k opaque tokens (cached)",
        gateway: Gateway::TollgateIntrospection,
        path: API_PATH,
        tokens: TokenSet::Opaque,
    },
    Row {
        name: "tollgate-legacy",
        label: "tollgate → fake legacy API, no sessions, 100 grants",
        gateway: Gateway::TollgateLegacy { sessions: false },
        path: LEGACY_PATH,
        tokens: TokenSet::Grants,
    },
    Row {
        name: "tollgate-sessions",
        label: "tollgate → fake legacy API, sessions (memory store), 100 grants",
        gateway: Gateway::TollgateLegacy { sessions: true },
        path: LEGACY_PATH,
        tokens: TokenSet::Grants,
    },
];

/// The signing keys, one per algorithm, all in the JWKS server's set.
struct Keys {
    rs256: SigningKey,
    es256: SigningKey,
    eddsa: SigningKey,
}

impl Keys {
    fn new() -> anyhow::Result<Keys> {
        Ok(Keys {
            rs256: SigningKey::rsa("bench-rs256", Algorithm::RS256).map_err(anyhow::Error::msg)?,
            es256: SigningKey::ec_p256("bench-es256").map_err(anyhow::Error::msg)?,
            eddsa: SigningKey::ed25519("bench-eddsa").map_err(anyhow::Error::msg)?,
        })
    }

    fn of(&self, alg: Alg) -> &SigningKey {
        match alg {
            Alg::Rs256 => &self.rs256,
            Alg::Es256 => &self.es256,
            Alg::EdDsa => &self.eddsa,
        }
    }
}

/// The token files `benches/tokens.lua` cycles through, made for the selected rows only.
struct TokenFiles(Vec<(TokenSet, PathBuf)>);

impl TokenFiles {
    /// Signs the selected rows' tokens, on every core (before this process is pinned).
    fn write(dir: &Path, rows: &[&Row], keys: &Keys, issuer: &str) -> anyhow::Result<TokenFiles> {
        let mut files = Vec::new();
        for row in rows {
            let set = row.tokens;
            if set == TokenSet::None || files.iter().any(|(s, _)| *s == set) {
                continue;
            }
            let (name, lines) = match set {
                TokenSet::None => continue,
                TokenSet::One => (
                    "rs256-1.txt",
                    fixtures::mint(&keys.rs256, issuer, 1, "one", false)?,
                ),
                TokenSet::Many(alg) => (
                    match alg {
                        Alg::Rs256 => "rs256-10k.txt",
                        Alg::Es256 => "es256-10k.txt",
                        Alg::EdDsa => "eddsa-10k.txt",
                    },
                    fixtures::mint(keys.of(alg), issuer, TOKEN_COUNT, alg.jose(), false)?,
                ),
                TokenSet::Opaque => ("opaque-10k.txt", fixtures::opaque_tokens(TOKEN_COUNT)),
                TokenSet::Grants => (
                    "grants-100.txt",
                    fixtures::mint(&keys.rs256, issuer, LEGACY_GRANTS, "legacy", true)?,
                ),
            };
            let path = dir.join(name);
            std::fs::write(&path, lines.join("\n") + "\n")?;
            files.push((set, path));
        }
        Ok(TokenFiles(files))
    }

    fn file(&self, set: TokenSet) -> Option<PathBuf> {
        self.0
            .iter()
            .find(|(s, _)| *s == set)
            .map(|(_, p)| p.clone())
    }
}

fn run() -> anyhow::Result<()> {
    // What the run needs from the machine, found or installed before anything starts.
    let settings = Settings::from_env()?;
    install::ensure_wrk().map_err(anyhow::Error::msg)?;
    let wrk = Wrk::find()?;
    let peers = Peers::find_or_install();
    let rows: Vec<&Row> = ROWS.iter().filter(|r| settings.selected(r.name)).collect();
    if rows.is_empty() {
        bail!("PEERS_ROWS selects no row; the rows are: {}", row_names());
    }
    let wanted = builds::Wanted {
        tollgate: rows.iter().any(|r| r.gateway.is_tollgate()),
        floor: rows
            .iter()
            .any(|r| matches!(r.gateway, Gateway::HyperFloor)),
    };
    let built = builds::build(settings::repo(), &wanted, settings.tollgate.clone())?;
    let load_at_start = report::load_average();
    let mut dir = tempfile::tempdir().context("temporary directory")?;
    if settings.keep {
        dir.disable_cleanup(true);
        println!(
            "benches/peers: PEERS_KEEP=1: keeping {}",
            dir.path().display()
        );
    }
    let bench = Bench::set_up(peers, &rows, dir.path(), built)?;

    // Correctness first, then the crypto floor on the gateway core, then the rounds.
    let matrices = correctness_matrices(&bench.lab, &rows, &bench.keys);
    let floor = floor::measure(GATEWAY_CPU);
    let results = rounds(&bench.lab, &rows, &bench.tokens, &settings, &wrk);

    // The report, then the checks (so that a failed run still has its report).
    let ctx = Context {
        settings: &settings,
        peers: &bench.lab.peers,
        wrk_version: &wrk.version,
        matrices: &matrices,
        load_at_start,
        floor: &floor,
        hyper_version: &bench.lab.hyper_floor.version,
    };
    publish(&results, &ctx)?;
    check(&results, &ctx)
}

/// What the rows run against, set up once for the whole run.
struct Bench {
    lab: Lab,
    keys: Keys,
    tokens: TokenFiles,
    /// The upstream nginx, stopped at the end.
    _upstream: Process,
}

impl Bench {
    /// The servers on the load core (one tokio worker: the JWKS and introspection servers, the
    /// upstream nginx), the tokens they accept (signed on every core, before this process pins
    /// itself to the load core), and the peers' key files.
    fn set_up(
        peers: Peers,
        rows: &[&Row],
        dir: &Path,
        built: builds::Built,
    ) -> anyhow::Result<Bench> {
        let nginx = peers
            .nginx
            .clone()
            .map_err(|e| anyhow::anyhow!("nginx is every row's upstream: {e}"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("tokio runtime")?;
        let keys = Keys::new()?;
        let jwks = Bytes::from(keys::jwks(&[&keys.rs256, &keys.es256, &keys.eddsa]).to_string());
        let issuer = format!("http://{}", runtime.block_on(fixtures::jwks_server(jwks))?);
        let calls = Arc::new(AtomicU64::new(0));
        let introspection_issuer = runtime.block_on(fixtures::introspection_server(calls))?;
        let started = std::time::Instant::now();
        let tokens = TokenFiles::write(dir, rows, &keys, &issuer)?;
        let signing = started.elapsed().as_secs_f64();
        println!("benches/peers: signed the tokens in {signing:.1} s");
        process::pin_self(LOAD_CPU)?;
        let (upstream_process, upstream) = gateways::start_upstream(&nginx, dir, LOAD_CPU)?;
        // HAProxy 2.6's documentation asks `jwt_verify` for "a path to a public certificate",
        // but Debian's 2.6.12 refuses certificates ("file not found", whoever made them) and
        // loads a PEM public key.
        let rs256_pem = dir.join("rs256-public.pem");
        std::fs::write(&rs256_pem, &keys.rs256.public_pem)?;
        let rs256_jwks = dir.join("rs256-jwks.json");
        std::fs::write(&rs256_jwks, keys::jwks(&[&keys.rs256]).to_string())?;
        let lab = Lab {
            peers,
            tollgate: Tool {
                path: built.tollgate,
                version: tollgate::VERSION.to_owned(),
            },
            hyper_floor: Tool {
                path: built.floor,
                version: hyper_version(settings::repo()),
            },
            dir: dir.to_owned(),
            runtime,
            upstream,
            issuer,
            introspection_issuer,
            rs256_pem,
            rs256_jwks,
        };
        Ok(Bench {
            lab,
            keys,
            tokens,
            _upstream: upstream_process,
        })
    }
}

/// Prints the report and writes it and the chart (and, for a default run, the part of
/// `docs/performance.md`).
fn publish(results: &[RowResult], ctx: &Context) -> anyhow::Result<()> {
    let markdown = report::markdown(results, ctx, "peers.svg");
    let svg = chart::svg(results, ctx, &report::machine_line(ctx));
    println!("\n{markdown}");
    let (md, chart) = report::write(&ctx.settings.out, &markdown, &svg)?;
    println!(
        "benches/peers: written to {} and {}",
        md.display(),
        chart.display()
    );
    if ctx.settings.update_page {
        let page = report::update_page(results, ctx)?;
        println!("benches/peers: updated {}", page.display());
    }
    Ok(())
}

/// The correctness matrix of each validating gateway among `rows` (once per gateway, in the
/// rows' order), before any load.
fn correctness_matrices(
    lab: &Lab,
    rows: &[&Row],
    keys: &Keys,
) -> Vec<(Gateway, Result<Matrix, String>)> {
    let mut out: Vec<(Gateway, Result<Matrix, String>)> = Vec::new();
    for row in rows {
        let gateway = row.gateway;
        let Some(alg) = gateway.validates() else {
            continue;
        };
        if out.iter().any(|(g, _)| *g == gateway) || gateway.missing(lab).is_some() {
            continue;
        }
        println!("benches/peers: correctness matrix: {}", gateway.name());
        let matrix = matrix_of(lab, gateway, keys.of(alg), &format!("matrix-{}", row.name));
        out.push((gateway, matrix.map_err(|e| format!("{e:#}"))));
    }
    out
}

/// Starts `gateway` (called `tag`), sends it the matrix's tokens signed with `key`, stops it.
fn matrix_of(lab: &Lab, gateway: Gateway, key: &SigningKey, tag: &str) -> anyhow::Result<Matrix> {
    let tokens = correctness::tokens(key, &lab.issuer, AUDIENCE)?;
    // The valid token (the first) as the readiness probe.
    let probe = Probe {
        path: API_PATH,
        token: tokens.first().map(|(_, t)| t.as_str()),
    };
    let running = gateways::start(lab, gateway, tag, &probe)?;
    let matrix = correctness::run(running.addr, API_PATH, &tokens);
    running.process.stop();
    matrix
}

/// Every runnable row, round after round; a failed round is recorded and the run goes on.
fn rounds<'a>(
    lab: &Lab,
    rows: &[&'a Row],
    tokens: &TokenFiles,
    settings: &Settings,
    wrk: &Wrk,
) -> Vec<RowResult<'a>> {
    let mut results: Vec<RowResult> = rows
        .iter()
        .map(|row| RowResult {
            row,
            skipped: row.gateway.missing(lab),
            per_round: Vec::new(),
            medians: None,
            failures: Vec::new(),
        })
        .collect();
    let mut samples: Vec<Vec<measure::Sample>> = rows.iter().map(|_| Vec::new()).collect();
    for round in 1..=settings.rounds {
        // Every other round runs the rows in reverse order: a machine whose speed drifts over
        // a round's minutes then favours no row by its place in the list.
        let mut order: Vec<usize> = (0..rows.len()).collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for i in order {
            let (result, samples) = (&mut results[i], &mut samples[i]);
            if result.skipped.is_some() {
                continue;
            }
            let row = result.row;
            match measure::once(lab, row, tokens.file(row.tokens), round, settings, wrk) {
                Ok(sample) => {
                    println!(
                        "benches/peers: round {round}/{}: {}: {} req/s, {:.1} CPU µs/req ({:.1} in \
                         user space), p99 {:.2} ms, {:.0} % of CPU {GATEWAY_CPU} used by other processes",
                        settings.rounds,
                        row.name,
                        report::thousands(sample.rps),
                        1e6 * sample.cpu_s / sample.requests.max(1) as f64,
                        1e6 * sample.user_s / sample.requests.max(1) as f64,
                        sample.p99_ms,
                        100.0 * sample.others()
                    );
                    result.per_round.push(Some((sample.rps, sample.others())));
                    samples.push(sample);
                }
                Err(e) => {
                    println!("benches/peers: round {round}: {}: failed: {e:#}", row.name);
                    result.per_round.push(None);
                    result.failures.push(format!("round {round}: {e:#}"));
                }
            }
        }
    }
    for (result, samples) in results.iter_mut().zip(&samples) {
        result.medians = Medians::of(samples);
    }
    results
}

/// Fails the run when a tollgate row failed or had errors under load, or tollgate let a bad
/// token through. The peers' own failures are in the report, not here.
fn check(results: &[RowResult], ctx: &Context) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for r in results.iter().filter(|r| r.row.gateway.is_tollgate()) {
        if !r.failures.is_empty() {
            problems.push(format!(
                "{}: {} failed rounds",
                r.row.name,
                r.failures.len()
            ));
        }
        if let Some(m) = &r.medians {
            if m.non_2xx > 0 || !m.socket_errors.is_empty() {
                problems.push(format!("{}: errors under load", r.row.name));
            }
        }
        if let Verdict::Accepts(cases) = report::verdict(ctx, r.row) {
            problems.push(format!(
                "{}: accepts {}",
                r.row.name,
                Verdict::names(&cases)
            ));
        }
    }
    for (gateway, m) in ctx.matrices.iter().filter(|(g, _)| g.is_tollgate()) {
        if let Err(e) = m {
            problems.push(format!("{}: correctness matrix: {e}", gateway.name()));
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}

fn row_names() -> String {
    ROWS.iter().map(|r| r.name).collect::<Vec<_>>().join(", ")
}

/// The version of hyper in tollgate's `Cargo.lock` (the floor's is checked to be the same).
fn hyper_version(repo: &Path) -> String {
    let lock = std::fs::read_to_string(repo.join("Cargo.lock")).unwrap_or_default();
    builds::lock_version(&lock, "hyper").map_or_else(|| "unknown".to_owned(), str::to_owned)
}
