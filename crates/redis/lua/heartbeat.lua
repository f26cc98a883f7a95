-- A heartbeat of one run (rule 12 of the broker contract): a run in progress takes it as a
-- sign of life for its stall timeout. Nothing is appended; the run's TTL is not extended.
-- KEYS: 1 the run's state key (see publish.lua).
-- Returns 'running', 'ended' or 'unknown'.
local s = redis.call('HGET', KEYS[1], 's')
if not s then
  return 'unknown'
elseif s ~= 'r' then
  return 'ended'
end
redis.call('HSET', KEYS[1], 'l', int(now_ms()))
return 'running'
