-- Records how a job ended and frees its lease, atomically.
-- KEYS: 1 job outcome, 2 job lease
-- ARGV: 1 owner token, 2 outcome, 3 outcome ttl seconds
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
