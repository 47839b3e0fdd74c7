//! The store's own background tasks: the renewal and the sweeper of kept places
//! ([`super::parked::sweep`]). The renewal loads the scripts, then renews every holding of this
//! replica ([`super::guards`]) in one round trip every third of `lease_ttl`. A holding that
//! expired in the store (an outage longer than `lease_ttl`) is restored when nobody took its
//! place; when somebody did, it is lost: its request stops, or its waiter learns the session is
//! gone. A renewal that meets a store which lost its state (a new epoch) first registers this
//! replica's sessions again, with the places of its requests under way, then renews.

use std::sync::Arc;
use std::time::Duration;

use super::super::store::StoreError;
use super::guards::Kind;
use super::parked::sweep;
#[cfg(doc)]
use super::SessionStore;
use super::{lock, RedisStore};
use crate::fleet::membership::Wake;

/// [`SessionStore::start`]: starts the task once; it ends with the store.
pub(super) fn start(store: Arc<RedisStore>) {
    let mut task = lock(&store.task);
    if task.is_some() {
        return;
    }
    let weak = Arc::downgrade(&store);
    let every = (store.lease_ttl / 3).max(Duration::from_millis(100));
    let renewal = tokio::spawn(async move {
        if let Some(me) = weak.upgrade() {
            let _ = me.load_scripts().await;
        }
        loop {
            tokio::time::sleep(every).await;
            match weak.upgrade() {
                Some(me) => renew(&me).await,
                None => break,
            }
        }
    });
    let sweeper = tokio::spawn(sweep(store.parked.clone(), store.releaser().clone()));
    *task = Some([renewal, sweeper]);
}

/// One renewal of every holding, and the upkeep's seat renewal; never behind logouts.
async fn renew(store: &RedisStore) {
    let held = store.holdings.snapshot();
    if held.is_empty() {
        return;
    }
    let (prefix, global) = (store.keys.prefix.clone(), store.keys.global.clone());
    let (max, lease) = (store.max_inflight, store.lease_ms());
    let epoch_key = store.keys.epoch();
    let script = &store.scripts.renew;
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let args = held.clone();
        let known = lock(&store.epoch).clone();
        let (prefix, global, epoch_key) = (&prefix, &global, &epoch_key);
        let answer: Result<Vec<String>, StoreError> = store
            .redis
            .run("renew", |mut c| async move {
                let mut inv = script.key(epoch_key);
                inv.arg(prefix).arg(global).arg(max).arg(lease).arg(&known);
                for (kind, slot, id, ticket) in &args {
                    inv.arg(kind.code()).arg(slot).arg(*id).arg(ticket);
                }
                inv.invoke_async(&mut c).await
            })
            .await;
        let Ok(answer) = answer else {
            return;
        };
        if answer.first().map(String::as_str) != Some("reset") {
            statuses = answer;
            break;
        }
        // The store came back empty since this replica last looked: its sessions (with the
        // places of its requests under way) are registered again before their leases are
        // judged, or those requests would be stopped as if somebody had taken their places.
        if store.repair_reset().await.is_err() {
            return;
        }
    }
    for ((kind, _, id, ticket), status) in held.iter().zip(statuses) {
        match status.as_str() {
            "restored" => {
                tracing::warn!(prefix = %store.keys.prefix, session = id, kind = kind.code(), "a lease had expired in the store (an outage?); it was restored");
            }
            "lost" => {
                store.holdings.lose(ticket);
                match kind {
                    Kind::InFlight => {
                        tracing::error!(prefix = %store.keys.prefix, session = id, "an in-flight place expired in the store and was taken meanwhile: the request stops")
                    }
                    Kind::Queued => store.fleet.wake_local(ticket, Wake::Gone),
                    Kind::Login | Kind::Trial => {
                        tracing::warn!(prefix = %store.keys.prefix, session = id, kind = kind.code(), "a login lock expired in the store and was taken meanwhile")
                    }
                }
            }
            _ => {}
        }
    }
}
