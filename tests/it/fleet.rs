//! A fleet of real replica processes (`tollgate run`) sharing one real `redis-server`, in front
//! of the fake legacy API, driven the way an operator runs it: rolling restarts under load
//! (SIGTERM, one replica at a time), a replica killed mid-login, Redis restarted empty or
//! paused, Redis emptied under a request in flight, a burst over the cap, the whole fleet
//! stopped, and a Sentinel failover. The fake's counters are checked in every test, and its
//! leak detectors stay at zero.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::net::TcpListener;
use tollgate::demo::legacy::{FakeLegacy, LegacyOptions};

use crate::support::legacy::requests_in_flight;
use crate::support::process::{child_config, Process};
use crate::support::redis::{RedisServer, Sentinel};
use crate::support::{eventually, get, FakeIdp};

const ECHO: &str = "/entity/Default/24.200.001/Echo";

struct Harness {
    idp: FakeIdp,
    fake: FakeLegacy,
    legacy: String,
    dir: tempfile::TempDir,
    _task: tokio::task::JoinHandle<()>,
}

impl Harness {
    async fn start(opts: LegacyOptions) -> Harness {
        let idp = FakeIdp::start().await;
        let fake = FakeLegacy::new(opts);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let legacy = format!("http://{}", listener.local_addr().unwrap());
        let task = fake.spawn(listener);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("handle.key"),
            format!("{}\n", "d4".repeat(32)),
        )
        .unwrap();
        Harness {
            idp,
            fake,
            legacy,
            dir,
            _task: task,
        }
    }

    /// A harness whose fake allows `max_api_users` sessions, and a Redis server of its own.
    async fn with_redis(max_api_users: u32) -> (Harness, RedisServer) {
        let h = Harness::start(LegacyOptions {
            max_api_users,
            ..LegacyOptions::default()
        })
        .await;
        (h, RedisServer::start())
    }

    /// The configuration every replica shares: `store` is the `[store]` table's target lines
    /// (`url = ...`, or sentinels), `session` lines go to `[upstream.session]`.
    fn config(&self, store: &str, session: &str) -> String {
        self.config_leasing(store, session, "2s")
    }

    /// [`Harness::config`] with another `lease_ttl`.
    fn config_leasing(&self, store: &str, session: &str, lease_ttl: &str) -> String {
        child_config(
            &format!(
                r#"
[server]
shutdown_grace = "5s"

[store]
kind = "redis"
{store}
lease_ttl = "{lease_ttl}"
timeout = "400ms"

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
                iss = self.idp.issuer,
                legacy = self.legacy,
                key = self.dir.path().join("handle.key").display(),
            ),
            "info",
        )
    }

    async fn replica(&self, config: &str) -> Process {
        let p = Process::start(config).await;
        p.ready().await;
        p
    }

    fn token(&self, grant: &str) -> String {
        self.idp.token(json!({"grant_id": grant}))
    }

    fn assert_no_leaks(&self) {
        self.assert_no_leaks_but_stale_jars();
        let c = self.fake.counters();
        assert_eq!(
            c.stale_auth_cookie, 0,
            "a jar did not follow a renewal: {c:?}"
        );
    }

    /// The leak detectors, except the use of a jar a renewal behind: after the store lost its
    /// state, a session registered again carries the freshest jar a replica remembers, which
    /// may miss the last renewal another replica saw (the upstream still accepts it).
    fn assert_no_leaks_but_stale_jars(&self) {
        let c = self.fake.counters();
        assert_eq!(
            (
                c.mixed_session_cookies,
                c.foreign_cookie,
                c.authorization_header_seen,
                c.logouts_411,
                c.logins_locked,
            ),
            (0, 0, 0, 0, 0),
            "{c:?}"
        );
        assert!(c.max_concurrency_per_session <= 1, "{c:?}");
    }
}

/// Steady load: one client per grant, each sending its requests to a live replica of the
/// rotation (what a load balancer does: a replica leaves the rotation before it is stopped).
struct Load {
    stop: Arc<AtomicBool>,
    progress: Arc<Mutex<Progress>>,
    tasks: Vec<tokio::task::JoinHandle<Outcome>>,
}

#[derive(Default, Debug)]
struct Outcome {
    ok: u64,
    failed: Vec<(u16, String, Option<String>)>,
    sessions: BTreeSet<String>,
}

/// What the load has done so far, for the test to wait on.
#[derive(Default, Debug, Clone)]
struct Progress {
    /// Requests under way, by replica.
    in_flight: BTreeMap<String, usize>,
    /// Requests answered 200, by grant.
    served: BTreeMap<usize, u64>,
    /// The grants each replica has served.
    served_on: BTreeMap<String, BTreeSet<usize>>,
}

type Rotation = Arc<RwLock<Vec<String>>>;

impl Load {
    fn start(h: &Harness, grants: usize, rotation: &Rotation, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Mutex::new(Progress::default()));
        let tasks = (0..grants)
            .map(|g| {
                let (stop, rotation, progress) = (stop.clone(), rotation.clone(), progress.clone());
                let auth = format!("Bearer {}", h.token(&format!("grant-{g}")));
                tokio::spawn(async move {
                    let mut out = Outcome::default();
                    let mut n = g;
                    while !stop.load(Ordering::SeqCst) {
                        let base = {
                            let r = rotation.read().unwrap();
                            n += 1;
                            let base = r[n % r.len()].clone();
                            // Counted while the rotation is read: a replica taken out of it
                            // has no request under way once its count is 0.
                            *progress
                                .lock()
                                .unwrap()
                                .in_flight
                                .entry(base.clone())
                                .or_default() += 1;
                            base
                        };
                        let r = get(&format!("{base}{ECHO}"), &[("authorization", &auth)]).await;
                        {
                            let mut p = progress.lock().unwrap();
                            *p.in_flight.get_mut(&base).unwrap() -= 1;
                            if r.status == 200 {
                                *p.served.entry(g).or_default() += 1;
                                p.served_on.entry(base).or_default().insert(g);
                            }
                        }
                        if r.status == 200 {
                            out.ok += 1;
                            out.sessions.insert(r.json()["session"].to_string());
                        } else {
                            out.failed.push((
                                r.status.as_u16(),
                                r.text(),
                                r.header("retry-after").map(str::to_owned),
                            ));
                        }
                        // The pace of a client, not a wait.
                        tokio::time::sleep(pause).await;
                    }
                    out
                })
            })
            .collect();
        Load {
            stop,
            progress,
            tasks,
        }
    }

    fn progress(&self) -> Progress {
        self.progress.lock().unwrap().clone()
    }

    /// Waits until every grant has been served (again) since `since`.
    async fn every_grant_served(&self, since: &Progress, what: &str) {
        let grants = self.tasks.len();
        eventually(
            &format!("every grant is served {what}"),
            Duration::from_secs(20),
            || std::future::ready(self.progress()),
            |p| (0..grants).all(|g| p.served.get(&g) > since.served.get(&g)),
        )
        .await;
    }

    async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Vec::new();
        for t in self.tasks {
            all.push(t.await.unwrap());
        }
        all
    }
}

/// Each grant once, on replica `base`.
async fn warm(h: &Harness, base: &str, grants: usize) -> BTreeMap<usize, Value> {
    let mut sessions = BTreeMap::new();
    for g in 0..grants {
        let r = get(
            &format!("{base}{ECHO}"),
            &[(
                "authorization",
                &format!("Bearer {}", h.token(&format!("grant-{g}"))),
            )],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        sessions.insert(g, r.json()["session"].clone());
    }
    sessions
}

#[tokio::test]
async fn a_rolling_restart_keeps_every_session_and_stopping_the_fleet_frees_every_seat() {
    let (h, redis) = Harness::with_redis(30).await;
    let cfg = h.config(
        &format!("url = \"{}\"", redis.url()),
        "max_upstream_sessions = 25",
    );
    let mut replicas = vec![
        h.replica(&cfg).await,
        h.replica(&cfg).await,
        h.replica(&cfg).await,
    ];
    let before = warm(&h, &replicas[0].proxy, 20).await;
    assert_eq!(h.fake.counters().logins_ok, 20);
    let rotation: Rotation = Arc::new(RwLock::new(
        replicas.iter().map(|r| r.proxy.clone()).collect(),
    ));
    let load = Load::start(&h, 20, &rotation, Duration::from_millis(20));
    for (i, replica) in replicas.iter_mut().enumerate() {
        // Out of the rotation (as a Service drops a terminating pod), then SIGTERM.
        let leaving = replica.proxy.clone();
        rotation.write().unwrap().retain(|b| *b != leaving);
        eventually(
            &format!("replica {i} has no request of the load under way"),
            Duration::from_secs(10),
            || std::future::ready(load.progress()),
            |p| p.in_flight.get(&leaving).copied().unwrap_or(0) == 0,
        )
        .await;
        replica.signal("TERM");
        let status = replica.wait(Duration::from_secs(20)).await;
        assert!(status.success(), "replica {i} ended with {status}");
        assert_eq!(
            h.fake.counters().logouts,
            0,
            "replica {i}'s stop logged sessions out"
        );
        let fresh = h.replica(&cfg).await;
        rotation.write().unwrap().push(fresh.proxy.clone());
        // The new replica takes its share before the next one leaves: every grant on it.
        eventually(
            &format!("the replica that replaced replica {i} has served every grant"),
            Duration::from_secs(20),
            || std::future::ready(load.progress()),
            |p| p.served_on.get(&fresh.proxy).map_or(0, BTreeSet::len) == load.tasks.len(),
        )
        .await;
        *replica = fresh;
    }
    let outcomes = load.finish().await;
    let failed: Vec<_> = outcomes.iter().flat_map(|o| o.failed.iter()).collect();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    for (g, o) in outcomes.iter().enumerate() {
        assert!(o.ok > 0, "grant {g} was never served");
        assert_eq!(
            o.sessions,
            BTreeSet::from([before[&g].to_string()]),
            "grant {g} changed sessions"
        );
    }
    let c = h.fake.counters();
    assert_eq!((c.logins_ok, c.logouts), (20, 0), "{c:?}");
    h.assert_no_leaks();

    // The whole fleet stops at once: the last to leave logs every session out.
    for r in &replicas {
        r.signal("TERM");
    }
    for r in &mut replicas {
        assert!(r.wait(Duration::from_secs(30)).await.success());
    }
    let c = h.fake.counters();
    assert_eq!((c.seats_in_use, c.logouts), (0, 20), "{c:?}");
    h.assert_no_leaks();
}

#[tokio::test]
async fn a_replica_killed_mid_login_gives_its_seat_back_within_lease_ttl() {
    let h = Harness::start(LegacyOptions {
        login_delay: Duration::from_millis(1500),
        ..LegacyOptions::default()
    })
    .await;
    let redis = RedisServer::start();
    let cfg = h.config(
        &format!("url = \"{}\"", redis.url()),
        "max_upstream_sessions = 1\nadmission_wait = \"30s\"",
    );
    let doomed = h.replica(&cfg).await;
    let survivor = h.replica(&cfg).await;
    // A login starts on the doomed replica (it takes the only seat) ...
    let url = format!("{}{ECHO}", doomed.proxy);
    let auth = format!("Bearer {}", h.token("a"));
    let login = tokio::spawn(async move {
        crate::support::try_request(&url, &[("authorization", &auth)]).await
    });
    eventually(
        "the login takes its seat (the fleet's seats in use)",
        Duration::from_secs(5),
        || async { fleet_seats(&[&doomed, &survivor]).await },
        |seats| *seats == Some(1),
    )
    .await;
    // ... and the replica dies in the middle of it.
    doomed.signal("KILL");
    let killed = Instant::now();
    let _ = login.await;
    let r = get(
        &format!("{}{ECHO}", survivor.proxy),
        &[("authorization", &format!("Bearer {}", h.token("b")))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Without the lease's expiry the seat would never come back, and the request would wait
    // out admission_wait (30 s) for a 503. With it, lease_ttl (2 s), one upkeep (at most 1 s)
    // and the new login (1.5 s): about 5 s, up to 7.5 s seen with the whole suite running on
    // two cores, so the bound leaves room for a loaded machine and stays far from 30 s.
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "the seat came back after {took:?} (lease_ttl 2 s, plus one upkeep and the new login)"
    );
    let c = h.fake.counters();
    assert!(c.peak_seats <= 1, "{c:?}");
    h.assert_no_leaks();
    drop(survivor);
}

/// The fleet's seats, from whichever replica reports them (`None` when none does).
async fn fleet_seats(replicas: &[&Process]) -> Option<u64> {
    for r in replicas {
        let m = r.metrics().await;
        if let Some(n) = m.value(r#"tollgate_upstream_seats_in_use{upstream="erp"}"#) {
            return Some(n as u64);
        }
    }
    None
}

#[tokio::test]
async fn redis_restarted_empty_under_load_leaves_no_orphan() {
    let (h, mut redis) = Harness::with_redis(10).await;
    let cfg = h.config(
        &format!("url = \"{}\"", redis.url()),
        "max_upstream_sessions = 8",
    );
    let (a, b) = (h.replica(&cfg).await, h.replica(&cfg).await);
    warm(&h, &a.proxy, 5).await;
    let rotation: Rotation = Arc::new(RwLock::new(vec![a.proxy.clone(), b.proxy.clone()]));
    let load = Load::start(&h, 5, &rotation, Duration::from_millis(30));
    load.every_grant_served(&Progress::default(), "under load")
        .await;
    redis.restart_empty();
    let restarted = load.progress();
    load.every_grant_served(&restarted, "again after the restart")
        .await;
    let outcomes = load.finish().await;
    // What failed during the switch said when to retry.
    for (status, body, retry) in outcomes.iter().flat_map(|o| o.failed.iter()) {
        assert_eq!(*status, 503, "{body}");
        assert!(retry.is_some(), "503 without Retry-After: {body}");
    }
    // Within lease_ttl and one upkeep the fleet counts exactly the live upstream sessions.
    let replicas = [&a, &b];
    eventually(
        "the fleet counts exactly the live upstream sessions: (upstream sessions, records \
         holding a seat, seats counted) agree",
        Duration::from_secs(8),
        || async {
            (
                h.fake.counters().seats_in_use,
                active_records(&replicas).await,
                fleet_seats(&replicas).await,
            )
        },
        |(live, records, counted)| live == records && *counted == Some(*live),
    )
    .await;
    // Counted by the next upkeep (within a second).
    eventually(
        "the reset is counted (tollgate_store_resets_total, both replicas)",
        Duration::from_secs(5),
        || async {
            let mut resets = 0;
            for r in [&a, &b] {
                resets += r
                    .metrics()
                    .await
                    .count(r#"tollgate_store_resets_total{upstream="erp"}"#);
            }
            resets
        },
        |resets| *resets >= 1,
    )
    .await;
    let logs: Vec<String> = a.logs().into_iter().chain(b.logs()).collect();
    assert!(
        logs.iter()
            .any(|l| l.contains("tollgate_store_resets_total")),
        "no log line names the reset"
    );
    h.assert_no_leaks_but_stale_jars();
}

/// A fleet of two replicas with leases long enough that no renewal falls within a test (what
/// keeps a request's place across a store loss is then the repair alone), grant 0's session
/// logged in by replica A and a slow request of grant 0 under way on A, and replica B knowing
/// the store (it served grant 9). Returns grant 0's session and the slow request.
async fn a_request_under_way(
    h: &Harness,
    redis: &RedisServer,
) -> (
    Process,
    Process,
    Value,
    tokio::task::JoinHandle<crate::support::http::Reply>,
) {
    let cfg = h.config_leasing(
        &format!("url = \"{}\"", redis.url()),
        "max_upstream_sessions = 4",
        "30s",
    );
    let (a, b) = (h.replica(&cfg).await, h.replica(&cfg).await);
    let session = warm(h, &a.proxy, 1).await.remove(&0).unwrap();
    let r = echo(&b.proxy, h, "grant-9").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let slow = format!("{}/entity/Default/24.200.001/Slow?ms=2500", a.proxy);
    let auth = format!("Bearer {}", h.token("grant-0"));
    let under_way = tokio::spawn(async move { get(&slow, &[("authorization", &auth)]).await });
    requests_in_flight(&h.fake, 1).await;
    (a, b, session, under_way)
}

/// Returns as soon as the replica's upkeep (once a second) has run: the next one is a second
/// away, so what the test does now meets the store before that replica looks at it.
async fn right_after_an_upkeep(p: &Process) {
    let upkeeps = || async {
        p.metrics()
            .await
            .count(r#"tollgate_store_operation_duration_seconds_count{op="maintain"}"#)
    };
    let before = upkeeps().await;
    eventually(
        "an upkeep of the replica",
        Duration::from_secs(5),
        upkeeps,
        |n| *n > before,
    )
    .await;
}

async fn echo(base: &str, h: &Harness, grant: &str) -> crate::support::http::Reply {
    let auth = format!("Bearer {}", h.token(grant));
    get(&format!("{base}{ECHO}"), &[("authorization", &auth)]).await
}

#[tokio::test]
async fn a_session_registered_again_keeps_the_place_of_its_request_under_way() {
    let (h, redis) = Harness::with_redis(10).await;
    let (a, b, session, under_way) = a_request_under_way(&h, &redis).await;
    redis.command("FLUSHALL");
    // Replica A's upkeep registers grant 0's session again (within a second; it says so once
    // done).
    a.wait_for_log(r#""registered":1"#, 1).await;
    // Grant 0 on replica B: the same session, once A's request is over, never beside it.
    let r = echo(&b.proxy, &h, "grant-0").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["session"], session, "grant 0 kept its session");
    let slow = under_way.await.unwrap();
    assert_eq!(slow.status, 200, "{}", slow.text());
    let c = h.fake.counters();
    assert_eq!(
        c.max_concurrency_per_session, 1,
        "two requests at once on grant 0's session: {c:?}"
    );
    assert_eq!((c.logins_ok, c.logouts), (2, 0), "{c:?}");
    h.assert_no_leaks();
}

#[tokio::test]
async fn a_lost_session_without_room_is_logged_out_only_after_its_request() {
    let (h, redis) = Harness::with_redis(10).await;
    let (a, b, _, under_way) = a_request_under_way(&h, &redis).await;
    right_after_an_upkeep(&a).await;
    redis.command("FLUSHALL");
    // Replica B meets the empty store first (A's next upkeep is a second away): it does not
    // know grant 0's session and logs in a new one for it.
    let r = echo(&b.proxy, &h, "grant-0").await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A's upkeep finds its session without room; its request is still under way.
    let slow = under_way.await.unwrap();
    assert_eq!(slow.status, 200, "{}", slow.text());
    let replicas = [&a, &b];
    eventually(
        "the session without room is logged out, and the fleet counts exactly the live ones",
        Duration::from_secs(8),
        || async {
            let c = h.fake.counters();
            (
                c.logins_ok - c.logouts,
                c.seats_in_use,
                active_records(&replicas).await,
            )
        },
        |(live, seats, records)| live == seats && seats == records,
    )
    .await;
    let c = h.fake.counters();
    assert_eq!(
        c.max_concurrency_per_session, 1,
        "a logout met the request under way: {c:?}"
    );
    h.assert_no_leaks();
}

#[tokio::test]
async fn a_replica_that_stops_logs_out_the_lost_session_its_request_kept() {
    let (h, redis) = Harness::with_redis(10).await;
    let (mut a, b, _, under_way) = a_request_under_way(&h, &redis).await;
    right_after_an_upkeep(&a).await;
    redis.command("FLUSHALL");
    let r = echo(&b.proxy, &h, "grant-0").await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A's upkeep keeps its session without room for after the request...
    a.wait_for_log(r#""waiting":1"#, 1).await;
    // ...but A stops first (B goes on): the request finishes, and nobody else knows that
    // session, so A logs it out on its way.
    a.signal("TERM");
    let slow = under_way.await.unwrap();
    assert_eq!(slow.status, 200, "{}", slow.text());
    assert!(a.wait(Duration::from_secs(20)).await.success());
    let c = h.fake.counters();
    assert_eq!(
        (c.logins_ok - c.logouts, c.seats_in_use, active_records(&[&b]).await),
        (2, 2, 2),
        "grant 0's new session and grant 9's live, counted by the fleet; the lost one logged out: {c:?}"
    );
    assert_eq!(c.max_concurrency_per_session, 1, "{c:?}");
    h.assert_no_leaks();
}

#[tokio::test]
async fn a_replica_stopped_right_after_redis_came_back_empty_leaves_the_sessions_to_the_fleet() {
    let (h, redis) = Harness::with_redis(10).await;
    let cfg = h.config(
        &format!("url = \"{}\"", redis.url()),
        "max_upstream_sessions = 8",
    );
    let (mut a, b) = (h.replica(&cfg).await, h.replica(&cfg).await);
    let before = warm(&h, &a.proxy, 3).await;
    redis.command("FLUSHALL");
    // A request of A registers its sessions again; A is stopped at once, before B's next
    // heartbeat has announced it to the emptied store.
    let r = echo(&a.proxy, &h, "grant-0").await;
    assert_eq!(r.status, 200, "{}", r.text());
    a.signal("TERM");
    assert!(a.wait(Duration::from_secs(20)).await.success());
    assert_eq!(
        h.fake.counters().logouts,
        0,
        "a replica that was not the last logged the fleet's sessions out"
    );
    for g in 0..3 {
        let r = echo(&b.proxy, &h, &format!("grant-{g}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.json()["session"],
            before[&g],
            "grant {g} kept its session"
        );
    }
    let c = h.fake.counters();
    assert_eq!((c.logins_ok, c.logouts), (3, 0), "{c:?}");
    h.assert_no_leaks_but_stale_jars();
}

/// Records holding a seat, as the fleet lists them (any replica: the table is shared).
async fn active_records(replicas: &[&Process]) -> u64 {
    let list = get(&format!("{}/sessions", replicas[0].admin), &[]).await;
    list.json()["sessions"].as_array().map_or(0, |s| {
        s.iter().filter(|r| r["state"] == "active").count() as u64
    })
}

#[tokio::test]
async fn a_paused_redis_is_503_with_retry_after_and_nothing_is_double_booked() {
    let (h, redis) = Harness::with_redis(10).await;
    // Places go back at once, so that every request below needs the store (a place kept for
    // a replica's next request would still serve it: `redis_store.rs` shows that).
    let cfg = h.config(
        &format!("url = \"{}\"\nlinger = \"0s\"", redis.url()),
        "max_upstream_sessions = 4",
    );
    let (a, b) = (h.replica(&cfg).await, h.replica(&cfg).await);
    let sessions = warm(&h, &a.proxy, 3).await;
    // A request in flight on grant 0 while Redis stops answering.
    let slow = format!("{}/entity/Default/24.200.001/Slow?ms=1500", a.proxy);
    let auth0 = format!("Bearer {}", h.token("grant-0"));
    let in_flight = tokio::spawn(async move { get(&slow, &[("authorization", &auth0)]).await });
    requests_in_flight(&h.fake, 1).await;
    redis.pause();
    for (gw, g) in [(&a, 1), (&b, 2)] {
        let r = get(
            &format!("{}{ECHO}", gw.proxy),
            &[(
                "authorization",
                &format!("Bearer {}", h.token(&format!("grant-{g}"))),
            )],
        )
        .await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.json()["error"], "session_store_unavailable");
        assert!(r.header("retry-after").is_some());
    }
    // Redis stays paused a while longer, past the slow request's end upstream: how long the
    // outage lasts around the request in flight is the test's subject, not a wait for an event.
    tokio::time::sleep(Duration::from_millis(600)).await;
    redis.resume();
    let r = in_flight.await.unwrap();
    assert_eq!(
        r.status,
        200,
        "the request in flight finished: {}",
        r.text()
    );
    // Afterwards every grant is on its one session, each request alone on it.
    for g in 0..3 {
        for gw in [&a, &b] {
            let r = get(
                &format!("{}{ECHO}", gw.proxy),
                &[(
                    "authorization",
                    &format!("Bearer {}", h.token(&format!("grant-{g}"))),
                )],
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(
                r.json()["session"],
                sessions[&g],
                "grant {g} got a second session"
            );
        }
    }
    let c = h.fake.counters();
    assert_eq!(c.logins_ok, 3, "{c:?}");
    h.assert_no_leaks();
}

#[tokio::test]
async fn a_burst_of_50_grants_over_three_replicas_never_exceeds_the_seat_cap() {
    let (h, redis) = Harness::with_redis(100).await;
    let cfg = h.config(
        &format!("url = \"{}\"", redis.url()),
        "max_upstream_sessions = 5\nadmission_wait = \"2s\"\nmin_idle_before_evict = \"0s\"",
    );
    let mut replicas = vec![
        h.replica(&cfg).await,
        h.replica(&cfg).await,
        h.replica(&cfg).await,
    ];
    let mut tasks = Vec::new();
    for i in 0..50 {
        let url = format!("{}{ECHO}", replicas[i % 3].proxy);
        let auth = format!("Bearer {}", h.token(&format!("burst-{i}")));
        tasks.push(tokio::spawn(async move {
            get(&url, &[("authorization", &auth)]).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert!(r.status == 200 || r.status == 503, "{}", r.text());
        if r.status == 503 {
            assert!(r.header("retry-after").is_some());
        }
        ok += usize::from(r.status == 200);
    }
    let c = h.fake.counters();
    assert!(
        c.peak_seats <= 5,
        "more sessions upstream than the cap: {c:?}"
    );
    assert!(ok >= 5, "only {ok} requests served");
    h.assert_no_leaks();
    for r in &replicas {
        r.signal("TERM");
    }
    for r in &mut replicas {
        assert!(r.wait(Duration::from_secs(30)).await.success());
    }
    assert_eq!(
        h.fake.counters().seats_in_use,
        0,
        "the fleet stopped with seats held"
    );
}

#[tokio::test]
async fn the_fleet_follows_a_sentinel_failover() {
    // Jar renewals are off here: a renewal written just before the kill may not have reached the
    // replica, and the old cookie's later use would be counted as a stale jar.
    let h = Harness::start(LegacyOptions {
        max_api_users: 20,
        renew_auth_every: 0,
        ..LegacyOptions::default()
    })
    .await;
    let mut primary = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]);
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let sentinels = [
        Sentinel::start(primary.port),
        Sentinel::start(primary.port),
        Sentinel::start(primary.port),
    ];
    let list: Vec<String> = sentinels
        .iter()
        .map(|s| format!("\"127.0.0.1:{}\"", s.port))
        .collect();
    let cfg = h.config(
        &format!(
            "sentinels = [{}]\nmaster_name = \"mymaster\"",
            list.join(", ")
        ),
        "max_upstream_sessions = 8",
    );
    let (a, b) = (h.replica(&cfg).await, h.replica(&cfg).await);
    let before = warm(&h, &a.proxy, 6).await;
    // Everything written so far has reached the replica (without this, the failover below can
    // promote a replica that never received the sessions: the store comes back empty).
    eventually(
        "the replica has acknowledged everything written so far (a write, then WAIT 1 500)",
        Duration::from_secs(10),
        || std::future::ready(primary.caught_up(1)),
        |caught_up| *caught_up,
    )
    .await;
    let rotation: Rotation = Arc::new(RwLock::new(vec![a.proxy.clone(), b.proxy.clone()]));
    let load = Load::start(&h, 6, &rotation, Duration::from_millis(30));
    load.every_grant_served(&Progress::default(), "under load")
        .await;
    primary.stop();
    eventually(
        "the sentinels promote the replica (the primaries they name)",
        Duration::from_secs(20),
        || {
            std::future::ready(
                sentinels
                    .iter()
                    .map(Sentinel::primary_port)
                    .collect::<Vec<_>>(),
            )
        },
        |named| named.contains(&Some(replica.port)),
    )
    .await;
    let switched = load.progress();
    // Served again by the new primary.
    eventually(
        "the grant is served after the failover",
        Duration::from_secs(20),
        || async {
            get(
                &format!("{}{ECHO}", a.proxy),
                &[("authorization", &format!("Bearer {}", h.token("grant-0")))],
            )
            .await
        },
        |r| r.status == 200,
    )
    .await;
    load.every_grant_served(&switched, "by the new primary")
        .await;
    let outcomes = load.finish().await;
    for (status, body, retry) in outcomes.iter().flat_map(|o| o.failed.iter()) {
        assert_eq!(*status, 503, "a failure other than 503: {body}");
        assert!(retry.is_some(), "503 without Retry-After: {body}");
    }
    for (g, o) in outcomes.iter().enumerate() {
        assert_eq!(
            o.sessions,
            BTreeSet::from([before[&g].to_string()]),
            "grant {g} got a second session"
        );
    }
    let c = h.fake.counters();
    assert!(c.peak_seats <= 8, "{c:?}");
    assert_eq!(c.logins_ok, 6, "{c:?}");
    h.assert_no_leaks();
    drop(replica);
}
