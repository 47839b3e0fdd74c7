//! The session table in Redis, shared by every replica (the `[store] kind = "redis"` setting).
//!
//! Every decision is one Lua script, so it is atomic on the Redis server: taking a seat under
//! the cap, creating a record under the per-grant cap, granting an in-flight place, taking an
//! evictable or expired session. Leases (in-flight places, queue tickets, login locks) carry an
//! expiry of `lease_ttl` and are renewed by the replica holding them, so a crashed replica's
//! leases and locks come back by themselves; its unfinished logins are cleaned up by the other
//! replicas' upkeep.
//!
//! Layout, under `{key_prefix}s:{upstream}:`:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `slots` | set | every slot key |
//! | `r:{slot}` | hash | the record: id, concurrent, state, jar, seated, times |
//! | `g:{grant}` | set | the slot keys of one grant (the per-grant cap) |
//! | `seats` | sorted set | seat holders (session ids) by expiry |
//! | `f:{id}` | sorted set | in-flight lease tokens by expiry |
//! | `q:{id}` | sorted set | queue tickets by expiry |
//! | `l:{id}` | string | the login lock's token (with a TTL) |
//! | `c:{fp}:cooldown` | string | credential set `fp` refused until (Unix ms, with a TTL) |
//! | `c:{fp}:proven` | string | some replica logged in with `fp` since its last refusal |
//! | `c:{fp}:trial` | string | the fleet's single unproven login attempt (with a TTL) |
//!
//! Scripts touch keys derived from the prefix, so this store needs standalone Redis (or
//! Sentinel), not Redis Cluster.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use redis::aio::ConnectionManager;
use redis::Script;
use tokio::sync::OnceCell;

use super::grant::GrantKey;
use super::jar::Jar;
use super::pool::now_ms;
use super::store::{
    millis, Created, Expiry, InFlight, LeaseRefused, Removal, SessionRecord, SessionState,
    SessionStore, SlotKey, StoreError,
};
use crate::metrics::Metrics;

/// A lazily connected, automatically reconnecting Redis connection shared by every store of
/// the process (and by the shared introspection cache).
#[derive(Clone)]
pub struct RedisHandle {
    client: redis::Client,
    conn: Arc<OnceCell<ConnectionManager>>,
    timeout: Duration,
    metrics: Metrics,
}

impl std::fmt::Debug for RedisHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisHandle")
    }
}

impl RedisHandle {
    pub fn new(url: &str, timeout: Duration, metrics: Metrics) -> Result<Self, StoreError> {
        let client =
            redis::Client::open(url).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(RedisHandle {
            client,
            conn: Arc::new(OnceCell::new()),
            timeout,
            metrics,
        })
    }

    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        let client = self.client.clone();
        let timeout = self.timeout;
        self.conn
            .get_or_try_init(|| async move {
                // Reconnect quickly once Redis is back: short, capped back-off.
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout)
                    .set_factor(50)
                    .set_max_delay(500)
                    .set_number_of_retries(6);
                tokio::time::timeout(
                    timeout * 4,
                    client.get_connection_manager_with_config(config),
                )
                .await
                .map_err(|_| StoreError::Unavailable("connect timed out".to_owned()))?
                .map_err(|e| StoreError::Unavailable(e.to_string()))
            })
            .await
            .cloned()
    }

    /// Runs one store operation with the timeout, counting failures by `op`.
    pub async fn run<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let result = async {
            let conn = self.conn().await?;
            match tokio::time::timeout(self.timeout, f(conn)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
                Err(_) => Err(StoreError::Unavailable(format!("{op} timed out"))),
            }
        }
        .await;
        if let Err(e) = &result {
            self.metrics.store_error(op);
            tracing::warn!(op, error = %e, "session store operation failed");
        }
        result
    }
}

/// Positive introspection answers shared by every replica (`share_introspection = true`).
pub struct SharedIntrospection {
    redis: RedisHandle,
    prefix: String,
}

impl SharedIntrospection {
    pub fn new(redis: RedisHandle, key_prefix: &str) -> Self {
        SharedIntrospection {
            redis,
            prefix: key_prefix.to_owned(),
        }
    }
}

#[async_trait]
impl crate::auth::introspect::SharedAnswers for SharedIntrospection {
    async fn get(&self, key: &str) -> Option<String> {
        let key = format!("{}{key}", self.prefix);
        self.redis
            .run("introspection_get", |mut c| async move {
                redis::cmd("GET").arg(&key).query_async(&mut c).await
            })
            .await
            .ok()
            .flatten()
    }

    async fn put(&self, key: &str, members: String, ttl: Duration) {
        let key = format!("{}{key}", self.prefix);
        let ms = millis(ttl).max(1);
        let _ = self
            .redis
            .run("introspection_put", |mut c| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&members)
                    .arg("PX")
                    .arg(ms)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await;
    }
}

const TAKE_SEAT: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then return 1 end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
  return 1
end
return 0
";

const CREATE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return {1} end
if redis.call('SCARD', KEYS[3]) >= tonumber(ARGV[2]) then
  local earliest = -1
  for _, s in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    local u = redis.call('HGET', ARGV[3] .. 'r:' .. s, 'used')
    if u and (earliest < 0 or tonumber(u) < earliest) then earliest = tonumber(u) end
  end
  return {2, earliest}
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
return {0}
";

/// `ARGV`: id, then (field, expected, new) triples. 0: gone; -1: a field changed meanwhile.
const UPDATE: &str = r"
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 3 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i]) or ''
  if cur ~= ARGV[i + 1] then return -1 end
end
for i = 2, #ARGV, 3 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2]) end
return 1
";

const REMOVE: &str = r"
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return false end
local r = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1], ARGV[3] .. 'f:' .. ARGV[1], ARGV[3] .. 'q:' .. ARGV[1])
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('SREM', KEYS[3], ARGV[2])
return r
";

/// Removes the record unless a request holds or waits for it: `{"gone"}`, `{"busy"}` or
/// `{"removed", field, value, ...}`.
const REMOVE_UNUSED: &str = r"
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return {'gone'} end
local P, now = ARGV[3], ARGV[4]
if redis.call('ZCOUNT', P .. 'f:' .. ARGV[1], now, '+inf') + redis.call('ZCOUNT', P .. 'q:' .. ARGV[1], now, '+inf') > 0 then
  return {'busy'}
end
local r = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1], P .. 'f:' .. ARGV[1], P .. 'q:' .. ARGV[1])
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('SREM', KEYS[3], ARGV[2])
table.insert(r, 1, 'removed')
return r
";

/// Removes the record of `slot` (in a loop body; `P` is the prefix).
const REMOVE_FN: &str = r"
local function take(P, slot)
  local key = P .. 'r:' .. slot
  local r = redis.call('HGETALL', key)
  local id = redis.call('HGET', key, 'id')
  local grant = string.match(slot, '^(.*)|')
  redis.call('DEL', key, P .. 'f:' .. id, P .. 'q:' .. id)
  redis.call('SREM', P .. 'slots', slot)
  if grant then redis.call('SREM', P .. 'g:' .. grant, slot) end
  return r
end
local function users(P, id, now)
  return redis.call('ZCOUNT', P .. 'f:' .. id, now, '+inf') + redis.call('ZCOUNT', P .. 'q:' .. id, now, '+inf')
end
";

const TAKE_EVICTABLE: &str = r"
local P, now, min_idle, op_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local best, best_used = nil, nil
for _, slot in ipairs(redis.call('SMEMBERS', P .. 'slots')) do
  local f = redis.call('HMGET', P .. 'r:' .. slot, 'id', 'state', 'used', 'op', 'seated')
  -- Only a logged-in session frees a seat when it goes.
  if f[1] and f[2] == 'a' and f[5] == '1' then
    local used = tonumber(f[3]) or 0
    local op = tonumber(f[4])
    if users(P, f[1], now) == 0 and now - used >= min_idle and (op == nil or now - op >= op_ttl) then
      if best_used == nil or used < best_used then best, best_used = slot, used end
    end
  end
end
if best == nil then return false end
return {best, take(P, best)}
";

const TAKE_EXPIRED: &str = r"
local P, now, idle, age = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
for _, slot in ipairs(redis.call('SMEMBERS', P .. 'slots')) do
  local f = redis.call('HMGET', P .. 'r:' .. slot, 'id', 'state', 'used', 'created', 'retire')
  if f[1] and f[2] ~= 'l' and users(P, f[1], now) == 0 then
    local why = nil
    local retire = tonumber(f[5])
    if retire and now >= retire then why = 'token'
    elseif now - (tonumber(f[3]) or 0) >= idle then why = 'idle'
    elseif now - (tonumber(f[4]) or 0) >= age then why = 'age' end
    if why then table.insert(out, {slot, why, take(P, slot)}) end
  end
end
return out
";

/// Renews the seats of seated records, and takes the records of logins whose lock is gone (a
/// crashed replica's).
const MAINTAIN: &str = r"
local P, now, seat_until = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local out = {}
for _, slot in ipairs(redis.call('SMEMBERS', P .. 'slots')) do
  local f = redis.call('HMGET', P .. 'r:' .. slot, 'id', 'state', 'seated')
  if f[1] == false then
    redis.call('SREM', P .. 'slots', slot)
  elseif f[2] == 'l' and redis.call('EXISTS', P .. 'l:' .. f[1]) == 0 then
    table.insert(out, {slot, take(P, slot)})
  elseif f[3] == '1' then
    redis.call('ZADD', P .. 'seats', seat_until, f[1])
  end
end
return out
";

const ACQUIRE: &str = r"
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return -1 end
local now = ARGV[2]
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZCARD', KEYS[2]) < tonumber(ARGV[3]) then
  redis.call('ZREM', KEYS[3], ARGV[5])
  redis.call('ZADD', KEYS[2], ARGV[6], ARGV[5])
  return 1
end
if redis.call('ZSCORE', KEYS[3], ARGV[5]) then
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[5])
  return 0
end
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[4]) then return -2 end
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[5])
return 0
";

const RELEASE: &str = r"
redis.call('ZREM', KEYS[2], ARGV[2])
if redis.call('HGET', KEYS[1], 'id') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'used', ARGV[3])
  if ARGV[4] == '1' then redis.call('HSET', KEYS[1], 'op', ARGV[3]) end
end
return 1
";

const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// The session store of one upstream, in Redis.
pub struct RedisStore {
    redis: RedisHandle,
    /// `{key_prefix}s:{upstream}:`
    prefix: String,
    lease_ttl: Duration,
    scripts: Scripts,
    /// This replica's login locks: token and renewal task by session id.
    login_locks: Mutex<HashMap<u64, (String, tokio::task::JoinHandle<()>)>>,
    /// Requests of this replica waiting for their session (the queue-depth gauge is per replica).
    queued_here: Arc<std::sync::atomic::AtomicU32>,
}

struct Scripts {
    take_seat: Script,
    create: Script,
    update: Script,
    remove: Script,
    remove_unused: Script,
    take_evictable: Script,
    take_expired: Script,
    maintain: Script,
    acquire: Script,
    release: Script,
    unlock: Script,
}

impl RedisStore {
    pub fn new(redis: RedisHandle, key_prefix: &str, upstream: &str, lease_ttl: Duration) -> Self {
        RedisStore {
            redis,
            prefix: format!("{key_prefix}s:{upstream}:"),
            lease_ttl,
            scripts: Scripts {
                take_seat: Script::new(TAKE_SEAT),
                create: Script::new(CREATE),
                update: Script::new(UPDATE),
                remove: Script::new(REMOVE),
                remove_unused: Script::new(REMOVE_UNUSED),
                take_evictable: Script::new(&format!("{REMOVE_FN}{TAKE_EVICTABLE}")),
                take_expired: Script::new(&format!("{REMOVE_FN}{TAKE_EXPIRED}")),
                maintain: Script::new(&format!("{REMOVE_FN}{MAINTAIN}")),
                acquire: Script::new(ACQUIRE),
                release: Script::new(RELEASE),
                unlock: Script::new(UNLOCK),
            },
            login_locks: Mutex::new(HashMap::new()),
            queued_here: Arc::new(std::sync::atomic::AtomicU32::new(0)),
        }
    }

    /// The keys a slot (`text` is its [`slot_text`]) lives under: the record, the slot index and
    /// the grant's set.
    fn slot_keys(&self, text: &str, slot: &SlotKey) -> (String, String, String) {
        (
            self.key(&format!("r:{text}")),
            self.key("slots"),
            self.key(&format!("g:{}", slot.grant.0)),
        )
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    fn lease_until(&self) -> u64 {
        now_ms() + millis(self.lease_ttl)
    }
}

/// `grant|nonce-hex` (or `grant|-` in single mode).
fn slot_text(slot: &SlotKey) -> String {
    let handle = slot
        .handle
        .map_or_else(|| "-".to_owned(), |n| URL_SAFE_NO_PAD.encode(n));
    format!("{}|{handle}", slot.grant.0)
}

fn slot_from_text(text: &str) -> Option<SlotKey> {
    let (grant, handle) = text.rsplit_once('|')?;
    let handle = match handle {
        "-" => None,
        h => {
            let raw = URL_SAFE_NO_PAD.decode(h).ok()?;
            Some(<[u8; 16]>::try_from(raw.as_slice()).ok()?)
        }
    };
    Some(SlotKey {
        grant: GrantKey(grant.to_owned()),
        handle,
    })
}

fn state_text(s: SessionState) -> &'static str {
    match s {
        SessionState::NeedsLogin => "n",
        SessionState::LoggingIn => "l",
        SessionState::Active => "a",
    }
}

/// The hash fields of a record (without the counts, which live in the lease sets).
fn fields(r: &SessionRecord) -> Vec<(&'static str, String)> {
    vec![
        ("id", r.id.to_string()),
        ("concurrent", u8::from(r.concurrent).to_string()),
        ("state", state_text(r.state).to_owned()),
        ("jar", r.jar.to_text()),
        ("seated", u8::from(r.seated).to_string()),
        ("created", r.created_ms.to_string()),
        ("used", r.last_used_ms.to_string()),
        (
            "op",
            r.last_op_ms.map(|v| v.to_string()).unwrap_or_default(),
        ),
        (
            "retire",
            r.retire_at_ms.map(|v| v.to_string()).unwrap_or_default(),
        ),
    ]
}

fn record_from(map: &HashMap<String, String>) -> Option<SessionRecord> {
    let num = |k: &str| map.get(k).and_then(|v| v.parse::<u64>().ok());
    Some(SessionRecord {
        id: num("id")?,
        concurrent: map.get("concurrent").is_some_and(|v| v == "1"),
        state: match map.get("state").map(String::as_str) {
            Some("a") => SessionState::Active,
            Some("l") => SessionState::LoggingIn,
            _ => SessionState::NeedsLogin,
        },
        jar: Jar::from_text(map.get("jar").map_or("", String::as_str)),
        seated: map.get("seated").is_some_and(|v| v == "1"),
        created_ms: num("created").unwrap_or(0),
        last_used_ms: num("used").unwrap_or(0),
        last_op_ms: num("op"),
        in_flight: 0,
        queued: 0,
        retire_at_ms: num("retire"),
    })
}

/// An `HGETALL` reply (flat name/value list) as a map.
fn pairs(list: Vec<String>) -> HashMap<String, String> {
    let mut it = list.into_iter();
    let mut m = HashMap::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        m.insert(k, v);
    }
    m
}

fn token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl RedisStore {
    async fn counts(&self, id: u64) -> Result<(u32, u32), StoreError> {
        let (f, q) = (self.key(&format!("f:{id}")), self.key(&format!("q:{id}")));
        let now = now_ms();
        self.redis
            .run("get", |mut c| async move {
                redis::pipe()
                    .cmd("ZCOUNT")
                    .arg(&f)
                    .arg(now)
                    .arg("+inf")
                    .cmd("ZCOUNT")
                    .arg(&q)
                    .arg(now)
                    .arg("+inf")
                    .query_async::<(u32, u32)>(&mut c)
                    .await
            })
            .await
    }

    async fn read(&self, slot_key: String) -> Result<Option<SessionRecord>, StoreError> {
        let key = self.key(&format!("r:{slot_key}"));
        let map: HashMap<String, String> = self
            .redis
            .run("get", |mut c| async move {
                redis::cmd("HGETALL").arg(&key).query_async(&mut c).await
            })
            .await?;
        let Some(mut r) = record_from(&map) else {
            return Ok(None);
        };
        let (f, q) = self.counts(r.id).await?;
        r.in_flight = f;
        r.queued = q;
        Ok(Some(r))
    }

    /// Keeps a lease (in-flight place, queue ticket or login lock) alive until the task ends.
    fn renew(&self, key: String, member: String, zset: bool) -> tokio::task::JoinHandle<()> {
        let redis = self.redis.clone();
        let ttl = self.lease_ttl;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                let until = now_ms() + millis(ttl);
                let (k, m) = (key.clone(), member.clone());
                let _ = redis
                    .run("renew", |mut c| async move {
                        if zset {
                            redis::cmd("ZADD")
                                .arg(&k)
                                .arg("XX")
                                .arg(until)
                                .arg(&m)
                                .query_async::<i64>(&mut c)
                                .await
                        } else {
                            redis::cmd("PEXPIRE")
                                .arg(&k)
                                .arg(millis(ttl))
                                .query_async::<i64>(&mut c)
                                .await
                        }
                    })
                    .await;
            }
        })
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn take_seat(&self, cap: u32, holder: u64) -> Result<bool, StoreError> {
        let seats = self.key("seats");
        // A seat lives as long as its record is seated (upkeep renews it); the expiry only
        // frees the seats of a fleet that is gone altogether.
        let until = now_ms() + 3 * millis(self.lease_ttl);
        let script = &self.scripts.take_seat;
        let got: i64 = self
            .redis
            .run("take_seat", |mut c| async move {
                script
                    .key(&seats)
                    .arg(now_ms())
                    .arg(cap)
                    .arg(holder)
                    .arg(until)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(got == 1)
    }

    async fn release_seat(&self, holder: u64) -> Result<(), StoreError> {
        let seats = self.key("seats");
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
        let seats = self.key("seats");
        let now = now_ms();
        self.redis
            .run("seats", |mut c| async move {
                redis::cmd("ZCOUNT")
                    .arg(&seats)
                    .arg(now)
                    .arg("+inf")
                    .query_async(&mut c)
                    .await
            })
            .await
    }

    async fn get(&self, slot: &SlotKey) -> Result<Option<SessionRecord>, StoreError> {
        self.read(slot_text(slot)).await
    }

    async fn create(
        &self,
        slot: &SlotKey,
        record: SessionRecord,
        grant_cap: u32,
        _max_in_flight: u32,
    ) -> Result<Created, StoreError> {
        let s = slot_text(slot);
        let (rec, slots, grant) = self.slot_keys(&s, slot);
        let prefix = self.prefix.clone();
        let script = &self.scripts.create;
        let flat: Vec<String> = fields(&record)
            .into_iter()
            .flat_map(|(k, v)| [k.to_owned(), v])
            .collect();
        let reply: Vec<i64> = self
            .redis
            .run("create", |mut c| async move {
                let mut inv = script.key(&rec);
                inv.key(&slots)
                    .key(&grant)
                    .arg(&s)
                    .arg(grant_cap)
                    .arg(&prefix);
                for f in &flat {
                    inv.arg(f);
                }
                inv.invoke_async(&mut c).await
            })
            .await?;
        match reply.as_slice() {
            [0] => Ok(Created::New(record)),
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
        for _ in 0..8 {
            let Some(before) = self.get(slot).await?.filter(|r| r.id == id) else {
                return Ok(None);
            };
            let mut after = before.clone();
            f(&mut after);
            let old: HashMap<&str, String> = fields(&before).into_iter().collect();
            let changed: Vec<(&str, String, String)> = fields(&after)
                .into_iter()
                .filter_map(|(k, v)| {
                    let was = old.get(k).cloned().unwrap_or_default();
                    (was != v).then_some((k, was, v))
                })
                .collect();
            if changed.is_empty() {
                return Ok(Some(after));
            }
            let rec = self.key(&format!("r:{}", slot_text(slot)));
            let script = &self.scripts.update;
            let ok: i64 = self
                .redis
                .run("update", |mut c| async move {
                    let mut inv = script.key(&rec);
                    inv.arg(id);
                    for (k, was, v) in &changed {
                        inv.arg(k).arg(was).arg(v);
                    }
                    inv.invoke_async(&mut c).await
                })
                .await?;
            match ok {
                1 => return Ok(Some(after)),
                0 => return Ok(None),
                _ => continue,
            }
        }
        Err(StoreError::Unavailable(
            "the session record kept changing under the update".to_owned(),
        ))
    }

    async fn remove(&self, slot: &SlotKey, id: u64) -> Result<Option<SessionRecord>, StoreError> {
        let s = slot_text(slot);
        let (rec, slots, grant) = self.slot_keys(&s, slot);
        let prefix = self.prefix.clone();
        let script = &self.scripts.remove;
        let reply: Option<Vec<String>> = self
            .redis
            .run("remove", |mut c| async move {
                script
                    .key(&rec)
                    .key(&slots)
                    .key(&grant)
                    .arg(id)
                    .arg(&s)
                    .arg(&prefix)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(reply.and_then(|r| record_from(&pairs(r))))
    }

    async fn remove_unused(&self, slot: &SlotKey, id: u64) -> Result<Removal, StoreError> {
        let s = slot_text(slot);
        let (rec, slots, grant) = self.slot_keys(&s, slot);
        let prefix = self.prefix.clone();
        let script = &self.scripts.remove_unused;
        let now = now_ms();
        let reply: Vec<String> = self
            .redis
            .run("remove", |mut c| async move {
                script
                    .key(&rec)
                    .key(&slots)
                    .key(&grant)
                    .arg(id)
                    .arg(&s)
                    .arg(&prefix)
                    .arg(now)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let mut it = reply.into_iter();
        Ok(match it.next().as_deref() {
            Some("busy") => Removal::Busy,
            Some("removed") => {
                record_from(&pairs(it.collect())).map_or(Removal::Gone, Removal::Removed)
            }
            _ => Removal::Gone,
        })
    }

    async fn list(&self) -> Result<Vec<(SlotKey, SessionRecord)>, StoreError> {
        let slots_key = self.key("slots");
        let slots: Vec<String> = self
            .redis
            .run("list", |mut c| async move {
                redis::cmd("SMEMBERS")
                    .arg(&slots_key)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let mut out = Vec::with_capacity(slots.len());
        for s in slots {
            if let (Some(key), Some(r)) = (slot_from_text(&s), self.read(s).await?) {
                out.push((key, r));
            }
        }
        Ok(out)
    }

    async fn take_evictable(
        &self,
        now: u64,
        min_idle_ms: u64,
        op_ttl_ms: u64,
    ) -> Result<Option<(SlotKey, SessionRecord)>, StoreError> {
        let prefix = self.prefix.clone();
        let script = &self.scripts.take_evictable;
        let reply: Option<(String, Vec<String>)> = self
            .redis
            .run("take_evictable", |mut c| async move {
                script
                    .arg(&prefix)
                    .arg(now)
                    .arg(min_idle_ms)
                    .arg(op_ttl_ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(reply.and_then(|(s, r)| Some((slot_from_text(&s)?, record_from(&pairs(r))?))))
    }

    async fn take_expired(
        &self,
        now: u64,
        idle_ms: u64,
        max_age_ms: u64,
    ) -> Result<Vec<(SlotKey, SessionRecord, Expiry)>, StoreError> {
        let prefix = self.prefix.clone();
        let script = &self.scripts.take_expired;
        let reply: Vec<(String, String, Vec<String>)> = self
            .redis
            .run("take_expired", |mut c| async move {
                script
                    .arg(&prefix)
                    .arg(now)
                    .arg(idle_ms)
                    .arg(max_age_ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(reply
            .into_iter()
            .filter_map(|(s, why, r)| {
                let why = match why.as_str() {
                    "token" => Expiry::TokenExpired,
                    "age" => Expiry::Age,
                    _ => Expiry::Idle,
                };
                Some((slot_from_text(&s)?, record_from(&pairs(r))?, why))
            })
            .collect())
    }

    async fn acquire(
        &self,
        slot: &SlotKey,
        id: u64,
        max: u32,
        max_queue: u32,
        wait: Duration,
    ) -> Result<InFlight, LeaseRefused> {
        let rec = self.key(&format!("r:{}", slot_text(slot)));
        let (f, q) = (self.key(&format!("f:{id}")), self.key(&format!("q:{id}")));
        let ticket = token();
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(5);
        // Undoes the wait however it ends short of a lease, a dropped request included: the
        // script may already have queued this ticket, or given it an in-flight place whose
        // reply never arrived. Without it such a place stays taken until `lease_ttl`.
        let mut pending = Unfinished {
            redis: self.redis.clone(),
            keys: Some((f.clone(), q.clone())),
            ticket: ticket.clone(),
            renewal: None,
        };
        // Counted while this replica waits; a cancelled wait takes itself off (drop guard).
        let mut here = QueuedHere::new(self.queued_here.clone());
        let result = loop {
            let script = &self.scripts.acquire;
            let until = self.lease_until();
            let (rec2, f2, q2, t2) = (rec.clone(), f.clone(), q.clone(), ticket.clone());
            let granted: Result<i64, StoreError> = self
                .redis
                .run("acquire", |mut c| async move {
                    script
                        .key(&rec2)
                        .key(&f2)
                        .key(&q2)
                        .arg(id)
                        .arg(now_ms())
                        .arg(max)
                        .arg(max_queue)
                        .arg(&t2)
                        .arg(until)
                        .invoke_async(&mut c)
                        .await
                })
                .await;
            match granted {
                Ok(1) => break Ok(()),
                Ok(-1) => break Err(LeaseRefused::Gone),
                Ok(-2) => break Err(LeaseRefused::Busy),
                Ok(_) => {
                    if pending.renewal.is_none() {
                        here.enter();
                        pending.renewal = Some(self.renew(q.clone(), ticket.clone(), true));
                    }
                }
                // The store is down: the request cannot be placed safely.
                Err(_) => break Err(LeaseRefused::Unavailable),
            }
            if tokio::time::Instant::now() >= deadline {
                break Err(LeaseRefused::Busy);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        };
        drop(here);
        if result.is_ok() {
            // The place is this request's now: the lease below gives it back.
            pending.keys = None;
        }
        drop(pending);
        result?;
        let renewal = self.renew(f.clone(), ticket.clone(), true);
        let redis = self.redis.clone();
        let script = self.scripts.release.clone();
        Ok(InFlight::new(
            slot.clone(),
            id,
            Box::new(move |now, op| {
                renewal.abort();
                // Released from a drop too: the release runs on its own.
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    handle.spawn(async move {
                        let _ = redis
                            .run("release", |mut c| async move {
                                script
                                    .key(&rec)
                                    .key(&f)
                                    .arg(id)
                                    .arg(&ticket)
                                    .arg(now)
                                    .arg(if op { "1" } else { "0" })
                                    .invoke_async::<i64>(&mut c)
                                    .await
                            })
                            .await;
                    });
                }
            }),
        ))
    }

    async fn release(&self, lease: InFlight, now: u64, op: bool) {
        lease.finish(now, op);
    }

    async fn queue_depth(&self) -> Result<u32, StoreError> {
        Ok(self.queued_here.load(std::sync::atomic::Ordering::Relaxed))
    }

    async fn lock_login(&self, _slot: &SlotKey, id: u64) -> Result<bool, StoreError> {
        let key = self.key(&format!("l:{id}"));
        let t = token();
        let ttl = millis(self.lease_ttl);
        let (k2, t2) = (key.clone(), t.clone());
        let got: Option<String> = self
            .redis
            .run("lock_login", |mut c| async move {
                redis::cmd("SET")
                    .arg(&k2)
                    .arg(&t2)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        if got.is_none() {
            return Ok(false);
        }
        let renewal = self.renew(key, t.clone(), false);
        if let Ok(mut m) = self.login_locks.lock() {
            if let Some((_, old)) = m.insert(id, (t, renewal)) {
                old.abort();
            }
        }
        Ok(true)
    }

    async fn unlock_login(&self, _slot: &SlotKey, id: u64) -> Result<(), StoreError> {
        let held = self.login_locks.lock().ok().and_then(|mut m| m.remove(&id));
        let Some((t, renewal)) = held else {
            return Ok(());
        };
        renewal.abort();
        let key = self.key(&format!("l:{id}"));
        let script = &self.scripts.unlock;
        self.redis
            .run("unlock_login", |mut c| async move {
                script.key(&key).arg(&t).invoke_async::<i64>(&mut c).await
            })
            .await
            .map(|_| ())
    }

    async fn maintain(&self, now: u64) -> Result<Vec<SessionRecord>, StoreError> {
        let prefix = self.prefix.clone();
        let seat_until = now + 3 * millis(self.lease_ttl);
        let script = &self.scripts.maintain;
        let reply: Vec<(String, Vec<String>)> = self
            .redis
            .run("maintain", |mut c| async move {
                script
                    .arg(&prefix)
                    .arg(now)
                    .arg(seat_until)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(reply
            .into_iter()
            .filter_map(|(_, r)| record_from(&pairs(r)))
            .collect())
    }

    async fn credential_cooldown(&self, fp: &str) -> Result<Option<u64>, StoreError> {
        let key = self.key(&format!("c:{fp}:cooldown"));
        let until: Option<u64> = self
            .redis
            .run("credentials", |mut c| async move {
                redis::cmd("GET").arg(&key).query_async(&mut c).await
            })
            .await?;
        Ok(until.filter(|u| *u > now_ms()))
    }

    async fn open_credential_cooldown(&self, fp: &str, until_ms: u64) -> Result<(), StoreError> {
        let (cool, proven) = (
            self.key(&format!("c:{fp}:cooldown")),
            self.key(&format!("c:{fp}:proven")),
        );
        let ttl = until_ms.saturating_sub(now_ms()).max(1);
        self.redis
            .run("credentials", |mut c| async move {
                redis::pipe()
                    .cmd("SET")
                    .arg(&cool)
                    .arg(until_ms)
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
        let key = self.key(&format!("c:{fp}:proven"));
        self.redis
            .run("credentials", |mut c| async move {
                redis::cmd("EXISTS").arg(&key).query_async(&mut c).await
            })
            .await
    }

    async fn mark_credentials_proven(&self, fp: &str) -> Result<(), StoreError> {
        let key = self.key(&format!("c:{fp}:proven"));
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

    async fn lock_credential_trial(&self, fp: &str, ttl: Duration) -> Result<bool, StoreError> {
        let key = self.key(&format!("c:{fp}:trial"));
        let ttl = millis(ttl).max(1);
        let got: Option<String> = self
            .redis
            .run("credentials", |mut c| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(got.is_some())
    }

    async fn unlock_credential_trial(&self, fp: &str) -> Result<(), StoreError> {
        let key = self.key(&format!("c:{fp}:trial"));
        self.redis
            .run("credentials", |mut c| async move {
                redis::cmd("DEL").arg(&key).query_async::<()>(&mut c).await
            })
            .await
    }
}

/// A wait for an in-flight place that has not (yet) become a lease. Dropped with `keys`
/// still set, it takes the ticket off both the in-flight set and the queue, on its own task
/// because a drop cannot wait; it always stops the queue place's renewal.
struct Unfinished {
    redis: RedisHandle,
    keys: Option<(String, String)>,
    ticket: String,
    renewal: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(r) = self.renewal.take() {
            r.abort();
        }
        let Some((f, q)) = self.keys.take() else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (redis, t) = (self.redis.clone(), self.ticket.clone());
        handle.spawn(async move {
            let _ = redis
                .run("release", |mut c| async move {
                    redis::pipe()
                        .cmd("ZREM")
                        .arg(&f)
                        .arg(&t)
                        .cmd("ZREM")
                        .arg(&q)
                        .arg(&t)
                        .query_async::<(i64, i64)>(&mut c)
                        .await
                })
                .await;
        });
    }
}

/// This replica's count of waiting requests, decremented however the wait ends.
struct QueuedHere {
    count: Arc<std::sync::atomic::AtomicU32>,
    entered: bool,
}

impl QueuedHere {
    fn new(count: Arc<std::sync::atomic::AtomicU32>) -> Self {
        QueuedHere {
            count,
            entered: false,
        }
    }

    fn enter(&mut self) {
        self.entered = true;
        self.count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for QueuedHere {
    fn drop(&mut self) {
        if self.entered {
            self.count
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_keys_round_trip() {
        let single = SlotKey {
            grant: GrantKey("abc_-".into()),
            handle: None,
        };
        assert_eq!(slot_from_text(&slot_text(&single)), Some(single));
        let handle = SlotKey {
            grant: GrantKey("g".into()),
            handle: Some([7u8; 16]),
        };
        assert_eq!(slot_from_text(&slot_text(&handle)), Some(handle));
        assert_eq!(slot_from_text("garbage"), None);
    }

    #[test]
    fn records_round_trip() {
        let mut r = SessionRecord::new(42, true, 1000);
        r.state = SessionState::Active;
        r.seated = true;
        r.last_op_ms = Some(5);
        r.retire_at_ms = Some(9);
        r.jar = Jar::from_text("a\t/\t1");
        let map: HashMap<String, String> = fields(&r)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let back = record_from(&map).unwrap();
        assert_eq!(
            (
                back.id,
                back.concurrent,
                back.state,
                back.seated,
                back.created_ms,
                back.last_op_ms,
                back.retire_at_ms
            ),
            (42, true, SessionState::Active, true, 1000, Some(5), Some(9))
        );
        assert_eq!(back.jar, r.jar);
    }
}
