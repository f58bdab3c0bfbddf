-- Undoes an issue whose send job could not be published, so nothing is left half done:
-- the code, the cooldown it started, its hourly send, its share of the send budgets and its
-- delivery record are removed. Only what this verification created is touched (a newer request
-- may have replaced it).
-- KEYS: 1 code hash, 2 cooldown, 3 hourly counter, 4 status hash, 5 global hourly counter,
--       6 country hourly counter
-- ARGV: 1 verification id
if redis.call('HGET', KEYS[1], 'vid') == ARGV[1] then redis.call('DEL', KEYS[1]) end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
for _, key in ipairs({KEYS[3], KEYS[5], KEYS[6]}) do
  if tonumber(redis.call('GET', key) or '0') > 0 then redis.call('DECR', key) end
end
redis.call('DEL', KEYS[4])
return 1
