//! Locks held by a token: the login lock of a session (the cross-replica single-flight of
//! logins), and the taking and giving back that the credential trial lock shares. A lock lives
//! `lease_ttl` and is renewed while held, so that a replica that dies holding one holds up the
//! others for at most `lease_ttl`; only the token that took it gives it back.

use super::super::store::{SlotKey, StoreError};
use super::codec::slot_text;
use super::guards::Kind;
#[cfg(doc)]
use super::SessionStore;
use super::{lock, RedisStore};

impl RedisStore {
    /// Takes the lock at `key` for `lease_ttl` (renewed while held): its token, or `None` when
    /// somebody holds it.
    pub(super) async fn take_lock(
        &self,
        op: &'static str,
        key: &str,
    ) -> Result<Option<String>, StoreError> {
        let token = format!("{:032x}", rand::random::<u128>());
        let ttl = self.lease_ms();
        let t = token.clone();
        let got: Option<String> = self
            .redis
            .run(op, |mut c| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(&t)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(got.map(|_| token))
    }

    /// Gives back the lock at `key` if `token` still holds it.
    pub(super) async fn give_back_lock(
        &self,
        op: &'static str,
        key: &str,
        token: &str,
    ) -> Result<(), StoreError> {
        let script = &self.scripts.unlock;
        self.redis
            .run(op, |mut c| async move {
                script.key(key).arg(token).invoke_async::<i64>(&mut c).await
            })
            .await
            .map(|_| ())
    }
}

/// [`SessionStore::lock_login`].
pub(super) async fn lock_login(
    store: &RedisStore,
    slot: &SlotKey,
    id: u64,
) -> Result<bool, StoreError> {
    let key = store.keys.login(id);
    let Some(token) = store.take_lock("lock_login", &key).await? else {
        return Ok(false);
    };
    store
        .holdings
        .hold(&token, Kind::Login, &slot_text(slot), id);
    lock(&store.login_tokens).insert(id, token);
    Ok(true)
}

/// [`SessionStore::unlock_login`].
pub(super) async fn unlock_login(store: &RedisStore, id: u64) -> Result<(), StoreError> {
    let Some(token) = lock(&store.login_tokens).remove(&id) else {
        return Ok(());
    };
    store.holdings.drop_ticket(&token);
    store
        .give_back_lock("unlock_login", &store.keys.login(id), &token)
        .await
}
