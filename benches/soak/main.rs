//! Soak: the release `tollgate` binary as its own process for a bounded time, under token churn,
//! session churn and reloads, with its resident memory and open file descriptors sampled.
//!
//! ```text
//! cargo bench --bench soak                    # 10 minutes
//! SOAK_SECONDS=60 cargo bench --bench soak    # what CI runs (tests/run.sh)
//! bash tests/soak.sh [seconds]                # the same, from docs/testing.md
//! ```
//!
//! In this process: a JWKS server, a plain upstream and the fake legacy API (from
//! `benches/load/fixtures.rs`), and `SOAK_CLIENTS` client tasks that loop over a public route,
//! a JWT route (fresh short-lived tokens every round: token churn) and a session route (grants
//! that come and go, sessions that idle out and are logged out: session churn). Every
//! `SOAK_RELOAD_SECONDS` the configuration file is rewritten (a route added or removed) and the
//! process gets SIGHUP.
//!
//! It fails (exit 1) when any request gets an answer other than the one it should (200), when
//! RSS or the count of open descriptors grows by more than 5 % between the end of the warm-up
//! (the first fifth of the run, at least 30 s) and any later sample, when a reload fails, or
//! when the fake legacy API counts a leak or a live session after the gateway stopped.
//!
//! | knob | default | what |
//! |---|---:|---|
//! | `SOAK_SECONDS` | 600 | length of the run |
//! | `SOAK_CLIENTS` | 8 | concurrent client tasks |
//! | `SOAK_RELOAD_SECONDS` | 10 | seconds between reloads |

#![allow(clippy::unwrap_used, clippy::expect_used)]

// The load bench's fixtures and the shared harness: this bench uses part of each.
#[allow(dead_code)]
#[path = "../load/fixtures.rs"]
mod fixtures;
#[allow(dead_code)]
#[path = "../common/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use tollgate::demo::keys::{self, SigningKey};

/// Grants that take turns on the session route; at most `SEATS` of them are live at once.
const GRANTS_AT_ONCE: usize = 4;
const SEATS: u32 = 6;
/// Short-lived tokens: each round's tokens expire two minutes later and leave the cache.
const TOKEN_TTL: u64 = 120;

fn main() {
    harness::main("soak", "the soak run", run);
}

struct Knobs {
    length: Duration,
    clients: usize,
    reload_every: Duration,
}

fn run() -> anyhow::Result<()> {
    let knobs = Knobs {
        length: Duration::from_secs(harness::positive("SOAK_SECONDS", 600)?),
        clients: harness::positive("SOAK_CLIENTS", 8)? as usize,
        reload_every: Duration::from_secs(harness::positive("SOAK_RELOAD_SECONDS", 10)?),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(soak(knobs))
}

/// What the clients saw, by route and status.
#[derive(Default)]
struct Tally {
    answers: Mutex<BTreeMap<(String, String), u64>>,
    wrong: AtomicU64,
}

impl Tally {
    fn count(&self, route: &str, outcome: String, ok: bool) {
        if !ok {
            self.wrong.fetch_add(1, Ordering::Relaxed);
        }
        let mut a = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        *a.entry((route.to_owned(), outcome)).or_default() += 1;
    }
}

async fn soak(knobs: Knobs) -> anyhow::Result<()> {
    let key = SigningKey::rsa("soak-rs256", jsonwebtoken::Algorithm::RS256)
        .map_err(anyhow::Error::msg)?;
    let jwks = Bytes::from(serde_json::to_vec(&keys::jwks(&[&key]))?);
    let idp = fixtures::jwks_server(jwks).await?;
    let issuer = format!("http://{idp}");
    let upstream = fixtures::upstream().await?;
    let fake = fixtures::fake_legacy();
    let (legacy, _legacy_task) = fixtures::serve_legacy(&fake).await?;

    let dir = tempfile::tempdir()?;
    let mut gateway = Gateway::start(dir.path(), &issuer, upstream, legacy)?;
    gateway.ready().await?;
    eprintln!(
        "benches/soak: {} s, {} clients, a reload every {} s; gateway pid {}",
        knobs.length.as_secs(),
        knobs.clients,
        knobs.reload_every.as_secs(),
        gateway.child.id()
    );

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut round = 0u64;
    let tokens: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    refresh_tokens(&key, &issuer, 0, &tokens)?;
    let mut clients = Vec::new();
    for c in 0..knobs.clients {
        clients.push(tokio::spawn(client(
            c,
            gateway.addr,
            tokens.clone(),
            tally.clone(),
            stop.clone(),
        )));
    }

    let started = Instant::now();
    // At least half a minute: the allocator's arenas are still settling in the first seconds,
    // and a one-minute CI run must not read that as growth.
    let warm_up = (knobs.length / 5).max(Duration::from_secs(30));
    let mut samples: Vec<(u64, u64, usize)> = Vec::new();
    let mut reloads = 0u64;
    let mut next_reload = started + knobs.reload_every;
    let mut next_round = started + Duration::from_secs(5);
    while started.elapsed() < knobs.length {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = Instant::now();
        if now >= next_round {
            // Token and session churn: fresh tokens, and the next grants take their turn.
            round += 1;
            refresh_tokens(&key, &issuer, round, &tokens)?;
            next_round = now + Duration::from_secs(5);
        }
        if now >= next_reload {
            reloads += 1;
            gateway.reload(reloads)?;
            next_reload = now + knobs.reload_every;
        }
        if started.elapsed().as_secs() % 5 == 0 {
            samples.push((
                started.elapsed().as_secs(),
                gateway.rss_kib()?,
                gateway.fds()?,
            ));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await??;
    }
    let reload_failures = gateway.reload_failures().await?;
    gateway.stop()?;
    let after = fake.counters();
    let live = fake.state()["sessions"].as_array().map_or(0, Vec::len);

    let report = Report {
        knobs: &knobs,
        warm_up,
        samples: &samples,
        tally: &tally,
        reloads,
        reload_failures,
        logins: after.logins_ok,
        logouts: after.logouts,
        leaks: after.mixed_session_cookies
            + after.foreign_cookie
            + after.authorization_header_seen
            + after.logins_locked,
        live_after_stop: live,
    };
    report.print();
    report.verdict()
}

/// Replaces the clients' tokens with `round`'s: fresh JWT-route tokens and, for the session
/// route, the grants whose turn it is (each grant lives for a few rounds, then idles out).
fn refresh_tokens(
    key: &SigningKey,
    issuer: &str,
    round: u64,
    tokens: &Mutex<Vec<String>>,
) -> anyhow::Result<()> {
    let fresh =
        fixtures::mint_lasting(key, issuer, 64, &format!("soak-{round}"), false, TOKEN_TTL)?;
    let grants = fixtures::mint_lasting(
        key,
        issuer,
        GRANTS_AT_ONCE,
        &format!("grant-{}", round / 3),
        true,
        TOKEN_TTL,
    )?;
    let mut t = tokens.lock().unwrap_or_else(|e| e.into_inner());
    *t = fresh;
    t.extend(grants);
    Ok(())
}

/// One client: public, JWT and session requests in turn until `stop`.
async fn client(
    id: usize,
    gateway: SocketAddr,
    tokens: Arc<Mutex<Vec<String>>>,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let mut i = id;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let (jwt, grant) = {
            let t = tokens.lock().unwrap_or_else(|e| e.into_inner());
            let n = t.len() - GRANTS_AT_ONCE;
            (t[i % n].clone(), t[n + i % GRANTS_AT_ONCE].clone())
        };
        for (route, path, token) in [
            ("public", fixtures::PUBLIC_PATH, None),
            ("jwt", fixtures::API_PATH, Some(jwt.as_str())),
            ("session", fixtures::LEGACY_PATH, Some(grant.as_str())),
        ] {
            let mut req = http::Request::get(format!("http://{gateway}{path}"));
            if let Some(t) = token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let outcome = match tokio::time::timeout(
                Duration::from_secs(30),
                http.request(req.body(Empty::new())?),
            )
            .await
            {
                Err(_) => ("timeout".to_owned(), false),
                Ok(Err(e)) => (format!("error: {e}"), false),
                Ok(Ok(resp)) => {
                    let status = resp.status().as_u16();
                    let body = resp.into_body().collect().await;
                    (status.to_string(), status == 200 && body.is_ok())
                }
            };
            tally.count(route, outcome.0, outcome.1);
        }
    }
    Ok(())
}

/// The gateway under soak.
struct Gateway {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
    base: String,
}

impl Gateway {
    fn start(
        dir: &Path,
        issuer: &str,
        upstream: SocketAddr,
        legacy: SocketAddr,
    ) -> anyhow::Result<Gateway> {
        let port = || -> anyhow::Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let (proxy, admin) = (port()?, port()?);
        let base = format!(
            r#"
[server]
listen = "127.0.0.1:{proxy}"
admin_listen = "127.0.0.1:{admin}"
watch_config = false
token_cache_capacity = 10000

[log]
level = "warn"

[[issuer]]
id = "soak"
issuer = "{issuer}"
jwks_uri = "{issuer}/jwks"
audiences = ["api"]

[[upstream]]
id = "api"
url = "http://{upstream}"

[[upstream]]
id = "erp"
url = "http://{legacy}"
[upstream.session]
max_upstream_sessions = {SEATS}
idle_ttl = "4s"
admission_wait = "20s"
[upstream.session.credentials]
name = "admin"
password = "123"
tenant = "MyStore"
branch = "HQ"

[[route]]
id = "public"
prefix = "/public/"
upstream = "api"
auth = "none"

[[route]]
id = "api"
prefix = "/api/"
upstream = "api"
scopes = ["api"]

[[route]]
id = "erp"
prefix = "/entity/"
upstream = "erp"
scopes = ["api"]
"#
        );
        let config = dir.join("tollgate.toml");
        std::fs::write(&config, &base)?;
        let binary = PathBuf::from(env!("CARGO_BIN_EXE_tollgate"));
        let child = Command::new(&binary)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Gateway {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], proxy)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            config,
            base,
        })
    }

    async fn ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = fixtures::http_get(self.admin, "/readyz", None, None) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the gateway was not ready within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Rewrites the configuration (an extra route comes and goes) and sends SIGHUP.
    fn reload(&self, n: u64) -> anyhow::Result<()> {
        let extra = if n % 2 == 1 {
            format!("\n[[route]]\nid = \"extra-{n}\"\nprefix = \"/extra-{n}/\"\nupstream = \"api\"\nauth = \"none\"\n")
        } else {
            String::new()
        };
        std::fs::write(&self.config, format!("{}{extra}", self.base))?;
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -HUP {} failed", self.child.id());
        }
        Ok(())
    }

    /// Reloads the gateway counted as failed (`tollgate_config_reloads_total{result="failure"}`).
    async fn reload_failures(&self) -> anyhow::Result<u64> {
        let (_, text) = fixtures::http_get(self.admin, "/metrics", None, None)?;
        Ok(text
            .lines()
            .find(|l| l.starts_with("tollgate_config_reloads_total{result=\"failure\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0, |v| v as u64))
    }

    fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc/<pid>/status")
    }

    fn fds(&self) -> anyhow::Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))?.count())
    }

    /// SIGTERM, then waits for the graceful stop (which logs every session out).
    fn stop(&mut self) -> anyhow::Result<()> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("the gateway did not stop within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Report<'a> {
    knobs: &'a Knobs,
    warm_up: Duration,
    samples: &'a [(u64, u64, usize)],
    tally: &'a Tally,
    reloads: u64,
    reload_failures: u64,
    logins: u64,
    logouts: u64,
    leaks: u64,
    live_after_stop: usize,
}

impl Report<'_> {
    /// The first sample after the warm-up, and the highest RSS and descriptor count after it.
    fn growth(&self) -> Option<((u64, usize), (u64, usize))> {
        let after: Vec<_> = self
            .samples
            .iter()
            .filter(|(t, _, _)| *t >= self.warm_up.as_secs())
            .collect();
        let first = after.first()?;
        let rss = after.iter().map(|s| s.1).max()?;
        let fds = after.iter().map(|s| s.2).max()?;
        Some(((first.1, first.2), (rss, fds)))
    }

    fn print(&self) {
        println!(
            "## Soak: {} s, {} clients, a reload every {} s\n",
            self.knobs.length.as_secs(),
            self.knobs.clients,
            self.knobs.reload_every.as_secs()
        );
        println!("| route | answer | requests |\n|---|---|---:|");
        let answers = self.tally.answers.lock().unwrap_or_else(|e| e.into_inner());
        for ((route, outcome), n) in answers.iter() {
            println!("| {route} | {outcome} | {n} |");
        }
        println!();
        if let Some(((rss0, fd0), (rss, fds))) = self.growth() {
            println!(
                "RSS after the {} s warm-up: {:.1} MiB, highest later: {:.1} MiB ({:+.1} %)",
                self.warm_up.as_secs(),
                rss0 as f64 / 1024.0,
                rss as f64 / 1024.0,
                pct(rss0 as f64, rss as f64)
            );
            println!(
                "open descriptors after the warm-up: {fd0}, highest later: {fds} ({:+.1} %)",
                pct(fd0 as f64, fds as f64)
            );
        }
        println!(
            "reloads: {} ({} failed); upstream logins {}, logouts {}; leaks counted by the fake: {}; sessions live after the stop: {}",
            self.reloads, self.reload_failures, self.logins, self.logouts, self.leaks, self.live_after_stop
        );
        // About twenty samples, evenly spread, whatever the length.
        let every = self.samples.len().div_ceil(20).max(1);
        let samples: Vec<String> = self
            .samples
            .iter()
            .step_by(every)
            .map(|(t, rss, fds)| format!("{t}s {:.1}MiB {fds}fd", *rss as f64 / 1024.0))
            .collect();
        println!("samples: {}", samples.join(", "));
    }

    fn verdict(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        let wrong = self.tally.wrong.load(Ordering::Relaxed);
        if wrong > 0 {
            problems.push(format!("{wrong} requests did not get their 200"));
        }
        match self.growth() {
            None => problems.push("no sample after the warm-up: run longer".to_owned()),
            Some(((rss0, fd0), (rss, fds))) => {
                if pct(rss0 as f64, rss as f64) > 5.0 {
                    problems.push(format!(
                        "RSS grew from {rss0} to {rss} KiB after the warm-up"
                    ));
                }
                // A few descriptors come and go with connections; 5 % of a small count is
                // less than one, so the bound is at least two.
                if fds > fd0 + (fd0 / 20).max(2) {
                    problems.push(format!("open descriptors grew from {fd0} to {fds}"));
                }
            }
        }
        if self.reload_failures > 0 {
            problems.push(format!("{} reloads failed", self.reload_failures));
        }
        if self.leaks > 0 {
            problems.push(format!("the fake legacy API counted {} leaks", self.leaks));
        }
        if self.live_after_stop > 0 {
            problems.push(format!(
                "{} upstream sessions were still live after the gateway stopped",
                self.live_after_stop
            ));
        }
        if problems.is_empty() {
            println!("soak: passed");
            Ok(())
        } else {
            bail!("soak failed: {}", problems.join("; "))
        }
    }
}

fn pct(from: f64, to: f64) -> f64 {
    if from == 0.0 {
        0.0
    } else {
        (to - from) / from * 100.0
    }
}
