-- Counts a verified code as converted for the fraud guard, at its send time, in the `{global}`
-- hash tag (fail open: never blocks a verify; the caller ignores errors). A code verified while
-- its prefix is under an automatic block shows a real user there: the block is lifted and the
-- prefix's counts start afresh (else the next request would block it again at once).
-- KEYS: 1 prefix verified, 2 country buckets, 3 prefix block, 4 blocked index, 5 prefix sends,
--       6 prefix clients, 7 prefix trickle counter
-- ARGV: 1 verification id, 2 send time (ms), 3 counters' ttl (seconds), 4 prefix
-- Returns 1, or 2 when a block was lifted.
redis.call('HINCRBY', KEYS[2], 'v:' .. math.floor(tonumber(ARGV[2]) / 10000), 1)
redis.call('EXPIRE', KEYS[2], ARGV[3])
if redis.call('EXISTS', KEYS[3]) == 1 and redis.call('HEXISTS', KEYS[3], 'manual') == 0 then
  redis.call('DEL', KEYS[1], KEYS[3], KEYS[5], KEYS[6], KEYS[7])
  redis.call('ZREM', KEYS[4], ARGV[4])
  return 2
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
