-- First half of a verify, in the number's hash tag (the per-IP verify limit was counted before,
-- in a call of its own): counts the call against the number's limit, whether or not it has a
-- code (so the limit reveals nothing), and returns the live code's record.
-- KEYS: 1 number's verify counter, 2 code hash
-- ARGV: 1 number limit, 2 number window seconds
-- Returns {outcome, limit, remaining, reset, vid, digest}; outcome is ok or number, and
-- limit/remaining/reset describe the number's limit (limit 0 when off).
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local rate = {0, 0, 0}
if limit > 0 then
  local n = redis.call('INCR', KEYS[1])
  if n == 1 then redis.call('EXPIRE', KEYS[1], window) end
  local reset = redis.call('TTL', KEYS[1])
  if reset < 0 then reset = window end
  if n > limit then return {'number', limit, 0, reset, '', ''} end
  rate = {limit, limit - n, reset}
end
local rec = redis.call('HMGET', KEYS[2], 'vid', 'digest')
return {'ok', rate[1], rate[2], rate[3], rec[1] or '', rec[2] or ''}
