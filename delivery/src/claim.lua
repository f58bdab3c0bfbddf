-- Claims a send job for one dispatcher, so two never send the same job at once. (Run with
-- status::lua_with_record, which names the record's fields.)
-- KEYS: 1 job outcome, 2 job lease, 3 (optional) the verification's delivery record
-- ARGV: 1 owner token, 2 lease milliseconds; with KEYS[3]: 3 the state to mark the record with
--       once claimed (attempt 1), 4 now (unix seconds), 5 the record's ttl (s)
-- Returns {'done', outcome} when the job already ended, {'claimed', ''} when this owner holds
-- the lease now (and KEYS[3] is marked), {'claimed', 'withdrawn'} when it does but the delivery
-- record (KEYS[3]) is gone or canceled, or {'busy', ms} when another owner holds it for ms more.
local outcome = redis.call('GET', KEYS[1])
if outcome then return {'done', outcome} end
local held = redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2])
if not held then
  if redis.call('GET', KEYS[2]) ~= ARGV[1] then
    return {'busy', tostring(redis.call('PTTL', KEYS[2]))}
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
if KEYS[3] then
  local state = redis.call('HGET', KEYS[3], FIELD_STATE)
  if not state or state == 'canceled' then return {'claimed', 'withdrawn'} end
  redis.call('HSET', KEYS[3], FIELD_STATE, ARGV[3], FIELD_ATTEMPTS, 1, FIELD_UPDATED_AT, ARGV[4])
  redis.call('EXPIRE', KEYS[3], ARGV[5])
end
return {'claimed', ''}
