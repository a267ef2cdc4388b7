-- Finalizes the sessions of one bucket that idled out while their clients stayed away
-- (appended to hot.lua and lib.lua). One bucket is one atomic call, so instances sweeping at
-- the same time never finalize a session twice: the first marks it finalized, the next sees
-- that.
-- Implements `sweep` of src/domain/decision.rs; keep the two in step.
--
-- KEYS[1] the bucket's due index: a sorted set of clients (NS:HASH) by when to look again.
-- ARGV: bucket key prefix, limit, stats_retention_ms, events_max, then per namespace its
--       name, idle_ms, max_ms and mode; the name '' is the policy of namespaces not listed.
-- Returns {finalized, looked_at, then the finalized by final status: exited, errored, abnormal,
-- crashed}.

local prefix, limit = ARGV[1], tonumber(ARGV[2])
local policies = {}
for n = 5, #ARGV, 4 do
  policies[ARGV[n]] = {idle = tonumber(ARGV[n + 1]), max = tonumber(ARGV[n + 2]), mode = ARGV[n + 3]}
end

local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
local finalized = 0
local by_status = {exited = 0, errored = 0, abnormal = 0, crashed = 0}
for _, member in ipairs(due) do
  local ns = string.match(member, '^([^:]*):')
  local key = prefix .. 'c:' .. member
  local raw = redis.call('GET', key)
  local s = raw and unpack_record(raw)
  local P = policies[ns] or policies['']
  local at_time = s and math.max(now, s.t)
  local at = s and not s.f and deadline(s, P)
  if at and at_time < at then
    redis.call('ZADD', KEYS[1], at, member)
  else
    if s and not s.f then
      local H = {prefix = prefix, ns = ns, stats_ret = tonumber(ARGV[3]), events_max = ARGV[4]}
      finalize(H, s, ended_at(s, P, at_time))
      redis.call('SET', key, pack_record(s), 'KEEPTTL')
      finalized = finalized + 1
      by_status[s.st] = by_status[s.st] + 1
    end
    redis.call('ZREM', KEYS[1], member)
  end
end
return {finalized, #due, by_status.exited, by_status.errored, by_status.abnormal, by_status.crashed}
