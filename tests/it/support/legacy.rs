//! The gateway in front of the fake legacy API, for the session tests: one issuer, one session
//! upstream, the memory or the Redis store, and the fake's leak detectors checked by every test.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tollgate::demo::legacy::{Counters, FakeLegacy, LegacyOptions};

use super::http::Reply;
use super::metrics::Metrics;
use super::redis::RedisServer;
use super::{eventually, request, FakeIdp, TestGateway};

/// Which session store the gateway uses: the session tests run against both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Memory,
    Redis,
}

/// How to start one [`Env`].
pub struct Setup {
    store: Store,
    opts: LegacyOptions,
    session: String,
    password: String,
    passive: bool,
    server: String,
    upstream: String,
    extra: String,
}

pub struct Env {
    pub idp: FakeIdp,
    pub fake: FakeLegacy,
    pub gw: TestGateway,
    /// The fake's base URL.
    pub legacy: String,
    /// The whole configuration the gateway started with.
    pub config: String,
    /// Requests on one session at once that the configuration allows (the leak check's bound).
    inflight: u64,
    _task: tokio::task::JoinHandle<()>,
    _redis: Option<RedisServer>,
    _dir: tempfile::TempDir,
}

impl Setup {
    pub fn new(store: Store) -> Setup {
        Setup {
            store,
            opts: LegacyOptions::default(),
            session: String::new(),
            password: "123".to_owned(),
            passive: false,
            server: String::new(),
            upstream: String::new(),
            extra: String::new(),
        }
    }

    /// Lines added to `[[upstream]]`.
    pub fn upstream(mut self, lines: &str) -> Self {
        self.upstream = lines.to_owned();
        self
    }

    pub fn opts(mut self, opts: LegacyOptions) -> Self {
        self.opts = opts;
        self
    }

    /// Lines added to `[upstream.session]`.
    pub fn session(mut self, lines: &str) -> Self {
        self.session = lines.to_owned();
        self
    }

    pub fn password(mut self, p: &str) -> Self {
        self.password = p.to_owned();
        self
    }

    /// `creation = "passive"`, without a credentials table.
    pub fn passive(mut self) -> Self {
        self.passive = true;
        self
    }

    /// Lines added to `[server]`.
    pub fn server(mut self, lines: &str) -> Self {
        self.server = lines.to_owned();
        self
    }

    /// Text appended to the configuration (more tables).
    pub fn extra(mut self, text: &str) -> Self {
        self.extra = text.to_owned();
        self
    }

    pub async fn start(self) -> Env {
        let idp = FakeIdp::start().await;
        let fake = FakeLegacy::new(self.opts.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let legacy = format!("http://{}", listener.local_addr().unwrap());
        let task = fake.spawn(listener);
        self.start_on(idp, fake, legacy, task).await
    }

    /// Starts a gateway in front of an existing fake (several gateways, one upstream).
    pub async fn start_on(
        self,
        idp: FakeIdp,
        fake: FakeLegacy,
        legacy: String,
        task: tokio::task::JoinHandle<()>,
    ) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let (store_table, key_line, redis) = self.store_config(dir.path());
        let config = self.config(&idp.issuer, &legacy, &key_line) + &store_table;
        let gw = TestGateway::start(&config, true).await;
        let inflight = self
            .session
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("max_inflight_per_session")
                    .and_then(|r| r.trim().strip_prefix('='))
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(1);
        Env {
            idp,
            fake,
            gw,
            legacy,
            config,
            inflight,
            _task: task,
            _redis: redis,
            _dir: dir,
        }
    }

    /// The `[store]` table (and the shared handle key a shared store requires).
    fn store_config(&self, dir: &std::path::Path) -> (String, String, Option<RedisServer>) {
        match self.store {
            Store::Memory => (String::new(), String::new(), None),
            Store::Redis => {
                let redis = RedisServer::start();
                let key = dir.join("handle.key");
                std::fs::write(&key, format!("{}\n", "5a".repeat(32))).unwrap();
                (
                    format!(
                        "\n[store]\nkind = \"redis\"\nurl = \"{}\"\nlease_ttl = \"3s\"\n",
                        redis.url()
                    ),
                    format!("handle_key_file = \"{}\"", key.display()),
                    Some(redis),
                )
            }
        }
    }

    fn config(&self, issuer: &str, legacy: &str, key_line: &str) -> String {
        let cap = if self.session.contains("max_upstream_sessions") {
            ""
        } else {
            "max_upstream_sessions = 2"
        };
        let credentials = if self.passive {
            "creation = \"passive\"\n".to_owned()
        } else {
            format!(
                "[upstream.session.credentials]\nname = \"admin\"\npassword = \"{}\"\ntenant = \"MyStore\"\nbranch = \"HQ\"\n",
                self.password
            )
        };
        format!(
            r#"
[server]
{server}

[[issuer]]
id = "erp"
issuer = "{issuer}"
jwks_uri = "{issuer}/jwks"
audiences = ["api"]
algorithms = ["RS256"]

[[upstream]]
id = "erp"
url = "{legacy}"
timeout = "10s"
{upstream}

[upstream.session]
{cap}
{session}
{key_line}
{credentials}
[[route]]
id = "erp"
prefix = "/entity/"
upstream = "erp"
scopes = ["api"]

[[route]]
id = "health"
exact = "/health"
upstream = "erp"
auth = "none"
{extra}
"#,
            server = self.server,
            upstream = self.upstream,
            session = self.session,
            extra = self.extra,
        )
    }
}

/// The default environment of `store` with `session` lines.
pub async fn env(store: Store, session: &str) -> Env {
    Setup::new(store).session(session).start().await
}

pub const ECHO: &str = "/entity/Default/24.200.001/Echo";

impl Env {
    /// A token of grant `grant` (scope "api", or with the concurrent scope).
    pub fn token(&self, grant: &str, concurrent: bool) -> String {
        let scope = if concurrent {
            "api api:concurrent_access"
        } else {
            "api"
        };
        self.idp.token(json!({"grant_id": grant, "scope": scope}))
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        token: &str,
        cookie: Option<&str>,
        body: &'static [u8],
    ) -> Reply {
        let mut b = Request::builder()
            .method(method)
            .uri(self.gw.url(path))
            .header("authorization", format!("Bearer {token}"));
        if let Some(c) = cookie {
            b = b.header("cookie", c);
        }
        let r = request(b.body(Full::new(Bytes::from_static(body))).unwrap()).await;
        assert_clean(&r);
        r
    }

    pub async fn echo(&self, token: &str) -> Reply {
        self.send("GET", ECHO, token, None, b"").await
    }

    pub async fn echo_with(&self, token: &str, cookie: &str) -> Reply {
        self.send("GET", ECHO, token, Some(cookie), b"").await
    }

    pub fn counters(&self) -> Counters {
        self.fake.counters()
    }

    /// The leak detectors of the fake (design §6.11, §7.6) stay at zero, and no session ever
    /// served more requests at once than the configuration allows (a logout counts as one).
    pub fn assert_no_leaks(&self) {
        let c = self.counters();
        assert_eq!(c.mixed_session_cookies, 0, "jar cross-contamination: {c:?}");
        assert_eq!(
            c.foreign_cookie, 0,
            "a client or gateway cookie reached the upstream: {c:?}"
        );
        assert_eq!(
            c.authorization_header_seen, 0,
            "the bearer token reached the upstream: {c:?}"
        );
        assert_eq!(c.logouts_411, 0, "a logout without Content-Length: {c:?}");
        assert_eq!(c.logins_locked, 0, "the service account was locked: {c:?}");
        assert!(
            c.max_concurrency_per_session <= self.inflight,
            "a session served more requests at once than max_inflight_per_session, or was logged out under one: {c:?}"
        );
        if self.inflight == 1 {
            assert_eq!(
                c.stale_auth_cookie, 0,
                "the jar did not follow a renewed .ASPXAUTH: {c:?}"
            );
        }
    }

    pub async fn metrics(&self) -> Metrics {
        self.gw.metrics().await
    }

    /// The gateway's session records (admin `/sessions`).
    pub async fn records(&self) -> Vec<Value> {
        let list = super::get(&format!("{}/sessions", self.gw.admin), &[]).await;
        list.json()["sessions"].as_array().unwrap().clone()
    }

    /// The gateway's records holding a seat.
    pub async fn seated(&self) -> u64 {
        let records = self.records().await;
        records.iter().filter(|r| r["state"] == "active").count() as u64
    }

    /// Waits until no login of the gateway is running, then until the fake's live sessions
    /// equal the gateway's records holding a seat (no orphan either way), within `within`.
    pub async fn settles(&self, within: Duration) {
        let app = self.gw.app.as_ref().unwrap();
        eventually(
            "the gateway and the fake settle: no login running, and the fake's live sessions \
             (live) equal the records holding a seat (seated) and the seats counted (counted)",
            within,
            || async {
                let logins: usize = app.gateway.pools().iter().map(|p| p.logins_running()).sum();
                let seated = self.seated().await;
                let counted = self
                    .metrics()
                    .await
                    .count(r#"tollgate_upstream_seats_in_use{upstream="erp"}"#);
                let live = self.counters().seats_in_use;
                json!({"logins_running": logins, "seated": seated, "counted": counted, "live": live})
            },
            |s| s["logins_running"] == 0 && s["seated"] == s["live"] && s["counted"] == s["live"],
        )
        .await;
    }
}

/// Waits until `sessions` sessions of the fake each have a request in flight (the requests
/// reached the upstream).
pub async fn requests_in_flight(fake: &FakeLegacy, sessions: usize) {
    eventually(
        &format!("{sessions} upstream session(s) each have a request in flight"),
        Duration::from_secs(5),
        || std::future::ready(fake.state()["sessions"].clone()),
        |list| {
            list.as_array()
                .unwrap()
                .iter()
                .filter(|s| s["in_flight"].as_u64() > Some(0))
                .count()
                >= sessions
        },
    )
    .await;
}

/// Invariant 6.11.1: no upstream `Set-Cookie` ever reaches a client, only the handle cookie;
/// and no upstream exception detail either (design facts, §6.11.5).
pub fn assert_clean(r: &Reply) {
    for v in r.headers.get_all("set-cookie") {
        let v = v.to_str().unwrap();
        assert!(
            v.starts_with("tollgate_session="),
            "an upstream cookie reached the client: {v}"
        );
    }
    let text = r.text();
    for leak in ["exceptionMessage", "exceptionType", "stackTrace", "PX.Data"] {
        assert!(
            !text.contains(leak),
            "the upstream's error details reached the client: {text}"
        );
    }
}

pub fn session_of(r: &Reply) -> Value {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["session"].clone()
}

pub fn handle_of(r: &Reply) -> String {
    let v = r.header("set-cookie").expect("a handle cookie");
    assert!(
        v.contains("Path=/")
            && v.contains("Secure")
            && v.contains("HttpOnly")
            && v.contains("SameSite=Strict"),
        "{v}"
    );
    v.split(';').next().unwrap().to_owned()
}
