//! Memory benchmark: the resident memory of a release `tollgate` process, empty, with 100,000
//! cached verified tokens, per idle keep-alive connection, and under token churn.
//!
//! ```text
//! cargo bench --bench memory
//! MEMORY_TOKENS=20000 MEMORY_CHURN_SECONDS=600 cargo bench --bench memory
//! ```
//!
//! The gateway runs as its own process, so that its `VmRSS` (from `/proc/<pid>/status`) is its
//! own: the binary a user builds, `cargo build --release --locked` into `target/peers`
//! (`benches/common/user_build.rs` says why not the one `cargo bench` builds beside the bench).
//! In this process: a JWKS server and an upstream on [`tollgate::serve`], the token minting
//! (RS256, the claims of `benches/load`), and a plain HTTP/1.1 keep-alive client that drives the
//! tokens through a JWT route.
//!
//! | knob | default | what |
//! |---|---:|---|
//! | `MEMORY_TOKENS` | 100000 | distinct RS256 tokens driven through the route, then cached |
//! | `MEMORY_CONNECTIONS` | 1000 | idle keep-alive connections opened for the per-connection figure |
//! | `MEMORY_CHURN_SECONDS` | 60 | token churn after the warm-up: new short-lived tokens replace expiring ones (0: skip) |
//! | `MEMORY_TOLLGATE` | built by the bench | another `tollgate` binary to measure (an older build, for before/after) |

mod client;
mod report;
#[path = "../common/user_build.rs"]
mod user_build;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use serde_json::json;
use tokio::net::TcpListener;
use tollgate::demo::keys::{self, SigningKey};
use tollgate::Body;

/// The JWT route's path.
const PATH: &str = "/api/orders/24.200.001";

fn knob(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name} must be a whole number, got {v:?}")),
        Err(_) => Ok(default),
    }
}

fn main() -> anyhow::Result<()> {
    let tokens = knob("MEMORY_TOKENS", 100_000)? as usize;
    let connections = knob("MEMORY_CONNECTIONS", 1000)? as usize;
    let churn = Duration::from_secs(knob("MEMORY_CHURN_SECONDS", 60)?);
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let binary =
        user_build::tollgate(repo, std::env::var_os("MEMORY_TOLLGATE").map(PathBuf::from))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(run(binary, tokens, connections, churn))
}

async fn run(
    binary: PathBuf,
    tokens: usize,
    connections: usize,
    churn: Duration,
) -> anyhow::Result<()> {
    let key = SigningKey::rsa("bench-rs256", jsonwebtoken::Algorithm::RS256)
        .map_err(anyhow::Error::msg)?;
    let jwks = Bytes::from(serde_json::to_vec(&keys::jwks(&[&key]))?);
    let idp = serve(move || json(jwks.clone())).await?;
    let upstream = serve(|| json(Bytes::from_static(br#"{"ok":true}"#))).await?;
    let issuer = format!("http://{idp}");

    let dir = tempfile::tempdir()?;
    let gateway =
        Gateway::start(binary, dir.path().into(), &issuer, upstream, tokens as u64).await?;
    let mut report = report::Report::default();
    report.row("empty (after start)", gateway.rss_kib()?, None);

    eprintln!("benches/memory: signing {tokens} RS256 tokens");
    let minted = mint(&key, &issuer, 0, tokens, 3600)?;
    let started = Instant::now();
    client::drive(gateway.addr, PATH, &minted, 8).await?;
    eprintln!(
        "benches/memory: {tokens} tokens through the route in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let cached = gateway.cached_tokens().await?;
    let full = gateway.rss_kib()?;
    report.row(
        &format!("{cached} cached verified tokens"),
        full,
        Some(per_item(full, report.first(), cached)),
    );

    let idle = client::open_idle(gateway.addr, PATH, &minted[0], connections).await?;
    let with_conns = gateway.rss_kib()?;
    report.row(
        &format!("+ {} idle keep-alive connections", idle.len()),
        with_conns,
        Some(per_item(with_conns, full, idle.len() as u64)),
    );
    drop(idle);

    if !churn.is_zero() {
        report.churn = Some(churn_run(&gateway, &key, &issuer, tokens, churn).await?);
    }
    report.print(&gateway.version()?);
    Ok(())
}

/// Token churn: rounds of fresh tokens that expire a minute later, for `length`; RSS sampled
/// after each round. Returns (RSS after the first round, the highest RSS after it, samples).
async fn churn_run(
    gateway: &Gateway,
    key: &SigningKey,
    issuer: &str,
    tokens: usize,
    length: Duration,
) -> anyhow::Result<report::Churn> {
    let round = (tokens / 10).max(1);
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut next = tokens;
    while started.elapsed() < length {
        let fresh = mint(key, issuer, next, round, 60)?;
        next += round;
        client::drive(gateway.addr, PATH, &fresh, 8).await?;
        samples.push(gateway.rss_kib()?);
    }
    Ok(report::Churn {
        seconds: started.elapsed().as_secs(),
        tokens: next - tokens,
        samples,
    })
}

fn per_item(now: u64, before: u64, items: u64) -> f64 {
    (now.saturating_sub(before) as f64 * 1024.0) / items.max(1) as f64
}

/// Signs `count` distinct tokens numbered from `first`, valid for `ttl` seconds, on every core.
fn mint(
    key: &SigningKey,
    issuer: &str,
    first: usize,
    count: usize,
    ttl: u64,
) -> anyhow::Result<Vec<String>> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let sign = |i: usize| {
        let claims = json!({
            "iss": issuer, "aud": "api", "sub": format!("user-{i}"), "client_id": "bench",
            "scope": "api", "iat": now, "exp": now + ttl, "jti": format!("memory-{i}"),
        });
        key.sign(&claims).map_err(anyhow::Error::msg)
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = count.div_ceil(cores).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (first..first + count)
            .step_by(chunk)
            .map(|start| {
                let end = (start + chunk).min(first + count);
                scope.spawn(move || (start..end).map(sign).collect::<anyhow::Result<Vec<_>>>())
            })
            .collect();
        let mut all = Vec::with_capacity(count);
        for h in handles {
            all.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("a signing thread panicked"))??,
            );
        }
        Ok(all)
    })
}

fn json(body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Serves `answer` to every request on a fresh loopback port, on the gateway's accept loop.
async fn serve<F>(answer: F) -> anyhow::Result<SocketAddr>
where
    F: Fn() -> Response<Body> + Clone + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, rx) = tokio::sync::watch::channel(false);
    // The servers live as long as the bench process.
    std::mem::forget(stop);
    tokio::spawn(tollgate::serve(
        listener,
        rx,
        Duration::from_secs(1),
        move |_, _| {
            let answer = answer.clone();
            async move { answer() }
        },
    ));
    Ok(addr)
}

/// The gateway process under measurement.
struct Gateway {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    binary: PathBuf,
}

impl Gateway {
    async fn start(
        binary: PathBuf,
        dir: PathBuf,
        issuer: &str,
        upstream: SocketAddr,
        capacity: u64,
    ) -> anyhow::Result<Gateway> {
        let port = |l: std::net::TcpListener| l.local_addr().map(|a| a.port());
        // Free ports for the gateway: bound, read and released (the gateway binds them next).
        let (proxy, admin) = (
            port(std::net::TcpListener::bind("127.0.0.1:0")?)?,
            port(std::net::TcpListener::bind("127.0.0.1:0")?)?,
        );
        let config = dir.join("tollgate.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[server]
listen = "127.0.0.1:{proxy}"
admin_listen = "127.0.0.1:{admin}"
token_cache_capacity = {capacity}

[[issuer]]
id = "bench"
issuer = "{issuer}"
jwks_uri = "{issuer}/jwks"
audiences = ["api"]

[[upstream]]
id = "api"
url = "http://{upstream}"

[[route]]
id = "api"
prefix = "/api"
upstream = "api"
scopes = ["api"]
"#
            ),
        )?;
        let child = Command::new(&binary)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let gateway = Gateway {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], proxy)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            binary,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while client::get(gateway.admin, "/readyz", None).await.ok() != Some(200) {
            if Instant::now() > deadline {
                bail!("the gateway did not become ready within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(gateway)
    }

    fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc/<pid>/status")
    }

    /// The token cache's entry count, from the gateway's own gauge.
    async fn cached_tokens(&self) -> anyhow::Result<u64> {
        let text = client::text(self.admin, "/metrics").await?;
        text.lines()
            .find(|l| l.starts_with("tollgate_token_cache_entries{cache=\"jwt\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as u64)
            .context("no tollgate_token_cache_entries{cache=\"jwt\"} in /metrics")
    }

    fn version(&self) -> anyhow::Result<String> {
        let out = Command::new(&self.binary).arg("--version").output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
