//! The credential gate, fleet-wide (design §6.5.3): the cooldown after a credential failure,
//! the mark that some replica logged in with a credential set, and the trial lock that lets one
//! replica at a time try an unproven set. The keys are the upstream's (every profile shares
//! them) and name a credential set by its keyed digest `fp`, never the secret.

use super::super::store::StoreError;
use super::guards::Kind;
#[cfg(doc)]
use super::SessionStore;
use super::{lock, RedisStore};

/// [`SessionStore::credential_cooldown`].
pub(super) async fn cooldown(store: &RedisStore, fp: &str) -> Result<Option<u64>, StoreError> {
    let key = store.keys.cooldown(fp);
    let left: i64 = store
        .redis
        .run("credentials", |mut c| async move {
            redis::cmd("PTTL").arg(&key).query_async(&mut c).await
        })
        .await?;
    // The cooldown's end, on this replica's clock: the key's remaining time is Redis's.
    Ok((left > 0).then(|| crate::clock::unix_ms() + u64::try_from(left).unwrap_or(0)))
}

/// [`SessionStore::open_credential_cooldown`].
pub(super) async fn open_cooldown(
    store: &RedisStore,
    fp: &str,
    until_ms: u64,
) -> Result<(), StoreError> {
    let cool = store.keys.cooldown(fp);
    let proven = store.keys.proven(fp);
    let ttl = until_ms.saturating_sub(crate::clock::unix_ms()).max(1);
    store
        .redis
        .run("credentials", |mut c| async move {
            redis::pipe()
                .cmd("SET")
                .arg(&cool)
                .arg(1)
                .arg("PX")
                .arg(ttl)
                .ignore()
                .cmd("DEL")
                .arg(&proven)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await
}

/// [`SessionStore::credentials_proven`].
pub(super) async fn proven(store: &RedisStore, fp: &str) -> Result<bool, StoreError> {
    let key = store.keys.proven(fp);
    store
        .redis
        .run("credentials", |mut c| async move {
            redis::cmd("EXISTS").arg(&key).query_async(&mut c).await
        })
        .await
}

/// [`SessionStore::mark_credentials_proven`].
pub(super) async fn mark_proven(store: &RedisStore, fp: &str) -> Result<(), StoreError> {
    let key = store.keys.proven(fp);
    store
        .redis
        .run("credentials", |mut c| async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .query_async::<()>(&mut c)
                .await
        })
        .await
}

/// [`SessionStore::lock_credential_trial`]. The trial lock lives `lease_ttl` and is renewed
/// while held, so that a replica that dies mid-login holds up the others' first login for at
/// most `lease_ttl`.
pub(super) async fn lock_trial(store: &RedisStore, fp: &str) -> Result<bool, StoreError> {
    let key = store.keys.trial(fp);
    let Some(token) = store.take_lock("credentials", &key).await? else {
        return Ok(false);
    };
    store.holdings.hold(&token, Kind::Trial, &key, 0);
    lock(&store.trial_tokens).insert(fp.to_owned(), token);
    Ok(true)
}

/// [`SessionStore::unlock_credential_trial`].
pub(super) async fn unlock_trial(store: &RedisStore, fp: &str) -> Result<(), StoreError> {
    let Some(token) = lock(&store.trial_tokens).remove(fp) else {
        return Ok(());
    };
    store.holdings.drop_ticket(&token);
    store
        .give_back_lock("credentials", &store.keys.trial(fp), &token)
        .await
}
