-- Claims a send job for one dispatcher, so two never send the same job at once.
-- KEYS: 1 job outcome, 2 job lease
-- ARGV: 1 owner token, 2 lease milliseconds
-- Returns {'done', outcome} when the job already ended, {'claimed', ''} when this owner holds
-- the lease now, or {'busy', ms} when another owner holds it for ms more.
local outcome = redis.call('GET', KEYS[1])
if outcome then return {'done', outcome} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'claimed', ''} end
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return {'claimed', ''}
end
return {'busy', tostring(redis.call('PTTL', KEYS[2]))}
