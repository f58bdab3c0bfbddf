-- Second half of a verify, atomic: consumes the code if the caller's constant-time comparison
-- matched and the code is still the same one and not void; otherwise counts a failure.
-- KEYS: 1 code hash, 2 failures counter, 3 the code's sealed job (kept for a resend),
--       fraud guard: 4 prefix verified, 5 country buckets
-- ARGV: 1 verification id seen in the first half ('' if none), 2 matched (1/0),
--       3 max attempts, 4 failure counter ttl, 5 fraud counters' ttl (seconds)
-- Returns 1 when the code was consumed, else 0.
if ARGV[1] == '' or redis.call('HGET', KEYS[1], 'vid') ~= ARGV[1] then return 0 end
local max = tonumber(ARGV[3])
local fails = tonumber(redis.call('GET', KEYS[2]) or '0')
if fails >= max then
  redis.call('DEL', KEYS[1])
  return 0
end
if ARGV[2] == '1' then
  -- The fraud guard counts the send as converted, at its send time (fail open: never blocks a
  -- verify).
  local sent = redis.call('HGET', KEYS[1], 'fgs')
  if sent then
    pcall(function()
      redis.call('ZADD', KEYS[4], sent, ARGV[1])
      redis.call('HINCRBY', KEYS[5], 'v:' .. math.floor(tonumber(sent) / 10000), 1)
      redis.call('EXPIRE', KEYS[4], ARGV[5])
      redis.call('EXPIRE', KEYS[5], ARGV[5])
    end)
  end
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  return 1
end
fails = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
if fails >= max then redis.call('DEL', KEYS[1]) end
return 0
