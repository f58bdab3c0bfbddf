-- On a single Redis, issuing is one call: the client's per-IP counter (when it is counted),
-- guard.lua (when it has work), then issue.lua if the guard passed, and unguard.lua if
-- issue.lua refused (giving back what the guard spent). They are defined before this as local
-- functions of their own KEYS and ARGV (redis_store.rs). In a Cluster their keys are in
-- different slots, and they run one by one.
-- KEYS: the per-IP counter (when counted), guard.lua's 12 (when guarded), then issue.lua's
-- ARGV: guard.lua's (when guarded), then issue.lua's (its 6th, the send time the guard
--       counted, is filled in here), then: give back on refusal (1/0), budgets spent (1/0), key
--       budget spent (1/0), the per-IP limit (0: not counted), its window (s), how many of the
--       arguments are guard.lua's (0: no guard)
-- Returns {hit.lua's reply or false, guard.lua's reply or false, issue.lua's reply or false}:
-- it stops after the first step that refuses.
local function slice(t, from, to)
  local out = {}
  for i = from, to do out[#out + 1] = t[i] end
  return out
end
local n = #ARGV
local guard_argc = tonumber(ARGV[n])
local ip_limit = tonumber(ARGV[n - 2])
local k = 0
local counted = false
if ip_limit > 0 then
  counted = hit({KEYS[1]}, {ARGV[n - 1]})
  if counted[1] > ip_limit then return {counted, false, false} end
  k = 1
end
local guarded = false
local guard_argv = slice(ARGV, 1, guard_argc)
local issue_argv = slice(ARGV, guard_argc + 1, n - 6)
if guard_argc > 0 then
  guarded = guard(slice(KEYS, k + 1, k + 12), guard_argv)
  if guarded[1] ~= 'ok' then return {counted, guarded, false} end
  issue_argv[6] = string.format('%d', guarded[5])
  k = k + 12
end
local issued = issue(slice(KEYS, k + 1, #KEYS), issue_argv)
if issued[1] ~= 'ok' and guarded and ARGV[n - 5] == '1' then
  local g = k - 12
  unguard({KEYS[g + 1], KEYS[g + 2], KEYS[g + 3], KEYS[g + 6], KEYS[g + 12]},
    {ARGV[n - 4], ARGV[n - 3], guard_argv[12], issue_argv[6]})
end
return {counted, guarded, issued}
