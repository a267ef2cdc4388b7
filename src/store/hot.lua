-- The store's clock, and the hot path: the calls most traffic makes, decided by a script of
-- their own (tick.lua) and first in a batch, without setting up the rest (lib.lua and
-- decide.lua cost more to set up than these calls cost to decide). Implements the same
-- decision as decide.lua for the cases it takes; keep the two in step.

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A tick or current call that finds its client's session live and has nothing to change but
-- the last activity: returns decide()'s reply. key is the client's current session,
-- user_given the user id given ('' for none), the rest as decide.lua takes them. Anything
-- else (no session, a user to bind or change, a deadline passed, an ended session, a pointer
-- to extend, a record of the JSON format) returns nil, for decide().
local function decide_fast(key, op, user_given, idle, max, mode, client_ret, session_ret, now)
  if op ~= 'tick' and op ~= 'current' then return nil end
  local raw = redis.call('GET', key)
  if not raw or string.byte(raw, 1) ~= 1 then return nil end
  local _, s, p, _, t0, last, bg, e, px, _, _, _, _, _, _, _, user =
    struct.unpack('>BBc0Bc0I4I6I6I6I6I6I6BBBHc0Hc0Hc0Hc0', raw)
  if e ~= 0 or (user_given ~= '' and user_given ~= user) then return nil end
  now = math.max(now, last)
  local inactivity = mode == 'inactivity'
  -- The deadline (lib.lua's deadline()) for a last activity at `t`.
  local function deadline(t)
    local at
    if inactivity then at = t + idle elseif bg > 0 then at = bg + idle end
    if max and (not at or t0 + max < at) then at = t0 + max end
    return at
  end
  local at = deadline(last)
  if at and now >= at then return nil end
  if op == 'current' or last == now then return {'s', now, raw, 0, ''} end
  local retained = (deadline(now) or now) + session_ret
  if retained > px then return nil end
  -- Last activity is the six bytes after format, id, previous id, index and start.
  local offset = 1 + 1 + #s + 1 + #p + 4 + 6
  raw = string.sub(raw, 1, offset) .. struct.pack('>I6', now) .. string.sub(raw, offset + 7)
  redis.call('SET', key, raw, 'PXAT', math.max(now + client_ret, retained))
  return {'s', now, raw, 0, ''}
end
