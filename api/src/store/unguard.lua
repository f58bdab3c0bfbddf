-- Gives back what guard.lua spent for a verification that was not issued after all (a per-number
-- limit refused it) or whose send job could not be published: its share of the send budgets,
-- and its send in the fraud guard's counts.
-- KEYS: 1 global hourly counter, 2 country hourly counter, 3 prefix sends, 4 country buckets
--       (all under the `{global}` hash tag)
-- ARGV: 1 budgets spent (1/0), 2 verification id, 3 the send time the fraud guard counted
--       (ms; 0: none or unknown, then only the prefix count is corrected)
if ARGV[1] == '1' then
  for _, key in ipairs({KEYS[1], KEYS[2]}) do
    if tonumber(redis.call('GET', key) or '0') > 0 then redis.call('DECR', key) end
  end
end
if redis.call('ZREM', KEYS[3], ARGV[2]) == 1 and tonumber(ARGV[3]) > 0 then
  local field = 's:' .. math.floor(tonumber(ARGV[3]) / 10000)
  if tonumber(redis.call('HGET', KEYS[4], field) or '0') > 0 then
    redis.call('HINCRBY', KEYS[4], field, -1)
  end
end
return 1
