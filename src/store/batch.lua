-- Many decisions in one call (appended to hot.lua, lib.lua and decide.lua), in the order
-- given, so one client's calls keep their order. A client whose call needs a new session id (the
-- caller reserves ids outside this slot) has its later calls skipped; the caller runs them
-- after, one by one. On a cluster, all keys of one batch call share a slot.
--
-- KEYS: two per call, as decide.lua takes them. ARGV: the count of arguments per call, then
-- each call's arguments in turn. Returns one decide() reply per call, or {'skip', now, '', 0, ''}.
local per = tonumber(ARGV[1])
local waiting = {}
local replies = {}
for n = 1, #KEYS / 2 do
  local keys = {KEYS[2 * n - 1], KEYS[2 * n]}
  if waiting[keys[1]] then
    replies[n] = {'skip', now, '', 0, ''}
  else
    local first = 2 + (n - 1) * per
    local args = {unpack(ARGV, first, first + per - 1)}
    replies[n] = decide_fast(keys[1], args[1], args[16], tonumber(args[5]), tonumber(args[6]),
      args[7], tonumber(args[9]), tonumber(args[10]), now) or decide(keys, args)
    if replies[n][1] == 'need' then waiting[keys[1]] = true end
  end
end
return replies
