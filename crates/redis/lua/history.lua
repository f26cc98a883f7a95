-- Reads a range of a user's history; creates the epoch when the stream is new, so the
-- epoch a connection is told at connect is the one the user's first event gets.
-- ARGV: 1 new epoch, 2 max age (ms), 3 idle TTL of meta (ms), 4 after (seq), 5 limit.
-- Returns {epoch, new_epoch(0/1), trimmed, last_seq, first_held_seq, entries}, where
-- first_held_seq is last_seq + 1 when nothing is held and entries are XRANGE replies.
local epoch, created = ensure_epoch(ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local trimmed = trim_age(now_ms() - tonumber(ARGV[2]))
local last = tonumber(redis.call('HGET', KEYS[1], 'seq')) or 0
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
local first_held = last + 1
if first then
  first_held = entry_seq_ts(first[1])
end
local after = tonumber(ARGV[4])
local limit = tonumber(ARGV[5])
local entries = {}
if limit > 0 and after < last then
  entries = redis.call('XRANGE', KEYS[2], int(after + 1), '+', 'COUNT', limit)
end
return {epoch, created, trimmed, last, first_held, entries}
