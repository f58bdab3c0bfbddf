-- The number's side of issuing a code, in the number's hash tag: the resend cooldown and the
-- hourly limit, then the code's digest replaces any previous code. The all-traffic side
-- (budgets, fraud guard) ran before, in guard.lua.
-- On a single Redis it also writes the new verification's delivery record (in a Cluster that
-- key is in another slot, and the caller writes it next).
-- KEYS: 1 cooldown, 2 hourly counter, 3 code hash, 4 failures, 5 the delivery record (optional)
-- ARGV: 1 cooldown seconds, 2 hourly limit, 3 verification id, 4 digest, 5 code ttl,
--       6 the send time the fraud guard counted (ms; 0: none), then with KEYS[5]: 7 the
--       record's ttl (s), 8... its field/value pairs
-- Returns {outcome, limit, remaining, reset, replaced}: outcome is ok / cooldown / hourly; the
-- next three describe the hourly limit (for RateLimit-* headers, limit 0 when off) or the
-- refusing one; replaced is the verification id of the code this one replaced ('' if none).
local cooldown, hourly_limit = tonumber(ARGV[1]), tonumber(ARGV[2])

local function ttl_or(key, default)
  local t = redis.call('TTL', key)
  if t < 0 then return default end
  return t
end

if cooldown > 0 then
  -- In milliseconds: TTL rounds, and would let a request through in a cooldown's last 0.5 s.
  local ms = redis.call('PTTL', KEYS[1])
  if ms > 0 then return {'cooldown', 1, 0, math.ceil(ms / 1000), ''} end
end

local rate = {0, 0, 0}
if hourly_limit > 0 then
  local sent = tonumber(redis.call('GET', KEYS[2]) or '0')
  if sent >= hourly_limit then
    return {'hourly', hourly_limit, 0, ttl_or(KEYS[2], 3600), ''}
  end
  local n = redis.call('INCR', KEYS[2])
  if n == 1 then redis.call('EXPIRE', KEYS[2], 3600) end
  rate = {hourly_limit, hourly_limit - n, ttl_or(KEYS[2], 3600)}
end

if cooldown > 0 then
  redis.call('SET', KEYS[1], ARGV[3], 'EX', cooldown)
end
-- Replaces any previous code of this number: the old one stops working, and is never resent
-- (the caller removes its sealed job, which lives under the old verification's tag).
local old = redis.call('HGET', KEYS[3], 'vid') or ''
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], 'vid', ARGV[3], 'digest', ARGV[4])
if ARGV[6] ~= '0' then redis.call('HSET', KEYS[3], 'fgs', ARGV[6]) end
redis.call('EXPIRE', KEYS[3], ARGV[5])
-- Failed attempts survive replacement; keep them at least as long as the new code lives.
if redis.call('EXISTS', KEYS[4]) == 1 then redis.call('EXPIRE', KEYS[4], ARGV[5], 'GT') end
if KEYS[5] then
  redis.call('HSET', KEYS[5], unpack(ARGV, 8))
  redis.call('EXPIRE', KEYS[5], ARGV[7])
end
return {'ok', rate[1], rate[2], rate[3], old}
