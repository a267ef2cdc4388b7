#!lua
-- One session decision for one client, atomic on this Redis server's clock.
-- Implements the decision table of src/domain/decision.rs; keep the two in step.
--
-- KEYS[1] the client's current session (JSON), KEYS[2] its archive (hash: id -> JSON);
-- both carry the client's {bucket} tag, so they share a slot.
-- ARGV: op, create, end_status, end_session_id, idle_ms, max_ms, mode, on_user_change,
--       client_retention_ms, session_retention_ms, pointer_slack_ms, candidate, attributes
-- Returns {kind, now, session_json, pointer_expires_at}; kind is s(ession), need(s an id),
-- nolive or unknown. pointer_expires_at > 0 asks the caller to extend the id's pointer.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op, create, end_status, end_id = ARGV[1], ARGV[2] == '1', ARGV[3], ARGV[4]
local idle, max = tonumber(ARGV[5]), tonumber(ARGV[6])
local mode, on_user_change = ARGV[7], ARGV[8]
local client_ret, session_ret, slack = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local candidate, attrs = ARGV[12], cjson.decode(ARGV[13])
local may_start = not ((op == 'current' and not create) or op == 'end')

local function deadline(x)
  if x.e then return x.e, 'ended' end
  local at, why
  if mode == 'inactivity' then
    at, why = x.t + idle, 'idle_timeout'
  elseif x.bg then
    at, why = x.bg + idle, 'idle_timeout'
  end
  if max and (not at or x.t0 + max < at) then at, why = x.t0 + max, 'max_duration' end
  return at, why
end

local function over(x)
  local at, why = deadline(x)
  if at and now >= at then return at, why end
  return nil
end

local function retained_until(x)
  local at = deadline(x)
  return (at or x.t) + session_ret
end

local function reply(kind, x, pointer)
  return {kind, now, x or '', pointer or 0}
end

-- Saves the current session; returns its JSON and the pointer expiry to extend, if due.
local function save(x)
  local pointer = 0
  if retained_until(x) > x.px then
    x.px = retained_until(x) + slack
    pointer = x.px
  end
  local json = cjson.encode(x)
  redis.call('SET', KEYS[1], json, 'PXAT', math.max(x.t + client_ret, retained_until(x)))
  return json, pointer
end

local function archive(x)
  local ended, why = over(x)
  local done = {s = x.s, i = x.i, p = x.p, t0 = x.t0, t = x.t, e = x.e or ended or now,
                st = x.e and x.st or 'exited', r = x.r, a = x.a}
  local latest = 0
  local entries = redis.call('HGETALL', KEYS[2])
  for n = 1, #entries, 2 do
    local e = cjson.decode(entries[n + 1]).e
    if e + session_ret <= now then redis.call('HDEL', KEYS[2], entries[n]) else latest = math.max(latest, e) end
  end
  if done.e + session_ret > now then
    redis.call('HSET', KEYS[2], done.s, cjson.encode(done))
    latest = math.max(latest, done.e)
  end
  if latest > 0 then redis.call('PEXPIREAT', KEYS[2], latest + session_ret) end
end

local function start(prev, reason)
  if candidate == '' then return reply('need') end
  if prev then archive(prev) end
  local x = {s = candidate, i = prev and prev.i + 1 or 1, p = prev and prev.s or nil,
             t0 = now, t = now, st = 'ok', r = reason, a = attrs, px = 0}
  local json = save(x)
  -- The caller reserved the id's pointer for this first stretch; nothing to extend yet.
  return reply('s', json)
end

local raw = redis.call('GET', KEYS[1])
if not raw then
  if may_start then return start(nil, 'new_client') end
  return reply('nolive')
end
local s = cjson.decode(raw)
now = math.max(now, s.t)

if op == 'end' and end_id ~= '' and end_id ~= s.s then
  local archived = redis.call('HGET', KEYS[2], end_id)
  if archived and cjson.decode(archived).e + session_ret > now then return reply('s', archived) end
  return reply('unknown')
end

local _, why = over(s)
if why then
  if op == 'end' then return reply('s', raw) end
  if may_start then return start(s, why) end
  return reply('nolive')
end

if op == 'end' then
  s.e, s.st = now, end_status
  return reply('s', save(s))
end

local user, bound = attrs.user_id, s.a.user_id
if user and bound and user ~= bound and on_user_change == 'restart' and may_start then
  return start(s, 'user_change')
end

local changed = false
if user and not bound then
  s.a.user_id = user
  changed = true
end
if op ~= 'current' and s.t < now then
  s.t = now
  changed = true
end
if op == 'foreground' and s.bg then
  s.bg = nil
  changed = true
elseif op == 'background' and mode == 'background' and not s.bg then
  s.bg = now
  changed = true
end
if not changed then return reply('s', raw) end
local json, pointer = save(s)
return reply('s', json, pointer)
