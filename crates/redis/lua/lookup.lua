-- The first acceptance of an event_id, while it is inside the dedupe window.
-- ARGV: 1 event_id, 2 dedupe window (ms).
-- Returns {epoch, seq, ts} or false.
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  return false
end
local v = redis.call('HGET', KEYS[3], ARGV[1])
if not v then
  return false
end
local seq, ts = dedupe_fields(v)
if ts < now_ms() - tonumber(ARGV[2]) then
  return false
end
return {epoch, seq, ts}
