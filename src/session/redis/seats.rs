//! The upstream's seats: a sorted set of the session ids holding one, by expiry, shared by every
//! profile of the upstream. A seat lives as long as its record is seated (upkeep renews it), so
//! only a fleet that is gone altogether loses its seats by expiry. The gauge counts are read
//! with them.

use super::super::store::{Stats, StoreError};
use super::RedisStore;
#[cfg(doc)]
use super::SessionStore;

/// [`SessionStore::take_seat`].
pub(super) async fn take(store: &RedisStore, cap: u32, holder: u64) -> Result<bool, StoreError> {
    let seats = store.keys.seats();
    let ttl = store.seat_ms();
    let script = &store.scripts.take_seat;
    let got: i64 = store
        .redis
        .run("take_seat", |mut c| async move {
            script
                .key(&seats)
                .arg(cap)
                .arg(holder)
                .arg(ttl)
                .invoke_async(&mut c)
                .await
        })
        .await?;
    Ok(got == 1)
}

/// [`SessionStore::release_seat`].
pub(super) async fn release(store: &RedisStore, holder: u64) -> Result<(), StoreError> {
    let seats = store.keys.seats();
    store
        .redis
        .run("release_seat", |mut c| async move {
            redis::cmd("ZREM")
                .arg(&seats)
                .arg(holder)
                .query_async::<i64>(&mut c)
                .await
        })
        .await
        .map(|_| ())
}

/// [`SessionStore::seats_in_use`]: the seats whose expiry is still ahead.
pub(super) async fn in_use(store: &RedisStore) -> Result<u32, StoreError> {
    let seats = store.keys.seats();
    let script = &store.scripts.seats;
    store
        .redis
        .run("seats", |mut c| async move {
            script.key(&seats).invoke_async(&mut c).await
        })
        .await
}

/// [`SessionStore::stats`]: the profile's records by state and the upstream's seats, in one
/// step.
pub(super) async fn stats(store: &RedisStore) -> Result<Stats, StoreError> {
    let (prefix, seats) = (store.keys.prefix.clone(), store.keys.seats());
    let script = &store.scripts.stats;
    let (n, l, a, s): (usize, usize, usize, u32) = store
        .redis
        .run("stats", |mut c| async move {
            script.key(&seats).arg(&prefix).invoke_async(&mut c).await
        })
        .await?;
    Ok(Stats {
        needs_login: n,
        logging_in: l,
        active: a,
        seats: s,
    })
}
