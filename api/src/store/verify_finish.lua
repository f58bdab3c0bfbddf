-- Second half of a verify, atomic in the number's hash tag: consumes the code if the caller's
-- constant-time comparison matched and the code is still the same one and not void; otherwise
-- counts a failure. (The caller then removes the consumed code's sealed job and counts the
-- conversion for the fraud guard, under their own tags.)
-- KEYS: 1 code hash, 2 failures counter
-- ARGV: 1 verification id seen in the first half ('' if none), 2 matched (1/0),
--       3 max attempts, 4 failure counter ttl
-- Returns {consumed (1/0), the send time the fraud guard counted (ms, 0 if none), exhausted
-- (1 when this failure used up the last attempt and voided the code)}.
if ARGV[1] == '' or redis.call('HGET', KEYS[1], 'vid') ~= ARGV[1] then return {0, 0, 0} end
local max = tonumber(ARGV[3])
local fails = tonumber(redis.call('GET', KEYS[2]) or '0')
if fails >= max then
  redis.call('DEL', KEYS[1])
  return {0, 0, 0}
end
if ARGV[2] == '1' then
  local sent = tonumber(redis.call('HGET', KEYS[1], 'fgs') or '0')
  redis.call('DEL', KEYS[1], KEYS[2])
  return {1, sent, 0}
end
fails = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
if fails >= max then
  redis.call('DEL', KEYS[1])
  return {0, 0, 1}
end
return {0, 0, 0}
