-- Token bucket shared by every dispatcher: PLIVO_MAX_RPS tokens per second, bursts up to one
-- second's worth. Uses the Redis clock, so dispatcher clocks need not agree.
-- KEYS: 1 bucket; ARGV: 1 tokens per second
-- Returns 0 when a token was taken, else the milliseconds until one will be available.
local rate = tonumber(ARGV[1])
local burst = math.max(1, rate)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return wait
