-- SMS_MAX_RPS for every dispatcher together, as GCRA (the generic cell rate algorithm): each
-- call reserves the next free send slot and says how long to wait for it, so a waiting task
-- sleeps once and never polls. Bursts up to one second's worth. Uses the Redis clock, so
-- dispatcher clocks need not agree.
-- KEYS: 1 theoretical arrival time (ms)
-- ARGV: 1 sends per second, 2 the longest wait the caller accepts (ms)
-- Returns the milliseconds to wait before sending (0: now), or -1 when the next free slot is
-- further away than the caller accepts (nothing is reserved then).
local rate, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2])
local interval = 1000 / rate
local tolerance = interval * (math.max(1, rate) - 1)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local wait = math.max(0, tat - tolerance - now)
if wait > max_wait then return -1 end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.3f', next_tat), 'PX', math.ceil(next_tat - now + tolerance) + 1000)
return math.ceil(wait)
