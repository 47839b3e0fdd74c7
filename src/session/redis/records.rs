//! The record operations: reading a record (a jar that does not open makes it lost), creating
//! one under the per-grant cap, editing it by compare and set, and taking records away (on
//! request, when unused, evictable or expired), each leaving a tombstone.

use std::collections::HashMap;

use redis::{FromRedisValue, Script, ToRedisArgs};

use super::super::store::{Created, Edit, Expiry, Removal, SessionRecord, SlotKey, StoreError};
use super::codec::{
    args, expiry_from, fields, pairs, plain_fields, plain_record, record_from, slot_from_text,
    slot_text, Stored,
};
use super::RedisStore;
#[cfg(doc)]
use super::SessionStore;

impl RedisStore {
    /// Decodes a record hash read for `slot_text`; a jar that does not open makes it lost.
    pub(super) fn decode(&self, slot_text: &str, map: &HashMap<String, String>) -> Option<Stored> {
        match record_from(map, &self.sealer, &self.keys.record(slot_text))? {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(prefix = %self.keys.prefix, error = %e, "a session record cannot be opened; it is treated as lost");
                None
            }
        }
    }

    /// A record hash whose jar may not open (upkeep's abandoned records): the jar is dropped.
    pub(super) fn decode_lenient(
        &self,
        slot_text: &str,
        map: &HashMap<String, String>,
    ) -> Option<SessionRecord> {
        match record_from(map, &self.sealer, &self.keys.record(slot_text))? {
            Ok(s) => Some(s.record),
            Err(_) => plain_record(map),
        }
    }

    /// The record hash of slot `s` (empty when there is none) and its in-flight and queued
    /// counts.
    async fn fetch(&self, s: &str) -> Result<(HashMap<String, String>, u32, u32), StoreError> {
        let key = self.keys.record(s);
        let prefix = self.keys.prefix.clone();
        let script = &self.scripts.get;
        let (list, f, q): (Vec<String>, u32, u32) = self
            .redis
            .run("get", |mut c| async move {
                script.key(&key).arg(&prefix).invoke_async(&mut c).await
            })
            .await?;
        Ok((pairs(list), f, q))
    }

    pub(super) async fn read(&self, s: &str) -> Result<Option<SessionRecord>, StoreError> {
        let (map, f, q) = self.fetch(s).await?;
        if map.is_empty() {
            return Ok(None);
        }
        let Some(stored) = self.decode(s, &map) else {
            // Unopenable: lost. Take it away so that nobody forwards it, and let upkeep's
            // repair see it vanish.
            if let Some(id) = map.get("id").and_then(|v| v.parse::<u64>().ok()) {
                let _ = self.remove_text(s, id).await;
            }
            return Ok(None);
        };
        let mut r = stored.record;
        r.in_flight = f;
        // With this replica's requests waiting behind its own place (not in Redis's queue).
        r.queued = q + self.parked.waiting(s);
        Ok(Some(r))
    }

    pub(super) async fn read_stored(&self, s: &str) -> Result<Option<Stored>, StoreError> {
        let (map, _, _) = self.fetch(s).await?;
        if map.is_empty() {
            return Ok(None);
        }
        Ok(self.decode(s, &map))
    }

    /// Runs `script`, one of those that take records away. They all take the namespace, two
    /// arguments of their own, then how long a tombstone and a lease live.
    async fn take_away<T: FromRedisValue>(
        &self,
        op: &'static str,
        script: &Script,
        a: impl ToRedisArgs,
        b: impl ToRedisArgs,
    ) -> Result<T, StoreError> {
        let (prefix, global) = (&self.keys.prefix, &self.keys.global);
        let (tomb, lease) = (self.tomb_ms(), self.lease_ms());
        self.redis
            .run(op, |mut c| async move {
                script
                    .arg(prefix)
                    .arg(global)
                    .arg(a)
                    .arg(b)
                    .arg(tomb)
                    .arg(lease)
                    .invoke_async(&mut c)
                    .await
            })
            .await
    }

    pub(super) async fn remove_text(
        &self,
        s: &str,
        id: u64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let reply: Option<Vec<String>> = self
            .take_away("remove", &self.scripts.remove, s, id)
            .await?;
        self.recent.forget(s, id);
        Ok(reply.and_then(|r| self.decode_lenient(s, &pairs(r))))
    }
}

/// [`SessionStore::create`].
pub(super) async fn create(
    store: &RedisStore,
    slot: &SlotKey,
    record: SessionRecord,
    grant_cap: u32,
) -> Result<Created, StoreError> {
    let s = slot_text(slot);
    let rec = store.keys.record(&s);
    let (slots, grant) = (store.keys.slots(), store.keys.grant(&slot.grant));
    let prefix = store.keys.prefix.clone();
    let flat = args(fields(&record, &store.sealer, &rec), &["created", "used"]);
    let script = &store.scripts.create;
    let text = s.clone();
    let reply: Vec<i64> = store
        .redis
        .run("create", |mut c| async move {
            let mut inv = script.key(&rec);
            inv.key(&slots)
                .key(&grant)
                .arg(&text)
                .arg(grant_cap)
                .arg(&prefix);
            for f in &flat {
                inv.arg(f);
            }
            inv.invoke_async(&mut c).await
        })
        .await?;
    match reply.as_slice() {
        [0] => {
            store.recent.remember(slot, &record);
            Ok(Created::New(record))
        }
        [2, earliest] => Ok(Created::GrantFull {
            earliest_idle_ms: u64::try_from(*earliest).unwrap_or(0),
        }),
        _ => match store.read(&s).await? {
            Some(r) => Ok(Created::Existing(r)),
            // Removed again in between: report it as taken; the caller looks again.
            None => Ok(Created::Existing(record)),
        },
    }
}

/// [`SessionStore::update`].
pub(super) async fn update(
    store: &RedisStore,
    slot: &SlotKey,
    id: u64,
    f: Edit,
) -> Result<Option<SessionRecord>, StoreError> {
    // Compare and set: only the fields this edit changed are written, and only if they still
    // hold what this edit read, so that concurrent edits (a use time from another replica, a
    // second observer of the same expiry) are neither overwritten nor applied twice.
    let s = slot_text(slot);
    let rec = store.keys.record(&s);
    for _ in 0..8 {
        let Some(stored) = store.read_stored(&s).await?.filter(|r| r.record.id == id) else {
            return Ok(None);
        };
        let before = stored.record;
        let mut after = before.clone();
        f(&mut after);
        let old: HashMap<&str, String> = plain_fields(&before).into_iter().collect();
        let mut changed: Vec<(&str, String, String)> = plain_fields(&after)
            .into_iter()
            .filter_map(|(k, v)| {
                let was = old.get(k).cloned().unwrap_or_default();
                (was != v).then_some((k, was, v))
            })
            .collect();
        if after.jar != before.jar {
            changed.push((
                "jar",
                stored.sealed_jar.clone(),
                store.sealer.seal(&rec, &after.jar.to_text()),
            ));
            // The script gives a new jar the next version.
            after.jar_version = before.jar_version + 1;
        }
        if changed.is_empty() {
            return Ok(Some(after));
        }
        let key = rec.clone();
        let script = &store.scripts.update;
        let ok: i64 = store
            .redis
            .run("update", |mut c| async move {
                let mut inv = script.key(&key);
                inv.arg(id);
                for (k, was, v) in &changed {
                    inv.arg(k).arg(was).arg(v);
                }
                inv.invoke_async(&mut c).await
            })
            .await?;
        match ok {
            1 => {
                store.recent.remember(slot, &after);
                return Ok(Some(after));
            }
            0 => return Ok(None),
            _ => continue,
        }
    }
    Err(StoreError::Unavailable(
        "the session record kept changing under the update".to_owned(),
    ))
}

/// [`SessionStore::remove_unused`].
pub(super) async fn remove_unused(
    store: &RedisStore,
    slot: &SlotKey,
    id: u64,
) -> Result<Removal, StoreError> {
    let s = slot_text(slot);
    // A place this replica kept for its next request does not keep the session in use.
    store.settle_slot(&s).await;
    let reply: Vec<String> = store
        .take_away("remove", &store.scripts.remove_unused, &s, id)
        .await?;
    let mut it = reply.into_iter();
    Ok(match it.next().as_deref() {
        Some("busy") => Removal::Busy,
        Some("removed") => {
            store.recent.forget(&s, id);
            store
                .decode_lenient(&s, &pairs(it.collect()))
                .map_or(Removal::Gone, Removal::Removed)
        }
        _ => Removal::Gone,
    })
}

/// [`SessionStore::list`].
pub(super) async fn list(store: &RedisStore) -> Result<Vec<(SlotKey, SessionRecord)>, StoreError> {
    let prefix = store.keys.prefix.clone();
    let script = &store.scripts.list;
    let rows: Vec<(String, Vec<String>, u32, u32)> = store
        .redis
        .run("list", |mut c| async move {
            script.arg(&prefix).invoke_async(&mut c).await
        })
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(s, fields, f, q)| {
            let slot = slot_from_text(&s)?;
            let mut r = store.decode_lenient(&s, &pairs(fields))?;
            r.in_flight = f;
            r.queued = q + store.parked.waiting(&s);
            Some((slot, r))
        })
        .collect())
}

/// [`SessionStore::take_evictable`], timed by Redis's clock.
pub(super) async fn take_evictable(
    store: &RedisStore,
    min_idle_ms: u64,
    op_ttl_ms: u64,
) -> Result<Option<(SlotKey, SessionRecord)>, StoreError> {
    // A place this replica kept that long ago does not keep its session from eviction: it
    // goes back first (what another replica keeps goes back within its linger).
    store
        .settle_idle(std::time::Duration::from_millis(min_idle_ms))
        .await;
    let script = &store.scripts.take_evictable;
    let reply: Option<(String, Vec<String>)> = store
        .take_away("take_evictable", script, min_idle_ms, op_ttl_ms)
        .await?;
    Ok(reply.and_then(|(s, r)| {
        let record = store.decode_lenient(&s, &pairs(r))?;
        store.recent.forget(&s, record.id);
        Some((slot_from_text(&s)?, record))
    }))
}

/// [`SessionStore::take_expired`], timed by Redis's clock.
pub(super) async fn take_expired(
    store: &RedisStore,
    idle_ms: u64,
    max_age_ms: u64,
) -> Result<Vec<(SlotKey, SessionRecord, Expiry)>, StoreError> {
    let script = &store.scripts.take_expired;
    let reply: Vec<(String, String, Vec<String>)> = store
        .take_away("take_expired", script, idle_ms, max_age_ms)
        .await?;
    Ok(reply
        .into_iter()
        .filter_map(|(s, why, r)| {
            let record = store.decode_lenient(&s, &pairs(r))?;
            store.recent.forget(&s, record.id);
            Some((slot_from_text(&s)?, record, expiry_from(&why)))
        })
        .collect())
}
