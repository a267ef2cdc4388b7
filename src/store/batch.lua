-- Many decisions in one call (after prelude.lua, lib.lua and decide.lua), in the order
-- given, so one client's calls keep their order. A client whose call needs a new session id (the
-- caller reserves ids outside this slot) has its later calls skipped; the caller runs them
-- after, one by one. On a cluster, all keys of one batch call share a slot.
--
-- What every call shares is sent once, and what most calls leave at its default not at all:
-- a plain tick is its key and one argument.
-- KEYS: each call's records hash (lib.lua's records_key(); its other keys are derived from it),
--       then the bucket's migration guard (redis.rs says why).
-- ARGV: client_retention_ms, session_retention_ms, pointer_slack_ms, stats_retention_ms,
--       events_max; the number of policies, then each policy's idle_ms, max_ms, mode and
--       on_user_change; then per call its spec: one byte for the op (OPS below), one for its
--       policy (byte 48 for the first), a '+' when ten more arguments follow (else '.'), then
--       the client's field (NS:HASH). The ten are user_id, create, end_status, named session
--       id, release, environment, platform, report errors, report crashed, report id digest
--       (decide.lua's meanings); without them, all are at their defaults.
-- Returns {now, reply per call}: a call the hot path decided on this clock is its session
-- record alone; any other is decide()'s reply, or {'skip', now, '', 0, '', ''}.
-- OPS (the op's byte, as string.byte reads it -> its name) comes from redis.rs's OPS.
local DEFAULTS = {'', '1', '', '', '', '', '', '0', '0', ''}
local client_ret, session_ret = tonumber(ARGV[1]), tonumber(ARGV[2])
local policies = {}
local a = 7
for n = 1, tonumber(ARGV[6]) do
  policies[n] = {ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3],
                 idle = tonumber(ARGV[a]), max = tonumber(ARGV[a + 1]),
                 inactivity = ARGV[a + 2] == 'inactivity'}
  a = a + 4
end
local waiting = {}
local replies = {now}
for n = 1, #KEYS - 1 do
  local key, spec = KEYS[n], ARGV[a]
  local op_byte, policy_byte, more = string.byte(spec, 1, 3)
  local op, policy = OPS[op_byte], policies[policy_byte - 47]
  local member, r = string.sub(spec, 4), DEFAULTS
  if more == 43 then
    r = {unpack(ARGV, a + 1, a + 10)}
    a = a + 11
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
      local prefix = string.match(key, '^(.*}:)r:')
      reply = decide({key, prefix .. 'a:' .. member}, {
        op, r[2], r[3], r[4], policy[1], policy[2], policy[3], policy[4], ARGV[1], ARGV[2],
        ARGV[3], '', r[5], r[6], r[7], r[1], ARGV[4], ARGV[5], r[8], r[9], r[10]})
      if reply[1] == 'need' then waiting[member] = true end
    end
  end
  replies[n + 1] = reply
end
return replies
