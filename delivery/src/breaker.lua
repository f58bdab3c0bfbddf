-- One provider's circuit breaker, shared by every dispatcher. Time comes from the caller.
-- KEYS: 1 breaker hash
-- ARGV: 1 op (allow | ok | fail), 2 now (ms), 3 consecutive failures that open it,
--       4 failure share that opens it (per mille), 5 calls in the window before the share counts,
--       6 window (ms), 7 cool-down (ms), 8 key ttl (s), 9 successes the caller saw while the
--       breaker was closed and reports only now (counted first, whatever the op)
-- Returns {state, allowed (1/0), changed-to ('' if unchanged)}.
local key, op, now = KEYS[1], ARGV[1], tonumber(ARGV[2])
local threshold, ratio, min_calls = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local window, cooldown, earlier = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[9])
local state = redis.call('HGET', key, 'state') or 'closed'

local function current_window()
  local started = tonumber(redis.call('HGET', key, 'window_start') or '0')
  if now - started >= window then
    redis.call('HSET', key, 'window_start', now, 'calls', 0, 'failures', 0)
  end
end

if earlier > 0 then
  current_window()
  redis.call('HINCRBY', key, 'calls', earlier)
  redis.call('HSET', key, 'consecutive', 0)
  redis.call('EXPIRE', key, ARGV[8])
end

if op == 'allow' then
  if state == 'closed' then return {state, 1, ''} end
  if state == 'open' then
    if now < tonumber(redis.call('HGET', key, 'open_until') or '0') then return {state, 0, ''} end
    -- Cool-down over: this caller is the probe.
    redis.call('HSET', key, 'state', 'half_open', 'probe_until', now + cooldown)
    return {'half_open', 1, 'half_open'}
  end
  -- Half-open: one probe at a time; a probe that never reported frees its slot after a while.
  if now >= tonumber(redis.call('HGET', key, 'probe_until') or '0') then
    redis.call('HSET', key, 'probe_until', now + cooldown)
    return {state, 1, ''}
  end
  return {state, 0, ''}
end

current_window()
local calls = redis.call('HINCRBY', key, 'calls', 1)
local changed = ''
if op == 'ok' then
  redis.call('HSET', key, 'consecutive', 0)
  if state ~= 'closed' then
    redis.call('HSET', key, 'state', 'closed')
    state, changed = 'closed', 'closed'
  end
else
  local failures = redis.call('HINCRBY', key, 'failures', 1)
  local consecutive = redis.call('HINCRBY', key, 'consecutive', 1)
  local trips = consecutive >= threshold or (calls >= min_calls and failures * 1000 >= ratio * calls)
  if state == 'half_open' or (state == 'closed' and trips) then
    redis.call('HSET', key, 'state', 'open', 'open_until', now + cooldown)
    state, changed = 'open', 'open'
  end
end
redis.call('EXPIRE', key, ARGV[8])
return {state, 1, changed}
