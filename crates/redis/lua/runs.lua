-- The run registry: what run state every user's slot holds, counted in one place, so the
-- run-state bounds hold across the cluster. KEYS, all under one hash tag:
--   1 runs     HASH member -> '<live 0|1>:<bytes>:<token>:<holds>:<revived 0|1>:<owner>'
--   2 expiry   ZSET member scored by when the registry forgets it (ms)
--   3 finished ZSET member scored by when its run ended (ms): the order they make room
--   4 owners   HASH owner -> '<runs in progress>:<their bytes>'
--   5 totals   HASH runs, live, bytes, live_bytes
-- A member is the name of the run's state key in its user's slot. `bytes` is, for a run in
-- progress, its reservation (the room its state may take without asking again), for a
-- finished run its base size. `token` names the reservation; the run's state key holds it
-- once a publish started the run on it. `holds` counts the callers handed the token
-- (the maker, and every 'exists' since) that have not dropped it: a caller whose publish
-- did not start the run on the token drops it, one that did keeps its hold. When the last
-- hold is dropped nobody started the run: the reservation is forgotten, or, when it was a
-- finished run's taken again (`revived`), that run is finished again.
-- ARGV: 1 op, 2 member, 3 token, 4 max runs, 5 max bytes, 6 max runs per owner,
--       7 max bytes per owner, 8 run ttl (ms), then per op:
--   reserve: 9 owner, 10 base bytes, 11 slack
--            -> {'created'|'revived'|'exists', token, allowance, totals.., evicted..}
--               or {'full', bound}
--   grow:    9 needed bytes, 10 slack -> {'ok', allowance, totals..} or {'gone'} or
--               {'full', bound}
--   finish:  9 base bytes -> {'ok', totals..}
--   drop:    9 base bytes -> {'ok', totals..}
--   refresh -> {'ok', totals..}
-- Every reply after the op's own fields carries the totals (runs, live, bytes) and how
-- many members expired in this call; reserve adds the members it evicted.
local op, member, token = ARGV[1], ARGV[2], ARGV[3]
local max_runs, max_bytes = tonumber(ARGV[4]), tonumber(ARGV[5])
local max_owner_runs, max_owner_bytes = tonumber(ARGV[6]), tonumber(ARGV[7])
local ttl = tonumber(ARGV[8])
local now = now_ms()
-- The registry forgets a member half a ttl after its state key would expire at the
-- latest (the key is refreshed on every event, the registry every half ttl).
local keep_until = now + ttl + math.floor(ttl / 2)

local function parse(v)
  local live, bytes, tok, holds, revived, owner =
    string.match(v, '^(%d):(%d+):([^:]*):(%d+):(%d):(.*)$')
  return live == '1', tonumber(bytes), tok, owner, tonumber(holds), revived == '1'
end

local function value(live, bytes, tok, holds, revived, owner)
  return (live and '1' or '0') .. ':' .. int(bytes) .. ':' .. tok .. ':' .. int(holds)
    .. ':' .. (revived and '1' or '0') .. ':' .. owner
end

local function total(field)
  return tonumber(redis.call('HGET', KEYS[5], field)) or 0
end

local function add_total(field, n)
  if n ~= 0 then
    redis.call('HINCRBY', KEYS[5], field, n)
  end
end

local function owner_use(owner)
  local v = redis.call('HGET', KEYS[4], owner)
  if not v then
    return 0, 0
  end
  local runs, bytes = string.match(v, '^(%d+):(%d+)$')
  return tonumber(runs), tonumber(bytes)
end

local function add_owner(owner, runs, bytes)
  local r, b = owner_use(owner)
  r, b = r + runs, b + bytes
  if r <= 0 and b <= 0 then
    redis.call('HDEL', KEYS[4], owner)
  else
    redis.call('HSET', KEYS[4], owner, int(r) .. ':' .. int(b))
  end
end

-- Removes a member and everything it counts for.
local function drop(m)
  local v = redis.call('HGET', KEYS[1], m)
  redis.call('HDEL', KEYS[1], m)
  redis.call('ZREM', KEYS[2], m)
  redis.call('ZREM', KEYS[3], m)
  if not v then
    return
  end
  local live, bytes, _, owner = parse(v)
  add_total('runs', -1)
  add_total('bytes', -bytes)
  if live then
    add_total('live', -1)
    add_total('live_bytes', -bytes)
    add_owner(owner, -1, -bytes)
  end
end

-- Forgets up to 64 members past their time.
local expired = 0
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 64)
for _, m in ipairs(stale) do
  drop(m)
  expired = expired + 1
end

local function touch_keys()
  for i = 1, 5 do
    redis.call('PEXPIRE', KEYS[i], 2 * ttl)
  end
end

local function with_totals(reply)
  reply[#reply + 1] = total('runs')
  reply[#reply + 1] = total('live')
  reply[#reply + 1] = total('bytes')
  reply[#reply + 1] = expired
  touch_keys()
  return reply
end

-- The bound that `runs` more runs and `bytes` more bytes in progress of `owner` break.
local function refusal(owner, runs, bytes)
  local o_runs, o_bytes = owner_use(owner)
  if runs > 0 and total('live') + runs > max_runs then
    return 'runs'
  elseif total('live_bytes') + bytes > max_bytes then
    return 'bytes'
  elseif runs > 0 and o_runs + runs > max_owner_runs then
    return 'owner_runs'
  elseif o_bytes + bytes > max_owner_bytes then
    return 'owner_bytes'
  end
  return nil
end

-- Up to `slack` more bytes beyond `pending` more, as far as the bounds leave room.
local function room(owner, pending, slack)
  local _, o_bytes = owner_use(owner)
  local free = math.min(max_bytes - total('live_bytes'), max_owner_bytes - o_bytes) - pending
  return math.max(0, math.min(slack, free))
end

local current = redis.call('HGET', KEYS[1], member)

if op == 'reserve' then
  local owner, base, slack = ARGV[9], tonumber(ARGV[10]), tonumber(ARGV[11])
  local kind = 'created'
  if current then
    local live, bytes, tok, o, holds, revived = parse(current)
    if live then
      redis.call('HSET', KEYS[1], member, value(true, bytes, tok, holds + 1, revived, o))
      return with_totals({'exists', tok, bytes})
    end
    kind = 'revived'
  end
  local bound = refusal(owner, 1, base)
  if bound then
    return with_totals({'full', bound})
  end
  if current then
    drop(member)
  end
  local allowance = base + room(owner, base, slack)
  redis.call('HSET', KEYS[1], member, value(true, allowance, token, 1, kind == 'revived', owner))
  redis.call('ZADD', KEYS[2], keep_until, member)
  add_total('runs', 1)
  add_total('live', 1)
  add_total('bytes', allowance)
  add_total('live_bytes', allowance)
  add_owner(owner, 1, allowance)
  -- Make room: finished runs go, oldest first.
  local evicted = {}
  while total('runs') > max_runs or total('bytes') > max_bytes do
    local oldest = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
    if not oldest then
      break
    end
    drop(oldest)
    evicted[#evicted + 1] = oldest
  end
  local reply = with_totals({kind, token, allowance})
  for _, m in ipairs(evicted) do
    reply[#reply + 1] = m
  end
  return reply
end

-- The other operations apply only to the reservation `token` names.
local live, bytes, tok, owner, holds, revived
if current then
  live, bytes, tok, owner, holds, revived = parse(current)
end
if not current or tok ~= token then
  if op == 'grow' then
    return {'gone'}
  end
  return with_totals({'ok'})
end

if op == 'grow' then
  local needed, slack = tonumber(ARGV[9]), tonumber(ARGV[10])
  if not live then
    return {'gone'}
  end
  if needed > bytes then
    local bound = refusal(owner, 0, needed - bytes)
    if bound then
      return with_totals({'full', bound})
    end
    local allowance = needed + room(owner, needed - bytes, slack)
    redis.call('HSET', KEYS[1], member, value(true, allowance, token, holds, revived, owner))
    add_total('bytes', allowance - bytes)
    add_total('live_bytes', allowance - bytes)
    add_owner(owner, 0, allowance - bytes)
    bytes = allowance
  end
  redis.call('ZADD', KEYS[2], keep_until, member)
  return with_totals({'ok', bytes})
end

-- Makes the run finished, counted at `base`.
local function finish(base)
  if live then
    redis.call('HSET', KEYS[1], member, value(false, base, token, 0, false, owner))
    redis.call('ZADD', KEYS[3], now, member)
    add_total('live', -1)
    add_total('live_bytes', -bytes)
    add_total('bytes', base - bytes)
    add_owner(owner, -1, -bytes)
  end
  redis.call('ZADD', KEYS[2], keep_until, member)
end

if op == 'finish' then
  finish(tonumber(ARGV[9]))
  return with_totals({'ok'})
elseif op == 'drop' then
  if live and holds <= 1 then
    if revived then
      finish(tonumber(ARGV[9]))
    else
      drop(member)
    end
  elseif live then
    redis.call('HSET', KEYS[1], member, value(true, bytes, token, holds - 1, revived, owner))
  end
  return with_totals({'ok'})
elseif op == 'refresh' then
  redis.call('ZADD', KEYS[2], keep_until, member)
  return with_totals({'ok'})
end
return redis.error_reply('unknown run registry operation ' .. tostring(op))
