//! The gateways under test and how each is started: its configuration written to the run's
//! directory (the peers' from `peer_configs.rs`, tollgate's from the load bench's `configs.rs`),
//! its process started alone on the gateway core, and its readiness awaited. The legacy rows also
//! get a fresh fake legacy API in this process, so that every run of them starts from the same
//! state.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use crate::configs;
use crate::fixtures::{self, LEGACY_BODY, UPSTREAM_BODY};
use crate::install::{Peers, Tool};
use crate::peer_configs::{self, JwtCheck};
use crate::process::{self, Process};
use crate::settings::{GATEWAY_CPU, LEGACY_GRANTS, TOKEN_COUNT};

/// How long a gateway gets to listen and answer its first request.
const READY_WITHIN: Duration = Duration::from_secs(15);
/// The audience every token carries and every validating gateway requires.
pub(crate) const AUDIENCE: &str = "api";

/// A JWT signature algorithm of the rows.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alg {
    Rs256,
    Es256,
    EdDsa,
}

impl Alg {
    /// The JOSE name, as tollgate's `algorithms` takes it.
    pub(crate) fn jose(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }
}

/// Which gateway a row runs, set up how.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gateway {
    Nginx,
    Haproxy,
    HaproxyJwt,
    EnvoyJwt,
    EnvoyJwtCache,
    /// A public and a protected route; `cache: false` is `token_cache_capacity = 1`.
    TollgateJwt {
        alg: Alg,
        cache: bool,
    },
    /// Introspection with its default cache.
    TollgateIntrospection,
    /// In front of the fake legacy API, without or with `[upstream.session]` (memory store).
    TollgateLegacy {
        sessions: bool,
    },
    /// A bare hyper proxy, `benches/floor`.
    HyperFloor,
}

impl Gateway {
    /// The gateway as the correctness matrix and the report name it.
    pub(crate) fn name(self) -> String {
        match self {
            Gateway::Nginx => "nginx".to_owned(),
            Gateway::Haproxy => "HAProxy".to_owned(),
            Gateway::HaproxyJwt => "HAProxy jwt_verify".to_owned(),
            Gateway::EnvoyJwt => "Envoy jwt_authn".to_owned(),
            Gateway::EnvoyJwtCache => "Envoy jwt_authn + jwt_cache".to_owned(),
            Gateway::TollgateJwt { alg, cache } => format!(
                "tollgate JWT {}{}",
                alg.jose(),
                if cache {
                    ""
                } else {
                    ", token_cache_capacity = 1"
                }
            ),
            Gateway::TollgateIntrospection => "tollgate introspection".to_owned(),
            Gateway::TollgateLegacy { sessions } => format!(
                "tollgate legacy, {}",
                if sessions { "sessions" } else { "no sessions" }
            ),
            Gateway::HyperFloor => "hyper floor".to_owned(),
        }
    }

    /// The algorithm of the tokens the gateway validates, for the correctness matrix (`None`:
    /// it validates no JWT, or validates them as another row's gateway does already).
    pub(crate) fn validates(self) -> Option<Alg> {
        match self {
            Gateway::HaproxyJwt | Gateway::EnvoyJwt | Gateway::EnvoyJwtCache => Some(Alg::Rs256),
            Gateway::TollgateJwt { alg, .. } => Some(alg),
            Gateway::Nginx
            | Gateway::Haproxy
            | Gateway::TollgateIntrospection
            | Gateway::TollgateLegacy { .. }
            | Gateway::HyperFloor => None,
        }
    }

    /// Whether the gateway is tollgate (its failures fail the run; a peer's are reported).
    pub(crate) fn is_tollgate(self) -> bool {
        matches!(
            self,
            Gateway::TollgateJwt { .. }
                | Gateway::TollgateIntrospection
                | Gateway::TollgateLegacy { .. }
        )
    }

    /// The peer program the gateway needs, or why it cannot be had.
    fn tool(self, lab: &Lab) -> Result<&Tool, String> {
        let peer = match self {
            Gateway::Nginx => &lab.peers.nginx,
            Gateway::Haproxy | Gateway::HaproxyJwt => &lab.peers.haproxy,
            Gateway::EnvoyJwt | Gateway::EnvoyJwtCache => &lab.peers.envoy,
            Gateway::TollgateJwt { .. }
            | Gateway::TollgateIntrospection
            | Gateway::TollgateLegacy { .. } => return Ok(&lab.tollgate),
            Gateway::HyperFloor => return Ok(&lab.hyper_floor),
        };
        peer.as_ref().map_err(String::clone)
    }

    /// Why the gateway cannot run on this machine, if it cannot.
    pub(crate) fn missing(self, lab: &Lab) -> Option<String> {
        self.tool(lab).err()
    }

    /// What a good answer's body contains.
    pub(crate) fn expect(self) -> &'static str {
        match self {
            Gateway::TollgateLegacy { .. } => LEGACY_BODY,
            _ => UPSTREAM_BODY,
        }
    }
}

/// What every gateway's start needs: the programs, the run's directory, the servers on the
/// load core and the keys' files.
pub(crate) struct Lab {
    pub(crate) peers: Peers,
    /// The release binary (`builds.rs`), or `PEERS_TOLLGATE`'s.
    pub(crate) tollgate: Tool,
    /// The bare hyper proxy (`benches/floor`, built by `builds.rs`); the version is hyper's.
    pub(crate) hyper_floor: Tool,
    pub(crate) dir: PathBuf,
    pub(crate) runtime: Runtime,
    /// The upstream nginx of every non-legacy row.
    pub(crate) upstream: SocketAddr,
    /// The JWT issuer (the JWKS server's base URL) and the introspection issuer.
    pub(crate) issuer: String,
    pub(crate) introspection_issuer: String,
    /// HAProxy's PEM public key of the RS256 key; Envoy's JWKS file of it.
    pub(crate) rs256_pem: PathBuf,
    pub(crate) rs256_jwks: PathBuf,
}

/// A fake legacy API serving in this process, for one run of a legacy row.
struct Fake {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Fake {
    /// A fresh fake (the load bench's options) on the bench's runtime.
    fn start(runtime: &Runtime) -> anyhow::Result<Fake> {
        let (addr, task) = runtime.block_on(async {
            let fake = fixtures::fake_legacy();
            fixtures::serve_legacy(&fake).await
        })?;
        Ok(Fake { addr, task })
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A started, ready gateway.
pub(crate) struct Running {
    pub(crate) process: Process,
    pub(crate) addr: SocketAddr,
    /// The legacy rows without sessions: the `Cookie` of 100 sessions logged in directly to the
    /// fake, one a line (line i goes with token i).
    pub(crate) cookies: Option<PathBuf>,
    /// Kept (and stopped) with the gateway.
    _fake: Option<Fake>,
}

/// What a first request must carry to be answered 200: a path and a token (a legacy row's
/// cookie comes with the gateway).
pub(crate) struct Probe<'a> {
    pub(crate) path: &'a str,
    pub(crate) token: Option<&'a str>,
}

/// Starts `gateway` (called `tag` in its files) on the gateway core and waits until `probe`
/// is answered 200 with the expected body.
pub(crate) fn start(
    lab: &Lab,
    gateway: Gateway,
    tag: &str,
    probe: &Probe,
) -> anyhow::Result<Running> {
    let tool = gateway.tool(lab).map_err(anyhow::Error::msg)?;
    let dir = lab.dir.join(tag);
    std::fs::create_dir_all(&dir)?;
    let addr = process::free_addr()?;
    let setup = configure(lab, gateway, &dir, addr)?;
    let log = dir.join("gateway.log");
    let name = gateway.name();
    let mut process = Process::start(
        &name,
        GATEWAY_CPU,
        &tool.path,
        &setup.args,
        &setup.env,
        &log,
    )?;
    process.wait_listening(addr, READY_WITHIN)?;
    // The legacy row without sessions sends pre-made sessions' cookies (logged in directly).
    let cookies = match (gateway, &setup.fake) {
        (Gateway::TollgateLegacy { sessions: false }, Some(fake)) => {
            Some(premade_cookies(fake.addr, &dir)?)
        }
        _ => None,
    };
    let first_cookie = match &cookies {
        Some(file) => std::fs::read_to_string(file)?
            .lines()
            .next()
            .map(str::to_owned),
        None => None,
    };
    ready(
        &mut process,
        addr,
        probe,
        first_cookie.as_deref(),
        gateway.expect(),
    )?;
    Ok(Running {
        process,
        addr,
        cookies,
        _fake: setup.fake,
    })
}

/// How to start a gateway: its arguments and environment, and the fake legacy API it fronts.
struct Setup {
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    fake: Option<Fake>,
}

/// Writes `gateway`'s configuration to `dir` for a listener on `addr` (and starts a fresh fake
/// legacy API for a legacy row).
fn configure(lab: &Lab, gateway: Gateway, dir: &Path, addr: SocketAddr) -> anyhow::Result<Setup> {
    let write = |name: &str, text: String| -> anyhow::Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| path.display().to_string())?;
        Ok(path)
    };
    let upstream_url = format!("http://{}", lab.upstream);
    let rs256 = JwtCheck {
        issuer: &lab.issuer,
        audience: AUDIENCE,
        key_file: &lab.rs256_pem,
    };
    let (mut env, mut fake) = (Vec::new(), None);
    let args = match gateway {
        Gateway::Nginx => {
            let conf = peer_configs::nginx_proxy(dir, addr, lab.upstream);
            nginx_args(dir, &write("nginx.conf", conf)?)
        }
        Gateway::Haproxy | Gateway::HaproxyJwt => {
            let jwt = (gateway == Gateway::HaproxyJwt).then_some(&rs256);
            let conf = write(
                "haproxy.cfg",
                peer_configs::haproxy(addr, lab.upstream, jwt),
            )?;
            vec!["-db".to_owned(), "-f".to_owned(), path_arg(&conf)]
        }
        Gateway::EnvoyJwt | Gateway::EnvoyJwtCache => {
            let jwt = JwtCheck {
                key_file: &lab.rs256_jwks,
                ..rs256
            };
            let cache = (gateway == Gateway::EnvoyJwtCache).then_some(TOKEN_COUNT);
            let conf = write(
                "envoy.yaml",
                peer_configs::envoy(addr, lab.upstream, &jwt, cache),
            )?;
            let conf = path_arg(&conf);
            [
                "-c",
                &conf,
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--log-level",
                "error",
            ]
            .map(str::to_owned)
            .to_vec()
        }
        Gateway::TollgateJwt { alg, cache } => {
            let capacity = (!cache).then_some(1);
            let toml = configs::jwt(&lab.issuer, &upstream_url, alg.jose(), capacity);
            tollgate_args(&write("tollgate.toml", toml)?, addr, &mut env)?
        }
        Gateway::TollgateIntrospection => {
            let toml = configs::introspection(&lab.introspection_issuer, &upstream_url, None);
            tollgate_args(&write("tollgate.toml", toml)?, addr, &mut env)?
        }
        Gateway::HyperFloor => vec![addr.to_string(), lab.upstream.to_string()],
        Gateway::TollgateLegacy { sessions } => {
            let legacy = Fake::start(&lab.runtime)?;
            let url = format!("http://{}", legacy.addr);
            fake = Some(legacy);
            let toml = configs::legacy(&lab.issuer, &url, sessions, None);
            tollgate_args(&write("tollgate.toml", toml)?, addr, &mut env)?
        }
    };
    Ok(Setup { args, env, fake })
}

/// Logs `LEGACY_GRANTS` sessions in to the fake at `legacy`; returns the file of their
/// `Cookie` values, one a line.
fn premade_cookies(legacy: SocketAddr, dir: &Path) -> anyhow::Result<PathBuf> {
    let premade = (0..LEGACY_GRANTS)
        .map(|_| fixtures::legacy_login(legacy))
        .collect::<anyhow::Result<Vec<String>>>()
        .context("logging in to the fake legacy API")?;
    let path = dir.join("cookies.txt");
    std::fs::write(&path, premade.join("\n") + "\n")?;
    Ok(path)
}

/// nginx in the foreground with its prefix, configuration and early error log in `dir` (the
/// early log would otherwise go to /var/log/nginx before the configuration is read).
fn nginx_args(dir: &Path, conf: &Path) -> Vec<String> {
    vec![
        "-p".to_owned(),
        path_arg(dir),
        "-e".to_owned(),
        path_arg(&dir.join("error.log")),
        "-c".to_owned(),
        path_arg(conf),
    ]
}

/// Starts the upstream nginx (`return 200` with `UPSTREAM_BODY`) on `cpu`, ready.
pub(crate) fn start_upstream(
    nginx: &Tool,
    dir: &Path,
    cpu: u32,
) -> anyhow::Result<(Process, SocketAddr)> {
    let dir = dir.join("upstream");
    std::fs::create_dir_all(&dir)?;
    let addr = process::free_addr()?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        peer_configs::nginx_upstream(&dir, addr, UPSTREAM_BODY),
    )?;
    let mut process = Process::start(
        "upstream nginx",
        cpu,
        &nginx.path,
        &nginx_args(&dir, &conf),
        &[],
        &dir.join("nginx.log"),
    )?;
    process.wait_listening(addr, READY_WITHIN)?;
    let (status, body) = fixtures::http_get(addr, "/", None, None)?;
    if status != 200 || body != UPSTREAM_BODY {
        bail!("the upstream nginx answered {status}: {body}");
    }
    Ok((process, addr))
}

/// `tollgate run --config <file>`, its listeners set through tollgate's `TOLLGATE__` variables
/// (the shared configurations leave them at their defaults), the admin listener on a free port.
fn tollgate_args(
    config: &Path,
    addr: SocketAddr,
    env: &mut Vec<(&'static str, String)>,
) -> anyhow::Result<Vec<String>> {
    env.push(("TOLLGATE__SERVER__LISTEN", addr.to_string()));
    env.push((
        "TOLLGATE__SERVER__ADMIN_LISTEN",
        process::free_addr()?.to_string(),
    ));
    Ok(vec![
        "run".to_owned(),
        "--config".to_owned(),
        path_arg(config),
    ])
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

/// Sends `probe` (with `cookie`) until it is answered 200 with `expect` in the body: tollgate
/// answers 503 until it has its keys, Envoy may accept before its listener is wired.
fn ready(
    process: &mut Process,
    addr: SocketAddr,
    probe: &Probe,
    cookie: Option<&str>,
    expect: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        let answer = fixtures::http_get(addr, probe.path, probe.token, cookie);
        match answer {
            Ok((200, body)) if body.contains(expect) => return Ok(()),
            _ if !process.alive() => bail!("{} exited: {}", process.name, process.log_tail()),
            _ if Instant::now() > deadline => bail!(
                "{} did not answer 200 with {expect:?} within {READY_WITHIN:?} (last: {answer:?}): {}",
                process.name,
                process.log_tail()
            ),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
