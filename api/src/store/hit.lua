-- One call counted against a fixed window: KEYS[1] the counter, ARGV[1] the window (s).
-- Returns {count, seconds until the window resets}.
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
local t = redis.call('TTL', KEYS[1])
if t < 0 then t = tonumber(ARGV[1]) end
return {n, t}
