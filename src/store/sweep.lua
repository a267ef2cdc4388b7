-- Finalizes the sessions of one bucket that idled out while their clients stayed away
-- (appended to hot.lua and lib.lua). One bucket is one atomic call, so instances sweeping at
-- the same time never finalize a session twice: the first marks it finalized, the next sees
-- that.
-- Implements `sweep` of src/domain/decision.rs; keep the two in step.
--
-- KEYS[1] the bucket's due index: a sorted set of its sub-indexes by when the earliest of
-- their clients is due; each sub-index (`d:XX`) a sorted set of clients (NS:HASH) by when to
-- look again (lib.lua's schedule()).
-- ARGV: bucket key prefix, limit, stats_retention_ms, events_max, then per namespace its
--       name, idle_ms, max_ms and mode; the name '' is the policy of namespaces not listed.
-- Returns {finalized, clients looked at (at most limit), then the finalized by final status:
-- exited, errored, abnormal, crashed}.

local prefix, limit = ARGV[1], tonumber(ARGV[2])
local policies = {}
for n = 5, #ARGV, 4 do
  policies[ARGV[n]] = {idle = tonumber(ARGV[n + 1]), max = tonumber(ARGV[n + 2]), mode = ARGV[n + 3]}
end

local finalized, looked_at = 0, 0
local by_status = {exited = 0, errored = 0, abnormal = 0, crashed = 0}

-- Looks at one due client of sub-index `sub`: finalizes its session if over, else asks again
-- at its deadline; a finalized or gone session leaves the index.
local function look_at(sub, member)
  local ns = string.match(member, '^([^:]*):')
  local key = prefix .. 'c:' .. member
  local raw = redis.call('GET', key)
  local s = raw and unpack_record(raw)
  local P = policies[ns] or policies['']
  local at_time = s and math.max(now, s.t)
  local at = s and not s.f and deadline(s, P)
  if at and at_time < at then
    redis.call('ZADD', sub, at, member)
    return
  end
  if s and not s.f then
    local H = {prefix = prefix, ns = ns, stats_ret = tonumber(ARGV[3]), events_max = ARGV[4]}
    finalize(H, s, ended_at(s, P, at_time))
    redis.call('SET', key, pack_record(s), 'KEEPTTL')
    finalized = finalized + 1
    by_status[s.st] = by_status[s.st] + 1
  end
  redis.call('ZREM', sub, member)
end

for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)) do
  if looked_at >= limit then break end
  if string.find(id, ':', 1, true) then
    -- A client (NS:HASH) an earlier version made due in this index itself.
    looked_at = looked_at + 1
    look_at(KEYS[1], id)
  else
    local sub = prefix .. 'd:' .. id
    local due = redis.call('ZRANGEBYSCORE', sub, '-inf', now, 'LIMIT', 0, limit - looked_at)
    looked_at = looked_at + #due
    for _, member in ipairs(due) do look_at(sub, member) end
    -- The sub-index is due again when its earliest client is; an emptied one is gone.
    local first = redis.call('ZRANGE', sub, 0, 0, 'WITHSCORES')
    if first[2] then
      redis.call('ZADD', KEYS[1], first[2], id)
    else
      redis.call('ZREM', KEYS[1], id)
    end
  end
end
return {finalized, looked_at, by_status.exited, by_status.errored, by_status.abnormal,
  by_status.crashed}
