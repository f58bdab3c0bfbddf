-- The all-traffic side of issuing a code, in the `{global}` hash tag: manual blocks, the send
-- budgets and the fraud guard. Checks the manual blocks (every mode), the budgets, then the
-- destination prefix; if nothing refuses, spends the budgets and counts the send for the fraud
-- guard. The number's own limits come after, in issue.lua; if they refuse, unguard.lua gives
-- back what this spent.
-- KEYS: 1 global hourly counter, 2 country hourly counter, fraud guard: 3 prefix sends,
--       4 prefix verified, 5 prefix block, 6 country buckets, 7 countries seen, 8 blocked index,
--       9 prefix clients, 10 prefix trickle counter, 11 manual blocks, 12 the caller key's
--       hourly counter
-- ARGV: 1 global hourly limit, 2 country hourly limit, fraud guard: 3 mode (0 off, 1 monitor,
--       2 enforce), 4 window ms, 5 grace ms, 6 min sends, 7 min conversion per mille,
--       8 block ms, 9 safe (1/0), 10 country, 11 prefix, 12 verification id, 13 burst,
--       14 min clients, 15 blocked sends per hour (0 for a resend), 16 client network ('' for
--       a resend: no client), 17 the caller key's hourly budget (0: none), 18.. the number's
--       prefixes a manual block may name
-- The automatic guard runs under pcall: if its keys cannot be used, the request is not blocked
-- on its account (fail open) and fraud says 'error'.
-- Returns {outcome, limit, reset, fraud, sent_ms, rule}: outcome is ok / global / country /
-- key / blocked; limit and reset describe a refusing budget; fraud is '' / 'blocked' / 'new_block'
-- (this request blocked it) / 'trickle' (blocked, let through on the hourly allowance) /
-- 'manual' / 'error'; sent_ms is the send time the fraud guard counted (0: none); rule names
-- the rule of a block this request made (conversion / burst; '' otherwise).
local global_limit, country_limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- An operator's block of any prefix of the number holds in every mode.
if #ARGV > 17 then
  for _, until_ms in ipairs(redis.call('HMGET', KEYS[11], unpack(ARGV, 18))) do
    if until_ms and tonumber(until_ms) > now_ms then
      return {'blocked', 0, 0, 'manual', 0, ''}
    end
  end
end

local function ttl_or(key, default)
  local ttl = redis.call('TTL', key)
  if ttl < 0 then return default end
  return ttl
end

local function count(key)
  return tonumber(redis.call('GET', key) or '0')
end

local function spend(key)
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('EXPIRE', key, 3600) end
end

if country_limit > 0 and count(KEYS[2]) >= country_limit then
  return {'country', country_limit, ttl_or(KEYS[2], 3600), '', 0, ''}
end
if global_limit > 0 and count(KEYS[1]) >= global_limit then
  return {'global', global_limit, ttl_or(KEYS[1], 3600), '', 0, ''}
end
local key_limit = tonumber(ARGV[17])
if key_limit > 0 and count(KEYS[12]) >= key_limit then
  return {'key', key_limit, ttl_or(KEYS[12], 3600), '', 0, ''}
end

-- Fraud guard: is the destination prefix blocked, or does this request reveal pumping?
local mode = tonumber(ARGV[3])
local fraud, rule, new_rule = '', '', ''
if mode > 0 then
  local ok, result = pcall(function()
    local oldest, newest = now_ms - tonumber(ARGV[4]), now_ms - tonumber(ARGV[5])
    for _, key in ipairs({KEYS[3], KEYS[4], KEYS[9]}) do
      redis.call('ZREMRANGEBYSCORE', key, '-inf', oldest)
    end
    if ARGV[9] == '1' then return '' end
    -- Counted sends (past the grace) for the conversion rule; the young unverified ones for
    -- the burst rule. A verified send is kept at its send time, so both subtract alike.
    local sends = redis.call('ZCOUNT', KEYS[3], oldest, newest)
    local verified = redis.call('ZCOUNT', KEYS[4], oldest, newest)
    local young = redis.call('ZCOUNT', KEYS[3], '(' .. newest, '+inf')
      - redis.call('ZCOUNT', KEYS[4], '(' .. newest, '+inf')
    -- Distinct client networks in the window, this one included: one client cannot aim a block.
    local clients = redis.call('ZCARD', KEYS[9])
    if ARGV[16] ~= '' and not redis.call('ZSCORE', KEYS[9], ARGV[16]) then
      clients = clients + 1
    end
    if clients >= tonumber(ARGV[14]) then
      if sends >= tonumber(ARGV[6]) and verified * 1000 < tonumber(ARGV[7]) * sends then
        rule = 'conversion'
      elseif young >= tonumber(ARGV[13]) then
        rule = 'burst'
      end
    end
    local blocked = redis.call('EXISTS', KEYS[5]) == 1
    if rule ~= '' then
      -- Blocked, or renewed while the pattern continues.
      redis.call('HSET', KEYS[5], 'sends', sends, 'verified', verified, 'young', young,
        'clients', clients, 'rule', rule, 'country', ARGV[10], 'prefix', ARGV[11], 'at', now_ms)
      redis.call('PEXPIRE', KEYS[5], ARGV[8])
      redis.call('ZADD', KEYS[8], now_ms + tonumber(ARGV[8]), ARGV[11])
    end
    local signal = ''
    if rule ~= '' and not blocked then
      signal, new_rule = 'new_block', rule
    elseif blocked or rule ~= '' then
      signal = 'blocked'
    end
    -- A blocked prefix still takes a few sends an hour, so its real users are not walled out.
    if signal ~= '' and mode == 2 and count(KEYS[10]) < tonumber(ARGV[15]) then
      spend(KEYS[10])
      return 'trickle'
    end
    return signal
  end)
  if ok then fraud = result else fraud = 'error' end
end
if mode == 2 and (fraud == 'blocked' or fraud == 'new_block') then
  return {'blocked', 0, 0, fraud, 0, new_rule}
end

if country_limit > 0 then spend(KEYS[2]) end
if global_limit > 0 then spend(KEYS[1]) end
if key_limit > 0 then spend(KEYS[12]) end

local sent_ms = 0
if mode > 0 and fraud ~= 'error' then
  -- Count the send; a verify of this code counts it as converted (at its send time).
  local ok = pcall(function()
    redis.call('ZADD', KEYS[3], now_ms, ARGV[12])
    if ARGV[16] ~= '' then redis.call('ZADD', KEYS[9], now_ms, ARGV[16]) end
    redis.call('HINCRBY', KEYS[6], 's:' .. math.floor(now_ms / 10000), 1)
    redis.call('ZADD', KEYS[7], now_ms, ARGV[10])
    local ttl = math.ceil(tonumber(ARGV[4]) / 1000) + 60
    for _, key in ipairs({KEYS[3], KEYS[4], KEYS[6], KEYS[7], KEYS[9]}) do
      redis.call('EXPIRE', key, ttl)
    end
  end)
  if ok then sent_ms = now_ms else fraud = 'error' end
end
return {'ok', 0, 0, fraud, sent_ms, new_rule}
