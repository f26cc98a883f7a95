-- Accepts a batch of one user's events, all or nothing, in one atomic step, checking the
-- run of every guarded event (the lifecycle of agentwire_protocol::RunState, mirrored
-- here) in the same step.
-- KEYS: 1-5 as in common.lua, then the state key of each run the batch's guarded events
--       touch (HASH s = status r|c|f, n = open calls, b = bytes, a = allowance,
--       k = reservation token, o = owner, f = when the registry was last told (ms),
--       l = its last event or heartbeat (ms), w = its own stall timeout (ms; '' none),
--       t:<tool_call_id> = 1 per open call, nm = open messages, m:<message_id> = 1 per
--       open message).
-- ARGV: 1 new epoch (used only if the stream is new), 2 max events kept, 3 max age (ms),
--       4 dedupe window (ms), 5 max dedupe entries, 6 idle TTL of meta (ms),
--       7 publish command (PUBLISH or SPUBLISH), 8 number of events n,
--       9 run ttl (ms), 10 bytes per open tool call (or message) beyond its id, 11 most
--       open tool calls, 12 number of runs m, 13 most open messages,
--       then five per run: reservation token ('' none), allowance granted ('' none),
--       refusal of a new run ('' none, else the bound's name), owner, base bytes;
--       then nine per event: event_id, digest, type, head, mid, tail (the frame is
--       head .. seq .. mid .. ts .. tail, pieces of compose_frame), run (1-based; 0 for an
--       unguarded event), step (s start, t think, o open, c close, d message delta,
--       m message completed, e end, x stall claim), step argument (the tool call or
--       message id; for s the run's own stall timeout in ms or ''; for e the outcome, c or
--       f; for x the outcome then the claim's stall timeout in ms, e.g. f120000).
-- Returns {'ok', epoch, new_epoch(0/1), trimmed, forgotten, seq1, ts1, dup1, ...,
--          then per run: token, started(0/1), ended(0/1), refresh(0/1)}
--      or {'conflict', index (0-based), seq of the id's first acceptance}
--      or {'violation', index, name, terminal status (c/f) for AfterTerminal}
--      or {'full', index, bound} (a new run the registry refused)
--      or {'active', index, ms until the run stalls, -1 never} (a stall claim on a run
--         that had an event or heartbeat within its stall timeout)
--      or {'grow', then per run needing more room: run, bytes needed, index of the first
--         event needing it, the run's token, its owner}: nothing was written; ask the
--         registry for the room and call again.
local max_age = tonumber(ARGV[3])
local dedupe_ms = tonumber(ARGV[4])
local n = tonumber(ARGV[8])
local run_ttl = tonumber(ARGV[9])
local call_bytes = tonumber(ARGV[10])
local max_open = tonumber(ARGV[11])
local m = tonumber(ARGV[12])
local max_messages = tonumber(ARGV[13])
local first_event = 14 + 5 * m
local now = now_ms()

-- ARGV index of run j's first field.
local function run_arg(j)
  return 14 + 5 * (j - 1)
end

-- The state of run j as the batch leaves it so far.
local runs = {}
local function run(j)
  local r = runs[j]
  if r then
    return r
  end
  local v = redis.call('HMGET', KEYS[5 + j], 's', 'n', 'b', 'a', 'k', 'o', 'f', 'nm', 'l', 'w')
  r = {
    s = v[1], n = tonumber(v[2]) or 0, b = tonumber(v[3]) or 0, a = tonumber(v[4]) or 0,
    k = v[5] or '', o = v[6] or '', f = tonumber(v[7]) or 0, nm = tonumber(v[8]) or 0,
    l = tonumber(v[9]) or 0, w = v[10] or '',
    opened = {}, closed = {}, changed = false, started = false, ended = false,
    touched = false,
  }
  local grant = ARGV[run_arg(j) + 1]
  if grant ~= '' then
    r.a = math.max(r.a, tonumber(grant))
  end
  runs[j] = r
  return r
end

-- Whether the tool call or message of `field` ('t:<id>' or 'm:<id>') is open in run j.
local function is_open(r, j, field)
  if r.opened[field] then
    return true
  elseif r.closed[field] or r.started then
    return false
  end
  return redis.call('HEXISTS', KEYS[5 + j], field) == 1
end

-- Room a run needs beyond its allowance: run -> {bytes, index of the first event}.
local grow = {}
local growing = false

-- Opens the tool call or message of `field` ('t:<id>' or 'm:<id>', id `arg`) in run j for
-- event i: its bytes count, asking the registry for room beyond the run's allowance.
local function open_item(r, j, i, field, arg)
  local cost = call_bytes + #arg
  if r.b + cost > r.a then
    local g = grow[j]
    if not g then
      grow[j] = {r.b + cost, i}
    elseif r.b + cost > g[1] then
      g[1] = r.b + cost
    end
    growing = true
  end
  r.b = r.b + cost
  r.opened[field], r.closed[field] = true, nil
  r.changed = true
end

-- Closes the open tool call or message of `field` (id `arg`) in run j.
local function close_item(r, field, arg)
  r.b = r.b - (call_bytes + #arg)
  r.opened[field], r.closed[field] = nil, true
  r.changed = true
end

-- Applies event i's step to run j; returns the refusal, or nil.
local function step(i, j, code, arg)
  local r = run(j)
  if r.s == 'c' or r.s == 'f' then
    return {'violation', i, 'AfterTerminal', r.s}
  end
  if not r.s then
    if code ~= 's' then
      return {'violation', i, 'NotStarted', ''}
    end
    local b = run_arg(j)
    if ARGV[b + 2] ~= '' then
      return {'full', i, ARGV[b + 2]}
    end
    r.s, r.n, r.nm, r.b = 'r', 0, 0, tonumber(ARGV[b + 4])
    r.k, r.o, r.f = ARGV[b], ARGV[b + 3], now
    r.l, r.w = now, arg
    r.started, r.changed = true, true
    return nil
  end
  if code == 'x' then
    -- A stall claim: only a run silent for its own stall timeout (else the claim's) ends.
    local timeout = tonumber(r.w) or tonumber(string.sub(arg, 2))
    if timeout == 0 then
      return {'active', i, -1}
    end
    local idle = now - r.l
    if idle < timeout then
      return {'active', i, timeout - idle}
    end
    code, arg = 'e', string.sub(arg, 1, 1)
  end
  r.l, r.touched = now, true
  if code == 's' then
    return {'violation', i, 'AlreadyStarted', ''}
  elseif code == 'o' then
    local field = 't:' .. arg
    if is_open(r, j, field) then
      return {'violation', i, 'DuplicateToolCall', ''}
    end
    if r.n >= max_open then
      return {'violation', i, 'TooManyOpenToolCalls', ''}
    end
    open_item(r, j, i, field, arg)
    r.n = r.n + 1
  elseif code == 'c' then
    local field = 't:' .. arg
    if not is_open(r, j, field) then
      return {'violation', i, 'UnknownToolCall', ''}
    end
    close_item(r, field, arg)
    r.n = r.n - 1
  elseif code == 'd' then
    -- A delta into an open message changes nothing; the first one opens it.
    local field = 'm:' .. arg
    if not is_open(r, j, field) then
      if r.nm >= max_messages then
        return {'violation', i, 'TooManyOpenMessages', ''}
      end
      open_item(r, j, i, field, arg)
      r.nm = r.nm + 1
    end
  elseif code == 'm' then
    local field = 'm:' .. arg
    if not is_open(r, j, field) then
      return {'violation', i, 'UnknownMessage', ''}
    end
    close_item(r, field, arg)
    r.nm = r.nm - 1
  elseif code == 'e' then
    r.s, r.n, r.nm, r.b = arg, 0, 0, tonumber(ARGV[run_arg(j) + 4])
    r.opened, r.closed = {}, {}
    r.ended, r.changed = true, true
  end
  return nil
end

local function grow_reply()
  local reply = {'grow'}
  for j, g in pairs(grow) do
    reply[#reply + 1] = j
    reply[#reply + 1] = g[1]
    reply[#reply + 1] = g[2]
    reply[#reply + 1] = runs[j].k
    reply[#reply + 1] = runs[j].o
  end
  return reply
end

-- The epoch and the newest seq and ts in one read; a stream that is new starts at 0.
local state = redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'ts')
local epoch, created = state[1], 0
if not epoch then
  epoch, created = ensure_epoch(ARGV[1])
  state = {epoch, 0, 0}
end
local last = tonumber(state[2]) or 0
local ts = math.max(now, tonumber(state[3]) or 0)
local id_cutoff = now - dedupe_ms

-- Pass 1: duplicates, conflicts and runs, event by event in order; fresh events get their
-- seqs. Nothing is written.
local out = {}
local first_in_batch = {}
local next_seq = last
for i = 0, n - 1 do
  local b = first_event + 9 * i
  local id, digest = ARGV[b], ARGV[b + 1]
  local prior = redis.call('HGET', KEYS[3], id)
  local pseq, pts, pdigest
  if prior then
    pseq, pts, pdigest = dedupe_fields(prior)
    if pts < id_cutoff then
      prior = nil
    end
  end
  local refusal
  if prior then
    if pdigest ~= digest then
      refusal = {'conflict', i, pseq}
    else
      out[i + 1] = {pseq, pts, 1}
    end
  elseif first_in_batch[id] then
    local j = first_in_batch[id]
    if ARGV[first_event + 9 * j + 1] ~= digest then
      refusal = {'conflict', i, out[j + 1][1]}
    else
      out[i + 1] = {out[j + 1][1], out[j + 1][2], 1}
    end
  else
    -- Fresh: its run is checked (dedupe comes first).
    local j = tonumber(ARGV[b + 6])
    if j > 0 then
      refusal = step(i, j, ARGV[b + 7], ARGV[b + 8])
    end
    if not refusal then
      next_seq = next_seq + 1
      first_in_batch[id] = i
      out[i + 1] = {next_seq, ts, 0}
    end
  end
  if refusal then
    -- An event before this one needs room the registry may refuse: that comes first.
    if growing then
      return grow_reply()
    end
    return refusal
  end
end
if growing then
  return grow_reply()
end

-- Pass 2: append, remember, publish — in seq order, inside this one atomic step.
local len_before = redis.call('XLEN', KEYS[2])
local added = 0
local ts_s = int(ts)
for i = 0, n - 1 do
  if out[i + 1][3] == 0 then
    local b = first_event + 9 * i
    local seq_s = int(out[i + 1][1])
    local entry = ARGV[b + 2] .. '\n' .. ARGV[b] .. '\n'
      .. ARGV[b + 3] .. seq_s .. ARGV[b + 4] .. ts_s .. ARGV[b + 5]
    redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], seq_s .. '-' .. ts_s, 'm', entry)
    redis.call('HSET', KEYS[3], ARGV[b], seq_s .. ':' .. ts_s .. ':' .. ARGV[b + 1])
    redis.call('ZADD', KEYS[4], seq_s, ARGV[b])
    redis.call(ARGV[7], KEYS[5], seq_s .. '\n' .. ts_s .. '\n' .. epoch .. '\n' .. entry)
    added = added + 1
  end
end

local trimmed = 0
local forgotten = 0
if added > 0 then
  redis.call('HSET', KEYS[1], 'seq', int(next_seq), 'ts', ts_s)
  -- XADD trims to exactly MAXLEN, so the count trimmed follows without a second XLEN.
  trimmed = math.max(0, len_before + added - tonumber(ARGV[2]))
  trimmed = trimmed + trim_age(now - max_age)
  forgotten = forget_ids(id_cutoff, tonumber(ARGV[5]), n + 64)
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
  redis.call('PEXPIRE', KEYS[4], ARGV[4])
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])

-- The runs the fresh events moved, and when the registry should hear of them again.
local run_reply = {}
for j = 1, m do
  local r = runs[j]
  local refresh = 0
  if r and r.s then
    local key = KEYS[5 + j]
    if r.s == 'r' and not r.started and now - r.f >= run_ttl / 2 then
      r.f, r.changed, refresh = now, true, 1
    end
    if r.ended then
      redis.call('DEL', key)
    end
    if r.changed then
      redis.call('HSET', key, 's', r.s, 'n', int(r.n), 'b', int(r.b), 'a', int(r.a),
        'k', r.k, 'o', r.o, 'f', int(r.f), 'nm', int(r.nm), 'l', int(r.l), 'w', r.w)
      for field in pairs(r.opened) do
        redis.call('HSET', key, field, 1)
      end
      if not r.ended then
        for field in pairs(r.closed) do
          redis.call('HDEL', key, field)
        end
      end
    elseif r.touched then
      redis.call('HSET', key, 'l', int(r.l))
    end
    redis.call('PEXPIRE', key, run_ttl)
  end
  run_reply[#run_reply + 1] = (r and r.k) or ''
  run_reply[#run_reply + 1] = (r and r.started) and 1 or 0
  run_reply[#run_reply + 1] = (r and r.ended) and 1 or 0
  run_reply[#run_reply + 1] = refresh
end

local reply = {'ok', epoch, created, trimmed, forgotten}
for i = 1, n do
  reply[#reply + 1] = out[i][1]
  reply[#reply + 1] = out[i][2]
  reply[#reply + 1] = out[i][3]
end
for _, v in ipairs(run_reply) do
  reply[#reply + 1] = v
end
return reply
