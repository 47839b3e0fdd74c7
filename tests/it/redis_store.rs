//! The Redis session store under cancelled requests: a client that hangs up while its request
//! waits for, or has just been given, an in-flight place must not keep that place. Driven on
//! the store itself against a real `redis-server`, with a TCP relay that can withhold Redis's
//! replies so that the cancel lands after the script has run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate::metrics::Metrics;
use tollgate::session::grant::GrantKey;
use tollgate::session::redis::{RedisHandle, RedisStore};
use tollgate::session::store::{Created, LeaseRefused, SessionRecord, SessionStore, SlotKey};

use crate::support::redis::RedisServer;

/// Forwards every command to Redis; while `hold` is set, Redis's replies are dropped.
async fn relay(redis_port: u16, hold: Arc<AtomicBool>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(("127.0.0.1", redis_port)).await else {
                continue;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut cr, &mut sw).await;
            });
            let hold = hold.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if !hold.load(Ordering::SeqCst) && cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    url
}

fn store(url: &str, lease_ttl: Duration) -> RedisStore {
    let handle = RedisHandle::new(url, Duration::from_secs(2), Metrics::new().unwrap()).unwrap();
    RedisStore::new(handle, "cancel:", "legacy", lease_ttl)
}

fn slot() -> SlotKey {
    SlotKey {
        grant: GrantKey("grant-a".into()),
        handle: None,
    }
}

/// Waits up to 5 s for the store to show `want` (in flight, queued).
async fn settles_at(store: &RedisStore, want: (u32, u32), what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = counts(store).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: (in flight, queued) is {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn counts(store: &RedisStore) -> (u32, u32) {
    let r = store
        .get(&slot())
        .await
        .unwrap()
        .expect("the session record");
    (r.in_flight, r.queued)
}

async fn session(store: &RedisStore) -> u64 {
    match store
        .create(&slot(), SessionRecord::new(7, false, 1), 1, 1)
        .await
        .unwrap()
    {
        Created::New(r) => r.id,
        other => panic!("expected a new record, got {other:?}"),
    }
}

#[tokio::test]
async fn a_request_cancelled_after_its_place_was_granted_gives_it_back() {
    let redis = RedisServer::start();
    let hold = Arc::new(AtomicBool::new(false));
    let through_relay = relay(redis.port, hold.clone()).await;
    // A long lease: without the clean-up the place would stay taken for the whole test.
    let ttl = Duration::from_secs(60);
    let (relayed, direct) = (store(&through_relay, ttl), store(&redis.url(), ttl));
    let id = session(&relayed).await;
    // One lease taken and given back first, so that Redis knows the script and the held
    // request's EVALSHA runs it (a NOSCRIPT reply would be held too, and nothing would run).
    let warm = relayed
        .acquire(&slot(), id, 1, 4, Duration::from_millis(500))
        .await;
    assert!(warm.is_ok(), "the first lease");
    drop(warm);
    settles_at(&direct, (0, 0), "the first lease is given back").await;

    // Redis runs the acquire script and grants the place; its reply never comes back, and
    // the request is dropped while it waits for it, as when a client hangs up.
    hold.store(true, Ordering::SeqCst);
    let waited = tokio::time::timeout(
        Duration::from_millis(300),
        relayed.acquire(&slot(), id, 1, 4, Duration::from_secs(5)),
    )
    .await;
    assert!(
        waited.is_err(),
        "the acquire must still be waiting for Redis"
    );

    settles_at(&direct, (0, 0), "the granted place is given back").await;
    // The place is free for the next request at once, not after `lease_ttl`.
    let lease = direct
        .acquire(&slot(), id, 1, 4, Duration::from_millis(500))
        .await;
    assert!(lease.is_ok(), "the next request gets the place");
}

#[tokio::test]
async fn a_request_cancelled_while_queued_leaves_the_queue_for_good() {
    let redis = RedisServer::start();
    // A short lease: a queue place kept alive by a forgotten renewal outlives it.
    let ttl = Duration::from_millis(900);
    let store = store(&redis.url(), ttl);
    let id = session(&store).await;
    let first = store
        .acquire(&slot(), id, 1, 1, Duration::from_millis(500))
        .await
        .map_err(|e| format!("{e:?}"))
        .unwrap();

    let waited = tokio::time::timeout(
        Duration::from_millis(300),
        store.acquire(&slot(), id, 1, 1, Duration::from_secs(10)),
    )
    .await;
    assert!(waited.is_err(), "the second request must still be queued");

    settles_at(&store, (1, 0), "the cancelled request leaves the queue").await;
    // Twice the lease later it has not come back (no renewal outlived the request).
    tokio::time::sleep(ttl * 2).await;
    assert_eq!(counts(&store).await, (1, 0));
    let third = store
        .acquire(&slot(), id, 1, 1, Duration::from_millis(100))
        .await;
    assert!(
        matches!(third, Err(LeaseRefused::Busy)),
        "still busy behind the first"
    );
    drop(first);
    settles_at(&store, (0, 0), "the first place comes back").await;
}
