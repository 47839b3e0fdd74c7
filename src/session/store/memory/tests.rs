use super::*;
use crate::session::grant::GrantKey;
use crate::session::jar::Jar;

fn slot(g: &str, h: Option<u8>) -> SlotKey {
    SlotKey {
        grant: GrantKey(g.into()),
        handle: h.map(|b| [b; 16]),
    }
}

#[tokio::test]
async fn seats_never_exceed_the_cap() {
    let s = MemoryStore::new();
    assert!(s.take_seat(2, 1).await.unwrap());
    assert!(
        s.take_seat(2, 1).await.unwrap(),
        "a holder's second take is its own seat"
    );
    assert!(s.take_seat(2, 2).await.unwrap());
    assert!(!s.take_seat(2, 3).await.unwrap());
    s.release_seat(1).await.unwrap();
    s.release_seat(1).await.unwrap();
    assert_eq!(
        s.seats_in_use().await.unwrap(),
        1,
        "releasing twice frees one seat"
    );
    assert!(s.take_seat(2, 3).await.unwrap());
    assert_eq!(s.seats_in_use().await.unwrap(), 2);
    // Stores of one upstream share their seats (a reload's old and new pool).
    let table = Arc::new(SeatTable::default());
    let (old, new) = (
        MemoryStore::with_seats(table.clone()),
        MemoryStore::with_seats(table),
    );
    assert!(old.take_seat(1, 10).await.unwrap());
    assert!(!new.take_seat(1, 11).await.unwrap());
    old.release_seat(10).await.unwrap();
    assert!(new.take_seat(1, 11).await.unwrap());
}

#[tokio::test]
async fn create_respects_the_slot_and_the_grant_cap() {
    let s = MemoryStore::new();
    assert!(matches!(
        s.create(&slot("g", Some(1)), SessionRecord::new(1, true, 10), 2, 1)
            .await
            .unwrap(),
        Created::New(_)
    ));
    assert!(
        matches!(s.create(&slot("g", Some(1)), SessionRecord::new(2, true, 10), 2, 1).await.unwrap(), Created::Existing(r) if r.id == 1)
    );
    assert!(matches!(
        s.create(&slot("g", Some(2)), SessionRecord::new(3, true, 20), 2, 1)
            .await
            .unwrap(),
        Created::New(_)
    ));
    assert!(matches!(
        s.create(&slot("g", Some(3)), SessionRecord::new(4, true, 30), 2, 1)
            .await
            .unwrap(),
        Created::GrantFull {
            earliest_idle_ms: 10
        }
    ));
    assert!(matches!(
        s.create(&slot("other", None), SessionRecord::new(5, false, 30), 1, 1)
            .await
            .unwrap(),
        Created::New(_)
    ));
}

#[tokio::test]
async fn in_flight_places_are_fifo_and_bounded() {
    let s = Arc::new(MemoryStore::new());
    let k = slot("g", None);
    s.create(&k, SessionRecord::new(1, false, 0), 1, 1)
        .await
        .unwrap();
    let first = s
        .acquire(&k, 1, 1, 4, Duration::from_secs(1))
        .await
        .unwrap();
    // Four wait, one after the other; each records when it got the place and holds it a
    // moment, so a waiter served out of turn shows in the order.
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for n in 0..4u64 {
        let (s2, k2, order) = (s.clone(), k.clone(), order.clone());
        waiters.push(tokio::spawn(async move {
            let lease = s2.acquire(&k2, 1, 1, 4, Duration::from_secs(5)).await?;
            order.lock().unwrap().push(n);
            tokio::time::sleep(Duration::from_millis(5)).await;
            s2.release(lease, Release::default()).await;
            Ok::<_, LeaseRefused>(())
        }));
        // Queued in this order before the next one arrives.
        while s.get(&k).await.unwrap().unwrap().queued <= u32::try_from(n).unwrap() {
            tokio::task::yield_now().await;
        }
    }
    // The queue is full: the next is refused at once.
    assert_eq!(
        s.acquire(&k, 1, 1, 4, Duration::from_secs(1))
            .await
            .unwrap_err(),
        LeaseRefused::Busy
    );
    s.release(first, Release::default()).await;
    for w in waiters {
        w.await.unwrap().unwrap();
    }
    assert_eq!(
        *order.lock().unwrap(),
        vec![0, 1, 2, 3],
        "first come, first served"
    );
    // A wait that runs out is Busy and leaves no queued count behind.
    let held = s
        .acquire(&k, 1, 1, 5, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        s.acquire(&k, 1, 1, 5, Duration::from_millis(20))
            .await
            .unwrap_err(),
        LeaseRefused::Busy
    );
    assert_eq!(s.get(&k).await.unwrap().unwrap().queued, 0);
    s.release(
        held,
        Release {
            op: true,
            jar: Some(Jar::from_text("a\t/\t1")),
        },
    )
    .await;
    let r = s.get(&k).await.unwrap().unwrap();
    assert_eq!(r.in_flight, 0);
    assert!(r.last_used_ms > 0 && r.last_op_ms == Some(r.last_used_ms));
    assert_eq!(
        r.jar,
        Jar::from_text("a\t/\t1"),
        "the jar came back with the release"
    );
}

#[tokio::test]
async fn removal_of_an_unused_session_is_atomic_with_its_use() {
    let s = MemoryStore::new();
    let k = slot("g", None);
    s.create(&k, SessionRecord::new(1, false, 0), 1, 1)
        .await
        .unwrap();
    let lease = s
        .acquire(&k, 1, 1, 5, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(matches!(
        s.remove_unused(&k, 1).await.unwrap(),
        Removal::Busy
    ));
    s.release(lease, Release::default()).await;
    assert!(matches!(
        s.remove_unused(&k, 1).await.unwrap(),
        Removal::Removed(r) if r.id == 1
    ));
    assert!(matches!(
        s.remove_unused(&k, 1).await.unwrap(),
        Removal::Gone
    ));
}

#[tokio::test]
async fn eviction_takes_the_lru_unused_session_only() {
    let s = MemoryStore::new();
    let (a, b) = (slot("a", None), slot("b", None));
    let mut old = SessionRecord::new(1, false, 0);
    old.state = SessionState::Active;
    old.seated = true;
    let mut newer = SessionRecord::new(2, false, 0);
    newer.state = SessionState::Active;
    newer.seated = true;
    newer.last_used_ms = 500;
    s.create(&a, old, 1, 1).await.unwrap();
    s.create(&b, newer, 1, 1).await.unwrap();
    // A record that never logged in holds no seat: evicting it would free nothing.
    s.create(&slot("c", None), SessionRecord::new(3, false, 0), 1, 1)
        .await
        .unwrap();
    let lease = s
        .acquire(&a, 1, 1, 5, Duration::from_secs(1))
        .await
        .unwrap();
    // `a` is older but busy: `b` goes.
    let (k, r) = s.take_evictable(10_000, 2_000, 0).await.unwrap().unwrap();
    assert_eq!((k, r.id), (b.clone(), 2));
    assert!(
        s.take_evictable(10_000, 2_000, 0).await.unwrap().is_none(),
        "a is in use"
    );
    s.release(
        lease,
        Release {
            op: true,
            jar: None,
        },
    )
    .await;
    let now = crate::session::pool::now_ms();
    assert!(
        s.take_evictable(now + 3_000, 2_000, 600_000)
            .await
            .unwrap()
            .is_none(),
        "a 202 was seen recently"
    );
    assert!(s
        .take_evictable(now + 700_000, 2_000, 600_000)
        .await
        .unwrap()
        .is_some());
}

/// A store whose session 1 has one in-flight place, held, and a second request queued for it.
async fn held_with_a_waiter() -> (
    Arc<MemoryStore>,
    SlotKey,
    InFlight,
    tokio::task::JoinHandle<Result<InFlight, LeaseRefused>>,
) {
    let s = Arc::new(MemoryStore::new());
    let k = slot("g", None);
    s.create(&k, SessionRecord::new(1, false, 0), 1, 1)
        .await
        .unwrap();
    let held = s
        .acquire(&k, 1, 1, 5, Duration::from_secs(1))
        .await
        .unwrap();
    let (s2, k2) = (s.clone(), k.clone());
    let waiter =
        tokio::spawn(async move { s2.acquire(&k2, 1, 1, 5, Duration::from_secs(30)).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(s.get(&k).await.unwrap().unwrap().queued, 1);
    assert_eq!(s.queue_depth(), 1);
    (s, k, held, waiter)
}

#[tokio::test]
async fn cancelled_waiters_and_dropped_leases_leave_no_count_behind() {
    let (s, k, held, waiter) = held_with_a_waiter().await;
    // The client goes away while queued.
    waiter.abort();
    let _ = waiter.await;
    assert_eq!(s.get(&k).await.unwrap().unwrap().queued, 0);
    assert_eq!(s.queue_depth(), 0);
    // A lease dropped without release (a cancelled request) gives its place back.
    drop(held);
    let r = s.get(&k).await.unwrap().unwrap();
    assert_eq!(r.users(), 0);
    assert!(s
        .acquire(&k, 1, 1, 5, Duration::from_millis(50))
        .await
        .is_ok());
}

#[tokio::test]
async fn waiters_on_a_removed_session_learn_it_is_gone() {
    let s = Arc::new(MemoryStore::new());
    let k = slot("g", None);
    s.create(&k, SessionRecord::new(7, false, 0), 1, 1)
        .await
        .unwrap();
    let held = s
        .acquire(&k, 7, 1, 5, Duration::from_secs(1))
        .await
        .unwrap();
    let (s2, k2) = (s.clone(), k.clone());
    let waiter =
        tokio::spawn(async move { s2.acquire(&k2, 7, 1, 5, Duration::from_secs(5)).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(s.remove(&k, 7).await.unwrap().is_some());
    assert!(
        s.remove(&k, 7).await.unwrap().is_none(),
        "only one remover wins"
    );
    assert_eq!(waiter.await.unwrap().unwrap_err(), LeaseRefused::Gone);
    s.release(held, Release::default()).await;
}

#[tokio::test]
async fn expiry_by_idle_time_and_by_age() {
    let s = MemoryStore::new();
    let mut idle = SessionRecord::new(1, false, 0);
    idle.state = SessionState::Active;
    let mut old = SessionRecord::new(2, false, 0);
    old.state = SessionState::Active;
    old.last_used_ms = 9_000;
    let mut fresh = SessionRecord::new(3, false, 8_000);
    fresh.state = SessionState::Active;
    fresh.last_used_ms = 9_000;
    s.create(&slot("a", None), idle, 1, 1).await.unwrap();
    s.create(&slot("b", None), old, 1, 1).await.unwrap();
    s.create(&slot("c", None), fresh, 1, 1).await.unwrap();
    let mut token = SessionRecord::new(4, false, 9_000);
    token.state = SessionState::Active;
    token.last_used_ms = 9_900;
    token.retire_at_ms = Some(9_990);
    s.create(&slot("d", None), token, 1, 1).await.unwrap();
    let mut out: Vec<(u64, Expiry)> = s
        .take_expired(10_000, 5_000, 9_500)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, r, why)| (r.id, why))
        .collect();
    out.sort_unstable_by_key(|(id, _)| *id);
    assert_eq!(
        out,
        vec![
            (1, Expiry::Idle),
            (2, Expiry::Age),
            (4, Expiry::TokenExpired)
        ]
    );
    assert_eq!(s.list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_place_given_back_goes_to_the_queue_not_to_a_newcomer() {
    use futures_util::FutureExt as _;
    let (s, k, held, waiter) = held_with_a_waiter().await;
    drop(held);
    // Before the waiter has run again: the place is its, and a newcomer that finds no free
    // place queues behind it (it would have taken the place had it been free).
    let newcomer = s
        .acquire(&k, 1, 1, 5, Duration::from_secs(30))
        .now_or_never();
    assert!(newcomer.is_none(), "the newcomer overtook the queue");
    let first = waiter.await.unwrap().expect("the waiter gets the place");
    assert_eq!(s.get(&k).await.unwrap().unwrap().in_flight, 1);
    drop(first);
}

#[tokio::test]
async fn a_free_place_is_leased_at_once_and_a_taken_one_is_left_to_the_queue() {
    let s = MemoryStore::new();
    let k = slot("g", None);
    assert!(
        s.lease_at_once(&k).is_none(),
        "no session yet: the long way creates it"
    );
    s.create(&k, SessionRecord::new(1, false, 0), 1, 1)
        .await
        .unwrap();
    let first = s.lease_at_once(&k).expect("the free place");
    assert_eq!((first.record.id, first.record.in_flight), (1, 1));
    assert!(!first.created);
    assert!(
        s.lease_at_once(&k).is_none(),
        "the session's only place is taken"
    );
    let rec = s.get(&k).await.unwrap().unwrap();
    assert_eq!(
        (rec.in_flight, rec.queued),
        (1, 0),
        "a refusal changes nothing"
    );
    drop(first);
    let rec = s.get(&k).await.unwrap().unwrap();
    assert_eq!(
        rec.in_flight, 0,
        "a lease at once is given back like any other"
    );
    assert!(s.lease_at_once(&k).is_some());
}

#[tokio::test]
async fn a_place_given_back_to_a_waiter_is_not_leased_at_once() {
    let (s, k, held, waiter) = held_with_a_waiter().await;
    drop(held);
    assert!(
        s.lease_at_once(&k).is_none(),
        "a request leased at once overtook the queue"
    );
    drop(waiter.await.unwrap().expect("the waiter gets the place"));
}
