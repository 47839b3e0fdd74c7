//! Upkeep, and the repair after a store loss. Every replica's periodic upkeep (one script)
//! renews the seats of seated records, takes away the records of logins a crashed replica left
//! unfinished, and compares the store's epoch and the sessions this replica remembers with what
//! the store holds. When the store lost its state (it came back empty, or another instance
//! answers) or a remembered session vanished without a tombstone, the sessions this replica
//! knows are registered again within the caps ([`restore`]), or reported for the pool to log
//! out when there is no room.

use super::super::store::{
    Maintenance, Restored, SessionRecord, SessionState, SlotKey, StoreError,
};
use super::codec::{args, fields, pairs, slot_text};
#[cfg(doc)]
use super::SessionStore;
use super::{lock, RedisStore};

/// [`SessionStore::maintain`].
pub(super) async fn maintain(store: &RedisStore) -> Result<Maintenance, StoreError> {
    store.recent.prune(store.remember);
    let remembered = store.recent.keys();
    let known = lock(&store.epoch).clone();
    let fresh = format!("{:032x}", rand::random::<u128>());
    let (seats, epoch_key) = (store.keys.seats(), store.keys.epoch());
    let (prefix, global) = (store.keys.prefix.clone(), store.keys.global.clone());
    let (seat_ttl, tomb, lease) = (store.seat_ms(), store.tomb_ms(), store.lease_ms());
    let script = &store.scripts.maintain;
    let (abandoned, epoch, reset, lost): (Vec<Vec<String>>, String, String, Vec<String>) = store
        .redis
        .run("maintain", |mut c| async move {
            let mut inv = script.key(&seats);
            inv.key(&epoch_key)
                .arg(&prefix)
                .arg(&global)
                .arg(seat_ttl)
                .arg(tomb)
                .arg(lease)
                .arg(&known)
                .arg(&fresh);
            for (s, id) in &remembered {
                inv.arg(s).arg(*id);
            }
            inv.invoke_async(&mut c).await
        })
        .await?;
    *lock(&store.epoch) = epoch;
    let (repaired_reset, repaired) = std::mem::take(&mut *lock(&store.repaired));
    let mut out = Maintenance {
        reset: reset == "1" || repaired_reset,
        lost: repaired,
        ..Maintenance::default()
    };
    for fields in abandoned {
        if let Some(r) = store.decode_lenient("", &pairs(fields)) {
            out.abandoned.push(r);
        }
    }
    let lost = lost.chunks(2).filter_map(|pair| {
        let [s, id] = pair else { return None };
        Some((s.clone(), id.parse::<u64>().ok()?))
    });
    for r in store.recent.take(lost) {
        out.lost.push((r.slot, r.record));
    }
    Ok(out)
}

/// [`SessionStore::restore`].
pub(super) async fn restore(
    store: &RedisStore,
    slot: &SlotKey,
    record: SessionRecord,
    grant_cap: u32,
    seat_cap: u32,
) -> Result<Restored, StoreError> {
    let s = slot_text(slot);
    let rec = store.keys.record(&s);
    let (slots, grant) = (store.keys.slots(), store.keys.grant(&slot.grant));
    let seats = store.keys.seats();
    let mut restored = record.clone();
    restored.state = SessionState::Active;
    restored.seated = true;
    let all = fields(&restored, &store.sealer, &rec);
    let sealed = all
        .iter()
        .find(|(k, _)| *k == "jar")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let flat = args(all, &["used"]);
    let (id, seat_ttl, prefix) = (record.id, store.seat_ms(), store.keys.prefix.clone());
    let version = record.jar_version;
    // Registered with the session: a request of this replica on it (begun before the loss)
    // keeps its place, so that nobody is granted one beside it.
    let places = store.holdings.places_on(id);
    let (max, lease) = (store.max_inflight, store.lease_ms());
    let script = &store.scripts.restore;
    let text = s.clone();
    let answer: String = store
        .redis
        .run("restore", |mut c| async move {
            let mut inv = script.key(&rec);
            inv.key(&slots)
                .key(&grant)
                .key(&seats)
                .arg(&text)
                .arg(grant_cap)
                .arg(seat_cap)
                .arg(id)
                .arg(seat_ttl)
                .arg(&prefix)
                .arg(version)
                .arg(&sealed)
                .arg(max)
                .arg(lease)
                .arg(places.len());
            for t in &places {
                inv.arg(t);
            }
            for f in &flat {
                inv.arg(f);
            }
            inv.invoke_async(&mut c).await
        })
        .await?;
    Ok(match answer.as_str() {
        "registered" | "same" => {
            store.recent.remember(slot, &restored);
            Restored::Registered
        }
        _ if !store.holdings.places_on(id).is_empty() => Restored::InUse,
        _ => Restored::NoRoom,
    })
}

impl RedisStore {
    /// The store came back empty (or another instance answers): learns the new epoch and
    /// registers again, within the caps, the sessions this replica logged in or used lately, so
    /// that they are counted (and used) before anybody logs in beside them. Those without room
    /// are left to the next upkeep, which logs them out.
    pub(super) async fn repair_reset(&self) -> Result<(), StoreError> {
        let _one = self.repairing.lock().await;
        let key = self.keys.epoch();
        let fresh = format!("{:032x}", rand::random::<u128>());
        let (k, f) = (key.clone(), fresh.clone());
        let (_, current): (Option<String>, String) = self
            .redis
            .run("epoch", |mut c| async move {
                redis::pipe()
                    .cmd("SET")
                    .arg(&k)
                    .arg(&f)
                    .arg("NX")
                    .cmd("GET")
                    .arg(&k)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        {
            let mut known = lock(&self.epoch);
            if *known == current {
                // Another request of this replica repaired it a moment ago.
                return Ok(());
            }
            *known = current;
        }
        let remembered = self.recent.drain();
        let mut found = Vec::new();
        for r in remembered {
            let cap = if r.record.concurrent {
                self.grant_cap
            } else {
                1
            };
            if r.record.state == SessionState::Active && r.record.seated && !r.record.jar.is_empty()
            {
                // Registered or not, the upkeep finishes it: a second restore finds it back.
                let _ = restore(self, &r.slot, r.record.clone(), cap, self.seat_cap).await;
                found.push((r.slot, r.record));
            }
        }
        tracing::warn!(prefix = %self.keys.prefix, sessions = found.len(), "the session store lost its state; registering the sessions this replica knows again");
        let mut repaired = lock(&self.repaired);
        repaired.0 = true;
        repaired.1.extend(found);
        Ok(())
    }
}
