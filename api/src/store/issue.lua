-- Issues a code for one number in a single round trip: applies the per-IP, cooldown, hourly and
-- send-budget limits, then stores the code's digest and the "queued" delivery state. Budgets
-- are checked before any is counted, so a refused request spends none of them.
-- KEYS: 1 ip counter, 2 cooldown, 3 hourly counter, 4 code hash, 5 status hash, 6 failures,
--       7 global hourly counter, 8 country hourly counter,
--       fraud guard: 9 prefix sends, 10 prefix verified, 11 prefix block, 12 country buckets,
--       13 countries seen
-- ARGV: 1 ip limit, 2 cooldown seconds, 3 hourly limit, 4 verification id, 5 digest,
--       6 code ttl, 7 status ttl, 8 now (unix seconds), 9 global hourly limit,
--       10 country hourly limit, 11 key prefix (for the replaced code's sealed job),
--       fraud guard: 12 mode (0 off, 1 monitor, 2 enforce), 13 window ms, 14 grace ms,
--       15 min sends, 16 min conversion per mille, 17 block seconds, 18 safe (1/0), 19 country,
--       20 prefix
-- The fraud guard runs under pcall: if its keys cannot be used, the request is not blocked on
-- its account (fail open) and the 5th element of the answer says 'error'.
-- Returns {outcome, limit, remaining, reset, fraud}: outcome is ok / ip / cooldown / hourly /
-- global / country / blocked, the next three describe the tightest per-client limit (for
-- RateLimit-* headers), and fraud is '' / 'blocked' (the prefix is blocked) / 'new_block' (this
-- request blocked it) / 'error'.
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

local best = {'ok', 0, -1, 0, ''}
local function consider(limit, remaining, reset)
  if best[3] < 0 or remaining < best[3] then best = {'ok', limit, remaining, reset, ''} end
end

if ip_limit > 0 then
  local n = redis.call('INCR', KEYS[1])
  if n == 1 then redis.call('EXPIRE', KEYS[1], 60) end
  local reset = ttl_or(KEYS[1], 60)
  if n > ip_limit then return {'ip', ip_limit, 0, reset, ''} end
  consider(ip_limit, ip_limit - n, reset)
end

if cooldown > 0 then
  local t = redis.call('TTL', KEYS[2])
  if t > 0 then return {'cooldown', 1, 0, t, ''} end
end

if hourly_limit > 0 and count(KEYS[3]) >= hourly_limit then
  return {'hourly', hourly_limit, 0, ttl_or(KEYS[3], 3600), ''}
end
if country_limit > 0 and count(KEYS[8]) >= country_limit then
  return {'country', country_limit, 0, ttl_or(KEYS[8], 3600), ''}
end
if global_limit > 0 and count(KEYS[7]) >= global_limit then
  return {'global', global_limit, 0, ttl_or(KEYS[7], 3600), ''}
end

-- Fraud guard: is the destination prefix blocked, or does this request reveal pumping?
local mode = tonumber(ARGV[12])
local fraud, now_ms = '', 0
if mode > 0 then
  local ok, result = pcall(function()
    local t = redis.call('TIME')
    now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    local oldest, newest = now_ms - tonumber(ARGV[13]), now_ms - tonumber(ARGV[14])
    redis.call('ZREMRANGEBYSCORE', KEYS[9], '-inf', oldest)
    redis.call('ZREMRANGEBYSCORE', KEYS[10], '-inf', oldest)
    if ARGV[18] == '1' then return '' end
    local sends = redis.call('ZCOUNT', KEYS[9], oldest, newest)
    local verified = redis.call('ZCOUNT', KEYS[10], oldest, newest)
    local blocked = redis.call('EXISTS', KEYS[11]) == 1
    local pumping = sends >= tonumber(ARGV[15]) and verified * 1000 < tonumber(ARGV[16]) * sends
    if pumping then
      -- Blocked, or renewed while the pattern continues.
      redis.call('HSET', KEYS[11], 'sends', sends, 'verified', verified, 'country', ARGV[19],
        'prefix', ARGV[20], 'at', now_ms)
      redis.call('EXPIRE', KEYS[11], ARGV[17])
      if not blocked then return 'new_block' end
    end
    if blocked or pumping then return 'blocked' end
    return ''
  end)
  if ok then fraud = result else fraud = 'error' end
end
if mode == 2 and (fraud == 'blocked' or fraud == 'new_block') then
  return {'blocked', 0, 0, 0, fraud}
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
if mode > 0 and fraud ~= 'error' then
  -- Count the send; a verify of this code counts it as converted (at its send time).
  local ok = pcall(function()
    redis.call('ZADD', KEYS[9], now_ms, ARGV[4])
    redis.call('HINCRBY', KEYS[12], 's:' .. math.floor(now_ms / 10000), 1)
    redis.call('ZADD', KEYS[13], now_ms, ARGV[19])
    local ttl = math.ceil(tonumber(ARGV[13]) / 1000) + 60
    for _, key in ipairs({KEYS[9], KEYS[10], KEYS[12], KEYS[13]}) do
      redis.call('EXPIRE', key, ttl)
    end
    redis.call('HSET', KEYS[4], 'fgs', now_ms)
  end)
  if not ok then fraud = 'error' end
end
if best[3] < 0 then best[3] = 0 end
best[5] = fraud
return best
