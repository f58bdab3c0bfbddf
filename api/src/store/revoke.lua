-- The number's side of undoing an issue whose send job could not be published: the code, the
-- cooldown it started and its hourly send. Only what this verification created is touched (a
-- newer request may have replaced it). The caller removes the delivery record and gives back
-- the budgets (unguard.lua), which live under other hash tags.
-- KEYS: 1 code hash, 2 cooldown, 3 hourly counter
-- ARGV: 1 verification id
-- Returns the send time the fraud guard counted for the code (ms), or 0.
local sent = 0
if redis.call('HGET', KEYS[1], 'vid') == ARGV[1] then
  sent = tonumber(redis.call('HGET', KEYS[1], 'fgs') or '0')
  redis.call('DEL', KEYS[1])
end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
if tonumber(redis.call('GET', KEYS[3]) or '0') > 0 then redis.call('DECR', KEYS[3]) end
return sent
