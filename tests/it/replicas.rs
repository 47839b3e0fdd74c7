//! Several replicas sharing one session table in a real Redis, in front of one fake legacy API:
//! one session (and one login) per grant across the fleet, the seat cap held fleet-wide, a killed
//! replica's leases coming back, a Redis outage answered with 503 and recovered from, and
//! introspection answers shared.

use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;
use tollgate::demo::legacy::{FakeLegacy, LegacyOptions};

use crate::support::introspect::{ExpectAuth, FakeIntrospection};
use crate::support::legacy::requests_in_flight;
use crate::support::process::{child_config, Process};
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

    /// The configuration every replica shares (in-process replicas use ephemeral listeners;
    /// a child process gets them from [`child_config`]).
    fn config(&self, session: &str) -> String {
        self.config_with("", session)
    }

    /// The configuration with more `[store]` keys.
    fn config_with(&self, store: &str, session: &str) -> String {
        format!(
            r#"
[server]

[store]
kind = "redis"
url = "{redis}"
lease_ttl = "2s"
timeout = "300ms"
{store}

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

    /// A replica that keeps no place after a request (`linger = "0s"`): each request needs
    /// the store.
    async fn replica_keeping_nothing(&self, session: &str) -> TestGateway {
        TestGateway::start(&self.config_with("linger = \"0s\"", session), true).await
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

#[tokio::test]
async fn a_killed_replicas_leases_come_back_and_no_seat_leaks() {
    let fleet = Fleet::start(LegacyOptions::default()).await;
    let session = "max_upstream_sessions = 2\nidle_ttl = \"1s\"";
    // A replica as its own process, so that it can be killed.
    let mut doomed = Process::start(&child_config(&fleet.config(session), "info")).await;
    let survivor = fleet.replica(session).await;
    let token = fleet.token("g");
    // Once the doomed replica is ready, it serves the grant; then a slow request starts on it.
    doomed.ready().await;
    let auth = format!("Bearer {token}");
    let r = get(&doomed.url(ECHO), &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200, "the replica did not serve: {}", r.text());
    let slow_url = doomed.url("/entity/Default/24.200.001/Slow?ms=1500");
    let slow = tokio::spawn(async move {
        crate::support::try_request(&slow_url, &[("authorization", &auth)]).await
    });
    requests_in_flight(&fleet.fake, 1).await;
    // The replica dies mid-request, holding the session's in-flight lease.
    doomed.kill();
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
    eventually(
        "the survivor logs the idle session out: no seat in use upstream",
        Duration::from_secs(10),
        || std::future::ready(fleet.fake.counters()),
        |c| c.seats_in_use == 0,
    )
    .await;
    fleet.assert_no_leaks();
    survivor.shutdown().await;
}

#[tokio::test]
async fn a_redis_outage_is_503_and_the_fleet_recovers_without_double_sessions() {
    let mut fleet = Fleet::start(LegacyOptions::default()).await;
    let session = "max_upstream_sessions = 2";
    // A place kept for a replica's next request would still serve it during the outage
    // (`redis_store.rs` shows that): here every request needs the store.
    let a = fleet.replica_keeping_nothing(session).await;
    let b = fleet.replica_keeping_nothing(session).await;
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
        let r = eventually(
            "the replica serves the grant again after Redis came back",
            Duration::from_secs(10),
            || echo(gw, &token),
            |r| r.status == 200,
        )
        .await;
        assert_eq!(
            r.json()["session"],
            session_id,
            "the grant kept its session"
        );
    }
    assert_eq!(
        fleet.fake.counters().logins_ok,
        1,
        "no double session: {:?}",
        fleet.fake.counters()
    );
    let m = a.metrics().await;
    assert!(
        m.samples("tollgate_store_errors_total")
            .any(|s| s.value > 0.0),
        "{m:?}"
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
