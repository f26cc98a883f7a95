-- Accepts a batch of one user's events, all or nothing, in one atomic step.
-- ARGV: 1 new epoch (used only if the stream is new), 2 max events kept, 3 max age (ms),
--       4 dedupe window (ms), 5 max dedupe entries, 6 idle TTL of meta (ms),
--       7 publish command (PUBLISH or SPUBLISH), 8 number of events n,
--       then six per event: event_id, digest, type, head, mid, tail, where the frame is
--       head .. seq .. mid .. ts .. tail (the pieces come from compose_frame).
-- Returns {'ok', epoch, new_epoch(0/1), trimmed, forgotten, seq1, ts1, dup1, ...}
--      or {'conflict', index (0-based), seq of the id's first acceptance}.
local max_age = tonumber(ARGV[3])
local dedupe_ms = tonumber(ARGV[4])
local n = tonumber(ARGV[8])
local now = now_ms()
local epoch, created = ensure_epoch(ARGV[1])
local state = redis.call('HMGET', KEYS[1], 'seq', 'ts')
local last = tonumber(state[1]) or 0
local ts = math.max(now, tonumber(state[2]) or 0)
local id_cutoff = now - dedupe_ms

-- Pass 1: duplicates and conflicts; fresh events get their seqs. Nothing is written.
local out = {}
local first_in_batch = {}
local next_seq = last
for i = 0, n - 1 do
  local b = 9 + 6 * i
  local id, digest = ARGV[b], ARGV[b + 1]
  local prior = redis.call('HGET', KEYS[3], id)
  local pseq, pts, pdigest
  if prior then
    pseq, pts, pdigest = dedupe_fields(prior)
    if pts < id_cutoff then
      prior = nil
    end
  end
  if prior then
    if pdigest ~= digest then
      return {'conflict', i, pseq}
    end
    out[i + 1] = {pseq, pts, 1}
  elseif first_in_batch[id] then
    local j = first_in_batch[id]
    if ARGV[9 + 6 * j + 1] ~= digest then
      return {'conflict', i, out[j + 1][1]}
    end
    out[i + 1] = {out[j + 1][1], out[j + 1][2], 1}
  else
    next_seq = next_seq + 1
    first_in_batch[id] = i
    out[i + 1] = {next_seq, ts, 0}
  end
end

-- Pass 2: append, remember, publish — in seq order, inside this one atomic step.
local len_before = redis.call('XLEN', KEYS[2])
local added = 0
local ts_s = int(ts)
for i = 0, n - 1 do
  if out[i + 1][3] == 0 then
    local b = 9 + 6 * i
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
  trimmed = len_before + added - redis.call('XLEN', KEYS[2])
  trimmed = trimmed + trim_age(now - max_age)
  forgotten = forget_ids(id_cutoff, tonumber(ARGV[5]), n + 64)
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
  redis.call('PEXPIRE', KEYS[4], ARGV[4])
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])

local reply = {'ok', epoch, created, trimmed, forgotten}
for i = 1, n do
  reply[#reply + 1] = out[i][1]
  reply[#reply + 1] = out[i][2]
  reply[#reply + 1] = out[i][3]
end
return reply
