-- One publisher's publish rate (GCRA), for every node: KEYS[1] holds the publisher's
-- theoretical arrival time (µs since the epoch, Redis's clock); it expires once the
-- bucket is full again, so an idle publisher leaves nothing behind.
-- ARGV: 1 events, 2 per second, 3 burst
--   -> {'taken'} | {'wait', µs until the events fit} | {'over'} (more than the burst)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n, per_second, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if n > burst then
  return {'over'}
end
local interval = 1000000 / per_second
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
  tat = now
end
local new_tat = tat + n * interval
local allow_at = new_tat - burst * interval
if allow_at > now then
  return {'wait', string.format('%d', math.ceil(allow_at - now))}
end
redis.call('SET', KEYS[1], string.format('%d', math.ceil(new_tat)), 'PX',
  math.ceil((new_tat - now) / 1000) + 1)
return {'taken'}
