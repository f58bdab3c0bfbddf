-- On a single Redis, issuing is one call: guard.lua, then issue.lua if the guard passed, and
-- unguard.lua if issue.lua refused (giving back what the guard spent). They are defined before
-- this as local functions of their own KEYS and ARGV (redis_store.rs). In a Cluster their keys
-- are in different slots, and they run one by one.
-- KEYS: guard.lua's 12, then issue.lua's
-- ARGV: guard.lua's, then issue.lua's (its 6th, the send time the guard counted, is filled in
--       here), then: give back on refusal (1/0), budgets spent (1/0), key budget spent (1/0),
--       how many of the arguments are guard.lua's
-- Returns {guard.lua's reply, issue.lua's reply, or false when the guard refused}.
local function slice(t, from, to)
  local out = {}
  for i = from, to do out[#out + 1] = t[i] end
  return out
end
local n = #ARGV
local guard_argc = tonumber(ARGV[n])
local guard_argv = slice(ARGV, 1, guard_argc)
local guarded = guard(slice(KEYS, 1, 12), guard_argv)
if guarded[1] ~= 'ok' then return {guarded, false} end
local issue_argv = slice(ARGV, guard_argc + 1, n - 4)
issue_argv[6] = string.format('%d', guarded[5])
local issued = issue(slice(KEYS, 13, #KEYS), issue_argv)
if issued[1] ~= 'ok' and ARGV[n - 3] == '1' then
  unguard({KEYS[1], KEYS[2], KEYS[3], KEYS[6], KEYS[12]},
    {ARGV[n - 2], ARGV[n - 1], guard_argv[12], issue_argv[6]})
end
return {guarded, issued}
