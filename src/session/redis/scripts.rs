//! The Lua scripts of the Redis session store. Every decision is one script, so it is atomic on
//! the Redis server, and every time in them is Redis's own clock (`TIME`), so replicas whose
//! clocks disagree still agree on leases, idle times and expiries.
//!
//! Keys are derived from prefixes passed as arguments (`P`: the profile's namespace,
//! `G`: the store's `key_prefix`): this store needs standalone Redis (or Sentinel), not Redis
//! Cluster.

use redis::Script;

/// Helpers shared by the scripts: the clock, handing free places to the queue (FIFO), and
/// taking a record away (with a tombstone, and its waiters told it is gone). Wake kinds: `g`
/// granted, `G` granted with others queued behind, `x` the session is gone, `w` a request waits
/// behind this holder's place.
const COMMON: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function wake(G, ticket, kind, ttl)
  local owner = string.match(ticket, '^([^/]+)/')
  if owner then
    local key = G .. 'wake:' .. owner
    redis.call('RPUSH', key, kind .. ticket)
    redis.call('PEXPIRE', key, ttl)
  end
end
local function drain(P, G, id, max, now, lease, me)
  local f, w, q = P .. 'f:' .. id, P .. 'w:' .. id, P .. 'q:' .. id
  local handed = {}
  -- Nothing waits: nothing to hand on (the common case costs one command).
  if redis.call('LLEN', w) == 0 then return handed end
  redis.call('ZREMRANGEBYSCORE', f, '-inf', now)
  while redis.call('ZCARD', f) < max do
    local head = redis.call('LPOP', w)
    if not head then break end
    local alive = redis.call('ZSCORE', q, head)
    redis.call('ZREM', q, head)
    if alive and tonumber(alive) > now then
      redis.call('ZADD', f, now + lease, head)
      -- 'G' when others still wait: the new holder must not keep its place after its request.
      local kind = 'g'
      if redis.call('LLEN', w) > 0 then kind = 'G' end
      -- The caller's own waiters are woken by the caller (no round trip through the list).
      if me and string.sub(head, 1, #me + 1) == me .. '/' then
        table.insert(handed, kind .. head)
      else
        wake(G, head, kind, lease)
      end
    end
  end
  return handed
end
local function take(P, G, slot, tomb, lease)
  local key = P .. 'r:' .. slot
  local r = redis.call('HGETALL', key)
  local id = redis.call('HGET', key, 'id')
  if id then
    for _, t in ipairs(redis.call('LRANGE', P .. 'w:' .. id, 0, -1)) do wake(G, t, 'x', lease) end
    redis.call('DEL', key, P .. 'f:' .. id, P .. 'q:' .. id, P .. 'w:' .. id)
    redis.call('SET', P .. 't:' .. id, 1, 'PX', tomb)
  end
  redis.call('SREM', P .. 'slots', slot)
  local grant = string.match(slot, '^(.*)|')
  if grant then redis.call('SREM', P .. 'g:' .. grant, slot) end
  return r
end
local function users(P, id, now)
  return redis.call('ZCOUNT', P .. 'f:' .. id, now, '+inf') + redis.call('ZCOUNT', P .. 'q:' .. id, now, '+inf')
end
";

/// Finds or creates the slot's record and asks for an in-flight place.
/// KEYS: record, slots, grant set, epoch. ARGV: P, G, slot, grant cap, max, max queue, ticket,
/// lease ms, the epoch this replica knows ('' before it knows one), then the new record's
/// fields (name, value, ...).
/// Returns `{'1', created, epoch, how, fields...}` (granted), `{'0', created, epoch, id}`
/// (queued), `{'-2'}` (queue full), `{'2', earliest_used}` (grant full) or `{'reset'}` (the
/// store lost its state since this replica last looked: nothing was done). A store without an
/// epoch gets one (ARGV[10], a fresh value). ARGV[11] and ARGV[12] are the session id and jar
/// version this replica has cached for the slot: when they still hold, `how` is `cached` and
/// the fields leave the jar out (the replica has it); else `how` is `full`. The new record's
/// fields start at ARGV[13]; without them a missing record is answered `{'create'}` (the
/// replica asks again with them).
const LEASE: &str = r"
local P, G, slot = ARGV[1], ARGV[2], ARGV[3]
local cap, max, max_queue = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local ticket, lease = ARGV[7], tonumber(ARGV[8])
local epoch = redis.call('GET', KEYS[4])
if ARGV[9] ~= '' and epoch ~= ARGV[9] then return {'reset'} end
if not epoch then
  epoch = ARGV[10]
  redis.call('SET', KEYS[4], epoch)
end
local now = now_ms()
local created = '0'
local id = redis.call('HGET', KEYS[1], 'id')
if not id then
  -- The record's fields are sent only when it is to be created (most leases find it).
  if #ARGV < 13 then return {'create'} end
  if redis.call('SCARD', KEYS[3]) >= cap then
    local earliest = -1
    for _, s in ipairs(redis.call('SMEMBERS', KEYS[3])) do
      local u = redis.call('HGET', P .. 'r:' .. s, 'used')
      if u and (earliest < 0 or tonumber(u) < earliest) then earliest = tonumber(u) end
    end
    return {'2', tostring(earliest)}
  end
  redis.call('HSET', KEYS[1], unpack(ARGV, 13))
  redis.call('HSET', KEYS[1], 'created', now, 'used', now)
  redis.call('SADD', KEYS[2], slot)
  redis.call('SADD', KEYS[3], slot)
  created = '1'
  id = redis.call('HGET', KEYS[1], 'id')
end
local f, w, q = P .. 'f:' .. id, P .. 'w:' .. id, P .. 'q:' .. id
local waiting = redis.call('LLEN', w)
if waiting > 0 then
  drain(P, G, id, max, now, lease)
  waiting = redis.call('LLEN', w)
end
-- Live places only: a crashed replica's expired ones do not count.
if waiting == 0 and redis.call('ZCOUNT', f, now, '+inf') < max then
  redis.call('ZREMRANGEBYSCORE', f, '-inf', now)
  redis.call('ZADD', f, now + lease, ticket)
  local out = {'1', created, epoch}
  local names = {'id', 'concurrent', 'state', 'seated', 'created', 'used', 'op', 'retire', 'jv'}
  local values = redis.call('HMGET', KEYS[1], unpack(names))
  if id == ARGV[11] and (values[9] or '0') == ARGV[12] then
    table.insert(out, 'cached')
    for i, n in ipairs(names) do
      table.insert(out, n)
      table.insert(out, values[i] or '')
    end
  else
    table.insert(out, 'full')
    for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do table.insert(out, v) end
  end
  return out
end
if waiting >= max_queue then return {'-2'} end
redis.call('RPUSH', w, ticket)
redis.call('ZADD', q, now + lease, ticket)
-- The first to queue tells the holders, so that none keeps its place after its request.
if waiting == 0 then
  for _, h in ipairs(redis.call('ZRANGEBYSCORE', f, now, '+inf')) do wake(G, h, 'w', lease) end
end
return {'0', created, epoch, id}
";

/// Gives an in-flight place back, records the use (and a 202, and the jar with its next
/// version), and hands the place to the next waiter. KEYS: record. ARGV: P, G, id, ticket, op,
/// max, lease, jar_set, jar, the caller's replica id, how long ago the session was last used
/// (ms: a kept place goes back after its last request). Returns the jar's version (0 when it was
/// not written), the record's jar version now, then the wakes of the caller's own waiters that
/// got the place (`g`/`G` and the ticket), which the caller delivers itself.
const RELEASE: &str = r"
local P, G, id, ticket = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now = now_ms()
local used = now - (tonumber(ARGV[11]) or 0)
redis.call('ZREM', P .. 'f:' .. id, ticket)
local version = 0
if redis.call('HGET', KEYS[1], 'id') == id then
  if ARGV[8] == '1' then
    version = redis.call('HINCRBY', KEYS[1], 'jv', 1)
    if ARGV[5] == '1' then
      redis.call('HSET', KEYS[1], 'used', used, 'op', now, 'jar', ARGV[9])
    else
      redis.call('HSET', KEYS[1], 'used', used, 'jar', ARGV[9])
    end
  elseif ARGV[5] == '1' then
    redis.call('HSET', KEYS[1], 'used', used, 'op', now)
  else
    redis.call('HSET', KEYS[1], 'used', used)
  end
end
local out = drain(P, G, id, tonumber(ARGV[6]), now, tonumber(ARGV[7]), ARGV[10])
table.insert(out, 1, redis.call('HGET', KEYS[1], 'jv') or '0')
table.insert(out, 1, tostring(version))
return out
";

/// Renews a kept place that this replica goes on using: extends its lease from now, records
/// the use, and writes the jar the place left unwritten, only while the place is still this
/// ticket's and its lease has not run out (a place Redis let expire may be someone else's by
/// now). KEYS: record. ARGV: P, id, ticket, lease, jar_set, sealed jar. Returns -1 when the place
/// is gone (nothing written), else the jar's new version (0: no jar sent).
const REFRESH: &str = r"
local P, id, ticket = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', KEYS[1], 'id') ~= id then return -1 end
local f = P .. 'f:' .. id
local now = now_ms()
local till = tonumber(redis.call('ZSCORE', f, ticket))
if not till or till <= now then return -1 end
redis.call('ZADD', f, now + tonumber(ARGV[4]), ticket)
redis.call('HSET', KEYS[1], 'used', now)
if ARGV[5] ~= '1' then return 0 end
local version = redis.call('HINCRBY', KEYS[1], 'jv', 1)
redis.call('HSET', KEYS[1], 'jar', ARGV[6])
return version
";

/// A waiter gives up (its wait ran out, or its client went away, possibly before the lease
/// script's answer arrived): off the queue at once; a place granted to it in the meantime goes
/// to the next. KEYS: record. ARGV: P, G, ticket, max, lease.
const CANCEL: &str = r"
local P, G, ticket = ARGV[1], ARGV[2], ARGV[3]
local id = redis.call('HGET', KEYS[1], 'id')
if not id then return 0 end
redis.call('LREM', P .. 'w:' .. id, 0, ticket)
redis.call('ZREM', P .. 'q:' .. id, ticket)
if redis.call('ZREM', P .. 'f:' .. id, ticket) == 1 then
  drain(P, G, id, tonumber(ARGV[4]), now_ms(), tonumber(ARGV[5]))
end
return 1
";

/// Renews this replica's leases in one step, restoring those that expired while Redis was
/// unreachable when that is still possible. KEYS: epoch. ARGV: P, G, max, lease, the epoch
/// this replica knows ('' before it knows one), then (kind, slot, id, ticket) groups: kind `f`
/// in-flight place, `q` queue ticket, `l` login lock (ticket = the lock's token), `t`
/// credential trial lock (slot = the lock's whole key, ticket = its token).
/// Returns one status per group: `ok`, `restored` or `lost`; or `{'reset'}` when the store
/// lost its state since this replica last looked (nothing was done: the replica registers its
/// sessions again, with these places, and renews after).
///
/// A waiter's renewal also hands on the places of leases that ran out (a crashed replica's):
/// nobody else would, and the queue would wait for nothing.
const RENEW: &str = r"
local P, G, max, lease = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if ARGV[5] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[5] then return {'reset'} end
local now = now_ms()
local out = {}
for i = 6, #ARGV, 4 do
  local kind, slot, id, ticket = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local status = 'lost'
  if kind == 'f' then
    local f = P .. 'f:' .. id
    redis.call('ZREMRANGEBYSCORE', f, '-inf', now)
    if redis.call('ZSCORE', f, ticket) then
      redis.call('ZADD', f, now + lease, ticket)
      status = 'ok'
    elseif redis.call('HGET', P .. 'r:' .. slot, 'id') == id and redis.call('ZCARD', f) < max then
      redis.call('ZADD', f, now + lease, ticket)
      status = 'restored'
    end
  elseif kind == 'q' then
    local q = P .. 'q:' .. id
    if redis.call('ZSCORE', q, ticket) then
      redis.call('ZADD', q, now + lease, ticket)
      drain(P, G, id, max, now, lease)
      status = 'ok'
    elseif redis.call('ZSCORE', P .. 'f:' .. id, ticket) then
      status = 'ok'
    end
  elseif kind == 't' then
    local holder = redis.call('GET', slot)
    if holder == ticket then
      redis.call('PEXPIRE', slot, lease)
      status = 'ok'
    elseif not holder then
      redis.call('SET', slot, ticket, 'PX', lease)
      status = 'restored'
    end
  else
    local l = P .. 'l:' .. id
    local holder = redis.call('GET', l)
    if holder == ticket then
      redis.call('PEXPIRE', l, lease)
      status = 'ok'
    elseif not holder and redis.call('HGET', P .. 'r:' .. slot, 'id') == id then
      redis.call('SET', l, ticket, 'PX', lease)
      status = 'restored'
    end
  end
  table.insert(out, status)
end
return out
";

/// The record of a slot with its in-flight and queued counts. KEYS: record. ARGV: P.
const GET: &str = r"
local r = redis.call('HGETALL', KEYS[1])
local id = redis.call('HGET', KEYS[1], 'id')
if not id then return {r, 0, 0} end
local now = now_ms()
return {r, redis.call('ZCOUNT', ARGV[1] .. 'f:' .. id, now, '+inf'), redis.call('ZCOUNT', ARGV[1] .. 'q:' .. id, now, '+inf')}
";

/// Every record with its counts, in one step (admin listing). ARGV: P.
const LIST: &str = r"
local P = ARGV[1]
local now = now_ms()
local out = {}
for _, slot in ipairs(redis.call('SMEMBERS', P .. 'slots')) do
  local r = redis.call('HGETALL', P .. 'r:' .. slot)
  local id = redis.call('HGET', P .. 'r:' .. slot, 'id')
  if id then
    table.insert(out, {slot, r, redis.call('ZCOUNT', P .. 'f:' .. id, now, '+inf'), redis.call('ZCOUNT', P .. 'q:' .. id, now, '+inf')})
  end
end
return out
";

/// Counts by state and live seats, in one step (the gauges). ARGV: P. KEYS: seats.
const STATS: &str = r"
local P = ARGV[1]
local n, l, a = 0, 0, 0
for _, slot in ipairs(redis.call('SMEMBERS', P .. 'slots')) do
  local s = redis.call('HGET', P .. 'r:' .. slot, 'state')
  if s == 'a' then a = a + 1 elseif s == 'l' then l = l + 1 elseif s then n = n + 1 end
end
return {n, l, a, redis.call('ZCOUNT', KEYS[1], now_ms(), '+inf')}
";

/// Stores a record unless the slot is taken or the grant is full. KEYS: record, slots, grant
/// set. ARGV: slot, grant cap, P, fields... Returns `{0}` stored, `{1}` taken, `{2, earliest}`.
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
local now = now_ms()
redis.call('HSET', KEYS[1], 'created', now, 'used', now)
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
return {0}
";

/// `ARGV`: id, then (field, expected, new) triples. 0: gone; -1: a field changed meanwhile.
/// A new jar gets the next version.
const UPDATE: &str = r"
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 3 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i]) or ''
  if cur ~= ARGV[i + 1] then return -1 end
end
for i = 2, #ARGV, 3 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
  if ARGV[i] == 'jar' then redis.call('HINCRBY', KEYS[1], 'jv', 1) end
end
return 1
";

/// Removes a record (if it still has the id). ARGV: P, G, slot, id, tomb, lease.
const REMOVE: &str = r"
local P = ARGV[1]
if redis.call('HGET', P .. 'r:' .. ARGV[3], 'id') ~= ARGV[4] then return false end
return take(P, ARGV[2], ARGV[3], tonumber(ARGV[5]), tonumber(ARGV[6]))
";

/// Removes a record unless a request holds or waits for it: `{'gone'}`, `{'busy'}` or
/// `{'removed', fields...}`. ARGV: P, G, slot, id, tomb, lease.
const REMOVE_UNUSED: &str = r"
local P = ARGV[1]
if redis.call('HGET', P .. 'r:' .. ARGV[3], 'id') ~= ARGV[4] then return {'gone'} end
if users(P, ARGV[4], now_ms()) > 0 then return {'busy'} end
local r = take(P, ARGV[2], ARGV[3], tonumber(ARGV[5]), tonumber(ARGV[6]))
table.insert(r, 1, 'removed')
return r
";

/// Takes the least-recently-used session that holds a seat and is free to go. ARGV: P, G,
/// min idle, op ttl, tomb, lease.
const TAKE_EVICTABLE: &str = r"
local P, G = ARGV[1], ARGV[2]
local min_idle, op_ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local best, best_used = nil, nil
for _, slot in ipairs(redis.call('SMEMBERS', P .. 'slots')) do
  local f = redis.call('HMGET', P .. 'r:' .. slot, 'id', 'state', 'used', 'op', 'seated')
  if f[1] and f[2] == 'a' and f[5] == '1' then
    local used = tonumber(f[3]) or 0
    local op = tonumber(f[4])
    if users(P, f[1], now) == 0 and now - used >= min_idle and (op == nil or now - op >= op_ttl) then
      if best_used == nil or used < best_used then best, best_used = slot, used end
    end
  end
end
if best == nil then return false end
return {best, take(P, G, best, tonumber(ARGV[5]), tonumber(ARGV[6]))}
";

/// Takes every unused session idle too long, too old, or past its token's expiry. ARGV: P, G,
/// idle, max age, tomb, lease, retire-at clock (Unix ms: token expiries are Unix times).
const TAKE_EXPIRED: &str = r"
local P, G = ARGV[1], ARGV[2]
local idle, age = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local out = {}
for _, slot in ipairs(redis.call('SMEMBERS', P .. 'slots')) do
  local f = redis.call('HMGET', P .. 'r:' .. slot, 'id', 'state', 'used', 'created', 'retire')
  if f[1] and f[2] ~= 'l' and users(P, f[1], now) == 0 then
    local why = nil
    local retire = tonumber(f[5])
    if retire and now >= retire then why = 'token'
    elseif now - (tonumber(f[3]) or 0) >= idle then why = 'idle'
    elseif now - (tonumber(f[4]) or 0) >= age then why = 'age' end
    if why then table.insert(out, {slot, why, take(P, G, slot, tonumber(ARGV[5]), tonumber(ARGV[6]))}) end
  end
end
return out
";

/// Periodic upkeep: renews the seats of seated records, takes the records of logins whose
/// lock is gone (a crashed replica's), checks the store's epoch, and tells which of this
/// replica's remembered sessions vanished without a tombstone. KEYS: seats, epoch. ARGV: P, G,
/// seat ttl, tomb, lease, known epoch ('' at first), a fresh epoch, then (slot, id) pairs.
/// Returns `{abandoned, epoch, reset, lost}`.
const MAINTAIN: &str = r"
local P, G = ARGV[1], ARGV[2]
local seat_ttl, tomb, lease = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
local abandoned = {}
for _, slot in ipairs(redis.call('SMEMBERS', P .. 'slots')) do
  local f = redis.call('HMGET', P .. 'r:' .. slot, 'id', 'state', 'seated')
  if f[1] == false then
    redis.call('SREM', P .. 'slots', slot)
  elseif f[2] == 'l' and redis.call('EXISTS', P .. 'l:' .. f[1]) == 0 then
    table.insert(abandoned, take(P, G, slot, tomb, lease))
  elseif f[3] == '1' then
    redis.call('ZADD', KEYS[1], now + seat_ttl, f[1])
  end
end
local epoch = redis.call('GET', KEYS[2])
local reset = '0'
if not epoch then
  redis.call('SET', KEYS[2], ARGV[7])
  epoch = ARGV[7]
  if ARGV[6] ~= '' then reset = '1' end
elseif ARGV[6] ~= '' and epoch ~= ARGV[6] then
  reset = '1'
end
local lost = {}
for i = 8, #ARGV, 2 do
  local slot, id = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', P .. 'r:' .. slot, 'id') ~= id and redis.call('EXISTS', P .. 't:' .. id) == 0 then
    table.insert(lost, slot)
    table.insert(lost, id)
  end
end
return {abandoned, epoch, reset, lost}
";

/// Registers a lost session again, with its seat, if its slot is free, the grant has room and
/// a seat is free. KEYS: record, slots, grant set, seats. ARGV: slot, grant cap, seat cap, id,
/// seat ttl, P, jar version, sealed jar, max in flight, lease ms, n, then the n tickets of the
/// in-flight places the calling replica holds on the session, then the fields... The tickets
/// are registered with it (within max), so that a request begun before the loss keeps its
/// place and nobody is granted one beside it. Returns `registered`, `same` (already back; its
/// jar replaced if this copy is fresher) or `noroom`.
const RESTORE: &str = r"
local now = now_ms()
local n = tonumber(ARGV[11])
local function places()
  local f = ARGV[6] .. 'f:' .. ARGV[4]
  redis.call('ZREMRANGEBYSCORE', f, '-inf', now)
  for i = 12, 11 + n do
    if not redis.call('ZSCORE', f, ARGV[i]) and redis.call('ZCARD', f) < tonumber(ARGV[9]) then
      redis.call('ZADD', f, now + tonumber(ARGV[10]), ARGV[i])
    end
  end
end
local have = redis.call('HGET', KEYS[1], 'id')
if have then
  if have ~= ARGV[4] then return 'noroom' end
  if tonumber(redis.call('HGET', KEYS[1], 'jv') or '0') < tonumber(ARGV[7]) then
    redis.call('HSET', KEYS[1], 'jar', ARGV[8], 'jv', ARGV[7])
  end
  places()
  return 'same'
end
if redis.call('SCARD', KEYS[3]) >= tonumber(ARGV[2]) then return 'noroom' end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
if not redis.call('ZSCORE', KEYS[4], ARGV[4]) and redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[3]) then
  return 'noroom'
end
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[5]), ARGV[4])
redis.call('HSET', KEYS[1], unpack(ARGV, 12 + n))
redis.call('HSET', KEYS[1], 'used', now)
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
places()
return 'registered'
";

/// Takes a seat for `holder` if fewer than `cap` are held. KEYS: seats. ARGV: cap, holder, ttl.
const TAKE_SEAT: &str = r"
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 1 end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
  return 1
end
return 0
";

/// Live seats. KEYS: seats.
const SEATS: &str = r"
return redis.call('ZCOUNT', KEYS[1], now_ms(), '+inf')
";

const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Every script, compiled once per store.
pub(super) struct Scripts {
    pub(super) lease: Script,
    pub(super) release: Script,
    pub(super) refresh: Script,
    pub(super) cancel: Script,
    pub(super) renew: Script,
    pub(super) get: Script,
    pub(super) list: Script,
    pub(super) stats: Script,
    pub(super) create: Script,
    pub(super) update: Script,
    pub(super) remove: Script,
    pub(super) remove_unused: Script,
    pub(super) take_evictable: Script,
    pub(super) take_expired: Script,
    pub(super) maintain: Script,
    pub(super) restore: Script,
    pub(super) take_seat: Script,
    pub(super) seats: Script,
    pub(super) unlock: Script,
}

impl Scripts {
    /// Every script, to load into Redis ahead of use.
    pub(super) fn all(&self) -> [&Script; 19] {
        [
            &self.lease,
            &self.release,
            &self.refresh,
            &self.cancel,
            &self.renew,
            &self.get,
            &self.list,
            &self.stats,
            &self.create,
            &self.update,
            &self.remove,
            &self.remove_unused,
            &self.take_evictable,
            &self.take_expired,
            &self.maintain,
            &self.restore,
            &self.take_seat,
            &self.seats,
            &self.unlock,
        ]
    }

    pub(super) fn new() -> Scripts {
        let with = |body: &str| Script::new(&format!("{COMMON}{body}"));
        Scripts {
            lease: with(LEASE),
            release: with(RELEASE),
            refresh: with(REFRESH),
            cancel: with(CANCEL),
            renew: with(RENEW),
            get: with(GET),
            list: with(LIST),
            stats: with(STATS),
            create: with(CREATE),
            update: Script::new(UPDATE),
            remove: with(REMOVE),
            remove_unused: with(REMOVE_UNUSED),
            take_evictable: with(TAKE_EVICTABLE),
            take_expired: with(TAKE_EXPIRED),
            maintain: with(MAINTAIN),
            restore: with(RESTORE),
            take_seat: with(TAKE_SEAT),
            seats: with(SEATS),
            unlock: Script::new(UNLOCK),
        }
    }
}
