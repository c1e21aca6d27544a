//! The Lua scripts that make each operation atomic in Redis, and check the
//! capacity bound and the per-source quota in the same step as the write.

/// Lua shared by the admission scripts: `NOW` (Redis's clock in ms),
/// `OLDEST` (the pending record that expires first among the live ones, or
/// nil) and `EVICT` (removes a pending record with its index entry, its
/// source entry and its source note).
///
/// `EVICT` touches keys it computes from the tag (`ARGV` holds it) rather
/// than keys given in `KEYS`: Redis allows this, and they share the
/// store's hash tag, so they live in the scripts' own slot, but Redis
/// Cluster does not promise to allow it. The store targets one primary.
macro_rules! lua_helpers {
    () => {
        r"
local function NOW()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function OLDEST(index, now)
  return redis.call('ZRANGEBYSCORE', index, '(' .. now, '+inf', 'LIMIT', 0, 1)[1]
end
local function EVICT(tag, index, member, now)
  local note = tag .. ':ps:' .. member
  local source = redis.call('GET', note)
  if source then
    redis.call('ZREM', source, member)
    redis.call('ZREMRANGEBYSCORE', source, '-inf', now)
    redis.call('DEL', note)
  end
  redis.call('DEL', tag .. ':p:' .. member)
  redis.call('ZREM', index, member)
end
"
    };
}

/// Admits a pending authorization under its source's quota and the
/// capacity bound, evicting the pending record that expires first (the
/// oldest, as every pending record has the same TTL) when the store is
/// full. Bindings are never evicted.
///
/// Everything is read before anything is written: Redis checks `maxmemory`
/// only before a script's first write, so the record itself must be that
/// write, or a full Redis would admit new authorizations while refusing the
/// bindings of flows in progress.
///
/// With a quota, the source's set holds its pending records by expiry, and
/// the note `{tag}:ps:K` names that set, with the record's TTL, so that
/// taking or evicting the record releases its count; a record that simply
/// expires leaves a set entry that the next prune drops.
///
/// KEYS: pending key, pending index, binding index, source note, source
/// set (the last two unused without a quota).
/// ARGV: record, TTL in ms, capacity, index member, tag, quota (negative:
/// none).
/// Returns 0 when full, 1 when the key is taken, 2 when written, 3 when
/// written after evicting a pending record, 4 when the source holds its
/// quota.
pub(super) const INSERT_PENDING: &str = concat!(
    lua_helpers!(),
    r"
local now = NOW()
local ttl = tonumber(ARGV[2])
local quota = tonumber(ARGV[6])
if quota >= 0 and redis.call('ZCOUNT', KEYS[5], '(' .. now, '+inf') >= quota then
  return 4
end
local live = redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf')
  + redis.call('ZCOUNT', KEYS[3], '(' .. now, '+inf')
local victim = nil
if live >= tonumber(ARGV[3]) then
  victim = OLDEST(KEYS[2], now)
  if not victim then
    return 0
  end
end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ttl) then
  return 1
end
if victim then
  EVICT(ARGV[5], KEYS[2], victim, now)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[4])
if quota >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
  redis.call('ZADD', KEYS[5], now + ttl, ARGV[4])
  if redis.call('PTTL', KEYS[5]) < ttl then
    redis.call('PEXPIRE', KEYS[5], ttl)
  end
  redis.call('SET', KEYS[4], KEYS[5], 'PX', ttl)
end
if victim then
  return 3
end
return 2
"
);

/// Binds a code unless its mark lives. A binding is admitted even at the
/// capacity bound (it replaces the pending record it came from), but when
/// another record took that room meanwhile it evicts a pending record, if
/// there is one, to stay within the bound.
///
/// KEYS: mark key, binding key, pending index, binding index.
/// ARGV: record, TTL in ms, member, mark TTL in ms (not below the TTL),
/// capacity, tag.
/// Returns 0 when the code was bound already, 1 when written, 2 when
/// written after evicting a pending record.
pub(super) const INSERT_BINDING: &str = concat!(
    lua_helpers!(),
    r"
local now = NOW()
local expires = now + tonumber(ARGV[2])
local victim = nil
if redis.call('ZCOUNT', KEYS[3], '(' .. now, '+inf')
    + redis.call('ZCOUNT', KEYS[4], '(' .. now, '+inf') >= tonumber(ARGV[5]) then
  victim = OLDEST(KEYS[3], now)
end
if not redis.call('SET', KEYS[1], string.format('b%d', expires), 'NX', 'PX', ARGV[4]) then
  return 0
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[4], expires, ARGV[3])
if victim then
  EVICT(ARGV[6], KEYS[3], victim, now)
  return 2
end
return 1
"
);

/// Binds a code under the capacity bound, for an authorization that holds
/// no room yet (see [`Store::admit_binding`]), evicting a pending record
/// when the store is full. As in `INSERT_PENDING`, everything is read
/// before anything is written, and the mark is the first write.
///
/// KEYS: mark key, binding key, pending index, binding index.
/// ARGV: record, TTL in ms, capacity, index member, mark TTL in ms (not
/// below the TTL), tag.
/// Returns 0 when full, 1 when the code was bound already, 2 when written,
/// 3 when written after evicting a pending record.
pub(super) const ADMIT_BINDING: &str = concat!(
    lua_helpers!(),
    r"
local now = NOW()
local live = redis.call('ZCOUNT', KEYS[3], '(' .. now, '+inf')
  + redis.call('ZCOUNT', KEYS[4], '(' .. now, '+inf')
local victim = nil
if live >= tonumber(ARGV[3]) then
  victim = OLDEST(KEYS[3], now)
  if not victim then
    return 0
  end
end
local expires = now + tonumber(ARGV[2])
if not redis.call('SET', KEYS[1], string.format('b%d', expires), 'NX', 'PX', ARGV[5]) then
  return 1
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
if victim then
  EVICT(ARGV[6], KEYS[3], victim, now)
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
redis.call('ZADD', KEYS[4], expires, ARGV[4])
if victim then
  return 3
end
return 2
"
);

/// Takes a pending record, with its index entry and, when its source was
/// counted, its source entry and note; the source set is pruned, so that
/// it goes with its last live record. The set is named by the note, not
/// given in `KEYS` (see `lua_helpers`).
///
/// KEYS: pending key, pending index, source note. ARGV: index member.
/// Returns the record, or nil.
pub(super) const TAKE_PENDING: &str = r"
local record = redis.call('GETDEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local source = redis.call('GET', KEYS[3])
if source then
  local t = redis.call('TIME')
  redis.call('ZREM', source, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', source, '-inf',
    tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  redis.call('DEL', KEYS[3])
end
return record
";

/// Redeems a code: takes its live binding and marks it spent, or says what
/// its mark remembers. `GETDEL` comes first: as a write, it lets the mark's
/// rewrite through on a Redis past `maxmemory`.
///
/// KEYS: binding key, mark key.
/// Returns the record when the binding was live; otherwise 0 when there is
/// no mark, 1 when the code was spent, 2 when its binding expired.
pub(super) const REDEEM: &str = r"
local record = redis.call('GETDEL', KEYS[1])
local mark = redis.call('GET', KEYS[2])
if record then
  if mark then
    redis.call('SET', KEYS[2], 's' .. string.sub(mark, 2), 'KEEPTTL')
  end
  return record
end
if not mark then
  return 0
end
if string.sub(mark, 1, 1) == 'b' then
  return 2
end
return 1
";

/// Makes a spent binding live again until the binding's own expiry, read
/// from the mark, and marks it bound again. Does nothing when the code is
/// not spent or that expiry has passed. A mark of the earlier form (`1`,
/// spent as `s` alone) lived exactly as long as its binding: its TTL is
/// what the binding has left.
///
/// KEYS: mark key, binding key. ARGV: record.
/// Returns the binding's remaining lifetime in ms, or 0.
pub(super) const RESTORE: &str = r"
local mark = redis.call('GET', KEYS[1])
if not mark or string.sub(mark, 1, 1) ~= 's' then
  return 0
end
local expires = string.sub(mark, 2)
local left
if expires == '' then
  left = redis.call('PTTL', KEYS[1])
else
  expires = tonumber(expires)
  if not expires then
    return 0
  end
  local t = redis.call('TIME')
  left = expires - (tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end
if left <= 0 then
  return 0
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', left)
redis.call('SET', KEYS[1], 'b' .. string.sub(mark, 2), 'KEEPTTL')
return left
";

/// Prunes the indexes and counts them. KEYS: pending index, binding index.
pub(super) const STATS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
return { redis.call('ZCARD', KEYS[1]), redis.call('ZCARD', KEYS[2]) }
";
