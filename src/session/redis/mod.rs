//! The session table in Redis, shared by every replica (the `[store] kind = "redis"` setting).
//!
//! Every decision is one Lua script ([`scripts`]), atomic on the Redis server and timed by its
//! clock: taking a seat under the cap, finding or creating a record and granting an in-flight
//! place (one round trip for the common request), queueing, handing a freed place to the next
//! waiter, taking an evictable or expired session. A request that has to wait is woken through
//! [`crate::fleet::Fleet`]; the queue's order lives in Redis, so it is FIFO across replicas.
//! Leases (in-flight places, queue tickets, login locks) expire after `lease_ttl` unless this
//! replica renews them ([`guards`]); a crashed replica's leases come back by themselves and its
//! unfinished logins are cleaned up by the others' upkeep.
//!
//! Sessions live in a namespace per upstream *profile* (URL, credentials, paths): a reload that
//! changes only limits or timeouts keeps them; one that changes the profile leaves the old
//! namespace to be logged out when no replica serves it any more. Seats are counted per
//! upstream, across profiles.
//!
//! Jars are sealed at rest ([`crate::fleet::seal`]). A record whose jar does not open is
//! treated as lost: never forwarded, its seat given back.
//!
//! Layout, under `{key_prefix}s:{upstream}:` (seats, credential gate) and
//! `{key_prefix}s:{upstream}:p:{profile}:` (`P`, everything else):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `seats` | sorted set | seat holders (session ids) by expiry |
//! | `c:{fp}:cooldown`, `c:{fp}:proven`, `c:{fp}:trial` | strings | the credential gate (fleet-wide) |
//! | `P slots` | set | every slot key |
//! | `P r:{slot}` | hash | the record: id, concurrent, state, sealed jar, seated, times |
//! | `P g:{grant}` | set | the slot keys of one grant (the per-grant cap) |
//! | `P f:{id}` | sorted set | in-flight tickets by expiry |
//! | `P w:{id}` / `P q:{id}` | list / sorted set | the FIFO queue of tickets / their expiry |
//! | `P l:{id}` | string | the login lock's token (with a TTL) |
//! | `P t:{id}` | string | a tombstone: the session was removed by tollgate (with a TTL) |
//!
//! The store also keeps the epoch (`{key_prefix}epoch`, a random value written once) and, in
//! this process, the sessions it logged in or used lately with their jars: when the epoch
//! changes (Redis came back empty, or another instance answers) or a remembered record vanished
//! without a tombstone, those sessions are registered again within the cap, or logged out by
//! the pool when there is no room (see [`SessionStore::maintain`]).

mod codec;
mod guards;
mod scripts;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::jar::Jar;
use super::store::{
    Created, Expiry, InFlight, LeaseRefused, Leased, Maintenance, Release, Removal, Restored,
    SessionRecord, SessionState, SessionStore, SlotKey, Stats, StoreError,
};
use crate::clock::millis;
use crate::fleet::membership::Wake;
use crate::fleet::seal::Sealer;
use crate::fleet::{Fleet, RedisHandle};
use codec::{
    fields, pairs, plain_fields, plain_record, record_from, slot_from_text, slot_text, Stored,
};
use guards::{Holdings, Kind};
use scripts::Scripts;

/// A session this replica logged in or used lately, with its jar (for store-loss repair).
#[derive(Debug, Clone)]
struct Recent {
    slot: SlotKey,
    record: SessionRecord,
    touched: Instant,
}

/// The session store of one upstream profile, in Redis.
pub struct RedisStore {
    redis: RedisHandle,
    fleet: Arc<Fleet>,
    /// `{key_prefix}`
    global: String,
    /// `{key_prefix}s:{upstream}:`
    upstream_prefix: String,
    /// `{key_prefix}s:{upstream}:p:{profile}:`
    prefix: String,
    lease_ttl: Duration,
    /// How long a removed session's tombstone, and a used session's memory, last.
    remember: Duration,
    max_inflight: u32,
    scripts: Scripts,
    sealer: Arc<Sealer>,
    holdings: Holdings,
    /// This replica's login locks: token by session id.
    login_tokens: Mutex<HashMap<u64, String>>,
    /// This replica's credential trial locks: token by credential set.
    trial_tokens: Mutex<HashMap<String, String>>,
    recent: Arc<Mutex<HashMap<(String, u64), Recent>>>,
    /// The session id and jar version this replica last knew for each slot, whose jar is in
    /// `recent`: a lease that finds them unchanged is not sent the jar again.
    latest: Arc<Mutex<HashMap<String, (u64, u64)>>>,
    /// Sessions re-registered (or found without room) by a request that met a reset store,
    /// for the next upkeep to report and finish.
    repaired: Mutex<(bool, Vec<(SlotKey, SessionRecord)>)>,
    /// One repair at a time.
    repairing: tokio::sync::Mutex<()>,
    /// Caps for re-registering: seats of the upstream, sessions of a concurrent-mode grant.
    seat_cap: u32,
    grant_cap: u32,
    /// The store's epoch as last seen ("" before the first upkeep).
    epoch: Mutex<String>,
    /// Requests of this replica waiting for their session (the queue-depth gauge is per
    /// replica).
    queued_here: Arc<AtomicU32>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a store needs to know besides the connection.
#[derive(Debug, Clone)]
pub struct Namespace<'a> {
    pub upstream: &'a str,
    pub profile: &'a str,
    pub lease_ttl: Duration,
    pub idle_ttl: Duration,
    pub max_inflight: u32,
    /// `max_upstream_sessions`.
    pub seat_cap: u32,
    /// `max_sessions_per_grant` (concurrent mode).
    pub grant_cap: u32,
}

impl RedisStore {
    /// The store of `ns` on `fleet`'s Redis; `master` is the session master key (the jar seal
    /// is derived from it).
    pub fn new(fleet: Arc<Fleet>, ns: &Namespace<'_>, master: &[u8; 32]) -> Self {
        let global = fleet.key_prefix().to_owned();
        let upstream_prefix = format!("{global}s:{}:", ns.upstream);
        RedisStore {
            redis: fleet.redis().clone(),
            prefix: format!("{upstream_prefix}p:{}:", ns.profile),
            upstream_prefix,
            global,
            fleet,
            lease_ttl: ns.lease_ttl,
            remember: (ns.idle_ttl + ns.lease_ttl) * 2,
            max_inflight: ns.max_inflight,
            scripts: Scripts::new(),
            sealer: Arc::new(Sealer::new(master)),
            holdings: Holdings::default(),
            login_tokens: Mutex::new(HashMap::new()),
            trial_tokens: Mutex::new(HashMap::new()),
            recent: Arc::new(Mutex::new(HashMap::new())),
            latest: Arc::new(Mutex::new(HashMap::new())),
            repaired: Mutex::new((false, Vec::new())),
            repairing: tokio::sync::Mutex::new(()),
            seat_cap: ns.seat_cap,
            grant_cap: ns.grant_cap,
            epoch: Mutex::new(String::new()),
            queued_here: Arc::new(AtomicU32::new(0)),
            task: Mutex::new(None),
        }
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    fn record_key(&self, slot_text: &str) -> String {
        self.key(&format!("r:{slot_text}"))
    }

    fn seats_key(&self) -> String {
        format!("{}seats", self.upstream_prefix)
    }

    fn lease_ms(&self) -> u64 {
        millis(self.lease_ttl)
    }

    /// A seat lives as long as its record is seated (upkeep renews it every third of
    /// `lease_ttl`); its expiry only frees the seats of a fleet that is gone altogether.
    fn seat_ms(&self) -> u64 {
        3 * self.lease_ms()
    }

    fn tomb_ms(&self) -> u64 {
        millis(self.remember)
    }

    /// Decodes a record hash read for `slot_text`; a jar that does not open makes it lost.
    fn decode(&self, slot_text: &str, map: &HashMap<String, String>) -> Option<Stored> {
        match record_from(map, &self.sealer, &self.record_key(slot_text))? {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(prefix = %self.prefix, error = %e, "a session record cannot be opened; it is treated as lost");
                None
            }
        }
    }

    /// A record hash whose jar may not open (upkeep's abandoned records): the jar is dropped.
    fn decode_lenient(
        &self,
        slot_text: &str,
        map: &HashMap<String, String>,
    ) -> Option<SessionRecord> {
        match record_from(map, &self.sealer, &self.record_key(slot_text))? {
            Ok(s) => Some(s.record),
            Err(_) => plain_record(map),
        }
    }

    fn remember(&self, slot: &SlotKey, record: &SessionRecord) {
        let text = slot_text(slot);
        lock(&self.latest).insert(text.clone(), (record.id, record.jar_version));
        lock(&self.recent).insert(
            (text, record.id),
            Recent {
                slot: slot.clone(),
                record: record.clone(),
                touched: Instant::now(),
            },
        );
    }

    fn forget(&self, slot_text: &str, id: u64) {
        lock(&self.recent).remove(&(slot_text.to_owned(), id));
        let mut latest = lock(&self.latest);
        if latest.get(slot_text).is_some_and(|(i, _)| *i == id) {
            latest.remove(slot_text);
        }
    }

    /// Forgets what was used longer ago than a session can stay idle (upkeep).
    fn prune_memory(&self) {
        let now = Instant::now();
        let mut recent = lock(&self.recent);
        recent.retain(|_, r| now.duration_since(r.touched) < self.remember);
        let mut latest = lock(&self.latest);
        latest.retain(|s, (id, _)| recent.contains_key(&(s.clone(), *id)));
    }

    /// The jar this replica has for session `id` of slot `s`, if it is of version `jv`.
    fn cached_jar(&self, s: &str, id: u64, jv: u64) -> Option<Jar> {
        lock(&self.recent)
            .get(&(s.to_owned(), id))
            .filter(|r| r.record.jar_version == jv)
            .map(|r| r.record.jar.clone())
    }

    async fn read(&self, s: &str) -> Result<Option<SessionRecord>, StoreError> {
        let key = self.record_key(s);
        let prefix = self.prefix.clone();
        let script = &self.scripts.get;
        let (list, f, q): (Vec<String>, u32, u32) = self
            .redis
            .run("get", |mut c| async move {
                script.key(&key).arg(&prefix).invoke_async(&mut c).await
            })
            .await?;
        let map = pairs(list);
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
        r.queued = q;
        Ok(Some(r))
    }

    async fn read_stored(&self, s: &str) -> Result<Option<Stored>, StoreError> {
        let key = self.record_key(s);
        let prefix = self.prefix.clone();
        let script = &self.scripts.get;
        let (list, _, _): (Vec<String>, u32, u32) = self
            .redis
            .run("get", |mut c| async move {
                script.key(&key).arg(&prefix).invoke_async(&mut c).await
            })
            .await?;
        let map = pairs(list);
        if map.is_empty() {
            return Ok(None);
        }
        Ok(self.decode(s, &map))
    }

    async fn remove_text(&self, s: &str, id: u64) -> Result<Option<SessionRecord>, StoreError> {
        let (prefix, global) = (self.prefix.clone(), self.global.clone());
        let (tomb, lease) = (self.tomb_ms(), self.lease_ms());
        let script = &self.scripts.remove;
        let reply: Option<Vec<String>> = self
            .redis
            .run("remove", |mut c| async move {
                script
                    .arg(&prefix)
                    .arg(&global)
                    .arg(s)
                    .arg(id)
                    .arg(tomb)
                    .arg(lease)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        self.forget(s, id);
        Ok(reply.and_then(|r| self.decode_lenient(s, &pairs(r))))
    }

    fn releaser(&self) -> Releaser {
        Releaser {
            recent: self.recent.clone(),
            latest: self.latest.clone(),
            redis: self.redis.clone(),
            script: self.scripts.release.clone(),
            sealer: self.sealer.clone(),
            holdings: self.holdings.clone(),
            prefix: self.prefix.clone(),
            global: self.global.clone(),
            max: self.max_inflight,
            lease_ms: self.lease_ms(),
        }
    }

    /// The lease of a granted ticket: released by [`SessionStore::release`] or its drop.
    fn in_flight(&self, slot: &SlotKey, s: &str, id: u64, ticket: String) -> InFlight {
        let lost = self.holdings.granted(&ticket, s, id);
        let releaser = self.releaser();
        let rec = self.record_key(s);
        InFlight::new(
            slot.clone(),
            id,
            Box::new(move |how: Release| releaser.release(rec, id, ticket, how)),
        )
        .with_lost(lost)
    }

    /// Waits for the wake of a queued ticket (FIFO: the place is handed over in Redis), or
    /// gives up at `deadline` (taking the ticket off the queue).
    async fn wait_turn(
        &self,
        rec: &str,
        ticket: &str,
        wake: tokio::sync::oneshot::Receiver<Wake>,
        deadline: tokio::time::Instant,
    ) -> Result<(), LeaseRefused> {
        match tokio::time::timeout_at(deadline, wake).await {
            Ok(Ok(Wake::Granted)) => Ok(()),
            Ok(Ok(Wake::Gone)) => Err(LeaseRefused::Gone),
            // The fleet dropped the waiter (shutdown) or the wait ran out: off the queue.
            Ok(Err(_)) | Err(_) => {
                self.fleet.forget(ticket);
                self.holdings.drop_ticket(ticket);
                cancel(&self.releaser(), self.scripts.cancel.clone(), rec, ticket).await;
                Err(LeaseRefused::Busy)
            }
        }
    }

    /// The store came back empty (or another instance answers): learns the new epoch and
    /// registers again, within the caps, the sessions this replica logged in or used lately, so
    /// that they are counted (and used) before anybody logs in beside them. Those without room
    /// are left to the next upkeep, which logs them out.
    async fn repair_reset(&self) -> Result<(), StoreError> {
        let _one = self.repairing.lock().await;
        let key = format!("{}epoch", self.global);
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
        let remembered: Vec<((String, u64), Recent)> = lock(&self.recent).drain().collect();
        lock(&self.latest).clear();
        let mut found = Vec::new();
        for (_, r) in remembered {
            let cap = if r.record.concurrent {
                self.grant_cap
            } else {
                1
            };
            if r.record.state == SessionState::Active && r.record.seated && !r.record.jar.is_empty()
            {
                // Registered or not, the upkeep finishes it: a second restore finds it back.
                let _ = self
                    .restore(&r.slot, r.record.clone(), cap, self.seat_cap)
                    .await;
                found.push((r.slot, r.record));
            }
        }
        tracing::warn!(prefix = %self.prefix, sessions = found.len(), "the session store lost its state; registering the sessions this replica knows again");
        let mut repaired = lock(&self.repaired);
        repaired.0 = true;
        repaired.1.extend(found);
        Ok(())
    }

    /// Takes the lock at `key` for `lease_ttl` (renewed while held): its token, or `None` when
    /// somebody holds it.
    async fn take_lock(&self, op: &'static str, key: &str) -> Result<Option<String>, StoreError> {
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

    /// Loads every script into Redis, so that no request pays for a `NOSCRIPT` round trip (Redis
    /// forgets scripts when it restarts; they are then loaded again on first use).
    pub async fn load_scripts(&self) -> Result<(), StoreError> {
        for script in self.scripts.all() {
            self.redis
                .run("load_script", |mut c| async move {
                    script.load_async(&mut c).await.map(|_| ())
                })
                .await?;
        }
        Ok(())
    }

    /// One renewal of every holding, and the upkeep's seat renewal; never behind logouts.
    async fn renew(&self) {
        let held = self.holdings.snapshot();
        if held.is_empty() {
            return;
        }
        let (prefix, global) = (self.prefix.clone(), self.global.clone());
        let (max, lease) = (self.max_inflight, self.lease_ms());
        let script = &self.scripts.renew;
        let args = held.clone();
        let statuses: Result<Vec<String>, StoreError> = self
            .redis
            .run("renew", |mut c| async move {
                let mut inv = script.arg(&prefix);
                inv.arg(&global).arg(max).arg(lease);
                for (kind, slot, id, ticket) in &args {
                    inv.arg(kind.code()).arg(slot).arg(*id).arg(ticket);
                }
                inv.invoke_async(&mut c).await
            })
            .await;
        let Ok(statuses) = statuses else {
            return;
        };
        for ((kind, _, id, ticket), status) in held.iter().zip(statuses) {
            match status.as_str() {
                "restored" => {
                    tracing::warn!(prefix = %self.prefix, session = id, kind = kind.code(), "a lease had expired in the store (an outage?); it was restored");
                }
                "lost" => {
                    self.holdings.lose(ticket);
                    match kind {
                        Kind::InFlight => {
                            tracing::error!(prefix = %self.prefix, session = id, "an in-flight place expired in the store and was taken meanwhile: the request stops")
                        }
                        Kind::Queued => self.fleet.wake_local(ticket, Wake::Gone),
                        Kind::Login | Kind::Trial => {
                            tracing::warn!(prefix = %self.prefix, session = id, kind = kind.code(), "a login lock expired in the store and was taken meanwhile")
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn take_seat(&self, cap: u32, holder: u64) -> Result<bool, StoreError> {
        let seats = self.seats_key();
        let ttl = self.seat_ms();
        let script = &self.scripts.take_seat;
        let got: i64 = self
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

    async fn release_seat(&self, holder: u64) -> Result<(), StoreError> {
        let seats = self.seats_key();
        self.redis
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

    async fn seats_in_use(&self) -> Result<u32, StoreError> {
        let seats = self.seats_key();
        let script = &self.scripts.seats;
        self.redis
            .run("seats", |mut c| async move {
                script.key(&seats).invoke_async(&mut c).await
            })
            .await
    }

    async fn get(&self, slot: &SlotKey) -> Result<Option<SessionRecord>, StoreError> {
        self.read(&slot_text(slot)).await
    }

    async fn create(
        &self,
        slot: &SlotKey,
        record: SessionRecord,
        grant_cap: u32,
        _max_in_flight: u32,
    ) -> Result<Created, StoreError> {
        let s = slot_text(slot);
        let rec = self.record_key(&s);
        let (slots, grant) = (self.key("slots"), self.key(&format!("g:{}", slot.grant.0)));
        let prefix = self.prefix.clone();
        let flat: Vec<String> = fields(&record, &self.sealer, &rec)
            .into_iter()
            .filter(|(k, _)| *k != "created" && *k != "used")
            .flat_map(|(k, v)| [k.to_owned(), v])
            .collect();
        let script = &self.scripts.create;
        let text = s.clone();
        let reply: Vec<i64> = self
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
                self.remember(slot, &record);
                Ok(Created::New(record))
            }
            [2, earliest] => Ok(Created::GrantFull {
                earliest_idle_ms: u64::try_from(*earliest).unwrap_or(0),
            }),
            _ => match self.get(slot).await? {
                Some(r) => Ok(Created::Existing(r)),
                // Removed again in between: report it as taken; the caller looks again.
                None => Ok(Created::Existing(record)),
            },
        }
    }

    async fn update(
        &self,
        slot: &SlotKey,
        id: u64,
        f: super::store::Edit,
    ) -> Result<Option<SessionRecord>, StoreError> {
        // Compare and set: only the fields this edit changed are written, and only if they still
        // hold what this edit read, so that concurrent edits (a use time from another replica, a
        // second observer of the same expiry) are neither overwritten nor applied twice.
        let s = slot_text(slot);
        let rec = self.record_key(&s);
        for _ in 0..8 {
            let Some(stored) = self.read_stored(&s).await?.filter(|r| r.record.id == id) else {
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
                    self.sealer.seal(&rec, &after.jar.to_text()),
                ));
                // The script gives a new jar the next version.
                after.jar_version = before.jar_version + 1;
            }
            if changed.is_empty() {
                return Ok(Some(after));
            }
            let key = rec.clone();
            let script = &self.scripts.update;
            let ok: i64 = self
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
                    self.remember(slot, &after);
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

    async fn remove(&self, slot: &SlotKey, id: u64) -> Result<Option<SessionRecord>, StoreError> {
        self.remove_text(&slot_text(slot), id).await
    }

    async fn remove_unused(&self, slot: &SlotKey, id: u64) -> Result<Removal, StoreError> {
        let s = slot_text(slot);
        let (prefix, global) = (self.prefix.clone(), self.global.clone());
        let (tomb, lease) = (self.tomb_ms(), self.lease_ms());
        let script = &self.scripts.remove_unused;
        let text = s.clone();
        let reply: Vec<String> = self
            .redis
            .run("remove", |mut c| async move {
                script
                    .arg(&prefix)
                    .arg(&global)
                    .arg(&text)
                    .arg(id)
                    .arg(tomb)
                    .arg(lease)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let mut it = reply.into_iter();
        Ok(match it.next().as_deref() {
            Some("busy") => Removal::Busy,
            Some("removed") => {
                self.forget(&s, id);
                self.decode_lenient(&s, &pairs(it.collect()))
                    .map_or(Removal::Gone, Removal::Removed)
            }
            _ => Removal::Gone,
        })
    }

    async fn list(&self) -> Result<Vec<(SlotKey, SessionRecord)>, StoreError> {
        let prefix = self.prefix.clone();
        let script = &self.scripts.list;
        let rows: Vec<(String, Vec<String>, u32, u32)> = self
            .redis
            .run("list", |mut c| async move {
                script.arg(&prefix).invoke_async(&mut c).await
            })
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(s, fields, f, q)| {
                let slot = slot_from_text(&s)?;
                let mut r = self.decode_lenient(&s, &pairs(fields))?;
                r.in_flight = f;
                r.queued = q;
                Some((slot, r))
            })
            .collect())
    }

    async fn take_evictable(
        &self,
        _now: u64,
        min_idle_ms: u64,
        op_ttl_ms: u64,
    ) -> Result<Option<(SlotKey, SessionRecord)>, StoreError> {
        let (prefix, global) = (self.prefix.clone(), self.global.clone());
        let (tomb, lease) = (self.tomb_ms(), self.lease_ms());
        let script = &self.scripts.take_evictable;
        let reply: Option<(String, Vec<String>)> = self
            .redis
            .run("take_evictable", |mut c| async move {
                script
                    .arg(&prefix)
                    .arg(&global)
                    .arg(min_idle_ms)
                    .arg(op_ttl_ms)
                    .arg(tomb)
                    .arg(lease)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(reply.and_then(|(s, r)| {
            let record = self.decode_lenient(&s, &pairs(r))?;
            self.forget(&s, record.id);
            Some((slot_from_text(&s)?, record))
        }))
    }

    async fn take_expired(
        &self,
        _now: u64,
        idle_ms: u64,
        max_age_ms: u64,
    ) -> Result<Vec<(SlotKey, SessionRecord, Expiry)>, StoreError> {
        let (prefix, global) = (self.prefix.clone(), self.global.clone());
        let (tomb, lease) = (self.tomb_ms(), self.lease_ms());
        let script = &self.scripts.take_expired;
        let reply: Vec<(String, String, Vec<String>)> = self
            .redis
            .run("take_expired", |mut c| async move {
                script
                    .arg(&prefix)
                    .arg(&global)
                    .arg(idle_ms)
                    .arg(max_age_ms)
                    .arg(tomb)
                    .arg(lease)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(reply
            .into_iter()
            .filter_map(|(s, why, r)| {
                let record = self.decode_lenient(&s, &pairs(r))?;
                self.forget(&s, record.id);
                let why = match why.as_str() {
                    "token" => Expiry::TokenExpired,
                    "age" => Expiry::Age,
                    _ => Expiry::Idle,
                };
                Some((slot_from_text(&s)?, record, why))
            })
            .collect())
    }

    async fn lease(
        &self,
        slot: &SlotKey,
        template: SessionRecord,
        grant_cap: u32,
        max: u32,
        max_queue: u32,
        wait: Duration,
    ) -> Result<Leased, LeaseRefused> {
        let s = slot_text(slot);
        let rec = self.record_key(&s);
        let (slots, grant) = (self.key("slots"), self.key(&format!("g:{}", slot.grant.0)));
        let (prefix, global) = (self.prefix.clone(), self.global.clone());
        let ticket = self.fleet.ticket();
        let lease = self.lease_ms();
        let flat: Vec<String> = fields(&template, &self.sealer, &rec)
            .into_iter()
            .filter(|(k, _)| *k != "created" && *k != "used")
            .flat_map(|(k, v)| [k.to_owned(), v])
            .collect();
        // Registered before the ticket can be queued, so that no wake is missed; the guard
        // takes the ticket off the queue if this request goes away while it waits.
        let wake = self.fleet.expect(&ticket);
        let mut pending = Pending {
            store: self,
            ticket: ticket.clone(),
            rec: rec.clone(),
            armed: true,
            here: None,
        };
        let epoch_key = format!("{}epoch", self.global);
        let mut reply: Vec<String> = Vec::new();
        let fresh = format!("{:032x}", rand::random::<u128>());
        let (cached_id, cached_jv) = lock(&self.latest)
            .get(&s)
            .map_or((String::new(), String::new()), |(id, jv)| {
                (id.to_string(), jv.to_string())
            });
        let mut with_fields = false;
        for _ in 0..3 {
            let known = lock(&self.epoch).clone();
            let script = &self.scripts.lease;
            let (text, t2) = (s.clone(), ticket.clone());
            let (rec, slots, grant, epoch_key) = (&rec, &slots, &grant, &epoch_key);
            let (prefix, global, fresh) = (&prefix, &global, &fresh);
            let (cached_id, cached_jv) = (&cached_id, &cached_jv);
            let flat: &[String] = if with_fields { &flat } else { &[] };
            reply = self
                .redis
                .run("lease", |mut c| async move {
                    let mut inv = script.key(rec);
                    inv.key(slots)
                        .key(grant)
                        .key(epoch_key)
                        .arg(prefix)
                        .arg(global)
                        .arg(&text)
                        .arg(grant_cap)
                        .arg(max)
                        .arg(max_queue)
                        .arg(&t2)
                        .arg(lease)
                        .arg(&known)
                        .arg(fresh)
                        .arg(cached_id)
                        .arg(cached_jv);
                    for f in flat {
                        inv.arg(f);
                    }
                    inv.invoke_async(&mut c).await
                })
                .await
                .map_err(|_| LeaseRefused::Unavailable)?;
            match reply.first().map(String::as_str) {
                Some("create") => with_fields = true,
                // The store lost its state since this replica last looked: before anything is
                // created in the empty store, what this replica knows is registered again.
                Some("reset") => self
                    .repair_reset()
                    .await
                    .map_err(|_| LeaseRefused::Unavailable)?,
                _ => break,
            }
        }
        let mut it = reply.into_iter();
        // From here the script's answer is known: only a queued ticket needs undoing.
        let code = it.next().unwrap_or_default();
        let created = it.next().as_deref() == Some("1");
        if code == "1" || code == "0" {
            if let Some(epoch) = it.next() {
                let mut known = lock(&self.epoch);
                if known.is_empty() {
                    *known = epoch;
                }
            }
        }
        match code.as_str() {
            "1" => {
                pending.disarm();
                let how = it.next().unwrap_or_default();
                let mut map = pairs(it.collect());
                if how == "cached" {
                    // The jar did not change since this replica last had it.
                    let id = map
                        .get("id")
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                    let jv = map
                        .get("jv")
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                    let jar = self.cached_jar(&s, id, jv);
                    match jar {
                        Some(jar) => {
                            let mut record = plain_record(&map).ok_or(LeaseRefused::Gone)?;
                            record.jar = jar;
                            self.remember(slot, &record);
                            let in_flight = self.in_flight(slot, &s, record.id, ticket);
                            return Ok(Leased {
                                record,
                                in_flight,
                                created,
                            });
                        }
                        // Forgotten meanwhile: read it whole.
                        None => match self.read_stored(&s).await {
                            Ok(Some(stored)) if stored.record.id == id => {
                                map = HashMap::new();
                                map.insert("id".to_owned(), id.to_string());
                                let record = stored.record;
                                self.remember(slot, &record);
                                let in_flight = self.in_flight(slot, &s, record.id, ticket);
                                return Ok(Leased {
                                    record,
                                    in_flight,
                                    created,
                                });
                            }
                            _ => {
                                drop(self.in_flight(slot, &s, id, ticket));
                                return Err(LeaseRefused::Gone);
                            }
                        },
                    }
                }
                let Some(stored) = self.decode(&s, &map) else {
                    // Lost (its jar does not open): the place is given back and the record
                    // taken away, never forwarded.
                    if let Some(id) = map.get("id").and_then(|v| v.parse::<u64>().ok()) {
                        drop(self.in_flight(slot, &s, id, ticket));
                        let _ = self.remove_text(&s, id).await;
                    }
                    return Err(LeaseRefused::Gone);
                };
                let record = stored.record;
                self.remember(slot, &record);
                let in_flight = self.in_flight(slot, &s, record.id, ticket);
                Ok(Leased {
                    record,
                    in_flight,
                    created,
                })
            }
            "0" => {
                let id: u64 = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or(LeaseRefused::Unavailable)?;
                pending.queued(id);
                let deadline = tokio::time::Instant::now() + wait;
                if let Err(e) = self.wait_turn(&pending.rec, &ticket, wake, deadline).await {
                    // Already off the queue (cancelled, or the session is gone).
                    pending.armed = false;
                    return Err(e);
                }
                pending.disarm();
                let in_flight = self.in_flight(slot, &s, id, ticket);
                match self.read(&s).await {
                    Ok(Some(record)) if record.id == id => {
                        self.remember(slot, &record);
                        Ok(Leased {
                            record,
                            in_flight,
                            created,
                        })
                    }
                    Ok(_) => Err(LeaseRefused::Gone),
                    Err(_) => Err(LeaseRefused::Unavailable),
                }
            }
            "-2" => {
                pending.disarm();
                Err(LeaseRefused::Busy)
            }
            "2" => {
                pending.disarm();
                Err(LeaseRefused::GrantFull {
                    earliest_idle_ms: it.next().and_then(|v| v.parse().ok()).unwrap_or(0),
                })
            }
            _ => Err(LeaseRefused::Unavailable),
        }
    }

    async fn release(&self, lease: InFlight, how: Release) {
        lease.finish(how);
    }

    async fn queue_depth(&self) -> Result<u32, StoreError> {
        Ok(self.queued_here.load(Ordering::Relaxed))
    }

    async fn lock_login(&self, slot: &SlotKey, id: u64) -> Result<bool, StoreError> {
        let key = self.key(&format!("l:{id}"));
        let Some(token) = self.take_lock("lock_login", &key).await? else {
            return Ok(false);
        };
        self.holdings
            .hold(&token, Kind::Login, &slot_text(slot), id);
        lock(&self.login_tokens).insert(id, token);
        Ok(true)
    }

    async fn unlock_login(&self, _slot: &SlotKey, id: u64) -> Result<(), StoreError> {
        let Some(token) = lock(&self.login_tokens).remove(&id) else {
            return Ok(());
        };
        self.holdings.drop_ticket(&token);
        let key = self.key(&format!("l:{id}"));
        let script = &self.scripts.unlock;
        self.redis
            .run("unlock_login", |mut c| async move {
                script
                    .key(&key)
                    .arg(&token)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await
            .map(|_| ())
    }

    async fn maintain(&self) -> Result<Maintenance, StoreError> {
        self.prune_memory();
        let remembered: Vec<(String, u64)> = lock(&self.recent).keys().cloned().collect();
        let known = lock(&self.epoch).clone();
        let fresh = format!("{:032x}", rand::random::<u128>());
        let (seats, epoch_key) = (self.seats_key(), format!("{}epoch", self.global));
        let (prefix, global) = (self.prefix.clone(), self.global.clone());
        let (seat_ttl, tomb, lease) = (self.seat_ms(), self.tomb_ms(), self.lease_ms());
        let script = &self.scripts.maintain;
        let (abandoned, epoch, reset, lost): (Vec<Vec<String>>, String, String, Vec<String>) = self
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
        *lock(&self.epoch) = epoch;
        let (repaired_reset, repaired) = std::mem::take(&mut *lock(&self.repaired));
        let mut out = Maintenance {
            reset: reset == "1" || repaired_reset,
            lost: repaired,
            ..Maintenance::default()
        };
        for fields in abandoned {
            if let Some(r) = self.decode_lenient("", &pairs(fields)) {
                out.abandoned.push(r);
            }
        }
        let mut recent = lock(&self.recent);
        for pair in lost.chunks(2) {
            let [s, id] = pair else { continue };
            let Ok(id) = id.parse::<u64>() else { continue };
            if let Some(r) = recent.remove(&(s.clone(), id)) {
                out.lost.push((r.slot, r.record));
            }
        }
        Ok(out)
    }

    async fn restore(
        &self,
        slot: &SlotKey,
        record: SessionRecord,
        grant_cap: u32,
        seat_cap: u32,
    ) -> Result<Restored, StoreError> {
        let s = slot_text(slot);
        let rec = self.record_key(&s);
        let (slots, grant) = (self.key("slots"), self.key(&format!("g:{}", slot.grant.0)));
        let seats = self.seats_key();
        let mut restored = record.clone();
        restored.state = SessionState::Active;
        restored.seated = true;
        let all = fields(&restored, &self.sealer, &rec);
        let sealed = all
            .iter()
            .find(|(k, _)| *k == "jar")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let flat: Vec<String> = all
            .into_iter()
            .filter(|(k, _)| *k != "used")
            .flat_map(|(k, v)| [k.to_owned(), v])
            .collect();
        let (id, seat_ttl, prefix) = (record.id, self.seat_ms(), self.prefix.clone());
        let version = record.jar_version;
        let script = &self.scripts.restore;
        let text = s.clone();
        let answer: String = self
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
                    .arg(&sealed);
                for f in &flat {
                    inv.arg(f);
                }
                inv.invoke_async(&mut c).await
            })
            .await?;
        Ok(match answer.as_str() {
            "registered" | "same" => {
                self.remember(slot, &restored);
                Restored::Registered
            }
            _ => Restored::NoRoom,
        })
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        let (prefix, seats) = (self.prefix.clone(), self.seats_key());
        let script = &self.scripts.stats;
        let (n, l, a, s): (usize, usize, usize, u32) = self
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

    fn start(self: Arc<Self>) {
        let mut task = lock(&self.task);
        if task.is_some() {
            return;
        }
        let weak = Arc::downgrade(&self);
        let every = (self.lease_ttl / 3).max(Duration::from_millis(100));
        *task = Some(tokio::spawn(async move {
            if let Some(me) = weak.upgrade() {
                let _ = me.load_scripts().await;
            }
            loop {
                tokio::time::sleep(every).await;
                match weak.upgrade() {
                    Some(me) => me.renew().await,
                    None => break,
                }
            }
        }));
    }

    async fn credential_cooldown(&self, fp: &str) -> Result<Option<u64>, StoreError> {
        let key = format!("{}c:{fp}:cooldown", self.upstream_prefix);
        let left: i64 = self
            .redis
            .run("credentials", |mut c| async move {
                redis::cmd("PTTL").arg(&key).query_async(&mut c).await
            })
            .await?;
        // The cooldown's end, on this replica's clock: the key's remaining time is Redis's.
        Ok((left > 0).then(|| crate::clock::unix_ms() + u64::try_from(left).unwrap_or(0)))
    }

    async fn open_credential_cooldown(&self, fp: &str, until_ms: u64) -> Result<(), StoreError> {
        let cool = format!("{}c:{fp}:cooldown", self.upstream_prefix);
        let proven = format!("{}c:{fp}:proven", self.upstream_prefix);
        let ttl = until_ms.saturating_sub(crate::clock::unix_ms()).max(1);
        self.redis
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

    async fn credentials_proven(&self, fp: &str) -> Result<bool, StoreError> {
        let key = format!("{}c:{fp}:proven", self.upstream_prefix);
        self.redis
            .run("credentials", |mut c| async move {
                redis::cmd("EXISTS").arg(&key).query_async(&mut c).await
            })
            .await
    }

    async fn mark_credentials_proven(&self, fp: &str) -> Result<(), StoreError> {
        let key = format!("{}c:{fp}:proven", self.upstream_prefix);
        self.redis
            .run("credentials", |mut c| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
    }

    /// The trial lock lives `lease_ttl` and is renewed while held, so that a replica that dies
    /// mid-login holds up the others' first login for at most `lease_ttl`.
    async fn lock_credential_trial(&self, fp: &str, _ttl: Duration) -> Result<bool, StoreError> {
        let key = format!("{}c:{fp}:trial", self.upstream_prefix);
        let Some(token) = self.take_lock("credentials", &key).await? else {
            return Ok(false);
        };
        self.holdings.hold(&token, Kind::Trial, &key, 0);
        lock(&self.trial_tokens).insert(fp.to_owned(), token);
        Ok(true)
    }

    async fn unlock_credential_trial(&self, fp: &str) -> Result<(), StoreError> {
        let Some(token) = lock(&self.trial_tokens).remove(fp) else {
            return Ok(());
        };
        self.holdings.drop_ticket(&token);
        let key = format!("{}c:{fp}:trial", self.upstream_prefix);
        let script = &self.scripts.unlock;
        self.redis
            .run("credentials", |mut c| async move {
                script
                    .key(&key)
                    .arg(&token)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await
            .map(|_| ())
    }
}

/// What a lease's release needs, detached from the store (a lease may be dropped anywhere).
#[derive(Clone)]
struct Releaser {
    /// The store's memory of used sessions, which follows the jar as it is written back.
    recent: Arc<Mutex<HashMap<(String, u64), Recent>>>,
    latest: Arc<Mutex<HashMap<String, (u64, u64)>>>,
    redis: RedisHandle,
    script: redis::Script,
    sealer: Arc<Sealer>,
    holdings: Holdings,
    prefix: String,
    global: String,
    max: u32,
    lease_ms: u64,
}

impl Releaser {
    /// Gives the place back on its own task (a drop cannot wait), with the use time, a 202 and
    /// the jar when it changed.
    fn release(self, rec: String, id: u64, ticket: String, how: Release) {
        self.holdings.drop_ticket(&ticket);
        let jar = how
            .jar
            .as_ref()
            .map(|j| self.sealer.seal(&rec, &j.to_text()));
        let key = (
            rec.strip_prefix(&format!("{}r:", self.prefix))
                .unwrap_or_default()
                .to_owned(),
            id,
        );
        let plain = how.jar.clone();
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        handle.spawn(async move {
            let Releaser {
                recent,
                latest,
                redis,
                script,
                prefix,
                global,
                max,
                lease_ms,
                ..
            } = self;
            let version = redis
                .run("release", |mut c| async move {
                    script
                        .key(&rec)
                        .arg(&prefix)
                        .arg(&global)
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
                if let Some(r) = lock(&recent).get_mut(&key) {
                    if v > r.record.jar_version {
                        r.record.jar = jar;
                        r.record.jar_version = v;
                        if let Some(l) = lock(&latest).get_mut(&key.0).filter(|l| l.0 == id) {
                            l.1 = v;
                        }
                    }
                    r.touched = Instant::now();
                }
            }
        });
    }
}

/// Takes a ticket off its session's queue (and hands on a place granted to it meanwhile).
async fn cancel(r: &Releaser, script: redis::Script, rec: &str, ticket: &str) {
    let _ = r
        .redis
        .run("cancel", |mut c| async move {
            script
                .key(rec)
                .arg(&r.prefix)
                .arg(&r.global)
                .arg(ticket)
                .arg(r.max)
                .arg(r.lease_ms)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await;
}

/// A lease request in progress. Dropped before it got its place (the client went away while it
/// waited, or even before the lease script's answer arrived), it takes its ticket off the queue
/// and gives back a place granted to it, on its own task; it keeps this replica's count of
/// waiting requests.
struct Pending<'a> {
    store: &'a RedisStore,
    ticket: String,
    rec: String,
    armed: bool,
    here: Option<Arc<AtomicU32>>,
}

impl Pending<'_> {
    fn queued(&mut self, id: u64) {
        self.store.holdings.hold(&self.ticket, Kind::Queued, "", id);
        let count = self.store.queued_here.clone();
        count.fetch_add(1, Ordering::Relaxed);
        self.here = Some(count);
    }

    /// The ticket became a lease (or never existed): nothing to undo.
    fn disarm(&mut self) {
        self.store.fleet.forget(&self.ticket);
        self.armed = false;
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(count) = self.here.take() {
            count.fetch_sub(1, Ordering::Relaxed);
        }
        if !self.armed {
            return;
        }
        self.store.fleet.forget(&self.ticket);
        self.store.holdings.drop_ticket(&self.ticket);
        let releaser = self.store.releaser();
        let script = self.store.scripts.cancel.clone();
        let (rec, ticket) = (self.rec.clone(), self.ticket.clone());
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { cancel(&releaser, script, &rec, &ticket).await });
        }
    }
}
