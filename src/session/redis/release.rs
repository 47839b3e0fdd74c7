//! Giving a place back. A lease's release (or its drop: a cancelled request) hands the place to
//! the next waiter in Redis with the use time, a 202 and the jar when it changed; a queued
//! ticket whose wait ends is taken off the queue. A drop cannot wait, so both can run on a task
//! of their own, with what they need detached from the store ([`Releaser`]).

use std::sync::Arc;

use super::super::store::Release;
use super::guards::Holdings;
use super::keys::Keys;
use super::recent::Recent;
use super::RedisStore;
use crate::fleet::seal::Sealer;
use crate::fleet::RedisHandle;

/// What a lease's release needs, detached from the store (a lease may be dropped anywhere).
#[derive(Clone)]
pub(super) struct Releaser {
    /// The store's memory of used sessions, which follows the jar as it is written back.
    recent: Recent,
    redis: RedisHandle,
    script: redis::Script,
    sealer: Arc<Sealer>,
    holdings: Holdings,
    keys: Keys,
    max: u32,
    lease_ms: u64,
}

impl RedisStore {
    pub(super) fn releaser(&self) -> Releaser {
        Releaser {
            recent: self.recent.clone(),
            redis: self.redis.clone(),
            script: self.scripts.release.clone(),
            sealer: self.sealer.clone(),
            holdings: self.holdings.clone(),
            keys: self.keys.clone(),
            max: self.max_inflight,
            lease_ms: self.lease_ms(),
        }
    }
}

impl Releaser {
    /// Gives the place back on its own task (a drop cannot wait), with the use time, a 202 and
    /// the jar when it changed.
    pub(super) fn release(self, rec: String, id: u64, ticket: String, how: Release) {
        self.holdings.drop_ticket(&ticket);
        let jar = how
            .jar
            .as_ref()
            .map(|j| self.sealer.seal(&rec, &j.to_text()));
        let slot = self.keys.slot_of_record(&rec);
        let plain = how.jar.clone();
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        handle.spawn(async move {
            let Releaser {
                recent,
                redis,
                script,
                keys,
                max,
                lease_ms,
                ..
            } = self;
            let version = redis
                .run("release", |mut c| async move {
                    script
                        .key(&rec)
                        .arg(&keys.prefix)
                        .arg(&keys.global)
                        .arg(id)
                        .arg(&ticket)
                        .arg(if how.op { "1" } else { "0" })
                        .arg(max)
                        .arg(lease_ms)
                        .arg(if jar.is_some() { "1" } else { "0" })
                        .arg(jar.unwrap_or_default())
                        .invoke_async::<u64>(&mut c)
                        .await
                })
                .await;
            if let (Ok(v), Some(jar)) = (version, plain) {
                recent.wrote_jar(&slot, id, v, jar);
            }
        });
    }
}

/// Takes a ticket off its session's queue (and hands on a place granted to it meanwhile).
pub(super) async fn cancel(r: &Releaser, script: redis::Script, rec: &str, ticket: &str) {
    let _ = r
        .redis
        .run("cancel", |mut c| async move {
            script
                .key(rec)
                .arg(&r.keys.prefix)
                .arg(&r.keys.global)
                .arg(ticket)
                .arg(r.max)
                .arg(r.lease_ms)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await;
}
