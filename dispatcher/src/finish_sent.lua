-- Records an accepted send in one round trip: the ledger outcome (and frees the lease), the
-- provider's message id mapped to the verification (for delivery reports), and, for one resend
-- after an undelivered report, the still-sealed job.
-- KEYS: 1 job outcome, 2 job lease, 3 message-id mapping, 4 sealed job
-- ARGV: 1 owner token, 2 outcome, 3 outcome ttl seconds, 4 verification id,
--       5 mapping ttl seconds, 6 sealed job bytes ('' to keep none), 7 sealed job ttl seconds
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[5])
if ARGV[6] ~= '' then redis.call('SET', KEYS[4], ARGV[6], 'EX', ARGV[7]) end
return 1
