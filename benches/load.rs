//! Load benchmark: wrk against a minimal upstream directly and through tollgate, on loopback, in
//! one run, so that the numbers are side by side on the same machine at the same moment.
//!
//! ```text
//! cargo bench --bench load                      # needs wrk and redis-server on PATH
//! LOAD_SECONDS=30 LOAD_CONNECTIONS=128 cargo bench --bench load
//! ```
//!
//! Everything runs in this process on 127.0.0.1 (one multi-threaded tokio runtime): a JWKS server,
//! a minimal RFC 7662 introspection server, the upstream (hyper, 200 with a ~100-byte JSON body),
//! the fake legacy API ([`tollgate::demo::legacy::FakeLegacy`], `max_api_users = 300`) and six
//! gateways started with [`tollgate::App::start`]: JWT with the default token cache and with
//! `token_cache_capacity = 1`, introspection with the default introspection cache and with
//! `cache_capacity = 1`, and JWT in front of the fake without and with `[upstream.session]`. No
//! tracing subscriber is installed, so the gateways log nothing.
//! Scenarios, each a 2 s warm-up and then `wrk -t2 -c64 -d10s --latency`:
//!
//! | scenario                 | what                                                              |
//! |--------------------------|-------------------------------------------------------------------|
//! | `direct`                 | the upstream, without tollgate                                    |
//! | `public`                 | tollgate, public route (`auth = "none"`)                          |
//! | `jwt-one-token`          | tollgate, route with `scopes = ["api"]`, one RS256 token reused   |
//! | `jwt-10k-tokens`         | same route, 10,000 distinct tokens cycled by `benches/tokens.lua` |
//! | `jwt-10k-no-cache`       | same, `token_cache_capacity = 1` (a signature check each)         |
//! | `introspection-cached`   | `validation = "introspection"`, 10,000 opaque tokens cycled       |
//! | `introspection-uncached` | same, `[issuer.introspection] cache_capacity = 1` (a call each)   |
//! | `legacy-direct`          | the fake's `GET …/Echo`, 100 pre-made sessions' cookies cycled    |
//! | `legacy-nosession`       | tollgate (no session layer), 100 tokens each with its cookies     |
//! | `legacy-sessions`        | tollgate with `[upstream.session]` (single), 100 grants, no cookie |
//! | `sessions-memory-1`      | the same setup again, a fresh fake and gateway                    |
//! | `sessions-redis-1`       | the same with `[store] kind = "redis"`                            |
//! | `sessions-redis-2`       | two such gateways sharing the Redis, two wrk `-t1 -c32` at once   |
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
//! The table is printed and written to `target/bench-results.md`, with the introspection
//! scenarios' req/s relative to `jwt-10k-tokens`, their introspection calls (counted by the
//! introspection server), every token scenario's cache hit rate, the cost of the session layer
//! (`legacy-sessions` against `legacy-nosession`), the fake's login and leak counters, and the
//! session store's ratios (`sessions-redis-1` / `sessions-memory-1`, `sessions-redis-2` /
//! `sessions-redis-1`). A scenario with non-2xx responses or socket errors is flagged in the
//! table and makes the run fail, and so does a leak counter above 0 (or concurrency above 1 on
//! one session) in `legacy-sessions` and the `sessions-*` scenarios, a login count other than 100
//! or a store error in the `sessions-*` scenarios.
//!
//! Without `--bench` in its arguments (which `cargo bench` passes) the binary only prints how to
//! run it, so `cargo test --all-targets` never starts a load test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::Algorithm;
use serde_json::json;
use tokio::net::TcpListener;
use tollgate::demo::keys::{self, SigningKey};
use tollgate::demo::legacy::{self, Counters, FakeLegacy, LegacyOptions};
use tollgate::{App, Listeners};

/// The environment variable that names the token file for `benches/tokens.lua`.
const TOKENS_ENV: &str = "TOLLGATE_BENCH_TOKENS";
/// The environment variable that names the `Cookie` file for `benches/tokens.lua`.
const COOKIES_ENV: &str = "TOLLGATE_BENCH_COOKIES";
/// The environment variable added to `benches/tokens.lua`'s thread numbers (its start offsets).
const THREAD_BASE_ENV: &str = "TOLLGATE_BENCH_THREAD_BASE";
/// The path requested on the protected route (and directly on the upstream).
const API_PATH: &str = "/api/orders/24.200.001";
/// The path requested on the public route.
const PUBLIC_PATH: &str = "/public/orders/24.200.001";
/// The upstream's answer to everything: 100 bytes of JSON.
const UPSTREAM_BODY: &str = r#"{"order":"24.200.001","customer":"C-1042","status":"open","total":"1234.56","currency":"EUR","n":3}"#;
/// How many distinct tokens the 10k scenarios cycle through.
const TOKEN_COUNT: usize = 10_000;
/// The introspection client's credentials (`client_secret_basic`); URL-safe, so the Basic header
/// is `base64(id:secret)` as is.
const INTROSPECTION_CLIENT_ID: &str = "tollgate-bench";
const INTROSPECTION_SECRET: &str = "bench-secret-0001";
/// The scenario the introspection scenarios are compared with.
const JWT_BASELINE: &str = "jwt-10k-tokens";
const WARMUP_SECONDS: u64 = 2;
/// The fake legacy API's data endpoint the legacy scenarios request.
const LEGACY_PATH: &str = "/entity/Default/24.200.001/Echo";
/// What its answer contains (for the preflight).
const LEGACY_BODY: &str = r#""user":"admin""#;
/// The active login body (the fake's default user).
const LEGACY_LOGIN: &str = r#"{"name":"admin","password":"123","tenant":"MyStore","branch":"HQ"}"#;
/// How many sessions (pre-made, and grants) the legacy scenarios cycle through.
const LEGACY_SESSIONS: usize = 100;
/// The fake's seat limit.
const LEGACY_SEATS: u32 = 300;
/// The scenarios compared for the cost of the session layer.
const SESSIONS_BASELINE: &str = "legacy-nosession";
const SESSIONS_SCENARIO: &str = "legacy-sessions";
/// The session-store scenarios: the session layer with the memory store (one gateway) and with
/// Redis (one gateway, two gateways sharing it), each in front of a fresh fake.
const STORE_MEMORY: &str = "sessions-memory-1";
const STORE_REDIS_1: &str = "sessions-redis-1";
const STORE_REDIS_2: &str = "sessions-redis-2";
/// The Redis persistence the bench runs redis-server with.
const REDIS_PERSISTENCE: &str = "--save \"\" --appendonly yes --appendfsync everysec";

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/load is a wrk load benchmark; run it with `cargo bench --bench load`");
        return;
    }
    if let Err(e) = run() {
        eprintln!("benches/load: {e:#}");
        std::process::exit(1);
    }
}

/// The knobs, from the environment.
struct Settings {
    seconds: u64,
    connections: u64,
    threads: u64,
    /// `LOAD_SCENARIOS`: the scenarios to measure (comma-separated names); all when unset.
    only: Option<Vec<String>>,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let num = |name: &str, default: u64| -> anyhow::Result<u64> {
            match std::env::var(name) {
                Ok(v) => match v.trim().parse::<u64>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => bail!("{name}={v}: expected a positive integer"),
                },
                Err(_) => Ok(default),
            }
        };
        let s = Settings {
            seconds: num("LOAD_SECONDS", 10)?,
            connections: num("LOAD_CONNECTIONS", 64)?,
            threads: num("LOAD_THREADS", 2)?,
            only: std::env::var("LOAD_SCENARIOS").ok().map(|v| {
                v.split(',')
                    .map(|n| n.trim().to_owned())
                    .filter(|n| !n.is_empty())
                    .collect()
            }),
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
    fn selected(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|n| n == name))
    }

    /// wrk's load for one scenario spread over `replicas` wrk processes: each gets its share of
    /// the threads (at least one) and connections, and thread numbers following the previous
    /// process's.
    fn split(&self, replicas: u64) -> anyhow::Result<Vec<WrkLoad>> {
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

    fn load(&self) -> WrkLoad {
        WrkLoad {
            threads: self.threads,
            connections: self.connections,
            thread_base: 0,
        }
    }
}

/// One wrk process's `-t` and `-c`, and the number of its first thread for `benches/tokens.lua`.
struct WrkLoad {
    threads: u64,
    connections: u64,
    thread_base: u64,
}

/// What `benches/tokens.lua` sends per request: a bearer token from `tokens` and/or a `Cookie`
/// from `cookies` (line i with line i). Neither: no script.
#[derive(Default)]
struct Headers {
    tokens: Option<PathBuf>,
    cookies: Option<PathBuf>,
}

impl Headers {
    fn tokens(file: &Path) -> Headers {
        Headers {
            tokens: Some(file.to_owned()),
            cookies: None,
        }
    }

    fn any(&self) -> bool {
        self.tokens.is_some() || self.cookies.is_some()
    }
}

/// The role of a scenario against the fake legacy API.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Legacy {
    Direct,
    NoSession,
    /// Through the session layer: the pre-made sessions are logged out first.
    Sessions,
    /// Through the session layer in front of a fake of its own (the session-store scenarios).
    Store,
}

impl Legacy {
    /// Whether tollgate's session layer holds the fake's sessions (the checked scenarios).
    fn through_sessions(self) -> bool {
        matches!(self, Legacy::Sessions | Legacy::Store)
    }
}

/// The fake's counters over one legacy scenario (from its preflight to the end of its
/// measurement).
struct LegacyStats {
    role: Legacy,
    logins: u64,
    /// Logins during the measurement only.
    logins_measured: u64,
    mixed_session_cookies: u64,
    foreign_cookie: u64,
    authorization_header_seen: u64,
    /// `Sessions`: the highest `max_in_flight` of tollgate's own sessions; `Store`: that or the
    /// fake's `max_concurrency_per_session`, whichever is higher (every session of its fake is
    /// tollgate's); otherwise the fake's `max_concurrency_per_session` so far (cumulative).
    max_concurrency: u64,
    /// `Store`: the fake's live sessions after the gateways' shutdown.
    seats_after_shutdown: Option<u64>,
}

impl LegacyStats {
    fn leaks(&self) -> u64 {
        self.mixed_session_cookies + self.foreign_cookie + self.authorization_header_seen
    }
}

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
}

/// One scenario's measurement.
struct Outcome {
    name: &'static str,
    rps: f64,
    mean_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    non_2xx: u64,
    socket_errors: Option<String>,
    /// Token-cache hits and misses during the measurement.
    cache: Option<(u64, u64)>,
    /// Introspection calls during the measurement.
    introspections: Option<u64>,
    /// The fake legacy API's counters, for the legacy scenarios.
    legacy: Option<LegacyStats>,
    /// `tollgate_store_errors_total` of the gateways, from their start to the end of the
    /// measurement (the session-store scenarios).
    store_errors: Option<u64>,
    /// Redis commands (a script call counts as one, plus the commands it runs) and Redis CPU
    /// µs per request while measured (the Redis session-store scenarios).
    store_commands: Option<(f64, f64)>,
}

fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let wrk_version = wrk_version()?;
    let redis_version = redis_version()?;
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = manifest_dir.join("benches/tokens.lua");
    if !script.is_file() {
        bail!("{} is missing", script.display());
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let workers = runtime.metrics().num_workers();
    let dir = tempfile::tempdir().context("temporary directory")?;
    // Started up front so that a missing redis-server fails the run at once; killed on drop.
    let redis = RedisServer::start(&dir.path().join("redis"))?;

    let key = SigningKey::rsa("bench-k1", Algorithm::RS256).map_err(anyhow::Error::msg)?;
    let jwks = Bytes::from(keys::jwks(&[&key]).to_string());

    // The servers: JWKS, introspection, upstream, the fake legacy API, and the gateways (JWT and
    // introspection, each with the default cache and with a cache of one entry; JWT in front of
    // the fake without and with the session layer).
    let calls = Arc::new(AtomicU64::new(0));
    // wrk replays fixed cookies and cannot follow renewed ones: no renewals, in every legacy
    // scenario alike.
    let fake = FakeLegacy::new(LegacyOptions {
        max_api_users: LEGACY_SEATS,
        renew_auth_every: 0,
        ..LegacyOptions::default()
    });
    let (issuer, upstream_addr, cached, uncached, opaque, opaque_nc) = runtime.block_on(async {
        let jwks_listener = TcpListener::bind("127.0.0.1:0").await?;
        let issuer = format!("http://{}", jwks_listener.local_addr()?);
        spawn_server(jwks_listener, move |path| match path {
            "/jwks" => (StatusCode::OK, jwks.clone()),
            _ => (StatusCode::NOT_FOUND, Bytes::from_static(b"{}")),
        });
        let upstream_listener = TcpListener::bind("127.0.0.1:0").await?;
        let upstream_addr = upstream_listener.local_addr()?;
        spawn_server(upstream_listener, |_| {
            (StatusCode::OK, Bytes::from_static(UPSTREAM_BODY.as_bytes()))
        });
        let upstream = format!("http://{upstream_addr}");
        let introspection_listener = TcpListener::bind("127.0.0.1:0").await?;
        let opaque_issuer = format!("http://{}", introspection_listener.local_addr()?);
        spawn_introspection(introspection_listener, opaque_issuer.clone(), calls.clone());
        let cached = start_gateway(&gateway_config(&issuer, &upstream, None)).await?;
        let uncached = start_gateway(&gateway_config(&issuer, &upstream, Some(1))).await?;
        let opaque = start_gateway(&introspection_config(&opaque_issuer, &upstream, None)).await?;
        let opaque_nc =
            start_gateway(&introspection_config(&opaque_issuer, &upstream, Some(1))).await?;
        anyhow::Ok((issuer, upstream_addr, cached, uncached, opaque, opaque_nc))
    })?;
    let (legacy_addr, fake_task, plain, sessions) = runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let legacy_addr = listener.local_addr()?;
        let fake_task = fake.spawn(listener);
        let legacy = format!("http://{legacy_addr}");
        let plain = start_gateway(&legacy_config(&issuer, &legacy, false, None)).await?;
        let sessions = start_gateway(&legacy_config(&issuer, &legacy, true, None)).await?;
        anyhow::Ok((legacy_addr, fake_task, plain, sessions))
    })?;

    // The tokens, signed up front on every core.
    let started = Instant::now();
    let one = mint(&key, &issuer, 1, "one", false)?;
    let many = mint(&key, &issuer, TOKEN_COUNT, "many", false)?;
    let grants = mint(&key, &issuer, LEGACY_SESSIONS, "legacy", true)?;
    println!(
        "benches/load: signed {} RS256 tokens in {:.1} s",
        one.len() + many.len() + grants.len(),
        started.elapsed().as_secs_f64()
    );
    // The pre-made sessions of `legacy-direct` and `legacy-nosession`.
    let premade = (0..LEGACY_SESSIONS)
        .map(|_| legacy_login(legacy_addr))
        .collect::<anyhow::Result<Vec<String>>>()
        .context("logging in to the fake legacy API")?;
    let one_file = dir.path().join("tokens-1.txt");
    let many_file = dir.path().join("tokens-10k.txt");
    let opaque_file = dir.path().join("opaque-10k.txt");
    std::fs::write(&one_file, one.join("\n") + "\n")?;
    std::fs::write(&many_file, many.join("\n") + "\n")?;
    std::fs::write(&opaque_file, opaque_tokens(TOKEN_COUNT).join("\n") + "\n")?;
    let grants_file = dir.path().join("legacy-tokens-100.txt");
    let cookies_file = dir.path().join("legacy-cookies-100.txt");
    std::fs::write(&grants_file, grants.join("\n") + "\n")?;
    std::fs::write(&cookies_file, premade.join("\n") + "\n")?;

    let scenarios = [
        Scenario {
            name: "direct",
            addr: upstream_addr,
            path: API_PATH,
            headers: Headers::default(),
            expect: UPSTREAM_BODY,
            admin: None,
            cache: "jwt",
            calls: None,
            legacy: None,
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
        },
        Scenario {
            name: "jwt-one-token",
            addr: cached.proxy_addr,
            path: API_PATH,
            headers: Headers::tokens(&one_file),
            expect: UPSTREAM_BODY,
            admin: Some(cached.admin_addr),
            cache: "jwt",
            calls: None,
            legacy: None,
        },
        Scenario {
            name: "jwt-10k-tokens",
            addr: cached.proxy_addr,
            path: API_PATH,
            headers: Headers::tokens(&many_file),
            expect: UPSTREAM_BODY,
            admin: Some(cached.admin_addr),
            cache: "jwt",
            calls: None,
            legacy: None,
        },
        Scenario {
            name: "jwt-10k-no-cache",
            addr: uncached.proxy_addr,
            path: API_PATH,
            headers: Headers::tokens(&many_file),
            expect: UPSTREAM_BODY,
            admin: Some(uncached.admin_addr),
            cache: "jwt",
            calls: None,
            legacy: None,
        },
        Scenario {
            name: "introspection-cached",
            addr: opaque.proxy_addr,
            path: API_PATH,
            headers: Headers::tokens(&opaque_file),
            expect: UPSTREAM_BODY,
            admin: Some(opaque.admin_addr),
            cache: "introspection",
            calls: Some(calls.clone()),
            legacy: None,
        },
        Scenario {
            name: "introspection-uncached",
            addr: opaque_nc.proxy_addr,
            path: API_PATH,
            headers: Headers::tokens(&opaque_file),
            expect: UPSTREAM_BODY,
            admin: Some(opaque_nc.admin_addr),
            cache: "introspection",
            calls: Some(calls),
            legacy: None,
        },
        Scenario {
            name: "legacy-direct",
            addr: legacy_addr,
            path: LEGACY_PATH,
            headers: Headers {
                tokens: None,
                cookies: Some(cookies_file.clone()),
            },
            expect: LEGACY_BODY,
            admin: None,
            cache: "jwt",
            calls: None,
            legacy: Some(Legacy::Direct),
        },
        Scenario {
            name: SESSIONS_BASELINE,
            addr: plain.proxy_addr,
            path: LEGACY_PATH,
            headers: Headers {
                tokens: Some(grants_file.clone()),
                cookies: Some(cookies_file),
            },
            expect: LEGACY_BODY,
            admin: Some(plain.admin_addr),
            cache: "jwt",
            calls: None,
            legacy: Some(Legacy::NoSession),
        },
        Scenario {
            name: SESSIONS_SCENARIO,
            addr: sessions.proxy_addr,
            path: LEGACY_PATH,
            headers: Headers::tokens(&grants_file),
            expect: LEGACY_BODY,
            admin: Some(sessions.admin_addr),
            cache: "jwt",
            calls: None,
            legacy: Some(Legacy::Sessions),
        },
    ];

    let mut outcomes = Vec::new();
    for s in &scenarios {
        if !settings.selected(s.name) {
            continue;
        }
        let url = format!("http://{}{}", s.addr, s.path);
        if s.legacy == Some(Legacy::Sessions) {
            // Only tollgate's sessions from here on (the fake looks sessions up by scanning them).
            for cookie in &premade {
                legacy_logout(legacy_addr, cookie)?;
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
        wrk(&url, &script, &s.headers, WARMUP_SECONDS, &settings.load())?;
        let counters = |admin: SocketAddr| cache_counters(admin, s.cache);
        let before = s.admin.map(counters).transpose()?;
        let calls_before = s.calls.as_ref().map(|c| c.load(Ordering::SeqCst));
        let logins_before = fake.counters().logins_ok;
        println!("benches/load: {}: {} s measured", s.name, settings.seconds);
        let output = wrk(
            &url,
            &script,
            &s.headers,
            settings.seconds,
            &settings.load(),
        )?;
        let logins_measured = fake.counters().logins_ok - logins_before;
        let calls_after = s.calls.as_ref().map(|c| c.load(Ordering::SeqCst));
        let after = s.admin.map(counters).transpose()?;
        let cache = match (before, after) {
            (Some(b), Some(a)) if s.headers.tokens.is_some() => Some((a.0 - b.0, a.1 - b.1)),
            _ => None,
        };
        let mut outcome = parse_wrk(s.name, &output, cache)?;
        outcome.introspections = calls_after.zip(calls_before).map(|(a, b)| a - b);
        outcome.legacy = match (s.legacy, fake_before) {
            (Some(role), Some(b)) => Some(legacy_stats(&fake, role, &b, logins_measured)),
            _ => None,
        };
        outcomes.push(outcome);
    }
    runtime.block_on(async {
        for app in [cached, uncached, opaque, opaque_nc, plain, sessions] {
            // The session gateway logs out its sessions at shutdown (within 10 s).
            let _ = tokio::time::timeout(Duration::from_secs(12), app.shutdown()).await;
        }
        fake_task.abort();
    });

    // The session-store scenarios, each with a fresh fake and fresh gateways.
    let key_file = dir.path().join("handle.key");
    let key: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    std::fs::write(&key_file, key + "\n")?;
    let fleet = Fleet {
        issuer: &issuer,
        grants: &grants_file,
        tokens: &grants,
        script: &script,
        settings: &settings,
    };
    for (name, replicas, store) in [
        (STORE_MEMORY, 1, None),
        (STORE_REDIS_1, 1, Some(redis.url())),
        (STORE_REDIS_2, 2, Some(redis.url())),
    ] {
        if !settings.selected(name) {
            continue;
        }
        let store = store.map(|url| RedisStore {
            url,
            key_prefix: format!("tollgate-bench:{name}:"),
            handle_key_file: key_file.clone(),
        });
        let outcome = fleet
            .measure(&runtime, name, replicas, store.as_ref())
            .with_context(|| name.to_owned())?;
        outcomes.push(outcome);
    }
    let redis_port = redis.port;
    drop(redis);

    let store = StoreInfo {
        redis_version: &redis_version,
        redis_port,
        split: settings.split(2)?,
    };
    let report = report(&outcomes, &settings, workers, &wrk_version, &store);
    println!("\n{report}");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir.join("target"));
    std::fs::create_dir_all(&target)?;
    let results = target.join("bench-results.md");
    std::fs::write(&results, &report).with_context(|| results.display().to_string())?;
    println!("benches/load: written to {}", results.display());

    runtime.shutdown_timeout(Duration::from_secs(2));

    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| {
            let leaked = o.legacy.as_ref().is_some_and(|l| {
                l.role.through_sessions()
                    && (l.leaks() > 0
                        || l.max_concurrency > 1
                        || (l.role == Legacy::Store && l.logins != LEGACY_SESSIONS as u64))
            });
            o.non_2xx > 0
                || o.socket_errors.is_some()
                || o.store_errors.is_some_and(|n| n > 0)
                || leaked
        })
        .map(|o| o.name)
        .collect();
    if !failed.is_empty() {
        bail!(
            "errors under load (non-2xx, socket errors, store errors, session leaks, extra \
             logins) in: {}",
            failed.join(", ")
        );
    }
    Ok(())
}

// === the session-store scenarios ===

/// What every session-store scenario shares.
struct Fleet<'a> {
    issuer: &'a str,
    /// The 100 grants' tokens, one a line, and the same in a list.
    grants: &'a Path,
    tokens: &'a [String],
    script: &'a Path,
    settings: &'a Settings,
}

/// `[store] kind = "redis"` for one scenario.
struct RedisStore {
    url: String,
    /// Its own per scenario, so that no scenario finds another's sessions.
    key_prefix: String,
    handle_key_file: PathBuf,
}

/// For the report.
struct StoreInfo<'a> {
    redis_version: &'a str,
    redis_port: u16,
    /// The wrk processes of `sessions-redis-2`.
    split: Vec<WrkLoad>,
}

impl Fleet<'_> {
    /// One session-store scenario: a fresh fake, `replicas` gateways with `[upstream.session]`
    /// (single) and `store` (`None`: memory) in front of it, one wrk process per gateway at the
    /// same time (the connections split evenly); the gateways are shut down afterwards.
    fn measure(
        &self,
        runtime: &tokio::runtime::Runtime,
        name: &'static str,
        replicas: u64,
        store: Option<&RedisStore>,
    ) -> anyhow::Result<Outcome> {
        let fake = FakeLegacy::new(LegacyOptions {
            max_api_users: LEGACY_SEATS,
            renew_auth_every: 0,
            ..LegacyOptions::default()
        });
        let (fake_task, started) = runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let legacy = format!("http://{}", listener.local_addr()?);
            let fake_task = fake.spawn(listener);
            let config = legacy_config(self.issuer, &legacy, true, store);
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
            let redis = store.and_then(|s| {
                s.url
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.split('/').next())
                    .and_then(|p| p.parse().ok())
            });
            let outcome = self.load(name, &fake, &apps, replicas, redis);
            runtime.block_on(async {
                for app in apps {
                    let _ = tokio::time::timeout(Duration::from_secs(12), app.shutdown()).await;
                }
            });
            outcome
        });
        fake_task.abort();
        let mut outcome = result?;
        if let Some(l) = outcome.legacy.as_mut() {
            l.seats_after_shutdown = Some(fake.counters().seats_in_use);
        }
        Ok(outcome)
    }

    fn load(
        &self,
        name: &'static str,
        fake: &FakeLegacy,
        apps: &[App],
        replicas: u64,
        redis: Option<u16>,
    ) -> anyhow::Result<Outcome> {
        let headers = Headers::tokens(self.grants);
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
            for token in self.tokens {
                preflight(app.proxy_addr, LEGACY_PATH, Some(token), None, LEGACY_BODY)
                    .with_context(|| format!("{name}: the warm-up, one request at a time"))?;
            }
        }
        let cache = |apps: &[App]| -> anyhow::Result<(u64, u64)> {
            apps.iter().try_fold((0, 0), |(h, m), app| {
                let (hits, misses) = cache_counters(app.admin_addr, "jwt")?;
                anyhow::Ok((h + hits, m + misses))
            })
        };
        let cache_before = cache(apps)?;
        let logins_before = fake.counters().logins_ok;
        let commands_before = redis.map(redis_commands).transpose()?;
        println!("benches/load: {name}: {} s measured", self.settings.seconds);
        let outputs = wrk_all(&urls, self.script, &headers, self.settings.seconds, &loads)?;
        let commands = redis
            .map(redis_commands)
            .transpose()?
            .zip(commands_before)
            .map(|(a, b)| (a.0 - b.0, a.1 - b.1));
        let logins_measured = fake.counters().logins_ok - logins_before;
        let cache_after = cache(apps)?;
        let mut store_errors = 0;
        for app in apps {
            store_errors += store_error_count(app.admin_addr)?;
        }
        let parts = outputs
            .iter()
            .map(|out| parse_wrk(name, out, None))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut outcome = combine(name, parts);
        outcome.cache = Some((
            cache_after.0 - cache_before.0,
            cache_after.1 - cache_before.1,
        ));
        outcome.legacy = Some(legacy_stats(fake, Legacy::Store, &before, logins_measured));
        outcome.store_errors = Some(store_errors);
        let requests = outcome.requests.max(1) as f64;
        outcome.store_commands =
            commands.map(|(c, cpu)| (c as f64 / requests, 1e6 * cpu / requests));
        Ok(outcome)
    }
}

/// Several wrk processes' measurements of one scenario as one: requests, req/s and non-2xx
/// summed, the mean weighted by requests, p50 and p99 the worse of them (percentiles cannot be
/// merged from wrk's summaries), socket errors listed per process.
fn combine(name: &'static str, parts: Vec<Outcome>) -> Outcome {
    let requests: u64 = parts.iter().map(|o| o.requests).sum();
    let weighted: f64 = parts.iter().map(|o| o.mean_ms * o.requests as f64).sum();
    let socket_errors: Vec<String> = parts
        .iter()
        .enumerate()
        .filter_map(|(i, o)| Some(format!("wrk {}: {}", i + 1, o.socket_errors.as_ref()?)))
        .collect();
    Outcome {
        name,
        rps: parts.iter().map(|o| o.rps).sum(),
        mean_ms: weighted / requests.max(1) as f64,
        p50_ms: parts.iter().map(|o| o.p50_ms).fold(0.0, f64::max),
        p99_ms: parts.iter().map(|o| o.p99_ms).fold(0.0, f64::max),
        requests,
        non_2xx: parts.iter().map(|o| o.non_2xx).sum(),
        socket_errors: if parts.len() == 1 || socket_errors.is_empty() {
            parts.into_iter().next().and_then(|o| o.socket_errors)
        } else {
            Some(socket_errors.join("; "))
        },
        cache: None,
        introspections: None,
        legacy: None,
        store_errors: None,
        store_commands: None,
    }
}

/// A redis-server of the bench's own on a free 127.0.0.1 port, with an append-only file
/// (`REDIS_PERSISTENCE`) in `dir`; killed on drop.
struct RedisServer {
    port: u16,
    child: std::process::Child,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RedisServer {
    fn start(dir: &Path) -> anyhow::Result<RedisServer> {
        std::fs::create_dir_all(dir)?;
        // redis-server cannot take port 0 and report it: find a free port, then start on it
        // (again if another process took it in between).
        for _ in 0..20 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "everysec",
                ])
                .arg("--dir")
                .arg(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("redis-server is not installed (apt-get install redis-server)")?;
            let mut server = RedisServer { port, child };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if server.ping() {
                    return Ok(server);
                }
                if server.child.try_wait()?.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        bail!("could not start redis-server on a free port")
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

/// `redis-server --version`'s `v=…`.
/// The Redis server's processed-command count and CPU seconds (user + system) so far.
fn redis_commands(port: u16) -> anyhow::Result<(u64, f64)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"INFO everything\r\n")?;
    let mut text = String::new();
    let mut buf = vec![0u8; 64 * 1024];
    // Read until the reply's last section is in (the bulk string is a few KiB).
    while !text.contains("# Keyspace") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .map(str::to_owned)
    };
    let commands = field("total_commands_processed:")
        .and_then(|v| v.parse().ok())
        .context("INFO without total_commands_processed")?;
    let cpu = |name: &str| {
        field(name)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((commands, cpu("used_cpu_user:") + cpu("used_cpu_sys:")))
}

fn redis_version() -> anyhow::Result<String> {
    let out = Command::new("redis-server")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .context("redis-server is not installed (apt-get install redis-server)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .unwrap_or("unknown")
        .to_owned())
}

// === the servers ===

/// Serves HTTP/1.1 on `listener`, answering every request with `respond(path)` as JSON.
fn spawn_server<F>(listener: TcpListener, respond: F)
where
    F: Fn(&str) -> (StatusCode, Bytes) + Send + Sync + 'static,
{
    let respond = Arc::new(respond);
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let respond = respond.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (status, body) = respond(req.uri().path());
                    let mut resp = Response::new(Full::new(body));
                    *resp.status_mut() = status;
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("application/json"),
                    );
                    std::future::ready(Ok::<_, Infallible>(resp))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

/// A minimal RFC 7662 introspection endpoint at `POST /introspect`: it counts every call, wants
/// `client_secret_basic` with the bench's credentials (else 401 `invalid_client`), and answers
/// `active: true` (scope and aud `api`, `iss` = `issuer`, one hour left) for every form `token`
/// starting with `opaque-`, `active: false` for anything else.
fn spawn_introspection(listener: TcpListener, issuer: String, calls: Arc<AtomicU64>) {
    let expected = Arc::new(format!(
        "Basic {}",
        STANDARD.encode(format!("{INTROSPECTION_CLIENT_ID}:{INTROSPECTION_SECRET}"))
    ));
    let issuer = Arc::new(issuer);
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (expected, issuer, calls) = (expected.clone(), issuer.clone(), calls.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (expected, issuer, calls) =
                        (expected.clone(), issuer.clone(), calls.clone());
                    async move {
                        let (status, answer) = introspect(req, &expected, &issuer, &calls).await;
                        let mut resp = Response::new(Full::new(Bytes::from(answer.to_string())));
                        *resp.status_mut() = status;
                        resp.headers_mut().insert(
                            header::CONTENT_TYPE,
                            header::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

/// One introspection request: the status and the JSON answer.
async fn introspect(
    req: Request<Incoming>,
    expected_auth: &str,
    issuer: &str,
    calls: &AtomicU64,
) -> (StatusCode, serde_json::Value) {
    if req.method() != http::Method::POST || req.uri().path() != "/introspect" {
        return (StatusCode::NOT_FOUND, json!({}));
    }
    calls.fetch_add(1, Ordering::Relaxed);
    let authorized = req
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == expected_auth.as_bytes());
    let Ok(body) = req.into_body().collect().await else {
        return (StatusCode::BAD_REQUEST, json!({"error": "invalid_request"}));
    };
    if !authorized {
        return (StatusCode::UNAUTHORIZED, json!({"error": "invalid_client"}));
    }
    let body = body.to_bytes();
    let token = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if !token.starts_with("opaque-") {
        return (StatusCode::OK, json!({"active": false}));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (
        StatusCode::OK,
        json!({
            "active": true, "scope": "api", "aud": "api", "iss": issuer, "sub": "bench-user",
            "client_id": "bench", "token_type": "Bearer", "iat": now, "exp": now + 3600,
        }),
    )
}

/// `count` distinct opaque tokens, `opaque-<32 hex digits>` (random, then the index).
fn opaque_tokens(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("opaque-{:016x}{i:016x}", rand::random::<u64>()))
        .collect()
}

/// The gateway configuration: one issuer (the in-process JWKS server), one upstream, a public
/// route and a protected one.
fn gateway_config(issuer: &str, upstream: &str, cache_capacity: Option<u64>) -> String {
    let cache = cache_capacity
        .map(|n| format!("token_cache_capacity = {n}"))
        .unwrap_or_default();
    format!(
        r#"
[server]
realm = "tollgate"
{cache}

[log]
level = "error"

[[issuer]]
id = "bench"
issuer = "{issuer}"
jwks_uri = "{issuer}/jwks"
audiences = ["api"]
algorithms = ["RS256"]

[[upstream]]
id = "backend"
url = "{upstream}"

[[route]]
id = "public"
prefix = "/public/"
upstream = "backend"
auth = "none"

[[route]]
id = "api"
prefix = "/api/"
methods = ["GET", "HEAD"]
upstream = "backend"
scopes = ["api"]
"#
    )
}

/// The introspection gateway's configuration: one issuer validated by introspection only
/// (`client_secret_basic`), one upstream, the protected route; `cache_capacity` for
/// `[issuer.introspection]` (`None`: the default).
fn introspection_config(issuer: &str, upstream: &str, cache_capacity: Option<u64>) -> String {
    let cache = cache_capacity
        .map(|n| format!("cache_capacity = {n}"))
        .unwrap_or_default();
    format!(
        r#"
[server]
realm = "tollgate"

[log]
level = "error"

[[issuer]]
id = "opaque"
issuer = "{issuer}"
audiences = ["api"]
validation = "introspection"

[issuer.introspection]
endpoint = "{issuer}/introspect"
client_id = "{INTROSPECTION_CLIENT_ID}"
client_secret = "{INTROSPECTION_SECRET}"
auth_method = "client_secret_basic"
{cache}

[[upstream]]
id = "backend"
url = "{upstream}"

[[route]]
id = "api"
prefix = "/api/"
methods = ["GET", "HEAD"]
upstream = "backend"
scopes = ["api"]
"#
    )
}

/// The legacy gateways' configuration: the bench issuer, the fake legacy API as upstream, one
/// bearer route to it; with `sessions`, `[upstream.session]` in single mode (active logins with
/// the fake's default user, the default `grant_key`: the tokens' `grant_id` claim); with `store`,
/// `[store] kind = "redis"` (default `timeout` and `lease_ttl`) and the `handle_key_file` it needs.
fn legacy_config(issuer: &str, legacy: &str, sessions: bool, store: Option<&RedisStore>) -> String {
    let (store, key_file) = match store {
        Some(s) => (
            format!(
                "\n[store]\nkind = \"redis\"\nurl = \"{}\"\nkey_prefix = \"{}\"\n",
                s.url, s.key_prefix
            ),
            format!("handle_key_file = \"{}\"\n", s.handle_key_file.display()),
        ),
        None => (String::new(), String::new()),
    };
    let session = if sessions {
        format!(
            r#"
[upstream.session]
mode = "single"
max_upstream_sessions = 200
idle_ttl = "300s"
{key_file}
[upstream.session.credentials]
name = "admin"
password = "123"
tenant = "MyStore"
branch = "HQ"
"#
        )
    } else {
        String::new()
    };
    format!(
        r#"
[server]
realm = "tollgate"

[log]
level = "error"
{store}
[[issuer]]
id = "bench"
issuer = "{issuer}"
jwks_uri = "{issuer}/jwks"
audiences = ["api"]
algorithms = ["RS256"]

[[upstream]]
id = "legacy"
url = "{legacy}"
{session}
[[route]]
id = "legacy"
prefix = "/entity/Default/"
methods = ["GET", "HEAD"]
upstream = "legacy"
scopes = ["api"]
"#
    )
}

/// Starts a gateway on ephemeral loopback listeners and waits (up to 10 s) until it is ready (has
/// keys, knows its introspection endpoint).
async fn start_gateway(toml: &str) -> anyhow::Result<App> {
    let config =
        tollgate::config::from_toml_str(toml).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    let app = App::start(&config, Listeners::ephemeral().await?)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !app.gateway.is_ready() {
        if tokio::time::Instant::now() > deadline {
            bail!("the gateway was not ready (JWKS, introspection endpoint) within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(app)
}

/// Signs `count` distinct valid tokens (scope `api`, one hour), on every core; with `grants`,
/// each with its own `grant_id` claim.
fn mint(
    key: &SigningKey,
    issuer: &str,
    count: usize,
    tag: &str,
    grants: bool,
) -> anyhow::Result<Vec<String>> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let sign = |i: usize| {
        let mut claims = json!({
            "iss": issuer, "aud": "api", "sub": format!("user-{i}"), "client_id": "bench",
            "scope": "api", "iat": now, "exp": now + 3600, "jti": format!("{tag}-{i}"),
        });
        if grants {
            claims["grant_id"] = json!(format!("{tag}-grant-{i}"));
        }
        key.sign(&claims).map_err(anyhow::Error::msg)
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = count.div_ceil(cores).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .step_by(chunk)
            .map(|start| {
                let end = (start + chunk).min(count);
                scope.spawn(move || (start..end).map(sign).collect::<anyhow::Result<Vec<_>>>())
            })
            .collect();
        let mut all = Vec::with_capacity(count);
        for h in handles {
            all.extend(h.join().expect("signing thread panicked")?);
        }
        Ok(all)
    })
}

// === plain HTTP from the main thread ===

/// One request with `Connection: close` (and a `Content-Length` when there is a body); returns
/// the status code, the response head and the body.
fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> anyhow::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        let _ = write!(req, "{name}: {value}\r\n");
    }
    if let Some(b) = body {
        let _ = write!(req, "Content-Length: {}\r\n\r\n{b}", b.len());
    } else {
        req.push_str("\r\n");
    }
    stream.write_all(req.as_bytes())?;
    let mut resp = String::new();
    stream.read_to_string(&mut resp)?;
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("not an HTTP response: {resp:?}"))?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    Ok((status, head.to_owned(), body.to_owned()))
}

/// One `GET`, with a bearer token and a `Cookie` if given; returns the status code and the body.
fn http_get(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    cookie: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = Vec::new();
    if let Some(b) = &bearer {
        headers.push(("Authorization", b.as_str()));
    }
    if let Some(c) = cookie {
        headers.push(("Cookie", c));
    }
    let (status, _, body) = http_request(addr, "GET", path, &headers, None)?;
    Ok((status, body))
}

/// The scenario must answer 200 with a body containing `expect` before any load is sent.
fn preflight(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    cookie: Option<&str>,
    expect: &str,
) -> anyhow::Result<()> {
    let (status, body) = http_get(addr, path, token, cookie)?;
    if status != 200 || !body.contains(expect) {
        bail!("expected 200 with {expect:?} in the body, got {status}: {body}");
    }
    Ok(())
}

/// Logs in to the fake legacy API; returns the `Cookie` header value of the new session
/// (`ASP.NET_SessionId` and `.ASPXAUTH` from the `Set-Cookie`s).
fn legacy_login(addr: SocketAddr) -> anyhow::Result<String> {
    let (status, head, body) = http_request(
        addr,
        "POST",
        "/entity/auth/login",
        &[("Content-Type", "application/json")],
        Some(LEGACY_LOGIN),
    )?;
    if status != 204 {
        bail!("login: expected 204, got {status}: {body}");
    }
    let cookie = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(h, _)| h.trim().eq_ignore_ascii_case("set-cookie"))
            .find_map(|(_, v)| {
                let (n, value) = v.trim().split(';').next()?.split_once('=')?;
                (n.trim() == name).then(|| value.trim().to_owned())
            })
            .with_context(|| format!("login: no {name} cookie in {head}"))
    };
    Ok(format!(
        "{}={}; {}={}",
        legacy::SESSION_COOKIE,
        cookie(legacy::SESSION_COOKIE)?,
        legacy::AUTH_COOKIE,
        cookie(legacy::AUTH_COOKIE)?
    ))
}

/// Logs the session of `cookie` out of the fake legacy API (`Content-Length: 0`).
fn legacy_logout(addr: SocketAddr, cookie: &str) -> anyhow::Result<()> {
    let (status, _, body) = http_request(
        addr,
        "POST",
        "/entity/auth/logout",
        &[("Cookie", cookie)],
        Some(""),
    )?;
    if status != 204 {
        bail!("logout: expected 204, got {status}: {body}");
    }
    Ok(())
}

/// The fake's counters over one legacy scenario: `before` is from before its preflight.
fn legacy_stats(
    fake: &FakeLegacy,
    role: Legacy,
    before: &Counters,
    logins_measured: u64,
) -> LegacyStats {
    let now = fake.counters();
    // Every live session is tollgate's (the pre-made ones were logged out, or never existed).
    let live = || {
        fake.state()["sessions"]
            .as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|s| s["max_in_flight"].as_u64())
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    };
    let max_concurrency = match role {
        Legacy::Sessions => live(),
        // Every session this fake ever had was tollgate's.
        Legacy::Store => live().max(now.max_concurrency_per_session),
        Legacy::Direct | Legacy::NoSession => now.max_concurrency_per_session,
    };
    LegacyStats {
        role,
        logins: now.logins_ok - before.logins_ok,
        logins_measured,
        mixed_session_cookies: now.mixed_session_cookies - before.mixed_session_cookies,
        foreign_cookie: now.foreign_cookie - before.foreign_cookie,
        authorization_header_seen: now.authorization_header_seen - before.authorization_header_seen,
        max_concurrency,
        seats_after_shutdown: None,
    }
}

/// The sum of the gateway's `tollgate_store_errors_total` (every `op`) from its admin `/metrics`.
fn store_error_count(admin: SocketAddr) -> anyhow::Result<u64> {
    let (status, body) = http_get(admin, "/metrics", None, None)?;
    if status != 200 {
        bail!("GET {admin}/metrics: {status}");
    }
    Ok(body
        .lines()
        .filter(|l| l.starts_with("tollgate_store_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// The gateway's token-cache counters (hits, misses) of `cache` (`jwt` or `introspection`) from
/// its admin `/metrics`.
fn cache_counters(admin: SocketAddr, cache: &str) -> anyhow::Result<(u64, u64)> {
    let label = format!(r#"cache="{cache}""#);
    let (status, body) = http_get(admin, "/metrics", None, None)?;
    if status != 200 {
        bail!("GET {admin}/metrics: {status}");
    }
    let (mut hits, mut misses) = (0, 0);
    for line in body.lines() {
        if !line.starts_with("tollgate_token_cache_requests_total{") || !line.contains(&label) {
            continue;
        }
        let value = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        if line.contains(r#"result="hit""#) {
            hits += value;
        } else if line.contains(r#"result="miss""#) {
            misses += value;
        }
    }
    Ok((hits, misses))
}

// === wrk ===

fn wrk_version() -> anyhow::Result<String> {
    // `wrk -v` prints its version and exits with status 1.
    let out = Command::new("wrk")
        .arg("-v")
        .stdin(Stdio::null())
        .output()
        .context("wrk is not installed (apt-get install wrk)")?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok(text
        .split_whitespace()
        .nth(1)
        .unwrap_or("unknown")
        .to_owned())
}

/// Runs one wrk process per URL at the same time (`loads` in the same order) and returns their
/// outputs.
fn wrk_all(
    urls: &[String],
    script: &Path,
    headers: &Headers,
    seconds: u64,
    loads: &[WrkLoad],
) -> anyhow::Result<Vec<String>> {
    std::thread::scope(|scope| {
        let runs: Vec<_> = urls
            .iter()
            .zip(loads)
            .map(|(url, load)| scope.spawn(move || wrk(url, script, headers, seconds, load)))
            .collect();
        runs.into_iter()
            .map(|run| run.join().expect("wrk thread panicked"))
            .collect()
    })
}

/// Runs wrk for `seconds` and returns its output; killed if it overruns by 30 s.
fn wrk(
    url: &str,
    script: &Path,
    headers: &Headers,
    seconds: u64,
    load: &WrkLoad,
) -> anyhow::Result<String> {
    let mut cmd = Command::new("wrk");
    cmd.arg(format!("-t{}", load.threads))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{seconds}s"))
        .args(["--timeout", "2s", "--latency"]);
    if headers.any() {
        cmd.arg("-s").arg(script);
        cmd.env(THREAD_BASE_ENV, load.thread_base.to_string());
    }
    if let Some(file) = &headers.tokens {
        cmd.env(TOKENS_ENV, file);
    }
    if let Some(file) = &headers.cookies {
        cmd.env(COOKIES_ENV, file);
    }
    cmd.arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("starting wrk")?;
    let mut stdout = child.stdout.take().context("wrk stdout")?;
    let mut stderr = child.stderr.take().context("wrk stderr")?;
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(seconds + 30);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("wrk did not finish within {} s; killed", seconds + 30);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if !status.success() {
        bail!("wrk failed ({status}): {err}{out}");
    }
    Ok(out)
}

/// wrk's duration format (`812.00us`, `1.23ms`, `2.00s`, `1.00m`) in milliseconds.
fn duration_ms(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let factor = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    Some(n * factor)
}

fn parse_wrk(
    name: &'static str,
    output: &str,
    cache: Option<(u64, u64)>,
) -> anyhow::Result<Outcome> {
    let (mut rps, mut mean, mut p50, mut p99, mut requests) = (None, None, None, None, None);
    let mut non_2xx = 0;
    let mut socket_errors = None;
    for line in output.lines().map(str::trim) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["Requests/sec:", v] => rps = v.parse::<f64>().ok(),
            // `Latency  <avg> <stdev> <max> <+/- stdev>` (not `Latency Distribution`).
            ["Latency", v, _, _, _] => mean = duration_ms(v),
            ["50%", v] => p50 = duration_ms(v),
            ["99%", v] => p99 = duration_ms(v),
            [n, "requests", "in", ..] => requests = n.parse::<u64>().ok(),
            _ => {}
        }
        if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = v.trim().parse().unwrap_or(u64::MAX);
        }
        if let Some(v) = line.strip_prefix("Socket errors:") {
            socket_errors = Some(v.trim().to_owned());
        }
    }
    let missing = || format!("{name}: unexpected wrk output:\n{output}");
    Ok(Outcome {
        name,
        rps: rps.with_context(missing)?,
        mean_ms: mean.with_context(missing)?,
        p50_ms: p50.with_context(missing)?,
        p99_ms: p99.with_context(missing)?,
        requests: requests.with_context(missing)?,
        non_2xx,
        socket_errors,
        cache,
        introspections: None,
        legacy: None,
        store_errors: None,
        store_commands: None,
    })
}

// === the report ===

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn report(
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
            .map_or(0.0, |o| o.rps)
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
        let errors = if o.non_2xx > 0 {
            format!("**{} of {} (ERRORS)**", o.non_2xx, o.requests)
        } else {
            "0".to_owned()
        };
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.2} | {:.2} | {} | {} | {} |",
            o.name,
            o.rps,
            o.p50_ms,
            o.p99_ms,
            ratio(o.rps, direct),
            ratio(o.rps, public),
            errors
        );
    }
    md.push('\n');
    for o in outcomes {
        if let Some(e) = &o.socket_errors {
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
                ratio(o.rps, baseline),
                calls as f64 / o.requests.max(1) as f64
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
            ratio(with.rps, base.rps),
            1000.0 * with.mean_ms,
            1000.0 * base.mean_ms,
            1000.0 * (with.mean_ms - base.mean_ms),
            little_us(with.rps),
            little_us(base.rps),
            little_us(with.rps) - little_us(base.rps),
            1e6 / with.rps.max(1e-9),
            1e6 / base.rps.max(1e-9),
            1e6 / with.rps.max(1e-9) - 1e6 / base.rps.max(1e-9),
        );
    }
    let legacy: Vec<String> = outcomes
        .iter()
        .filter_map(|o| {
            let l = o.legacy.as_ref()?;
            let sessions = l.role.through_sessions();
            let flag = |bad: bool| if bad { " **(expected 0)**" } else { "" };
            let logins = if sessions && l.logins != LEGACY_SESSIONS as u64 {
                format!(" **(expected {LEGACY_SESSIONS})**")
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
             127.0.0.1:{}, `{REDIS_PERSISTENCE}` (append-only file, fsync once a second), \
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
                "- Redis commands per request while measured (`INFO stats`                  total_commands_processed; a script call counts once plus each command it runs,                  and the replicas' lease renewals and upkeep are included): {}",
                commands.join(", ")
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
             of wrk: wrk's exit cancels the requests it has in flight, and with the Redis store \
             a request cancelled while its in-flight place is being granted leaves that place \
             taken until `lease_ttl` (30 s), so the next run stalled on those grants (their \
             queues full: 429 `grant_busy`, then no progress for ~30 s; seen while writing this \
             bench, in `RedisStore::acquire`, src/session/redis.rs)"
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
        "- upstream (hyper, {}-byte JSON body), JWKS server, introspection server, fake legacy API \
         and gateways share one tokio runtime ({workers} workers) in the bench process, and the \
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
