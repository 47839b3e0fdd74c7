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
    LeaseRefused, Leased, Release, Restored, SessionRecord, SessionState, SessionStore, SlotKey,
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
}

fn replica(url: &str, lease_ttl: Duration) -> Replica {
    let cfg = RedisConfig {
        target: RedisTarget::Url(Secret::new(url.to_owned())),
        key_prefix: "store-test:".to_owned(),
        timeout: Duration::from_secs(2),
        lease_ttl,
        share_introspection: false,
    };
    let metrics = Metrics::new().unwrap();
    let fleet = Fleet::new(
        RedisHandle::new(&cfg, metrics.clone()).unwrap(),
        &cfg.key_prefix,
        lease_ttl,
        metrics,
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
        },
        &[9u8; 32],
    ));
    store.clone().start();
    Replica {
        _fleet: fleet,
        store,
    }
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
    let redis = RedisServer::start();
    let ttl = Duration::from_secs(10);
    let (a, b) = (replica(&redis.url(), ttl), replica(&redis.url(), ttl));
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
            let l = lease(&store, 8, Duration::from_secs(10)).await.unwrap();
            order.lock().unwrap().push(n);
            store.release(l.in_flight, Release::default()).await;
        }));
        // Queued before the next one arrives.
        eventually(
            &format!("waiter {n} is queued (in flight, queued)"),
            Duration::from_secs(5),
            || counts(&a.store),
            |(_, queued)| *queued > n,
        )
        .await;
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

#[tokio::test]
async fn sessions_the_store_lost_are_registered_again_within_the_cap() {
    let redis = RedisServer::start();
    let r = replica(&redis.url(), Duration::from_secs(10));
    // A session this replica used, with its seat.
    let leased = lease(&r.store, 4, Duration::from_secs(1)).await.unwrap();
    let id = leased.record.id;
    r.store
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
    assert!(r.store.take_seat(2, id).await.unwrap());
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
