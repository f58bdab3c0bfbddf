-- Issues a code for one number in a single round trip: applies the per-IP, cooldown, hourly and
-- send-budget limits, then stores the code's digest and the "queued" delivery state. Budgets
-- are checked before any is counted, so a refused request spends none of them.
-- KEYS: 1 ip counter, 2 cooldown, 3 hourly counter, 4 code hash, 5 status hash, 6 failures,
--       7 global hourly counter, 8 country hourly counter
-- ARGV: 1 ip limit, 2 cooldown seconds, 3 hourly limit, 4 verification id, 5 digest,
--       6 code ttl, 7 status ttl, 8 now (unix seconds), 9 global hourly limit,
--       10 country hourly limit, 11 key prefix (for the replaced code's sealed job)
-- Returns {outcome, limit, remaining, reset}: outcome is ok / ip / cooldown / hourly / global /
-- country, and the other three describe the tightest per-client limit (for RateLimit-* headers).
local ip_limit, cooldown, hourly_limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local global_limit, country_limit = tonumber(ARGV[9]), tonumber(ARGV[10])

local function ttl_or(key, default)
  local t = redis.call('TTL', key)
  if t < 0 then return default end
  return t
end

local function count(key)
  return tonumber(redis.call('GET', key) or '0')
end

local function spend(key)
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('EXPIRE', key, 3600) end
  return n
end

local best = {'ok', 0, -1, 0}
local function consider(limit, remaining, reset)
  if best[3] < 0 or remaining < best[3] then best = {'ok', limit, remaining, reset} end
end

if ip_limit > 0 then
  local n = redis.call('INCR', KEYS[1])
  if n == 1 then redis.call('EXPIRE', KEYS[1], 60) end
  local reset = ttl_or(KEYS[1], 60)
  if n > ip_limit then return {'ip', ip_limit, 0, reset} end
  consider(ip_limit, ip_limit - n, reset)
end

if cooldown > 0 then
  local t = redis.call('TTL', KEYS[2])
  if t > 0 then return {'cooldown', 1, 0, t} end
end

if hourly_limit > 0 and count(KEYS[3]) >= hourly_limit then
  return {'hourly', hourly_limit, 0, ttl_or(KEYS[3], 3600)}
end
if country_limit > 0 and count(KEYS[8]) >= country_limit then
  return {'country', country_limit, 0, ttl_or(KEYS[8], 3600)}
end
if global_limit > 0 and count(KEYS[7]) >= global_limit then
  return {'global', global_limit, 0, ttl_or(KEYS[7], 3600)}
end

if hourly_limit > 0 then
  local n = spend(KEYS[3])
  consider(hourly_limit, hourly_limit - n, ttl_or(KEYS[3], 3600))
end
if country_limit > 0 then spend(KEYS[8]) end
if global_limit > 0 then spend(KEYS[7]) end

if cooldown > 0 then
  redis.call('SET', KEYS[2], ARGV[4], 'EX', cooldown)
end
-- Replaces any previous code of this number: the old one stops working, and is never resent.
local old = redis.call('HGET', KEYS[4], 'vid')
if old then redis.call('DEL', ARGV[11] .. 'sealed:' .. old) end
redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[4], 'vid', ARGV[4], 'digest', ARGV[5])
redis.call('EXPIRE', KEYS[4], ARGV[6])
-- Failed attempts survive replacement; keep them at least as long as the new code lives.
if redis.call('EXISTS', KEYS[6]) == 1 then redis.call('EXPIRE', KEYS[6], ARGV[6], 'GT') end
redis.call('HSET', KEYS[5], 'state', 'queued', 'attempts', 0, 'updatedAt', ARGV[8])
redis.call('EXPIRE', KEYS[5], ARGV[7])
if best[3] < 0 then best[3] = 0 end
return best
