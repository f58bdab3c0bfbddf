-- Moves a delivery record forward only (see DeliveryState::rank), if it still exists.
-- KEYS: 1 status hash
-- ARGV: 1 new state, 2 its rank, 3 "state=rank,..." for every state, 4 now, 5 ttl,
--       6.. extra field/value pairs
-- Returns 1 when the record moved, else 0.
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return 0 end
local current_rank = -1
for name, rank in string.gmatch(ARGV[3], '(%w+)=(%d+)') do
  if name == current then current_rank = tonumber(rank) end
end
if tonumber(ARGV[2]) <= current_rank then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'updatedAt', ARGV[4])
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
