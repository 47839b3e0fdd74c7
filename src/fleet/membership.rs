//! Fleet membership (design §6.9.6): each replica announces itself with a heartbeat whose
//! expiry it renews while it runs, and registers the upstream session profiles it serves.
//!
//! - A replica that stops leaves the fleet and gives back only what it holds itself; the
//!   sessions stay for the others. The last live replica to stop logs them all out.
//! - A profile (an upstream's identity: URL, credentials, paths) retired by a reload is logged
//!   out only once no live replica serves it any more.
//! - One replica at a time holds the reporter lease and publishes the fleet-wide gauges, so
//!   that a sum over replicas is the fleet's value.
//! - Requests waiting for a session (in any replica) are woken through a per-replica list that
//!   this module reads with `BLPOP`: the queue's order is kept in Redis, so the wait is FIFO
//!   across replicas, and nobody polls.
//!
//! Keys, under the store's `key_prefix`:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `members` | sorted set | live replica ids by heartbeat expiry |
//! | `members:since` | string | when the membership began (its first beat, or the first after the store lost it): a replica leaving sooner than a heartbeat period after waits for the others' beats |
//! | `serving:{upstream}:{profile}` | sorted set | replicas serving that profile, by expiry |
//! | `reporter` | string | the replica publishing the fleet gauges (with a TTL) |
//! | `wake:{replica}` | list | `g{ticket}` (granted), `G{ticket}` (granted, others queued behind) or `x{ticket}` (session gone) for that replica's waiters; `w{ticket}` (a request queued behind that in-flight place of the replica's) |
//!
//! Expiries are taken from Redis's own clock (`TIME` inside the scripts), so replicas whose
//! clocks disagree still agree on who is alive.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Script;
use tokio::sync::oneshot;

use super::connection::{RedisHandle, StoreError};
use crate::clock::millis;
use crate::metrics::Metrics;

/// How long past a heartbeat period a leaving replica that found no other member in a young
/// membership waits, for the others' beats (each a round trip, after a timer) to land.
const LEAVE_MARGIN: Duration = Duration::from_millis(500);

/// The most wakes one read takes from the wake list besides the first.
const WAKE_BATCH: usize = 256;

/// One read of the wake list, as Redis answers it: `BLPOP`'s (list, wake), then `LPOP`'s
/// wakes.
type WakeRead = (Option<(String, String)>, Option<Vec<String>>);

/// How a waiting request learns its fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The in-flight place is this request's now.
    Granted,
    /// The same, handed over by a release of this replica, the record's jar at this version: a
    /// replica that remembers the record with that jar need not read it again.
    Handed { jar_version: u64 },
    /// The session was removed while the request waited.
    Gone,
}

const BEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, ttl = ARGV[1], tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, id)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl * 3)
-- Since when the membership exists (its first beat, or the first after the store lost it).
if not redis.call('SET', KEYS[1] .. ':since', now, 'NX', 'PX', ttl * 3) then
  redis.call('PEXPIRE', KEYS[1] .. ':since', ttl * 3)
end
for i = 3, #KEYS do
  redis.call('ZADD', KEYS[i], now + ttl, id)
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  redis.call('PEXPIRE', KEYS[i], ttl * 3)
end
local r = redis.call('GET', KEYS[2])
local rep = 0
if r == id then
  redis.call('PEXPIRE', KEYS[2], ttl)
  rep = 1
elseif not r then
  redis.call('SET', KEYS[2], id, 'PX', ttl)
  rep = 1
end
return {rep, redis.call('ZCARD', KEYS[1])}
";

/// Leaves: `KEYS[1]` members, `KEYS[2]` reporter, then serving sets. Returns the replicas
/// still alive.
const LEAVE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local since = redis.call('GET', KEYS[1] .. ':since')
redis.call('ZREM', KEYS[1], ARGV[1])
for i = 3, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local age = -1
if since then age = now - tonumber(since) end
return {redis.call('ZCARD', KEYS[1]), age}
";

/// Stops serving one profile: returns the live replicas still serving it.
const RETIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
";

/// An in-flight place of this replica that a request queued behind, here or on another replica
/// (`w{ticket}` on the wake list): a place kept after its request ended goes back at once, and a
/// place in use is not kept.
#[derive(Debug, Default)]
pub struct Wanted {
    /// When this replica learnt that a request queued behind the place (its requests that
    /// waited from before go first).
    since: std::sync::OnceLock<std::time::Instant>,
    /// Wakes whoever gives kept places back.
    nudge: Arc<tokio::sync::Notify>,
}

impl Wanted {
    /// True once a request queued behind the place.
    pub fn is_set(&self) -> bool {
        self.since.get().is_some()
    }

    /// When this replica learnt that a request queued behind the place.
    pub fn since(&self) -> Option<std::time::Instant> {
        self.since.get().copied()
    }

    /// Marks the place wanted and nudges whoever keeps it.
    pub(crate) fn set(&self) {
        self.since.get_or_init(std::time::Instant::now);
        self.nudge.notify_one();
    }
}

/// This replica in the fleet.
pub struct Fleet {
    redis: RedisHandle,
    prefix: String,
    id: String,
    ttl: Duration,
    /// Serving-set keys of the profiles this replica serves, with how many pools serve each.
    serving: Mutex<BTreeMap<String, usize>>,
    reporter: AtomicBool,
    members: AtomicU64,
    waiters: Mutex<HashMap<String, oneshot::Sender<Wake>>>,
    /// This replica's in-flight places that may be kept after their request, by ticket.
    places: Mutex<HashMap<String, Arc<Wanted>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    metrics: Metrics,
    scripts: (Script, Script, Script),
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Fleet {
    /// This replica, with a fresh id (host name, process id and a random part: never reused).
    pub fn new(
        redis: RedisHandle,
        key_prefix: &str,
        ttl: Duration,
        metrics: Metrics,
    ) -> Arc<Fleet> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().replace(['/', ' ', ':'], "-"))
            .unwrap_or_default();
        let id = format!(
            "{}-{}-{:08x}",
            if host.is_empty() { "replica" } else { &host },
            std::process::id(),
            rand::random::<u32>()
        );
        Arc::new(Fleet {
            redis,
            prefix: key_prefix.to_owned(),
            id,
            ttl,
            serving: Mutex::new(BTreeMap::new()),
            reporter: AtomicBool::new(false),
            members: AtomicU64::new(0),
            waiters: Mutex::new(HashMap::new()),
            places: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            metrics,
            scripts: (Script::new(BEAT), Script::new(LEAVE), Script::new(RETIRE)),
        })
    }

    /// This replica's id (in tickets and logs).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn redis(&self) -> &RedisHandle {
        &self.redis
    }

    pub fn key_prefix(&self) -> &str {
        &self.prefix
    }

    /// True while this replica publishes the fleet-wide gauges.
    pub fn is_reporter(&self) -> bool {
        self.reporter.load(Ordering::SeqCst)
    }

    /// Live replicas at the last heartbeat.
    pub fn members(&self) -> u64 {
        self.members.load(Ordering::SeqCst)
    }

    /// Starts the heartbeat and the wake-up reader. Idempotent.
    pub fn start(self: &Arc<Self>) {
        let mut tasks = lock(&self.tasks);
        if !tasks.is_empty() {
            return;
        }
        let me = self.clone();
        tasks.push(tokio::spawn(async move {
            let every = me.beat_every();
            loop {
                me.beat().await;
                tokio::time::sleep(every).await;
            }
        }));
        let me = self.clone();
        tasks.push(tokio::spawn(async move { me.read_wakes().await }));
    }

    fn serving_key(&self, upstream: &str, profile: &str) -> String {
        format!("{}serving:{upstream}:{profile}", self.prefix)
    }

    /// One heartbeat: this replica and the profiles it serves are alive for another `ttl`.
    async fn beat(&self) {
        let members = format!("{}members", self.prefix);
        let reporter = format!("{}reporter", self.prefix);
        let serving: Vec<String> = lock(&self.serving).keys().cloned().collect();
        let (id, ttl) = (self.id.clone(), millis(self.ttl));
        let script = &self.scripts.0;
        let answer: Result<(i64, u64), StoreError> = self
            .redis
            .run("heartbeat", |mut c| async move {
                let mut inv = script.key(&members);
                inv.key(&reporter);
                for k in &serving {
                    inv.key(k);
                }
                inv.arg(&id).arg(ttl).invoke_async(&mut c).await
            })
            .await;
        match answer {
            Ok((rep, members)) => {
                let was = self.reporter.swap(rep == 1, Ordering::SeqCst);
                if was != (rep == 1) {
                    tracing::info!(replica = %self.id, reporter = rep == 1, "fleet gauge reporter changed");
                }
                self.members.store(members, Ordering::SeqCst);
                self.metrics.fleet_members(members);
            }
            // Without the store this replica cannot know whether it still reports: it stops,
            // so that the fleet's sum never counts twice.
            Err(_) => self.reporter.store(false, Ordering::SeqCst),
        }
    }

    /// Registers a profile this replica serves; the next heartbeat announces it.
    pub fn serve(&self, upstream: &str, profile: &str) {
        *lock(&self.serving)
            .entry(self.serving_key(upstream, profile))
            .or_default() += 1;
    }

    /// [`Fleet::serve`], announced at once.
    pub async fn serve_now(&self, upstream: &str, profile: &str) {
        self.serve(upstream, profile);
        self.beat().await;
    }

    /// Stops serving a profile (a reload removed or changed its upstream). Returns how many
    /// live replicas still serve it: at 0 its sessions belong to nobody.
    pub async fn retire(&self, upstream: &str, profile: &str) -> Result<u64, StoreError> {
        let key = self.serving_key(upstream, profile);
        {
            let mut serving = lock(&self.serving);
            match serving.get_mut(&key) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    return Ok(1);
                }
                Some(_) => {
                    serving.remove(&key);
                }
                None => {}
            }
        }
        let id = self.id.clone();
        let script = &self.scripts.2;
        self.redis
            .run("retire", |mut c| async move {
                script.key(&key).arg(&id).invoke_async(&mut c).await
            })
            .await
    }

    /// Leaves the fleet (shutdown). Returns how many other replicas are still alive: at 0 this
    /// was the last one, and every session is to be logged out.
    ///
    /// A membership younger than one heartbeat period (the store came back empty, or a failover
    /// lost the last heartbeats, or the fleet has only just started) may not list every live
    /// replica yet: the leaving one waits until a whole period has passed since it began, in
    /// which every live replica beats, and counts again, rather than take itself for the last
    /// one and log the fleet's sessions out.
    pub async fn leave(&self) -> Result<u64, StoreError> {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
        self.reporter.store(false, Ordering::SeqCst);
        let serving: Vec<String> = std::mem::take(&mut *lock(&self.serving))
            .into_keys()
            .collect();
        let (others, age) = self.leave_once(&serving).await?;
        let settled = self.beat_every() + LEAVE_MARGIN;
        let age = u64::try_from(age).map_or(Duration::ZERO, Duration::from_millis);
        if others > 0 || age >= settled {
            return Ok(others);
        }
        tracing::warn!(replica = %self.id, membership_ms = millis(age), "no other replica listed, but the fleet's membership is younger than a heartbeat period (the store lost it, or the fleet just started): waiting for the others to announce themselves before deciding whether this is the last");
        tokio::time::sleep(settled - age).await;
        Ok(self.leave_once(&serving).await?.0)
    }

    /// One run of the leave script: the other replicas alive, and how old the membership is in
    /// milliseconds (-1: no beat since the store lost it).
    async fn leave_once(&self, serving: &[String]) -> Result<(u64, i64), StoreError> {
        let members = format!("{}members", self.prefix);
        let reporter = format!("{}reporter", self.prefix);
        let id = self.id.clone();
        let script = &self.scripts.1;
        self.redis
            .run("leave", |mut c| async move {
                let mut inv = script.key(&members);
                inv.key(&reporter);
                for k in serving {
                    inv.key(k);
                }
                inv.arg(&id).invoke_async(&mut c).await
            })
            .await
    }

    /// How often a replica beats.
    fn beat_every(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(100))
    }

    // === wake-ups ===

    /// A new ticket of this replica: `{replica}/{random}` (the waker finds the replica's list
    /// from it).
    pub fn ticket(&self) -> String {
        format!("{}/{:032x}", self.id, rand::random::<u128>())
    }

    /// The key of this replica's wake list.
    pub fn wake_key(&self) -> String {
        format!("{}wake:{}", self.prefix, self.id)
    }

    /// Registers a waiter for `ticket`, before the ticket is queued.
    pub fn expect(&self, ticket: &str) -> oneshot::Receiver<Wake> {
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(ticket.to_owned(), tx);
        rx
    }

    /// Drops the waiter of `ticket` (its wait is over).
    pub fn forget(&self, ticket: &str) {
        lock(&self.waiters).remove(ticket);
    }

    /// Watches the in-flight place of `ticket` for requests queued behind it, until
    /// [`Fleet::unwatch`]; `nudge` is notified when one does.
    pub fn watch(&self, ticket: &str, nudge: &Arc<tokio::sync::Notify>) -> Arc<Wanted> {
        lock(&self.places)
            .entry(ticket.to_owned())
            .or_insert_with(|| {
                Arc::new(Wanted {
                    since: std::sync::OnceLock::new(),
                    nudge: nudge.clone(),
                })
            })
            .clone()
    }

    /// The place of `ticket` went back to the store.
    pub fn unwatch(&self, ticket: &str) {
        lock(&self.places).remove(ticket);
    }

    /// Reads this replica's wake list and hands each wake to its waiter. A dedicated
    /// connection: `BLPOP` blocks the connection it runs on.
    async fn read_wakes(&self) {
        let key = self.wake_key();
        let block = Duration::from_secs(1);
        loop {
            let mut conn = match self.redis.connect(block + self.redis.timeout() * 2).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "wake-up reader cannot connect; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            loop {
                // One round trip takes the first wake (blocking) and up to a batch of those
                // queued behind it: under load the wakes do not wait behind one another.
                let popped: redis::RedisResult<WakeRead> = redis::pipe()
                    .cmd("BLPOP")
                    .arg(&key)
                    .arg(block.as_secs_f64())
                    .cmd("LPOP")
                    .arg(&key)
                    .arg(WAKE_BATCH)
                    .query_async(&mut conn)
                    .await;
                match popped {
                    Ok((first, rest)) => {
                        for msg in first
                            .map(|(_, m)| m)
                            .into_iter()
                            .chain(rest.into_iter().flatten())
                        {
                            self.deliver(&msg, Wake::Granted);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %crate::net::redact_error(&e), "wake-up reader lost its connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        break;
                    }
                }
            }
        }
    }

    /// Wakes a local waiter directly (its ticket vanished from the store).
    pub fn wake_local(&self, ticket: &str, wake: Wake) {
        if let Some(tx) = lock(&self.waiters).remove(ticket) {
            let _ = tx.send(wake);
        }
    }

    /// Delivers the wakes that a release of this replica's handed to its own waiters (the
    /// release script answers them instead of pushing them on the wake list).
    pub fn deliver_handed(&self, msgs: &[String], jar_version: u64) {
        for msg in msgs {
            self.deliver(msg, Wake::Handed { jar_version });
        }
    }

    /// Delivers one wake; a grant is told as `granted`.
    fn deliver(&self, msg: &str, granted: Wake) {
        let (wake, ticket) = match msg.split_at_checked(1) {
            Some(("g", t)) => (granted, t),
            // Granted, with others queued behind: the place is not to be kept after it.
            Some(("G", t)) => {
                if let Some(w) = lock(&self.places).get(t) {
                    w.set();
                }
                (granted, t)
            }
            Some(("x", t)) => (Wake::Gone, t),
            Some(("w", t)) => {
                if let Some(w) = lock(&self.places).get(t) {
                    w.set();
                }
                return;
            }
            _ => return,
        };
        if let Some(tx) = lock(&self.waiters).remove(ticket) {
            let _ = tx.send(wake);
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}
