-- One user's delivery receipt, recorded by every node (rules of agentwire_manager's
-- ReceiptStore): max only within the stored epoch, acked never beyond delivered, a record
-- of another epoch replaces the receipt.
-- KEYS: 1 receipt HASH e = epoch, d = delivered seq, a = acked seq (under the user's tag)
-- ARGV: 1 epoch, 2 delivered seq, 3 acked seq, 4 time to keep it without a record (ms)
-- Returns {delivered, acked} as stored.
local d, a = tonumber(ARGV[2]), tonumber(ARGV[3])
local stored = redis.call('HMGET', KEYS[1], 'e', 'd', 'a')
if stored[1] == ARGV[1] then
  d = math.max(d, tonumber(stored[2]) or 0)
  a = math.max(a, tonumber(stored[3]) or 0)
end
if a > d then
  d = a
end
-- %d keeps the seqs integers (no exponent) up to 2^53.
local ds, as = string.format('%d', d), string.format('%d', a)
redis.call('HSET', KEYS[1], 'e', ARGV[1], 'd', ds, 'a', as)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {ds, as}
