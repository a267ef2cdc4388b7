-- Finalizes the sessions of one bucket that idled out while their clients stayed away, and
-- drops the records past retention (after prelude.lua, lib.lua and args.lua). One bucket is
-- one atomic call, so instances sweeping at the same time never finalize a session twice:
-- the first marks it finalized, the next sees that.
-- Implements `sweep` of src/domain/decision.rs, with the functions of the same names (lib.lua).
--
-- KEYS[1] the bucket's wake index: a sorted set of its records hashes (by XX, lib.lua's
-- records_key()) by when the first of their records is due (lib.lua's next_look()); KEYS[2]
-- the bucket's migration guard (never written; redis/keys.rs says why).
-- ARGV: the shared arguments and the policies (redis/args.rs), the limit, then the name of
--       each policy's namespace, in order; the name '' is the policy of namespaces not listed.
-- Returns {finalized, records looked at (about limit at most), then the finalized by final
-- status: exited, errored, abnormal, crashed}.

local prefix, limit = string.match(KEYS[1], '^(.*}:)wake$'), tonumber(ARGV[3])
local policies = {}
for n = 4, #ARGV do policies[ARGV[n]] = POLICIES[n - 4] end

local finalized, looked_at = 0, 0
local by_status = {exited = 0, errored = 0, abnormal = 0, crashed = 0}

-- Finalizes session s of namespace ns under policy P, over at `at_time`.
local function finalize_over(s, ns, P, at_time)
  local H = {prefix = prefix, ns = ns, stats_ret = stats_ret, events_max = events_max}
  finalize(s)
  record_event(H, 'ended', s, ended_at(s, P, at_time), s.st)
  finalized = finalized + 1
  by_status[s.st] = by_status[s.st] + 1
end

-- Looks at every record of the records hash `sub`: finalizes the sessions that are over, drops
-- the records that are gone, and returns when to look again (nil when the hash is empty).
local function look_at_records(sub)
  local key = prefix .. 'r:' .. sub
  local entries = redis.call('HGETALL', key)
  looked_at = looked_at + #entries / 2
  local again
  for n = 1, #entries, 2 do
    local member, s = entries[n], unpack_record(entries[n + 1])
    local ns = string.match(member, '^([^:]*):')
    local P = policies[ns] or policies['']
    local at_time = effective_now(s, now)
    if at_time >= record_expires_at(s, P, client_ret, session_ret) then
      redis.call('HDEL', key, member)
    else
      local at = not s.f and deadline(s, P)
      if at and at_time >= at then
        finalize_over(s, ns, P, at_time)
        redis.call('HSET', key, member, pack_record(s))
      end
      local look = next_look(s, P, client_ret, session_ret)
      if not again or look < again then again = look end
    end
  end
  return again
end

for _, sub in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)) do
  if looked_at >= limit then break end
  local again = look_at_records(sub)
  if again then redis.call('ZADD', KEYS[1], again, sub) else redis.call('ZREM', KEYS[1], sub) end
end

return {finalized, looked_at, by_status.exited, by_status.errored, by_status.abnormal,
  by_status.crashed}
