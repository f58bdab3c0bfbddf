-- Gives back what guard.lua spent for a verification that was not issued after all (a per-number
-- limit refused it) or whose send job could not be published: its share of the send budgets,
-- and its send in the fraud guard's counts.
-- KEYS: 1 global hourly counter, 2 country hourly counter, 3 prefix sends, 4 country buckets,
--       5 the caller key's hourly counter (all under the `{global}` hash tag)
-- ARGV: 1 budgets spent (1/0), 2 key budget spent (1/0), 3 verification id, 4 the send time
--       the fraud guard counted (ms; 0: none or unknown, then only the prefix count is
--       corrected)
local function give_back(key)
  if tonumber(redis.call('GET', key) or '0') > 0 then redis.call('DECR', key) end
end
if ARGV[1] == '1' then
  give_back(KEYS[1])
  give_back(KEYS[2])
end
if ARGV[2] == '1' then give_back(KEYS[5]) end
if redis.call('ZREM', KEYS[3], ARGV[3]) == 1 and tonumber(ARGV[4]) > 0 then
  local field = 's:' .. math.floor(tonumber(ARGV[4]) / 10000)
  if tonumber(redis.call('HGET', KEYS[4], field) or '0') > 0 then
    redis.call('HINCRBY', KEYS[4], field, -1)
  end
end
return 1
