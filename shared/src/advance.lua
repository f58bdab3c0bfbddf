-- advance(key, first): moves a delivery record forward only (see DeliveryState::rank), if it
-- still exists. Any script that advances a record starts with this function (see
-- status::lua_with_record, which also defines the FIELD_* names), so the rule is written once; its arguments are ARGV[first] onwards: the
-- new state, its rank, "state=rank,..." for every state, now, ttl, then field/value pairs to the
-- end of ARGV.
-- Returns 1 when the record moved, else 0.
local function advance(key, first)
  local current = redis.call('HGET', key, FIELD_STATE)
  if not current then return 0 end
  local current_rank = -1
  for name, rank in string.gmatch(ARGV[first + 2], '(%w+)=(%d+)') do
    if name == current then current_rank = tonumber(rank) end
  end
  if tonumber(ARGV[first + 1]) <= current_rank then return 0 end
  redis.call('HSET', key, FIELD_STATE, ARGV[first], FIELD_UPDATED_AT, ARGV[first + 3])
  for i = first + 5, #ARGV, 2 do redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
  redis.call('EXPIRE', key, ARGV[first + 4])
  return 1
end
