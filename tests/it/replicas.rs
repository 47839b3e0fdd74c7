//! Several replicas sharing one session table in a real Redis, in front of one fake legacy API:
//! one session (and one login) per grant across the fleet, the seat cap held fleet-wide, a killed
//! replica's leases coming back, a Redis outage answered with 503 and recovered from, and
//! introspection answers shared.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;
use tollgate::demo::legacy::{FakeLegacy, LegacyOptions};

use crate::support::introspect::{ExpectAuth, FakeIntrospection};
use crate::support::redis::RedisServer;
use crate::support::{eventually, get, FakeIdp, TestGateway};

const ECHO: &str = "/entity/Default/24.200.001/Echo";

struct Fleet {
    idp: FakeIdp,
    fake: FakeLegacy,
    redis: RedisServer,
    dir: tempfile::TempDir,
    legacy: String,
    _task: tokio::task::JoinHandle<()>,
}

impl Fleet {
    async fn start(opts: LegacyOptions) -> Fleet {
        let idp = FakeIdp::start().await;
        let fake = FakeLegacy::new(opts);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let legacy = format!("http://{}", listener.local_addr().unwrap());
        let task = fake.spawn(listener);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("handle.key"),
            format!("{}\n", "c3".repeat(32)),
        )
        .unwrap();
        Fleet {
            idp,
            fake,
            redis: RedisServer::start(),
            dir,
            legacy,
            _task: task,
        }
    }

    /// The configuration every replica shares.
    fn config(&self, session: &str) -> String {
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[store]
kind = "redis"
url = "{redis}"
lease_ttl = "2s"
timeout = "300ms"

[[issuer]]
id = "erp"
issuer = "{iss}"
jwks_uri = "{iss}/jwks"
audiences = ["api"]

[[upstream]]
id = "erp"
url = "{legacy}"
timeout = "10s"

[upstream.session]
handle_key_file = "{key}"
min_idle_before_evict = "0s"
{session}
[upstream.session.credentials]
name = "admin"
password = "123"
tenant = "MyStore"

[[route]]
id = "erp"
prefix = "/entity/"
upstream = "erp"
scopes = ["api"]
"#,
            redis = self.redis.url(),
            iss = self.idp.issuer,
            legacy = self.legacy,
            key = self.dir.path().join("handle.key").display(),
        )
    }

    async fn replica(&self, session: &str) -> TestGateway {
        TestGateway::start(&self.config(session), true).await
    }

    fn token(&self, grant: &str) -> String {
        self.idp.token(json!({"grant_id": grant}))
    }

    fn assert_no_leaks(&self) {
        let c = self.fake.counters();
        assert_eq!(
            (
                c.mixed_session_cookies,
                c.foreign_cookie,
                c.authorization_header_seen,
                c.logouts_411
            ),
            (0, 0, 0, 0),
            "{c:?}"
        );
    }
}

async fn echo(gw: &TestGateway, token: &str) -> crate::support::http::Reply {
    get(
        &gw.url(ECHO),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

#[tokio::test]
async fn one_grant_over_three_replicas_uses_one_session_and_one_login() {
    let fleet = Fleet::start(LegacyOptions::default()).await;
    let replicas = [
        fleet.replica("max_upstream_sessions = 2").await,
        fleet.replica("max_upstream_sessions = 2").await,
        fleet.replica("max_upstream_sessions = 2").await,
    ];
    let token = fleet.token("g1");
    let mut tasks = Vec::new();
    // 15 at once: within the default per-session queue bound (20), shared by the fleet.
    for i in 0..15 {
        let url = replicas[i % 3].url("/entity/Default/24.200.001/Slow?ms=20");
        let auth = format!("Bearer {token}");
        tasks.push(tokio::spawn(async move {
            get(&url, &[("authorization", &auth)]).await
        }));
    }
    let mut sessions = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        sessions.push(r.json()["session"].clone());
    }
    sessions.dedup();
    assert_eq!(
        sessions.len(),
        1,
        "one upstream session for the grant across the fleet"
    );
    let c = fleet.fake.counters();
    assert_eq!(
        c.logins_ok, 1,
        "exactly one login across three replicas: {c:?}"
    );
    assert_eq!(
        c.max_concurrency_per_session, 1,
        "the grant's requests overlapped upstream: {c:?}"
    );
    fleet.assert_no_leaks();
    for r in replicas {
        r.shutdown().await;
    }
}

#[tokio::test]
async fn a_burst_of_50_grants_over_two_replicas_never_exceeds_the_seat_cap() {
    let fleet = Fleet::start(LegacyOptions {
        max_api_users: 100,
        ..LegacyOptions::default()
    })
    .await;
    let session = "max_upstream_sessions = 5\nadmission_wait = \"3s\"";
    let replicas = [fleet.replica(session).await, fleet.replica(session).await];
    let mut tasks = Vec::new();
    for i in 0..50 {
        let url = replicas[i % 2].url(ECHO);
        let auth = format!("Bearer {}", fleet.token(&format!("burst-{i}")));
        tasks.push(tokio::spawn(async move {
            get(&url, &[("authorization", &auth)]).await.status.as_u16()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let status = t.await.unwrap();
        assert!(status == 200 || status == 503, "{status}");
        ok += usize::from(status == 200);
    }
    let c = fleet.fake.counters();
    assert!(
        c.peak_seats <= 5,
        "more sessions upstream than the cap: {c:?}"
    );
    assert!(ok >= 5, "only {ok} requests served");
    fleet.assert_no_leaks();
    for r in replicas {
        r.shutdown().await;
    }
    assert_eq!(
        fleet.fake.counters().seats_in_use,
        0,
        "shutdown logged the fleet's sessions out"
    );
}

/// A replica as its own process, so that it can be killed.
fn spawn_replica(config: &str, dir: &std::path::Path) -> (Child, String) {
    use std::io::BufRead;
    let path = dir.join("replica.toml");
    std::fs::write(
        &path,
        config.replace("[server]", "[log]\nformat = \"json\"\n\n[server]"),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["run", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the replica ended").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or(json!({}));
        if let Some(a) = v["proxy_addr"].as_str() {
            break a.to_owned();
        }
    };
    // Keep draining its logs so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, format!("http://{addr}"))
}

#[tokio::test]
async fn a_killed_replicas_leases_come_back_and_no_seat_leaks() {
    let fleet = Fleet::start(LegacyOptions::default()).await;
    let session = "max_upstream_sessions = 2\nidle_ttl = \"1s\"";
    let (mut doomed, doomed_url) = spawn_replica(&fleet.config(session), fleet.dir.path());
    let survivor = fleet.replica(session).await;
    let token = fleet.token("g");
    // Wait until the killed replica is ready, then start a slow request on it.
    let auth = format!("Bearer {token}");
    let mut ready = false;
    for _ in 0..200 {
        if get(&format!("{doomed_url}{ECHO}"), &[("authorization", &auth)])
            .await
            .status
            == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ready, "the replica never served");
    let slow_url = format!("{doomed_url}/entity/Default/24.200.001/Slow?ms=1500");
    let auth2 = auth.clone();
    let slow = tokio::spawn(async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let req = http::Request::get(slow_url)
            .header("authorization", auth2)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        client.request(req).await.map(|r| r.status())
    });
    let fake = fleet.fake.clone();
    assert!(
        eventually(Duration::from_secs(5), || fake.state()["sessions"]
            .as_array()
            .is_some_and(|s| s
                .iter()
                .any(|x| x["in_flight"].as_u64() > Some(0))))
        .await,
        "the slow request never reached the upstream"
    );
    // The replica dies mid-request, holding the session's in-flight lease.
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    let _ = slow.await;
    // The survivor serves the grant once the dead replica's lease has run out (lease_ttl 2 s),
    // on the same upstream session: no second login.
    let r = echo(&survivor, &token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        fleet.fake.counters().logins_ok,
        1,
        "{:?}",
        fleet.fake.counters()
    );
    // Idle logout by the survivor: no seat stays taken upstream.
    assert!(
        eventually(Duration::from_secs(10), || fake.counters().seats_in_use
            == 0)
        .await,
        "{:?}",
        fleet.fake.counters()
    );
    fleet.assert_no_leaks();
    survivor.shutdown().await;
}

#[tokio::test]
async fn a_redis_outage_is_503_and_the_fleet_recovers_without_double_sessions() {
    let mut fleet = Fleet::start(LegacyOptions::default()).await;
    let session = "max_upstream_sessions = 2";
    let a = fleet.replica(session).await;
    let b = fleet.replica(session).await;
    let token = fleet.token("g");
    let first = echo(&a, &token).await;
    assert_eq!(first.status, 200);
    let session_id = first.json()["session"].clone();
    fleet.redis.stop();
    for gw in [&a, &b] {
        let r = echo(gw, &token).await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.json()["error"], "session_store_unavailable");
        assert_eq!(r.header("retry-after"), Some("5"));
    }
    fleet.redis.restart();
    // Both replicas converge on the same session, without a restart and without a new login.
    for gw in [&a, &b] {
        let mut status = 0;
        let mut body = json!(null);
        for _ in 0..200 {
            let r = echo(gw, &token).await;
            status = r.status.as_u16();
            if status == 200 {
                body = r.json();
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(status, 200);
        assert_eq!(body["session"], session_id, "the grant kept its session");
    }
    assert_eq!(
        fleet.fake.counters().logins_ok,
        1,
        "no double session: {:?}",
        fleet.fake.counters()
    );
    let m = a.metrics().await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("tollgate_store_errors_total{") && !l.ends_with(" 0")),
        "{m}"
    );
    fleet.assert_no_leaks();
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn introspection_answers_are_shared_between_replicas() {
    let fleet = Fleet::start(LegacyOptions::default()).await;
    let introspection = FakeIntrospection::start(ExpectAuth::Basic {
        id: "tollgate".into(),
        secret: "s".into(),
    })
    .await;
    let cfg = fleet.config("max_upstream_sessions = 2").replacen(
        "audiences = [\"api\"]\n",
        &format!("audiences = [\"api\"]\n[issuer.introspection]\nendpoint = \"{}\"\nclient_id = \"tollgate\"\nclient_secret = \"s\"\n", introspection.endpoint),
        1,
    );
    let a = TestGateway::start(&cfg, true).await;
    let b = TestGateway::start(&cfg, true).await;
    let opaque = introspection.active(json!({"iss": fleet.idp.issuer, "grant_id": "opaque-grant"}));
    assert_eq!(echo(&a, &opaque).await.status, 200);
    assert_eq!(introspection.calls(), 1);
    // The second replica finds the answer in the shared store.
    assert_eq!(echo(&b, &opaque).await.status, 200);
    assert_eq!(
        introspection.calls(),
        1,
        "the second replica called the introspection endpoint"
    );
    a.shutdown().await;
    b.shutdown().await;
}
