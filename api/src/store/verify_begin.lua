-- First half of a verify: counts the call against the number's verify limit (whether or not it
-- has a code, so the limit reveals nothing) and returns the live code's record.
-- KEYS: 1 verify counter, 2 code hash
-- ARGV: 1 limit, 2 window seconds
-- Returns {outcome, limit, remaining, reset, vid, digest}; outcome is ok or limited.
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local remaining, reset = 0, 0
if limit > 0 then
  local n = redis.call('INCR', KEYS[1])
  if n == 1 then redis.call('EXPIRE', KEYS[1], window) end
  reset = redis.call('TTL', KEYS[1])
  if reset < 0 then reset = window end
  if n > limit then return {'limited', limit, 0, reset, '', ''} end
  remaining = limit - n
end
local rec = redis.call('HMGET', KEYS[2], 'vid', 'digest')
return {'ok', limit, remaining, reset, rec[1] or '', rec[2] or ''}
