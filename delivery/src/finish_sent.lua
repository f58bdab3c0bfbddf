
-- Records an accepted send in one script: the ledger outcome (and frees the lease), for one
-- resend after an undelivered report the still-sealed job, and the delivery record moved
-- forward to `sent` (advance, above). (The provider's message id is mapped to the verification
-- beside it, under a key of its own.)
-- KEYS: 1 job outcome, 2 job lease, 3 sealed job, 4 (optional) delivery record (all under the
--       verification's hash tag)
-- ARGV: 1 owner token, 2 outcome, 3 outcome ttl seconds, 4 sealed job bytes ('' to keep none),
--       5 sealed job ttl seconds; with KEYS[4], 6.. the arguments of advance
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
if ARGV[4] ~= '' then redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[5]) end
if KEYS[4] then advance(KEYS[4], 6) end
return 1
