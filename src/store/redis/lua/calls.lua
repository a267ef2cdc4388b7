-- Calls decided in order, one alone or a batch (after prelude.lua, lib.lua, args.lua and
-- transition.lua), so one client's calls keep their order. A client whose call needs a new session
-- id (the caller reserves ids outside this slot) has its later calls skipped; the caller runs
-- them after, one by one. On a cluster, all keys of one call share a slot.
--
-- KEYS: each call's records hash (lib.lua's records_key(); its other keys are derived from
--       it), then the bucket's migration guard (redis/keys.rs says why).
-- ARGV: as redis/args.rs describes them; a plain tick is its key and one argument.
-- Returns {now, reply per call}: a call the hot path decided on this clock is its session
-- record alone; any other is transition()'s reply, or {'skip', now, '', 0, '', ''}.
-- OPS (the op's byte, as string.byte reads it -> its name) comes from redis/args.rs.
local DEFAULTS = {'', '1', '', '', '', '', '', '0', '0', '', ''}
local waiting = {}
local replies = {now}
local a = 3
for n = 1, #KEYS - 1 do
  local key, spec = KEYS[n], ARGV[a]
  local op_byte, policy_byte, form = string.byte(spec, 1, 3)
  local op, policy = OPS[op_byte], POLICIES[policy_byte]
  local member, r = string.sub(spec, 4), DEFAULTS
  if form == 43 then
    r = {unpack(ARGV, a + 1, a + 11)}
    a = a + 12
  else
    a = a + 1
  end
  local reply
  if waiting[member] then
    reply = {'skip', now, '', 0, '', ''}
  else
    local user_given, idle, max, inactivity = r[1], policy.idle, policy.max, policy.inactivity
    -- @fast
    if fast_raw and fast_at == now then
      reply = fast_raw
    elseif fast_raw then
      reply = {'s', fast_at, fast_raw, 0, '', ''}
    else
      reply = transition(key, member, op, policy, r)
      if reply[1] == 'need' then waiting[member] = true end
    end
  end
  replies[n + 1] = reply
end
return replies
