-- Connection leases of one user: the per-user connection limit for the whole cluster.
-- KEYS, under the user's hash tag:
--   1 leases HASH  member -> expiry (ms) of a live lease, 'x' .. expiry of an evicted one
--                  (kept until it would have expired, so a renewal can tell evicted from
--                  expired), and '#' -> the admission counter
--   2 order  ZSET  live members scored by admission (the counter): the oldest first
-- A member is '<node>/<connection>'; node ids hold no '/'.
-- ARGV: 1 op, 2 lease time (ms), 3 limit, 4 most evicted leases remembered, then per op:
--   admit:   5 policy ('evict' | 'reject'), 6 member
--            -> {'admitted', evicted members..} or {'rejected'}
--   renew:   5.. members -> {lost count, lost.., restored..}
--   release: 5 member -> {'ok'}
-- Every reply is prefixed by the number of evicted leases forgotten for ARGV 4.
local op, lease, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local max_evicted = tonumber(ARGV[4])
local now = now_ms()

-- Forgets expired leases, live or evicted, and unexpired evicted ones beyond the first
-- max_evicted (a user reconnecting in a loop must not grow the hash; a renewal that finds
-- no record of an evicted lease treats it as expired, which the limit still bounds).
local evicted_kept, forgotten = 0, 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local m, v = all[i], all[i + 1]
  if m ~= '#' then
    local x, digits = string.match(v, '^(x?)(%d+)$')
    local until_ms = tonumber(digits)
    local forget = not until_ms or until_ms <= now
    if not forget and x == 'x' then
      evicted_kept = evicted_kept + 1
      if evicted_kept > max_evicted then
        forget = true
        forgotten = forgotten + 1
      end
    end
    if forget then
      redis.call('HDEL', KEYS[1], m)
      redis.call('ZREM', KEYS[2], m)
    end
  end
end

local function answer(reply)
  table.insert(reply, 1, forgotten)
  return reply
end

local function hold(member)
  redis.call('HSET', KEYS[1], member, int(now + lease))
end

local function add(member)
  local n = redis.call('HINCRBY', KEYS[1], '#', 1)
  redis.call('ZADD', KEYS[2], n, member)
  hold(member)
end

local function keep_keys()
  -- Both keys outlive every lease they hold; an idle user's leases vanish with them.
  redis.call('PEXPIRE', KEYS[1], lease * 2)
  redis.call('PEXPIRE', KEYS[2], lease * 2)
end

if op == 'admit' then
  local policy, member = ARGV[5], ARGV[6]
  if redis.call('ZSCORE', KEYS[2], member) then
    hold(member)
    keep_keys()
    return answer({'admitted'})
  end
  local n = redis.call('ZCARD', KEYS[2])
  local reply = {'admitted'}
  if n >= limit then
    if policy == 'reject' then
      return answer({'rejected'})
    end
    local victims = redis.call('ZRANGE', KEYS[2], 0, n - math.max(limit, 1))
    for _, v in ipairs(victims) do
      redis.call('ZREM', KEYS[2], v)
      local until_ms = redis.call('HGET', KEYS[1], v)
      redis.call('HSET', KEYS[1], v, 'x' .. until_ms)
      reply[#reply + 1] = v
    end
  end
  add(member)
  keep_keys()
  return answer(reply)
elseif op == 'renew' then
  local lost, restored = {}, {}
  for i = 5, #ARGV do
    local member = ARGV[i]
    if redis.call('ZSCORE', KEYS[2], member) then
      hold(member)
    elseif redis.call('HGET', KEYS[1], member) then
      redis.call('HDEL', KEYS[1], member)
      lost[#lost + 1] = member
    elseif redis.call('ZCARD', KEYS[2]) < limit then
      add(member)
      restored[#restored + 1] = member
    else
      lost[#lost + 1] = member
    end
  end
  keep_keys()
  local reply = {#lost}
  for _, m in ipairs(lost) do reply[#reply + 1] = m end
  for _, m in ipairs(restored) do reply[#reply + 1] = m end
  return answer(reply)
elseif op == 'release' then
  local member = ARGV[5]
  redis.call('HDEL', KEYS[1], member)
  redis.call('ZREM', KEYS[2], member)
  return answer({'ok'})
end
return redis.error_reply('unknown lease op ' .. tostring(op))
