-- Counts a verified code as converted for the fraud guard, at its send time, in the `{global}`
-- hash tag (fail open: never blocks a verify; the caller ignores errors).
-- KEYS: 1 prefix verified, 2 country buckets
-- ARGV: 1 verification id, 2 send time (ms), 3 counters' ttl (seconds)
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HINCRBY', KEYS[2], 'v:' .. math.floor(tonumber(ARGV[2]) / 10000), 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
