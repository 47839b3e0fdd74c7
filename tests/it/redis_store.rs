//! The Redis session store itself, against a real `redis-server`: requests that hang up while
//! they wait for (or have just been given) an in-flight place give it back; the wait is FIFO
//! across replicas and woken, not polled; a lease that expired during an outage is restored,
//! or its request told it was lost; jars are sealed at rest; and a store that lost its state
//! is repaired from what the replica remembers. A TCP relay can withhold Redis's replies, or
//! cut the connection both ways, to put a cancel or an outage exactly where a test wants it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tollgate::config::{RedisConfig, RedisTarget, Secret};
use tollgate::fleet::{Fleet, RedisHandle};
use tollgate::metrics::Metrics;
use tollgate::session::grant::GrantKey;
use tollgate::session::jar::Jar;
use tollgate::session::redis::{Namespace, RedisStore};
use tollgate::session::store::{
    LeaseRefused, Leased, Release, Removal, Restored, SessionRecord, SessionState, SessionStore,
    SlotKey,
};

use crate::support::eventually;
use crate::support::redis::RedisServer;

/// What the relay does with the traffic.
const PASS: u8 = 0;
/// Commands reach Redis; its replies are dropped.
const WITHHOLD: u8 = 1;
/// Nothing crosses either way (a network partition).
const CUT: u8 = 2;

/// A TCP relay in front of Redis whose behaviour `mode` sets.
async fn relay(redis_port: u16, mode: watch::Receiver<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(("127.0.0.1", redis_port)).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            // Commands pass unless cut; replies pass only in PASS.
            tokio::spawn(pipe(cr, sw, mode.clone(), CUT));
            tokio::spawn(pipe(sr, cw, mode.clone(), WITHHOLD));
        }
    });
    url
}

/// Copies `from` to `to`: held while the mode is CUT, dropped from `drop_at` on.
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<u8>,
    drop_at: u8,
) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let Ok(now) = mode.wait_for(|m| *m != CUT).await.map(|m| *m) else {
            break;
        };
        if now < drop_at && to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

/// One replica's view of the store: its fleet membership (for wake-ups) and the store of one
/// upstream profile.
struct Replica {
    _fleet: Arc<Fleet>,
    store: Arc<RedisStore>,
    metrics: Metrics,
}

/// A replica that gives every place back at once (`[store] linger = "0s"`).
fn replica(url: &str, lease_ttl: Duration) -> Replica {
    replica_keeping(url, lease_ttl, Duration::ZERO)
}

/// A replica that keeps a place for `linger` after its request, for its own next one.
fn replica_keeping(url: &str, lease_ttl: Duration, linger: Duration) -> Replica {
    let cfg = RedisConfig {
        target: RedisTarget::Url(Secret::new(url.to_owned())),
        key_prefix: "store-test:".to_owned(),
        timeout: Duration::from_secs(2),
        lease_ttl,
        share_introspection: false,
        linger,
    };
    let metrics = Metrics::new().unwrap();
    let fleet = Fleet::new(
        RedisHandle::new(&cfg, metrics.clone()).unwrap(),
        &cfg.key_prefix,
        lease_ttl,
        metrics.clone(),
    );
    fleet.start();
    let store = Arc::new(RedisStore::new(
        fleet.clone(),
        &Namespace {
            upstream: "legacy",
            profile: "p1",
            lease_ttl,
            idle_ttl: Duration::from_secs(300),
            max_inflight: 1,
            seat_cap: 2,
            grant_cap: 3,
            linger,
        },
        &[9u8; 32],
    ));
    store.clone().start();
    Replica {
        _fleet: fleet,
        store,
        metrics,
    }
}

/// How many times this replica ran the store operation `op` (its duration histogram's count).
fn operations(r: &Replica, op: &str) -> u64 {
    let text = String::from_utf8(r.metrics.render()).unwrap();
    let prefix = format!("tollgate_store_operation_duration_seconds_count{{op=\"{op}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

fn slot() -> SlotKey {
    SlotKey {
        grant: GrantKey("grant-a".into()),
        handle: None,
    }
}

async fn lease(store: &RedisStore, queue: u32, wait: Duration) -> Result<Leased, LeaseRefused> {
    store
        .lease(&slot(), SessionRecord::new(7, false, 1), 1, 1, queue, wait)
        .await
}

/// Waits up to 5 s for the store to show `want` (in flight, queued).
async fn settles_at(store: &RedisStore, want: (u32, u32), what: &str) {
    eventually(
        &format!("{what}: (in flight, queued) is {want:?}"),
        Duration::from_secs(5),
        || counts(store),
        |got| *got == want,
    )
    .await;
}

async fn counts(store: &RedisStore) -> (u32, u32) {
    let r = store
        .get(&slot())
        .await
        .unwrap()
        .expect("the session record");
    (r.in_flight, r.queued)
}

#[tokio::test]
async fn a_request_cancelled_after_its_place_was_granted_gives_it_back() {
    let redis = RedisServer::start();
    let (mode, modes) = watch::channel(PASS);
    let through_relay = relay(redis.port, modes).await;
    // A long lease: without the clean-up the place would stay taken for the whole test.
    let ttl = Duration::from_secs(60);
    let (relayed, direct) = (replica(&through_relay, ttl), replica(&redis.url(), ttl));
    // Redis knows the scripts before the replies are withheld (a NOSCRIPT reply would be held
    // too, and nothing would run).
    relayed.store.load_scripts().await.unwrap();
    let warm = lease(&relayed.store, 4, Duration::from_millis(500)).await;
    assert!(warm.is_ok(), "the first lease");
    drop(warm);
    settles_at(&direct.store, (0, 0), "the first lease is given back").await;

    // Redis runs the lease script and grants the place; its reply never comes back, and the
    // request is dropped while it waits for it, as when a client hangs up.
    mode.send_replace(WITHHOLD);
    let waited = tokio::time::timeout(
        Duration::from_millis(300),
        lease(&relayed.store, 4, Duration::from_secs(5)),
    )
    .await;
    assert!(waited.is_err(), "the lease must still be waiting for Redis");
    mode.send_replace(PASS);

    settles_at(&direct.store, (0, 0), "the granted place is given back").await;
    // The place is free for the next request at once, not after `lease_ttl`.
    let next = lease(&direct.store, 4, Duration::from_millis(500)).await;
    assert!(next.is_ok(), "the next request gets the place");
}

#[tokio::test]
async fn a_request_cancelled_while_queued_leaves_the_queue_for_good() {
    let redis = RedisServer::start();
    // A short lease: a queue place kept alive by a forgotten renewal outlives it.
    let ttl = Duration::from_millis(900);
    let r = replica(&redis.url(), ttl);
    let first = lease(&r.store, 1, Duration::from_millis(500))
        .await
        .map_err(|e| format!("{e:?}"))
        .unwrap();
    let waited = tokio::time::timeout(
        Duration::from_millis(300),
        lease(&r.store, 1, Duration::from_secs(10)),
    )
    .await;
    assert!(waited.is_err(), "the second request must still be queued");
    settles_at(&r.store, (1, 0), "the cancelled request leaves the queue").await;
    // Twice the lease later it has not come back (no renewal outlived the request): letting
    // leases run out is the test's subject, so this sleep stays.
    tokio::time::sleep(ttl * 2).await;
    assert_eq!(counts(&r.store).await, (1, 0));
    let third = lease(&r.store, 1, Duration::from_millis(100)).await;
    assert!(
        matches!(third, Err(LeaseRefused::Busy)),
        "still busy behind the first: {third:?}"
    );
    drop(first);
    settles_at(&r.store, (0, 0), "the first place comes back").await;
}

#[tokio::test]
async fn waiters_on_two_replicas_are_served_in_their_order_without_polling() {
    served_in_order(Duration::ZERO).await;
}

#[tokio::test]
async fn waiters_on_two_replicas_are_served_in_their_order_when_places_are_kept() {
    // A linger longer than a waiter's wait: a place kept past a waiter's arrival would stall
    // it into `Busy`.
    served_in_order(Duration::from_secs(5)).await;
}

async fn served_in_order(linger: Duration) {
    let redis = RedisServer::start();
    let ttl = Duration::from_secs(30);
    let (a, b) = (
        replica_keeping(&redis.url(), ttl, linger),
        replica_keeping(&redis.url(), ttl, linger),
    );
    // Logged in, so that a replica may keep its place (A keeps it now).
    logged_in(&a.store).await;
    let first = lease(&a.store, 8, Duration::from_secs(1)).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for n in 0..6u32 {
        let store = if n % 2 == 0 {
            a.store.clone()
        } else {
            b.store.clone()
        };
        let order = order.clone();
        waiters.push(tokio::spawn(async move {
            let l = lease(&store, 8, Duration::from_secs(3)).await.unwrap();
            order.lock().unwrap().push(n);
            store.release(l.in_flight, Release::default()).await;
        }));
        // Waiting before the next one arrives (in Redis's queue, or behind the request of its
        // replica that holds the place: each replica counts its own).
        waiting_reaches(&[&a.store, &b.store], n + 1).await;
    }
    // Nobody asks Redis while they wait: the command count stays put over a while (the span
    // watched is the test's subject, so this sleep stays).
    let before = commands(&redis);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let polled = commands(&redis) - before;
    assert!(polled < 20, "{polled} commands while six requests waited");
    a.store.release(first.in_flight, Release::default()).await;
    for w in waiters {
        w.await.unwrap();
    }
    assert_eq!(
        *order.lock().unwrap(),
        vec![0, 1, 2, 3, 4, 5],
        "first come, first served across replicas"
    );
}

/// Waits up to 5 s until `want` requests wait on the `stores` together (in Redis's queue, or
/// behind their replica's own place: each replica counts its own).
async fn waiting_reaches(stores: &[&Arc<RedisStore>], want: u32) {
    let stores: Vec<Arc<RedisStore>> = stores.iter().map(|s| Arc::clone(s)).collect();
    eventually(
        &format!("{want} requests wait"),
        Duration::from_secs(5),
        || {
            let stores = stores.clone();
            async move {
                let mut waiting = 0;
                for s in &stores {
                    waiting += s.queue_depth();
                }
                waiting
            }
        },
        |waiting| *waiting >= want,
    )
    .await;
}

/// The server's processed-command count.
fn commands(redis: &RedisServer) -> u64 {
    let info = redis.command("INFO stats");
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_lease_that_expired_in_an_outage_is_restored_or_its_request_told() {
    let redis = RedisServer::start();
    let ttl = Duration::from_secs(1);
    let (mode, modes) = watch::channel(PASS);
    let through_relay = relay(redis.port, modes).await;
    let (a, b) = (replica(&through_relay, ttl), replica(&redis.url(), ttl));

    // Cut off for longer than the lease, nobody else wants the session: restored.
    let held = lease(&a.store, 4, Duration::from_secs(1)).await.unwrap();
    mode.send_replace(CUT);
    settles_at(&b.store, (0, 0), "the lease expires in the store").await;
    mode.send_replace(PASS);
    settles_at(&b.store, (1, 0), "restored by the renewal").await;
    let lost = held.in_flight.lost().unwrap();
    assert!(!*lost.borrow(), "a restored lease is not lost");
    a.store.release(held.in_flight, Release::default()).await;
    settles_at(&b.store, (0, 0), "released").await;

    // Cut off again, and another replica takes the place meanwhile: the request is told.
    let held = lease(&a.store, 4, Duration::from_secs(1)).await.unwrap();
    let mut lost = held.in_flight.lost().unwrap();
    mode.send_replace(CUT);
    settles_at(&b.store, (0, 0), "the lease expires in the store").await;
    let other = lease(&b.store, 4, Duration::from_secs(2)).await.unwrap();
    mode.send_replace(PASS);
    tokio::time::timeout(Duration::from_secs(5), lost.wait_for(|l| *l))
        .await
        .expect("the lost lease is reported")
        .unwrap();
    assert_eq!(
        counts(&b.store).await,
        (1, 0),
        "one request on the session, never two"
    );
    drop(held);
    b.store.release(other.in_flight, Release::default()).await;
}

#[tokio::test]
async fn jars_are_sealed_at_rest_and_a_tampered_one_is_never_used() {
    let redis = RedisServer::start();
    let r = replica(&redis.url(), Duration::from_secs(10));
    let mut record = SessionRecord::new(7, false, 1);
    record.state = SessionState::Active;
    record.jar = Jar::from_text(".ASPXAUTH\t/\tthe-live-session-cookie");
    r.store.create(&slot(), record, 1, 1).await.unwrap();
    let raw = redis.command("KEYS *r:*");
    let key = raw
        .lines()
        .find(|l| l.contains("r:"))
        .expect("the record's key")
        .to_owned();
    let stored = redis.command(&format!("HGET {key} jar"));
    assert!(
        !stored.contains("the-live-session-cookie"),
        "the jar sits in Redis in plain text: {stored}"
    );
    let back = r.store.get(&slot()).await.unwrap().unwrap();
    assert!(back.jar.has(".ASPXAUTH"));
    // Tampered with: the record is treated as lost, never forwarded.
    redis.command(&format!(
        "HSET {key} jar AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    ));
    assert!(r.store.get(&slot()).await.unwrap().is_none());
    assert_eq!(redis.command(&format!("EXISTS {key}")).trim(), ":0");
}

/// The slot's session leased, logged in and seated (as the pool leaves it after a login); the
/// lease is the caller's to release.
async fn seated_session(store: &RedisStore) -> Leased {
    let leased = lease(store, 4, Duration::from_secs(1)).await.unwrap();
    let id = leased.record.id;
    store
        .update(
            &slot(),
            id,
            Box::new(|rec| {
                rec.state = SessionState::Active;
                rec.seated = true;
                rec.jar = Jar::from_text("ASP.NET_SessionId\t/\tx\n.ASPXAUTH\t/\ty");
            }),
        )
        .await
        .unwrap();
    assert!(store.take_seat(2, id).await.unwrap());
    leased
}

#[tokio::test]
async fn sessions_the_store_lost_are_registered_again_within_the_cap() {
    let redis = RedisServer::start();
    let r = replica(&redis.url(), Duration::from_secs(10));
    // A session this replica used, with its seat.
    let leased = seated_session(&r.store).await;
    let id = leased.record.id;
    r.store.release(leased.in_flight, Release::default()).await;
    assert!(
        !r.store.maintain().await.unwrap().reset,
        "the first upkeep learns the epoch"
    );

    redis.command("FLUSHALL");
    let m = r.store.maintain().await.unwrap();
    assert!(m.reset, "the store came back empty");
    assert_eq!(m.lost.len(), 1, "{m:?}");
    let (lost_slot, lost) = m.lost.into_iter().next().unwrap();
    assert_eq!(lost.id, id);
    assert!(lost.jar.has(".ASPXAUTH"));
    assert_eq!(
        r.store
            .restore(&lost_slot, lost.clone(), 1, 2)
            .await
            .unwrap(),
        Restored::Registered
    );
    assert_eq!(r.store.seats_in_use().await.unwrap(), 1);
    let back = r.store.get(&slot()).await.unwrap().unwrap();
    assert_eq!((back.id, back.state), (id, SessionState::Active));
    // A second copy (another replica's memory) finds it back already; a full cap refuses.
    assert_eq!(
        r.store.restore(&lost_slot, lost, 1, 2).await.unwrap(),
        Restored::Registered
    );
    let other = SlotKey {
        grant: GrantKey("grant-b".into()),
        handle: None,
    };
    let mut more = SessionRecord::new(8, false, 1);
    more.jar = Jar::from_text("a\t/\tb");
    assert_eq!(
        r.store.restore(&other, more, 1, 1).await.unwrap(),
        Restored::NoRoom
    );
    // Removed by tollgate itself (a tombstone): not "lost" after a flush of unrelated keys.
    let gone = r.store.get(&slot()).await.unwrap().unwrap();
    r.store.remove(&slot(), gone.id).await.unwrap();
    redis.command("DEL store-test:epoch");
    redis.command(&format!("SET store-test:epoch {}", "0".repeat(32)));
    let m = r.store.maintain().await.unwrap();
    assert!(m.reset, "another instance's epoch");
    assert!(
        m.lost.is_empty(),
        "a session tollgate removed is not lost: {m:?}"
    );
}

/// Two replicas (leases of `lease_ttl`), a session of replica A logged in and seated with a
/// request of A on it (the lease returned), and the store emptied while that request runs.
async fn flushed_under_a_request(lease_ttl: Duration) -> (RedisServer, Replica, Replica, Leased) {
    let redis = RedisServer::start();
    let (a, b) = (
        replica(&redis.url(), lease_ttl),
        replica(&redis.url(), lease_ttl),
    );
    let leased = seated_session(&a.store).await;
    assert!(!a.store.maintain().await.unwrap().reset);
    redis.command("FLUSHALL");
    (redis, a, b, leased)
}

#[tokio::test]
async fn a_session_registered_again_keeps_the_place_of_a_request_begun_before_the_loss() {
    let (_redis, a, b, leased) = flushed_under_a_request(Duration::from_secs(10)).await;
    let id = leased.record.id;
    let m = a.store.maintain().await.unwrap();
    let (lost_slot, lost) = m.lost.into_iter().next().expect("the session is lost");
    assert_eq!(
        a.store.restore(&lost_slot, lost, 1, 2).await.unwrap(),
        Restored::Registered
    );
    // Registered with the place of A's request: B's request waits behind it.
    assert_eq!(counts(&a.store).await, (1, 0));
    let other = b.store.clone();
    let waiting =
        tokio::spawn(async move { lease(&other, 4, Duration::from_secs(5)).await.unwrap() });
    settles_at(&a.store, (1, 1), "B's request queues behind A's").await;
    a.store.release(leased.in_flight, Release::default()).await;
    let got = waiting.await.unwrap();
    assert_eq!(
        got.record.id, id,
        "the same session, once A's request is over"
    );
    b.store.release(got.in_flight, Release::default()).await;
}

#[tokio::test]
async fn a_renewal_that_meets_an_emptied_store_registers_the_session_again_first() {
    // Renewals every half second; no upkeep runs here (the pool drives it), so the renewal is
    // the first to meet the empty store.
    let (_redis, a, _, leased) = flushed_under_a_request(Duration::from_millis(1500)).await;
    let id = leased.record.id;
    let lost = leased.in_flight.lost().expect("a lease that can be lost");
    eventually(
        "the renewal registers the session again with the place of the request under way",
        Duration::from_secs(5),
        || async {
            a.store
                .get(&slot())
                .await
                .unwrap()
                .map(|r| (r.id, r.in_flight))
        },
        |got| *got == Some((id, 1)),
    )
    .await;
    // Renewed twice more since: the request was never told its place was taken.
    let renewals = operations(&a, "renew");
    eventually(
        "two more renewals",
        Duration::from_secs(5),
        || std::future::ready(operations(&a, "renew")),
        |n| *n >= renewals + 2,
    )
    .await;
    assert!(!*lost.borrow(), "the request under way was stopped");
    assert_eq!(counts(&a.store).await, (1, 0));
    a.store.release(leased.in_flight, Release::default()).await;
}

#[tokio::test]
async fn a_lost_session_a_request_here_still_uses_is_given_up_only_after_it() {
    let (_redis, a, b, leased) = flushed_under_a_request(Duration::from_secs(10)).await;
    let id = leased.record.id;
    // Replica B, which never used the session, creates the grant's session anew.
    let newer = b
        .store
        .lease(
            &slot(),
            SessionRecord::new(8, false, 1),
            1,
            1,
            4,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    assert_eq!(newer.record.id, 8, "a new record, B's own session");
    let m = a.store.maintain().await.unwrap();
    assert!(m.reset, "the store came back empty");
    let (lost_slot, lost) = m
        .lost
        .into_iter()
        .find(|(_, r)| r.id == id)
        .expect("A's session is lost");
    // No room for it, but A's request still uses it: not to be logged out yet.
    assert_eq!(
        a.store
            .restore(&lost_slot, lost.clone(), 1, 2)
            .await
            .unwrap(),
        Restored::InUse
    );
    // Once that request is over, it is: B's session holds the grant's place.
    a.store.release(leased.in_flight, Release::default()).await;
    assert_eq!(
        a.store.restore(&lost_slot, lost, 1, 2).await.unwrap(),
        Restored::NoRoom
    );
    b.store.release(newer.in_flight, Release::default()).await;
}

/// Leases and releases the slot's session `n` times, one request after the other.
async fn one_after_another(store: &RedisStore, n: usize) {
    for _ in 0..n {
        let l = lease(store, 4, Duration::from_secs(2)).await.unwrap();
        store.release(l.in_flight, Release::default()).await;
    }
}

/// Releases `l` with the jar its answer left.
async fn released_with(store: &RedisStore, l: Leased, jar: &Jar) {
    let how = Release {
        op: false,
        jar: Some(jar.clone()),
    };
    store.release(l.in_flight, how).await;
}

/// A Redis server, a replica keeping places for 5 s (`lease_ttl` 30 s), and the slot's
/// session logged in: the replica keeps its place.
async fn kept_session() -> (RedisServer, Replica) {
    let redis = RedisServer::start();
    let r = replica_keeping(
        &redis.url(),
        Duration::from_secs(30),
        Duration::from_secs(5),
    );
    logged_in(&r.store).await;
    (redis, r)
}

/// Logs the slot's session in (as the pool would after creating it), so that its place may be
/// kept.
async fn logged_in(store: &RedisStore) -> u64 {
    let l = lease(store, 4, Duration::from_secs(2)).await.unwrap();
    let id = l.record.id;
    store
        .update(
            &slot(),
            id,
            Box::new(|r: &mut SessionRecord| {
                r.state = SessionState::Active;
                r.jar = Jar::from_text("ASP.NET_SessionId\t/\ts1");
            }),
        )
        .await
        .unwrap()
        .expect("the record");
    store.release(l.in_flight, Release::default()).await;
    id
}

#[tokio::test]
async fn a_replica_keeps_a_place_for_its_next_request_without_asking_redis() {
    let (_redis, r) = kept_session().await;
    let (leases, releases) = (operations(&r, "lease"), operations(&r, "release"));
    one_after_another(&r.store, 20).await;
    assert_eq!(
        (
            operations(&r, "lease") - leases,
            operations(&r, "release") - releases
        ),
        (0, 0),
        "twenty requests one after another on a kept place: no lease and no release script"
    );
    // Redis still counts the place as in use: nobody evicts, expires or hands it over.
    assert_eq!(counts(&r.store).await, (1, 0));

    // A request whose answer changed the jar: the place is kept, the next request here has
    // the new jar from this replica's memory.
    let l = lease(&r.store, 4, Duration::from_secs(2)).await.unwrap();
    assert_eq!(
        l.record.jar.to_text(),
        "ASP.NET_SessionId\t/\ts1",
        "the jar it was given"
    );
    let jar = Jar::from_text("ASP.NET_SessionId\t/\ts2");
    released_with(&r.store, l, &jar).await;
    let leases = operations(&r, "lease");
    let again = lease(&r.store, 4, Duration::from_secs(2)).await.unwrap();
    assert_eq!(again.record.jar, jar, "the next request has it");
    assert_eq!(operations(&r, "lease"), leases, "from the kept place");
    r.store.release(again.in_flight, Release::default()).await;
    assert_eq!(counts(&r.store).await, (1, 0));
}

#[tokio::test]
async fn a_jar_left_unwritten_by_a_kept_place_reaches_redis_within_the_linger() {
    let redis = RedisServer::start();
    let ttl = Duration::from_secs(30);
    let linger = Duration::from_millis(300);
    let r = replica_keeping(&redis.url(), ttl, linger);
    logged_in(&r.store).await;
    let l = lease(&r.store, 4, Duration::from_secs(2)).await.unwrap();
    let jar = Jar::from_text("ASP.NET_SessionId\t/\ts2");
    released_with(&r.store, l, &jar).await;
    // Requests keep coming, each well within the linger of the last: the place would be kept
    // for a third of `lease_ttl` (10 s), but the unwritten jar sends it back within the linger.
    let other = replica(&redis.url(), ttl);
    let written = async {
        loop {
            one_after_another(&r.store, 1).await;
            let stored = other.store.get(&slot()).await.unwrap().unwrap();
            if stored.jar == jar {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), written)
        .await
        .expect("the changed jar reaches Redis although the place is in constant use");

    // A linger without a request gives the place back, with the jar (no waiting for
    // `lease_ttl`).
    let quick = replica_keeping(&redis.url(), ttl, Duration::from_millis(200));
    let l = lease(&quick.store, 4, Duration::from_secs(2))
        .await
        .unwrap();
    let third = Jar::from_text("ASP.NET_SessionId\t/\ts3");
    released_with(&quick.store, l, &third).await;
    assert_eq!(counts(&quick.store).await, (1, 0), "kept for the linger");
    settles_at(&quick.store, (0, 0), "given back when the linger passed").await;
    let stored = other.store.get(&slot()).await.unwrap().unwrap();
    assert_eq!(stored.jar, third, "with the jar its last request left");
}

#[tokio::test]
async fn a_kept_place_goes_back_at_once_to_a_request_queued_on_another_replica() {
    let redis = RedisServer::start();
    let ttl = Duration::from_secs(30);
    // A linger far longer than the other replica's wait: only the wake gives the place back.
    let linger = Duration::from_secs(8);
    let (a, b) = (
        replica_keeping(&redis.url(), ttl, linger),
        replica_keeping(&redis.url(), ttl, linger),
    );
    logged_in(&a.store).await;
    assert_eq!(counts(&a.store).await, (1, 0), "A keeps the place");
    let on_b = lease(&b.store, 4, Duration::from_secs(3)).await;
    let on_b = on_b
        .map_err(|e| format!("{e:?}"))
        .expect("B is served before its wait runs out");

    // While B holds it, A's next request queues behind B instead of jumping ahead.
    let a_store = a.store.clone();
    let behind = tokio::spawn(async move { lease(&a_store, 4, Duration::from_secs(3)).await });
    eventually(
        "A's request is queued behind B's",
        Duration::from_secs(5),
        || counts(&b.store),
        |c| *c == (1, 1),
    )
    .await;
    // B's place was wanted when it was granted or since: B gives it back at its release even
    // though B keeps places too.
    b.store.release(on_b.in_flight, Release::default()).await;
    let on_a = behind
        .await
        .unwrap()
        .map_err(|e| format!("{e:?}"))
        .expect("A is served next");
    a.store.release(on_a.in_flight, Release::default()).await;
}

#[tokio::test]
async fn a_replica_that_leaves_or_removes_the_session_gives_its_kept_place_back() {
    let redis = RedisServer::start();
    let ttl = Duration::from_secs(30);
    let linger = Duration::from_secs(8);
    let r = replica_keeping(&redis.url(), ttl, linger);
    let id = logged_in(&r.store).await;
    assert_eq!(counts(&r.store).await, (1, 0));
    assert!(
        matches!(
            r.store.remove_unused(&slot(), id).await,
            Ok(Removal::Removed(_))
        ),
        "this replica's own kept place does not keep the session in use"
    );

    let id = logged_in(&r.store).await;
    assert_eq!(counts(&r.store).await, (1, 0));
    // Another replica cannot remove it meanwhile: the place is a lease in Redis.
    let other = replica(&redis.url(), ttl);
    assert!(matches!(
        other.store.remove_unused(&slot(), id).await,
        Ok(Removal::Busy)
    ));
    r.store.settle().await;
    assert_eq!(
        counts(&r.store).await,
        (0, 0),
        "leaving gives the kept place back"
    );
    one_after_another(&r.store, 1).await;
    // Within 5 s, where a kept place would stay for the 8 s linger.
    settles_at(&r.store, (0, 0), "and nothing is kept any more").await;
}

#[tokio::test]
async fn a_kept_place_is_not_used_once_the_store_lost_its_state() {
    let (redis, r) = kept_session().await;
    r.store.maintain().await.unwrap();
    redis.command("FLUSHALL");
    let m = r.store.maintain().await.unwrap();
    assert!(m.reset, "the upkeep sees the new epoch");
    let leases = operations(&r, "lease");
    one_after_another(&r.store, 1).await;
    let asked = operations(&r, "lease") - leases;
    assert!(
        asked >= 1,
        "the request after the loss asks Redis instead of using the kept place"
    );
}

#[tokio::test]
async fn a_kept_place_serves_its_replica_through_a_short_outage_and_nothing_else_does() {
    let (redis, r) = kept_session().await;
    redis.pause();
    // The kept place is a lease Redis granted a moment ago and keeps for `lease_ttl`: using it
    // double-books nothing.
    let kept = lease(&r.store, 4, Duration::from_secs(1)).await;
    let kept = kept
        .map_err(|e| format!("{e:?}"))
        .expect("the kept place serves");
    // Another session needs the store, which does not answer.
    let other = SlotKey {
        grant: GrantKey("grant-b".into()),
        handle: None,
    };
    let refused = r
        .store
        .lease(
            &other,
            SessionRecord::new(8, false, 1),
            1,
            1,
            4,
            Duration::from_secs(1),
        )
        .await;
    assert!(
        matches!(refused, Err(LeaseRefused::Unavailable)),
        "{refused:?}"
    );
    redis.resume();
    r.store.release(kept.in_flight, Release::default()).await;
    r.store.settle().await;
    settles_at(&r.store, (0, 0), "the place goes back once Redis answers").await;
}

#[tokio::test]
async fn requests_of_one_replica_wait_behind_its_own_place_in_order_without_redis() {
    let (_redis, r) = kept_session().await;
    let first = lease(&r.store, 8, Duration::from_secs(2)).await.unwrap();
    let (leases, releases) = (operations(&r, "lease"), operations(&r, "release"));
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for n in 0..5u32 {
        let (store, order) = (r.store.clone(), order.clone());
        waiters.push(tokio::spawn(async move {
            let l = lease(&store, 8, Duration::from_secs(3)).await.unwrap();
            order.lock().unwrap().push(n);
            store.release(l.in_flight, Release::default()).await;
        }));
        waiting_reaches(&[&r.store], n + 1).await;
    }
    assert_eq!(
        counts(&r.store).await,
        (1, 5),
        "the record counts the five waiting behind this replica's place"
    );
    r.store.release(first.in_flight, Release::default()).await;
    for w in waiters {
        w.await.unwrap();
    }
    assert_eq!(
        *order.lock().unwrap(),
        vec![0, 1, 2, 3, 4],
        "in their order"
    );
    assert_eq!(
        (
            operations(&r, "lease") - leases,
            operations(&r, "release") - releases
        ),
        (0, 0),
        "handed from one request to the next in this replica"
    );
    // A full local queue answers Busy at once, as a full Redis queue would.
    let held = lease(&r.store, 1, Duration::from_secs(2)).await.unwrap();
    let (store, queue) = (r.store.clone(), 1);
    let waiting = tokio::spawn(async move { lease(&store, queue, Duration::from_secs(3)).await });
    waiting_reaches(&[&r.store], 1).await;
    let full = lease(&r.store, queue, Duration::from_secs(3)).await;
    assert!(matches!(full, Err(LeaseRefused::Busy)), "{full:?}");
    r.store.release(held.in_flight, Release::default()).await;
    let next = waiting
        .await
        .unwrap()
        .map_err(|e| format!("{e:?}"))
        .unwrap();
    r.store.release(next.in_flight, Release::default()).await;
}

#[tokio::test]
async fn a_place_in_constant_use_is_renewed_in_place_past_a_third_of_lease_ttl() {
    let redis = RedisServer::start();
    // A third of `lease_ttl` is 500 ms; requests come every 50 ms for over three times that.
    let ttl = Duration::from_millis(1500);
    let r = replica_keeping(&redis.url(), ttl, Duration::from_millis(400));
    logged_in(&r.store).await;
    one_after_another(&r.store, 1).await;
    let (leases, releases) = (operations(&r, "lease"), operations(&r, "release"));
    let started = std::time::Instant::now();
    let jar = Jar::from_text("ASP.NET_SessionId\t/\ts9");
    while started.elapsed() < Duration::from_millis(1800) {
        let l = lease(&r.store, 4, Duration::from_secs(2)).await.unwrap();
        released_with(&r.store, l, &jar).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        (
            operations(&r, "lease") - leases,
            operations(&r, "release") - releases
        ),
        (0, 0),
        "the place was renewed where it is, never given back and asked for again"
    );
    assert!(
        operations(&r, "refresh") >= 3,
        "renewed about every third of lease_ttl: {} times",
        operations(&r, "refresh")
    );
    let other = replica(&redis.url(), ttl);
    let stored = other.store.get(&slot()).await.unwrap().unwrap();
    assert_eq!(
        stored.jar, jar,
        "each renewal writes the jar left unwritten"
    );
    assert_eq!(counts(&r.store).await, (1, 0), "still this replica's");
}

#[tokio::test]
async fn a_request_that_goes_away_as_the_place_is_handed_to_it_gives_it_back() {
    let (_redis, r) = kept_session().await;
    let held = lease(&r.store, 4, Duration::from_secs(2)).await.unwrap();
    let store = r.store.clone();
    let waiter = tokio::spawn(async move { lease(&store, 4, Duration::from_secs(3)).await });
    waiting_reaches(&[&r.store], 1).await;
    // The release hands the place to the waiter at once; the waiter's task is cancelled
    // before it can run again (one thread: nothing runs in between).
    r.store.release(held.in_flight, Release::default()).await;
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    settles_at(&r.store, (0, 0), "the place handed to nobody goes back").await;
    let next = lease(&r.store, 4, Duration::from_secs(2))
        .await
        .map_err(|e| format!("{e:?}"))
        .expect("the session serves the next request");
    r.store.release(next.in_flight, Release::default()).await;
}

/// A server that speaks the Redis protocol and says it is Redis `version` in `INFO`: `PING`
/// answers `PONG`, anything else `OK`. Counts the `INFO`s it answered.
async fn speaks_redis(version: &'static str) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    let infos = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = infos.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let (read, mut write) = sock.into_split();
                let mut read = tokio::io::BufReader::new(read);
                // Each command: `*<n>`, then n times `$<len>` and the argument.
                while let Some(args) = read_command(&mut read).await {
                    let reply = match args.first().map(|a| a.to_ascii_uppercase()).as_deref() {
                        Some("INFO") => {
                            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let body = format!("# Server\r\nredis_version:{version}\r\n");
                            format!("${}\r\n{body}\r\n", body.len())
                        }
                        Some("PING") => "+PONG\r\n".to_owned(),
                        _ => "+OK\r\n".to_owned(),
                    };
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, infos)
}

async fn read_command<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Option<Vec<String>> {
    use tokio::io::AsyncBufReadExt;
    let mut line = String::new();
    r.read_line(&mut line).await.ok().filter(|n| *n > 0)?;
    let n: usize = line.trim_end().strip_prefix('*')?.parse().ok()?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        line.clear();
        r.read_line(&mut line).await.ok()?;
        let len: usize = line.trim_end().strip_prefix('$')?.parse().ok()?;
        let mut arg = vec![0u8; len + 2];
        r.read_exact(&mut arg).await.ok()?;
        arg.truncate(len);
        args.push(String::from_utf8_lossy(&arg).into_owned());
    }
    Some(args)
}

fn handle(url: &str) -> RedisHandle {
    let cfg = RedisConfig {
        target: RedisTarget::Url(Secret::new(url.to_owned())),
        key_prefix: "version-test:".to_owned(),
        timeout: Duration::from_secs(2),
        lease_ttl: Duration::from_secs(5),
        share_introspection: false,
        linger: Duration::ZERO,
    };
    RedisHandle::new(&cfg, Metrics::new().unwrap()).unwrap()
}

async fn ping(h: &RedisHandle) -> Result<String, String> {
    h.run("ping", |mut c| async move {
        redis::cmd("PING").query_async::<String>(&mut c).await
    })
    .await
    .map_err(|e| e.to_string())
}

/// A Redis older than 6.2 (Debian 11 ships 6.0) would run most of the store and fail the
/// fleet's wake-ups: it is refused on connecting, with the version and what is needed. A
/// recent one, and the real server of this suite, are used.
#[tokio::test]
async fn a_redis_older_than_6_2_is_refused_with_its_version() {
    let (old, infos) = speaks_redis("6.0.16").await;
    let e = ping(&handle(&old)).await.unwrap_err();
    assert!(
        e.contains("Redis 6.0.16 is too old") && e.contains("6.2 or later"),
        "{e}"
    );
    assert!(infos.load(std::sync::atomic::Ordering::SeqCst) >= 1);

    let (recent, infos) = speaks_redis("7.2.4").await;
    let h = handle(&recent);
    assert_eq!(ping(&h).await.unwrap(), "PONG");
    assert_eq!(ping(&h).await.unwrap(), "PONG");
    assert_eq!(
        infos.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one check a connection, not one a command"
    );

    let real = RedisServer::start();
    assert_eq!(ping(&handle(&real.url())).await.unwrap(), "PONG");
}
