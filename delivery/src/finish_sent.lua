
-- Records an accepted send in one script: the ledger outcome (and frees the lease), for one
-- resend after an undelivered report the still-sealed job, and the delivery record moved
-- forward to `sent` (advance, above). On a single Redis it also maps the provider's message id
-- to the verification; in a Cluster that key is in another slot, and the caller writes it.
-- KEYS: 1 job outcome, 2 job lease, 3 sealed job (under the verification's hash tag), then the
--       message-id mapping (with ARGV[6] > 0), then the delivery record (optional, the
--       verification's tag)
-- ARGV: 1 owner token, 2 outcome, 3 outcome ttl seconds, 4 sealed job bytes ('' to keep none),
--       5 sealed job ttl seconds, 6 the mapping's ttl seconds (0: not here), 7 the verification
--       id it maps to; with the delivery record, 8.. the arguments of advance
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
if ARGV[4] ~= '' then redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[5]) end
local record = 4
if ARGV[6] ~= '0' then
  redis.call('SET', KEYS[4], ARGV[7], 'EX', ARGV[6])
  record = 5
end
if KEYS[record] then advance(KEYS[record], 8) end
return 1
