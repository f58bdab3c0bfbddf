-- Frees a lease without recording an outcome (the job will be redelivered).
-- KEYS: 1 job lease; ARGV: 1 owner token
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
