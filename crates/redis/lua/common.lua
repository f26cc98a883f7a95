-- Shared by every agentwire script. KEYS are always, in this order:
--   1 meta    HASH  epoch, seq (newest seq), ts (newest ts)
--   2 stream  STREAM entry id '<seq>-<ts>', one field 'm' = '<type>\n<event_id>\n<frame>'
--   3 ids     HASH  event_id -> '<seq>:<ts>:<digest>' (dedupe entries)
--   4 order   ZSET  event_id scored by seq (dedupe entries in acceptance order)
--   5 channel the user's pub/sub channel
-- All five share the user's hash tag, so one script may touch them on Redis Cluster.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Integers are written with %d: Lua numbers are doubles, and tostring would switch to an
-- exponent past 14 digits.
local function int(n)
  return string.format('%d', n)
end

local function entry_seq_ts(id)
  local s, t = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(s), tonumber(t)
end

local function dedupe_fields(v)
  local s, t, d = string.match(v, '^(%d+):(%d+):(.*)$')
  return tonumber(s), tonumber(t), d
end

-- The user's epoch. When the stream is unknown (never used, expired, or Redis lost its
-- data) a new epoch starts, and whatever history or dedupe entry is left of an older one
-- is dropped: a seq never restarts under the same epoch.
local function ensure_epoch(new_epoch)
  local epoch = redis.call('HGET', KEYS[1], 'epoch')
  if epoch then
    return epoch, 0
  end
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
  redis.call('HSET', KEYS[1], 'epoch', new_epoch, 'seq', 0, 'ts', 0)
  return new_epoch, 1
end

-- Drops history entries accepted before `cutoff` (ms). ts never decreases along seq, so
-- they are a prefix of the stream: a binary search over seq finds its end. Returns how
-- many were dropped.
local function trim_age(cutoff)
  local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
  if not first then
    return 0
  end
  local lo, first_ts = entry_seq_ts(first[1])
  if first_ts >= cutoff then
    return 0
  end
  local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
  local hi, last_ts = entry_seq_ts(last[1])
  if last_ts < cutoff then
    local n = redis.call('XLEN', KEYS[2])
    redis.call('DEL', KEYS[2])
    return n
  end
  -- The first entry at or after lo is old, the first at or after hi is not.
  while hi - lo > 1 do
    local mid = math.floor((lo + hi) / 2)
    local e = redis.call('XRANGE', KEYS[2], int(mid), '+', 'COUNT', 1)[1]
    local _, ts = entry_seq_ts(e[1])
    if ts < cutoff then
      lo = mid
    else
      hi = mid
    end
  end
  return redis.call('XTRIM', KEYS[2], 'MINID', int(hi))
end

-- Forgets dedupe entries beyond the count bound, then up to `budget` entries older than
-- `cutoff`, oldest first. Returns how many were forgotten.
local function forget_ids(cutoff, max_ids, budget)
  local forgotten = 0
  local excess = redis.call('ZCARD', KEYS[4]) - max_ids
  if excess > 0 then
    local ids = redis.call('ZRANGE', KEYS[4], 0, excess - 1)
    for i = 1, #ids, 500 do
      redis.call('HDEL', KEYS[3], unpack(ids, i, math.min(i + 499, #ids)))
    end
    redis.call('ZREMRANGEBYRANK', KEYS[4], 0, excess - 1)
    forgotten = excess
  end
  while budget > 0 do
    local oldest = redis.call('ZRANGE', KEYS[4], 0, 0)[1]
    if not oldest then
      break
    end
    local v = redis.call('HGET', KEYS[3], oldest)
    if v then
      local _, ts = dedupe_fields(v)
      if ts >= cutoff then
        break
      end
      redis.call('HDEL', KEYS[3], oldest)
    end
    redis.call('ZREM', KEYS[4], oldest)
    forgotten = forgotten + 1
    budget = budget - 1
  end
  return forgotten
end
