-- Claims an Idempotency-Key, or returns what is already stored under it.
-- KEYS: 1 idempotency record
-- ARGV: 1 pending record (JSON), 2 pending ttl seconds
-- Returns {'claimed', ''} or {'existing', record}.
local existing = redis.call('GET', KEYS[1])
if existing then return {'existing', existing} end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return {'claimed', ''}
