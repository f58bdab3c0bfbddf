-- First half of a verify: counts the call against the client's per-IP verify limit, then the
-- number's (whether or not it has a code, so the limit reveals nothing), and returns the live
-- code's record. A call refused per IP does not count against the number.
-- KEYS: 1 number's verify counter, 2 code hash, 3 client's verify counter
-- ARGV: 1 number limit, 2 number window seconds, 3 ip limit (per 60 s)
-- Returns {outcome, limit, remaining, reset, vid, digest}; outcome is ok, ip or number, and
-- limit/remaining/reset describe the tightest limit.
local limit, window, ip_limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])

local function hit(key, max, seconds)
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('EXPIRE', key, seconds) end
  local reset = redis.call('TTL', key)
  if reset < 0 then reset = seconds end
  return n, reset
end

local best = {0, -1, 0}
if ip_limit > 0 then
  local n, reset = hit(KEYS[3], ip_limit, 60)
  if n > ip_limit then return {'ip', ip_limit, 0, reset, '', ''} end
  best = {ip_limit, ip_limit - n, reset}
end
if limit > 0 then
  local n, reset = hit(KEYS[1], limit, window)
  if n > limit then return {'number', limit, 0, reset, '', ''} end
  if best[2] < 0 or limit - n < best[2] then best = {limit, limit - n, reset} end
end
if best[2] < 0 then best[2] = 0 end
local rec = redis.call('HMGET', KEYS[2], 'vid', 'digest')
return {'ok', best[1], best[2], best[3], rec[1] or '', rec[2] or ''}
