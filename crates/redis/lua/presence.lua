-- The nodes sharing this Redis that are alive: KEYS[1] is a ZSET of node ids scored by
-- when their presence expires (ms). Expired nodes are dropped first.
-- ARGV: 1 op ('beat' | 'live'), 2 this node, 3 presence time (ms)
--   beat -> {} (this node present for ARGV[3] more)
--   live -> the live nodes
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[1] == 'beat' then
  local ttl = tonumber(ARGV[3])
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
  return {}
end
return redis.call('ZRANGE', KEYS[1], 0, -1)
