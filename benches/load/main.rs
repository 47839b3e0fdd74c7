//! Load benchmark: wrk against a minimal upstream directly and through tollgate, on loopback, in
//! one run, so that the numbers are side by side on the same machine at the same moment.
//!
//! ```text
//! cargo bench --bench load                      # needs wrk and redis-server on PATH
//! LOAD_SECONDS=30 LOAD_CONNECTIONS=128 cargo bench --bench load
//! LOAD_SCENARIOS=direct,public cargo bench --bench load    # only these rows
//! ```
//!
//! Everything runs in this process on 127.0.0.1 (one multi-threaded tokio runtime): a JWKS server,
//! a minimal RFC 7662 introspection server, the upstream (200 with a ~100-byte JSON body) and two
//! OTLP/HTTP sinks (`POST /v1/traces`: 200, counted), all on the gateway's own accept loop
//! ([`tollgate::serve`]), the fake legacy API ([`tollgate::demo::legacy::FakeLegacy`],
//! `max_api_users = 300`) and eight gateways started with [`tollgate::App::start`]: JWT with the
//! default token cache, the same with `[telemetry]` exporting to a sink of its own at
//! `sample_ratio = 0` and at `= 1`, JWT with `token_cache_capacity = 1`, introspection with the
//! default introspection cache and with `cache_capacity = 1`, and JWT in front of the fake
//! without and with `[upstream.session]`. No tracing subscriber is installed, so the gateways log
//! nothing.
//! Scenarios, each a 2 s warm-up and then `wrk -t2 -c64 -d10s --latency`:
//!
//! | scenario                 | what                                                              |
//! |--------------------------|-------------------------------------------------------------------|
//! | `direct`                 | the upstream, without tollgate                                    |
//! | `public`                 | tollgate, public route (`auth = "none"`)                          |
//! | `jwt-one-token`          | tollgate, route with `scopes = ["api"]`, one RS256 token reused   |
//! | `jwt-10k-tokens`         | same route, 10,000 distinct tokens cycled by `benches/tokens.lua` |
//! | `jwt-10k-traced-0`       | same, `[telemetry]` with `sample_ratio = 0` (nothing exported)    |
//! | `jwt-10k-traced-1`       | same, `sample_ratio = 1` (every request's spans exported)         |
//! | `jwt-10k-no-cache`       | same, `token_cache_capacity = 1` (a signature check each)         |
//! | `introspection-cached`   | `validation = "introspection"`, 10,000 opaque tokens cycled       |
//! | `introspection-uncached` | same, `[issuer.introspection] cache_capacity = 1` (a call each)   |
//! | `legacy-direct`          | the fake's `GET …/Echo`, 100 pre-made sessions' cookies cycled    |
//! | `legacy-nosession`       | tollgate (no session layer), 100 tokens each with its cookies     |
//! | `legacy-sessions`        | tollgate with `[upstream.session]` (single), 100 grants, no cookie |
//! | `sessions-memory-1`      | the same setup again, a fresh fake and gateway                    |
//! | `sessions-redis-1`       | the same with `[store] kind = "redis"`                            |
//! | `sessions-redis-2`       | two such gateways sharing the Redis, two wrk `-t1 -c32` at once   |
//! | `sessions-queued-memory` | `sessions-memory-1` with every connection on 8 grants (queued)    |
//! | `sessions-queued-redis`  | `sessions-redis-1` the same way: a queued request's wait in Redis |
//!
//! The 100 sessions of `legacy-direct` and `legacy-nosession` are logged in directly to the fake
//! before the load and logged out before `legacy-sessions`, in which tollgate logs in once per
//! grant (the 100 tokens carry distinct `grant_id` claims).
//!
//! The `sessions-*` scenarios (the session store, memory against Redis) run last, each with a
//! fresh fake and fresh gateways, shut down after it; the other gateways are shut down before
//! them. The bench starts its own redis-server on a free 127.0.0.1 port (`--save "" --appendonly
//! yes --appendfsync everysec`, in a temporary directory) and kills it at the end; each Redis
//! scenario has its own `key_prefix`, and all share one `handle_key_file`. Their warm-up is every
//! token once on every gateway, one request at a time, instead of wrk (see the report's note).
//! For `sessions-redis-2` the two wrk processes' req/s are summed and the worse p50 and p99 are
//! reported; `TOLLGATE_BENCH_THREAD_BASE` starts the second where a second wrk thread would.
//!
//! The table is printed and written to `target/bench-results.md`, with the tracing scenarios'
//! req/s, the bench process's CPU per request (`/proc/self/stat`) and latency relative to
//! `jwt-10k-tokens` (tracing off) and what their sinks received (export requests, bytes, spans,
//! hence roughly how many spans the batch processor dropped), the introspection scenarios' req/s
//! relative to `jwt-10k-tokens`, their introspection calls (counted by the introspection server),
//! every token scenario's cache hit rate, the cost of the session layer
//! (`legacy-sessions` against `legacy-nosession`), the fake's login and leak counters, and the
//! session store's ratios (`sessions-redis-1` / `sessions-memory-1`, `sessions-redis-2` /
//! `sessions-redis-1`). A scenario with non-2xx responses or socket errors is flagged in the
//! table and makes the run fail, and so does a leak counter above 0 (or concurrency above 1 on
//! one session) in `legacy-sessions` and the `sessions-*` scenarios, a login count other than 100
//! or a store error in the `sessions-*` scenarios, and any export from `jwt-10k-traced-0` or no
//! span exported while `jwt-10k-traced-1` was measured. Without `jwt-10k-tokens` in
//! `LOAD_SCENARIOS` the tracing note gives the traced rows' own figures and says the ratio is
//! missing.
//!
//! Without `--bench` in its arguments (which `cargo bench` passes) the binary only prints how to
//! run it, so `cargo test --all-targets` never starts a load test.
//!
//! This file holds the scenarios and the run in order; the rest is one file per concern:
//!
//! | file          | concern                                                                    |
//! |---------------|----------------------------------------------------------------------------|
//! | `settings.rs` | the `LOAD_*` knobs, `LOAD_SCENARIOS` among them; the fixed sizes           |
//! | `fixtures.rs` | in-process servers (OTLP sink too), redis-server, gateways, tokens, CPU    |
//! | `configs.rs`  | the gateways' TOML configurations                                          |
//! | `wrk.rs`      | running wrk with `benches/tokens.lua`, parsing its output                  |
//! | `report.rs`   | the table and notes, `target/bench-results.md`, the checks that fail       |
//!
//! `../common/harness.rs` (started only by `cargo bench`, the knobs) and `../common/machine.rs`
//! (the CPU model, the commands that name the machine) are shared with `benches/peers`, which
//! also mounts this bench's `fixtures.rs`, `configs.rs` and `wrk.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod configs;
mod fixtures;
#[path = "../common/harness.rs"]
mod harness;
#[path = "../common/machine.rs"]
mod machine;
mod report;
mod settings;
mod wrk;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use jsonwebtoken::Algorithm;
use tokio::task::JoinHandle;
use tollgate::demo::keys::{self, SigningKey};
use tollgate::demo::legacy::FakeLegacy;
use tollgate::App;

use configs::RedisStore;
use fixtures::{
    start_gateway, Exports, Legacy, RedisServer, API_PATH, LEGACY_BODY, LEGACY_PATH, PUBLIC_PATH,
    UPSTREAM_BODY,
};
use report::{Exported, Outcome, StoreInfo};
use settings::{Settings, LEGACY_SESSIONS, QUEUED_GRANTS, TOKEN_COUNT, WARMUP_SECONDS};
use wrk::{Headers, Wrk};

/// The scenario the tracing and introspection scenarios are compared with.
const JWT_BASELINE: &str = "jwt-10k-tokens";
/// The baseline's gateway with `[telemetry]`, `sample_ratio = 0` and `= 1`.
const TRACED_0: &str = "jwt-10k-traced-0";
const TRACED_1: &str = "jwt-10k-traced-1";
/// The scenarios compared for the cost of the session layer.
const SESSIONS_BASELINE: &str = "legacy-nosession";
const SESSIONS_SCENARIO: &str = "legacy-sessions";
/// The session-store scenarios: the session layer with the memory store (one gateway) and with
/// Redis (one gateway, two gateways sharing it), each in front of a fresh fake.
const STORE_MEMORY: &str = "sessions-memory-1";
const STORE_REDIS_1: &str = "sessions-redis-1";
const STORE_REDIS_2: &str = "sessions-redis-2";
/// The same store setups with all the connections on a few grants, so that each grant's
/// requests queue for its session: how long a queued request waits, memory against Redis.
const QUEUED_MEMORY: &str = "sessions-queued-memory";
const QUEUED_REDIS: &str = "sessions-queued-redis";

fn main() {
    harness::main("load", "benches/load is a wrk load benchmark", run);
}

/// One of the scenarios before the session-store ones: where wrk sends what, and which counters
/// explain its numbers.
struct Scenario {
    name: &'static str,
    /// Where wrk sends its requests.
    addr: SocketAddr,
    path: &'static str,
    headers: Headers,
    /// What the preflight answer must contain.
    expect: &'static str,
    /// The gateway's admin address, for the token-cache counters.
    admin: Option<SocketAddr>,
    /// Which token cache the scenario uses (`cache` label of the counters).
    cache: &'static str,
    /// The introspection server's call counter, for the introspection scenarios.
    calls: Option<Arc<AtomicU64>>,
    legacy: Option<Legacy>,
    /// The gateway's sampling ratio and OTLP sink, for the tracing scenarios.
    trace: Option<Trace>,
}

/// A tracing gateway's `sample_ratio` and the counters of the OTLP sink it exports to.
#[derive(Clone)]
struct Trace {
    sample_ratio: f64,
    exports: Arc<Exports>,
}

/// A gateway with `[telemetry]`, exporting to an OTLP sink of its own.
struct Traced {
    app: App,
    trace: Trace,
}

impl Traced {
    /// Starts an OTLP sink and a gateway of `config` with `[telemetry]` pointing at it.
    async fn start(config: &str, sample_ratio: f64) -> anyhow::Result<Traced> {
        let exports = Arc::new(Exports::default());
        let sink = fixtures::otlp_sink(exports.clone()).await?;
        let app = start_gateway(&configs::traced(config, &sink, sample_ratio)).await?;
        if !app.gateway.telemetry().is_on() {
            bail!(
                "tracing is off in the gateway with [telemetry] (OTEL_SDK_DISABLED=true in the \
                 environment?)"
            );
        }
        Ok(Traced {
            app,
            trace: Trace {
                sample_ratio,
                exports,
            },
        })
    }
}

/// The servers of the scenarios before the session-store ones (the JWKS server, which the
/// session-store gateways use too, is started before them).
struct Servers {
    upstream: SocketAddr,
    /// The introspection server's call counter.
    calls: Arc<AtomicU64>,
    fake: FakeLegacy,
    legacy: SocketAddr,
    fake_task: JoinHandle<()>,
    /// JWT with the default token cache and with `token_cache_capacity = 1`.
    cached: App,
    uncached: App,
    /// `cached` with `[telemetry]`, `sample_ratio = 0` and `= 1`.
    traced_0: Traced,
    traced_1: Traced,
    /// Introspection with the default introspection cache and with `cache_capacity = 1`.
    opaque: App,
    opaque_nc: App,
    /// JWT in front of the fake without and with `[upstream.session]`.
    plain: App,
    sessions: App,
}

/// The token and cookie files that `benches/tokens.lua` cycles through.
struct Tokens {
    one: PathBuf,
    many: PathBuf,
    opaque: PathBuf,
    /// The grants' tokens, one a line, and the same in a list.
    grants: PathBuf,
    grant_list: Vec<String>,
    /// The first [`QUEUED_GRANTS`] of them, for the `sessions-queued-*` scenarios.
    queued: PathBuf,
    /// The pre-made sessions' `Cookie` values, one a line, and the same in a list.
    cookies: PathBuf,
    premade: Vec<String>,
}

fn run() -> anyhow::Result<()> {
    // What the run needs from the machine, checked before anything starts.
    let settings = Settings::from_env()?;
    let wrk = Wrk::find()?;
    let redis_version = fixtures::redis_version()?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let workers = runtime.metrics().num_workers();
    let dir = tempfile::tempdir().context("temporary directory")?;
    // Started up front so that a missing redis-server fails the run at once; killed on drop.
    let redis = RedisServer::start(&dir.path().join("redis"))?;

    // The servers, and the tokens they accept.
    let key = SigningKey::rsa("bench-k1", Algorithm::RS256).map_err(anyhow::Error::msg)?;
    let jwks = Bytes::from(keys::jwks(&[&key]).to_string());
    let jwks_addr = runtime.block_on(fixtures::jwks_server(jwks))?;
    let issuer = format!("http://{jwks_addr}");
    let servers = runtime.block_on(Servers::start(&issuer))?;
    let tokens = Tokens::write(dir.path(), &key, &issuer, servers.legacy)?;

    // The scenarios against those servers, in the table's order.
    let mut outcomes = Vec::new();
    for s in &scenarios(&servers, &tokens) {
        if settings.selected(s.name) {
            outcomes.push(measure(s, &servers, &tokens.premade, &settings, &wrk)?);
        }
    }
    runtime.block_on(servers.shutdown());

    // The session-store scenarios, each with a fresh fake and fresh gateways.
    let key_file = dir.path().join("handle.key");
    let handle_key: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    std::fs::write(&key_file, handle_key + "\n")?;
    let fleet = Fleet {
        issuer: &issuer,
        tokens: &tokens,
        wrk: &wrk,
        settings: &settings,
        redis: &redis,
        key_file: &key_file,
    };
    for (name, replicas, with_redis, grants) in [
        (STORE_MEMORY, 1, false, LEGACY_SESSIONS),
        (STORE_REDIS_1, 1, true, LEGACY_SESSIONS),
        (STORE_REDIS_2, 2, true, LEGACY_SESSIONS),
        (QUEUED_MEMORY, 1, false, QUEUED_GRANTS),
        (QUEUED_REDIS, 1, true, QUEUED_GRANTS),
    ] {
        if !settings.selected(name) {
            continue;
        }
        let outcome = fleet
            .measure(&runtime, name, replicas, with_redis, grants)
            .with_context(|| name.to_owned())?;
        outcomes.push(outcome);
    }
    let redis_port = redis.port;
    drop(redis);

    // The report, then the checks (so that a failed run still has its report).
    let store = StoreInfo {
        redis_version: &redis_version,
        redis_port,
        split: settings.split(2)?,
    };
    let report = report::markdown(&outcomes, &settings, workers, &wrk.version, &store);
    println!("\n{report}");
    let results = report::write(&report)?;
    println!("benches/load: written to {}", results.display());

    runtime.shutdown_timeout(Duration::from_secs(2));
    report::check(&outcomes)
}

/// The scenarios before the session-store ones, in the table's order.
fn scenarios(servers: &Servers, tokens: &Tokens) -> [Scenario; 12] {
    let Servers {
        cached,
        uncached,
        traced_0,
        traced_1,
        opaque,
        opaque_nc,
        plain,
        sessions,
        ..
    } = servers;
    [
        Scenario {
            name: "direct",
            addr: servers.upstream,
            path: API_PATH,
            headers: Headers::default(),
            expect: UPSTREAM_BODY,
            admin: None,
            cache: "jwt",
            calls: None,
            legacy: None,
            trace: None,
        },
        Scenario {
            name: "public",
            addr: cached.proxy_addr,
            path: PUBLIC_PATH,
            headers: Headers::default(),
            expect: UPSTREAM_BODY,
            admin: Some(cached.admin_addr),
            cache: "jwt",
            calls: None,
            legacy: None,
            trace: None,
        },
        Scenario {
            name: "jwt-one-token",
            addr: cached.proxy_addr,
            path: API_PATH,
            headers: Headers::tokens(&tokens.one),
            expect: UPSTREAM_BODY,
            admin: Some(cached.admin_addr),
            cache: "jwt",
            calls: None,
            legacy: None,
            trace: None,
        },
        Scenario {
            name: JWT_BASELINE,
            addr: cached.proxy_addr,
            path: API_PATH,
            headers: Headers::tokens(&tokens.many),
            expect: UPSTREAM_BODY,
            admin: Some(cached.admin_addr),
            cache: "jwt",
            calls: None,
            legacy: None,
            trace: None,
        },
        Scenario {
            name: TRACED_0,
            addr: traced_0.app.proxy_addr,
            path: API_PATH,
            headers: Headers::tokens(&tokens.many),
            expect: UPSTREAM_BODY,
            admin: Some(traced_0.app.admin_addr),
            cache: "jwt",
            calls: None,
            legacy: None,
            trace: Some(traced_0.trace.clone()),
        },
        Scenario {
            name: TRACED_1,
            addr: traced_1.app.proxy_addr,
            path: API_PATH,
            headers: Headers::tokens(&tokens.many),
            expect: UPSTREAM_BODY,
            admin: Some(traced_1.app.admin_addr),
            cache: "jwt",
            calls: None,
            legacy: None,
            trace: Some(traced_1.trace.clone()),
        },
        Scenario {
            name: "jwt-10k-no-cache",
            addr: uncached.proxy_addr,
            path: API_PATH,
            headers: Headers::tokens(&tokens.many),
            expect: UPSTREAM_BODY,
            admin: Some(uncached.admin_addr),
            cache: "jwt",
            calls: None,
            legacy: None,
            trace: None,
        },
        Scenario {
            name: "introspection-cached",
            addr: opaque.proxy_addr,
            path: API_PATH,
            headers: Headers::tokens(&tokens.opaque),
            expect: UPSTREAM_BODY,
            admin: Some(opaque.admin_addr),
            cache: "introspection",
            calls: Some(servers.calls.clone()),
            legacy: None,
            trace: None,
        },
        Scenario {
            name: "introspection-uncached",
            addr: opaque_nc.proxy_addr,
            path: API_PATH,
            headers: Headers::tokens(&tokens.opaque),
            expect: UPSTREAM_BODY,
            admin: Some(opaque_nc.admin_addr),
            cache: "introspection",
            calls: Some(servers.calls.clone()),
            legacy: None,
            trace: None,
        },
        Scenario {
            name: "legacy-direct",
            addr: servers.legacy,
            path: LEGACY_PATH,
            headers: Headers {
                tokens: None,
                cookies: Some(tokens.cookies.clone()),
            },
            expect: LEGACY_BODY,
            admin: None,
            cache: "jwt",
            calls: None,
            legacy: Some(Legacy::Direct),
            trace: None,
        },
        Scenario {
            name: SESSIONS_BASELINE,
            addr: plain.proxy_addr,
            path: LEGACY_PATH,
            headers: Headers {
                tokens: Some(tokens.grants.clone()),
                cookies: Some(tokens.cookies.clone()),
            },
            expect: LEGACY_BODY,
            admin: Some(plain.admin_addr),
            cache: "jwt",
            calls: None,
            legacy: Some(Legacy::NoSession),
            trace: None,
        },
        Scenario {
            name: SESSIONS_SCENARIO,
            addr: sessions.proxy_addr,
            path: LEGACY_PATH,
            headers: Headers::tokens(&tokens.grants),
            expect: LEGACY_BODY,
            admin: Some(sessions.admin_addr),
            cache: "jwt",
            calls: None,
            legacy: Some(Legacy::Sessions),
            trace: None,
        },
    ]
}

impl Servers {
    /// The upstream, the introspection server, the fake legacy API, and the gateways in front
    /// of them, every gateway ready.
    async fn start(issuer: &str) -> anyhow::Result<Servers> {
        let calls = Arc::new(AtomicU64::new(0));
        let upstream = fixtures::upstream().await?;
        let upstream_url = format!("http://{upstream}");
        let opaque_issuer = fixtures::introspection_server(calls.clone()).await?;
        let jwt = configs::jwt(issuer, &upstream_url, "RS256", None);
        let cached = start_gateway(&jwt).await?;
        if cached.gateway.telemetry().is_on() {
            // The baseline of the tracing scenarios must trace nothing.
            bail!(
                "tracing is on in the gateways without [telemetry]: unset \
                 OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
            );
        }
        let traced_0 = Traced::start(&jwt, 0.0).await?;
        let traced_1 = Traced::start(&jwt, 1.0).await?;
        let uncached =
            start_gateway(&configs::jwt(issuer, &upstream_url, "RS256", Some(1))).await?;
        let opaque =
            start_gateway(&configs::introspection(&opaque_issuer, &upstream_url, None)).await?;
        let opaque_nc = start_gateway(&configs::introspection(
            &opaque_issuer,
            &upstream_url,
            Some(1),
        ))
        .await?;
        let fake = fixtures::fake_legacy();
        let (legacy, fake_task) = fixtures::serve_legacy(&fake).await?;
        let legacy_url = format!("http://{legacy}");
        let plain = start_gateway(&configs::legacy(issuer, &legacy_url, false, None)).await?;
        let sessions = start_gateway(&configs::legacy(issuer, &legacy_url, true, None)).await?;
        Ok(Servers {
            upstream,
            calls,
            fake,
            legacy,
            fake_task,
            cached,
            uncached,
            traced_0,
            traced_1,
            opaque,
            opaque_nc,
            plain,
            sessions,
        })
    }

    /// Shuts the gateways down (the session gateway logs its sessions out, the tracing ones
    /// export what they still hold) and stops the fake, before the session-store scenarios start
    /// their own.
    async fn shutdown(self) {
        let apps = [
            self.cached,
            self.uncached,
            self.traced_0.app,
            self.traced_1.app,
            self.opaque,
            self.opaque_nc,
            self.plain,
            self.sessions,
        ];
        fixtures::shutdown(apps).await;
        self.fake_task.abort();
    }
}

impl Tokens {
    /// Signs the tokens up front on every core, logs the pre-made sessions in to the fake at
    /// `legacy`, and writes them all to `dir`.
    fn write(
        dir: &Path,
        key: &SigningKey,
        issuer: &str,
        legacy: SocketAddr,
    ) -> anyhow::Result<Tokens> {
        let started = Instant::now();
        let one = fixtures::mint(key, issuer, 1, "one", false)?;
        let many = fixtures::mint(key, issuer, TOKEN_COUNT, "many", false)?;
        let grant_list = fixtures::mint(key, issuer, LEGACY_SESSIONS, "legacy", true)?;
        println!(
            "benches/load: signed {} RS256 tokens in {:.1} s",
            one.len() + many.len() + grant_list.len(),
            started.elapsed().as_secs_f64()
        );
        // The pre-made sessions of `legacy-direct` and `legacy-nosession`.
        let premade = (0..LEGACY_SESSIONS)
            .map(|_| fixtures::legacy_login(legacy))
            .collect::<anyhow::Result<Vec<String>>>()
            .context("logging in to the fake legacy API")?;
        let file = |name: &str, lines: &[String]| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, lines.join("\n") + "\n")?;
            Ok(path)
        };
        Ok(Tokens {
            one: file("tokens-1.txt", &one)?,
            many: file("tokens-10k.txt", &many)?,
            opaque: file("opaque-10k.txt", &fixtures::opaque_tokens(TOKEN_COUNT))?,
            grants: file("legacy-tokens-100.txt", &grant_list)?,
            queued: file("legacy-tokens-queued.txt", &grant_list[..QUEUED_GRANTS])?,
            cookies: file("legacy-cookies-100.txt", &premade)?,
            grant_list,
            premade,
        })
    }
}

/// One scenario before the session-store ones: the preflight, a wrk warm-up, the measured wrk
/// run, and the counters around it.
fn measure(
    s: &Scenario,
    servers: &Servers,
    premade: &[String],
    settings: &Settings,
    wrk: &Wrk,
) -> anyhow::Result<Outcome> {
    let fake = &servers.fake;
    let url = format!("http://{}{}", s.addr, s.path);
    if s.legacy == Some(Legacy::Sessions) {
        // Only tollgate's sessions from here on (the fake looks sessions up by scanning them).
        for cookie in premade {
            fixtures::legacy_logout(servers.legacy, cookie)?;
        }
        let left = fake.counters().seats_in_use;
        if left != 0 {
            bail!("{left} pre-made sessions still live after logging them out");
        }
    }
    let first_line = |file: &Option<PathBuf>| -> anyhow::Result<Option<String>> {
        let Some(file) = file else { return Ok(None) };
        let text = std::fs::read_to_string(file)?;
        Ok(Some(text.lines().next().unwrap_or_default().to_owned()))
    };
    let first_token = first_line(&s.headers.tokens)?;
    let first_cookie = first_line(&s.headers.cookies)?;
    let fake_before = s.legacy.map(|_| fake.counters());
    preflight(
        s.addr,
        s.path,
        first_token.as_deref(),
        first_cookie.as_deref(),
        s.expect,
    )
    .with_context(|| format!("{}: a single request before the load", s.name))?;
    println!("benches/load: {} ({url}): warm-up", s.name);
    wrk.run(&url, &s.headers, WARMUP_SECONDS, &settings.load())?;
    let counters = |admin: SocketAddr| fixtures::cache_counters(admin, s.cache);
    let before = s.admin.map(counters).transpose()?;
    let calls_before = s.calls.as_ref().map(|c| c.load(Ordering::SeqCst));
    let exports_before = s.trace.as_ref().map(|t| t.exports.count());
    let logins_before = fake.counters().logins_ok;
    println!("benches/load: {}: {} s measured", s.name, settings.seconds);
    let (cpu_before, started) = (fixtures::process_cpu_seconds(), Instant::now());
    let output = wrk.run(&url, &s.headers, settings.seconds, &settings.load())?;
    let (cpu_after, wall) = (fixtures::process_cpu_seconds(), started.elapsed());
    let logins_measured = fake.counters().logins_ok - logins_before;
    let calls_after = s.calls.as_ref().map(|c| c.load(Ordering::SeqCst));
    let exports_after = s.trace.as_ref().map(|t| t.exports.count());
    let after = s.admin.map(counters).transpose()?;
    let mut outcome = Outcome::new(s.name, wrk::parse(s.name, &output)?);
    outcome.cpu = cpu_after
        .zip(cpu_before)
        .map(|(a, b)| (a - b, wall.as_secs_f64()));
    outcome.exported = match (&s.trace, exports_before, exports_after) {
        (Some(t), Some(b), Some(a)) => Some(Exported {
            sample_ratio: t.sample_ratio,
            measured: a - b,
            since_start: a,
        }),
        _ => None,
    };
    outcome.cache = match (before, after) {
        (Some(b), Some(a)) if s.headers.tokens.is_some() => Some((a.0 - b.0, a.1 - b.1)),
        _ => None,
    };
    outcome.introspections = calls_after.zip(calls_before).map(|(a, b)| a - b);
    outcome.legacy = match (s.legacy, fake_before) {
        (Some(role), Some(b)) => Some(fixtures::legacy_stats(
            fake,
            role,
            &b,
            logins_measured,
            LEGACY_SESSIONS as u64,
        )),
        _ => None,
    };
    Ok(outcome)
}

/// The scenario must answer 200 with a body containing `expect` before any load is sent.
fn preflight(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    cookie: Option<&str>,
    expect: &str,
) -> anyhow::Result<()> {
    let (status, body) = fixtures::http_get(addr, path, token, cookie)?;
    if status != 200 || !body.contains(expect) {
        bail!("expected 200 with {expect:?} in the body, got {status}: {body}");
    }
    Ok(())
}

// === the session-store scenarios ===

/// What every session-store scenario shares.
struct Fleet<'a> {
    issuer: &'a str,
    tokens: &'a Tokens,
    wrk: &'a Wrk,
    settings: &'a Settings,
    redis: &'a RedisServer,
    /// The `handle_key_file` of every Redis scenario.
    key_file: &'a Path,
}

impl Fleet<'_> {
    /// One session-store scenario: a fresh fake, `replicas` gateways with `[upstream.session]`
    /// (single) and the Redis store when `with_redis` (else memory) in front of it, one wrk
    /// process per gateway at the same time (the connections split evenly) cycling the first
    /// `grants` grants' tokens; the gateways are shut down afterwards.
    fn measure(
        &self,
        runtime: &tokio::runtime::Runtime,
        name: &'static str,
        replicas: u64,
        with_redis: bool,
        grants: usize,
    ) -> anyhow::Result<Outcome> {
        let store = with_redis.then(|| RedisStore {
            url: self.redis.url(),
            key_prefix: format!("tollgate-bench:{name}:"),
            handle_key_file: self.key_file.to_owned(),
            linger: self.settings.store_linger.clone(),
        });
        let fake = fixtures::fake_legacy();
        let (fake_task, started) = runtime.block_on(async {
            let (legacy, fake_task) = fixtures::serve_legacy(&fake).await?;
            let config = configs::legacy(
                self.issuer,
                &format!("http://{legacy}"),
                true,
                store.as_ref(),
            );
            let mut apps = Vec::new();
            for _ in 0..replicas {
                match start_gateway(&config).await {
                    Ok(app) => apps.push(app),
                    Err(e) => return anyhow::Ok((fake_task, Err(e))),
                }
            }
            anyhow::Ok((fake_task, Ok(apps)))
        })?;
        let result = started.and_then(|apps| {
            let redis = with_redis.then_some(self.redis);
            let outcome = self.load(name, &fake, &apps, replicas, redis, grants);
            runtime.block_on(fixtures::shutdown(apps));
            outcome
        });
        fake_task.abort();
        let mut outcome = result?;
        if let Some(l) = outcome.legacy.as_mut() {
            l.seats_after_shutdown = Some(fake.counters().seats_in_use);
        }
        Ok(outcome)
    }

    /// Warms the running `apps` up one request at a time and measures them with one wrk each,
    /// reading the fake's, the token caches' and Redis's counters around the measurement.
    fn load(
        &self,
        name: &'static str,
        fake: &FakeLegacy,
        apps: &[App],
        replicas: u64,
        redis: Option<&RedisServer>,
        grants: usize,
    ) -> anyhow::Result<Outcome> {
        let headers = Headers::tokens(if grants == LEGACY_SESSIONS {
            &self.tokens.grants
        } else {
            &self.tokens.queued
        });
        let urls: Vec<String> = apps
            .iter()
            .map(|app| format!("http://{}{LEGACY_PATH}", app.proxy_addr))
            .collect();
        let loads = self.settings.split(replicas)?;
        let before = fake.counters();
        // The warm-up: every token once on every gateway, one request at a time (every grant
        // logged in, every token in every gateway's cache). Not wrk: its exit cancels requests
        // in flight, which the Redis store does not survive well (see the report).
        println!("benches/load: {name} ({}): warm-up", urls.join(", "));
        for app in apps {
            for token in &self.tokens.grant_list[..grants] {
                preflight(app.proxy_addr, LEGACY_PATH, Some(token), None, LEGACY_BODY)
                    .with_context(|| format!("{name}: the warm-up, one request at a time"))?;
            }
        }
        let cache = |apps: &[App]| -> anyhow::Result<(u64, u64)> {
            apps.iter().try_fold((0, 0), |(h, m), app| {
                let (hits, misses) = fixtures::cache_counters(app.admin_addr, "jwt")?;
                anyhow::Ok((h + hits, m + misses))
            })
        };
        let cache_before = cache(apps)?;
        let logins_before = fake.counters().logins_ok;
        let commands_before = redis.map(RedisServer::commands).transpose()?;
        println!("benches/load: {name}: {} s measured", self.settings.seconds);
        let (cpu_before, started) = (fixtures::process_cpu_seconds(), Instant::now());
        let outputs = self
            .wrk
            .run_all(&urls, &headers, self.settings.seconds, &loads)?;
        let (cpu_after, wall) = (fixtures::process_cpu_seconds(), started.elapsed());
        let commands = redis
            .map(RedisServer::commands)
            .transpose()?
            .zip(commands_before)
            .map(|(a, b)| (a.0 - b.0, a.1 - b.1));
        let logins_measured = fake.counters().logins_ok - logins_before;
        let cache_after = cache(apps)?;
        let mut store_errors = 0;
        for app in apps {
            store_errors += fixtures::store_error_count(app.admin_addr)?;
        }
        let parts = outputs
            .iter()
            .map(|out| wrk::parse(name, out))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut outcome = Outcome::new(name, wrk::combine(parts));
        outcome.cpu = cpu_after
            .zip(cpu_before)
            .map(|(a, b)| (a - b, wall.as_secs_f64()));
        outcome.cache = Some((
            cache_after.0 - cache_before.0,
            cache_after.1 - cache_before.1,
        ));
        outcome.legacy = Some(fixtures::legacy_stats(
            fake,
            Legacy::Store,
            &before,
            logins_measured,
            grants as u64,
        ));
        outcome.store_errors = Some(store_errors);
        let requests = outcome.wrk.requests.max(1) as f64;
        outcome.store_commands =
            commands.map(|(c, cpu)| (c as f64 / requests, 1e6 * cpu / requests));
        Ok(outcome)
    }
}
