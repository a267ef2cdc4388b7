-- The store's clock, and the hot path: the calls most traffic makes, decided by a script of
-- their own (tick.lua) and first in a batch, without setting up the rest (lib.lua and
-- decide.lua cost more to set up than these calls cost to decide). Implements the same
-- decision as decide.lua for the cases it takes; keep the two in step.

-- The flags of a packed record (lib.lua's record format 2): which optional parts it holds.
local FLAG_PREVIOUS, FLAG_BACKGROUND, FLAG_ENDED, FLAG_ERRORS, FLAG_FINALIZED = 1, 2, 4, 8, 16

local function clock()
  local t = redis.call('TIME')
  -- Lua reads the two numeric strings itself; tonumber() would cost two more calls.
  return t[1] * 1000 + math.floor(t[2] / 1000)
end

-- The deadline (lib.lua's deadline()) of a session started at t0, last active at t, in the
-- background since bg (0 if not), under the given policy.
local function fast_deadline(t, t0, bg, idle, max, inactivity)
  local at
  if inactivity then at = t + idle elseif bg > 0 then at = bg + idle end
  if max and (not at or t0 + max < at) then at = t0 + max end
  return at
end

-- A time as record format 2 stores it, six bytes; the last one is kept, since a batch's ticks
-- all write the batch's clock.
local packed_at, packed
local function packed_time(t)
  if t ~= packed_at then packed_at, packed = t, struct.pack('>I6', t) end
  return packed
end

-- A tick or current call that finds its client's session live and has nothing to change but
-- the last activity: returns the session's record and the clock the call was decided on
-- (now, or the session's last activity if that is later). key and member are the records
-- hash and field of the client's current session (lib.lua's records_key()), user_given the
-- user id given ('' for none), max nil for none, inactivity whether the policy's mode is
-- inactivity, the rest as decide.lua takes them, as numbers. Anything else (no session, a
-- user to bind or change, a deadline passed, an ended session, a pointer to extend, a record
-- of an earlier format or in an earlier version's key) returns nil, for decide(); false when
-- the client has no record in its records hash (most often a new client).
-- Nothing is built per call that the answer does not need: it runs for most of the traffic.
local function decide_fast(key, member, op, user_given, idle, max, inactivity, client_ret,
                           session_ret, now)
  if op ~= 'tick' and op ~= 'current' then return nil end
  local raw = redis.call('HGET', key, member)
  if not raw then return false end
  if string.byte(raw, 1) ~= 2 then return nil end
  -- Read by position (lib.lua's record format 2), so that no string is made of the ids: the
  -- flags byte follows format and id; an ended session is decide()'s.
  local flags = string.byte(raw, 12)
  if bit.band(flags, FLAG_ENDED) ~= 0 then return nil end
  local at_index = 13
  if bit.band(flags, FLAG_PREVIOUS) ~= 0 then at_index = 23 end
  local _, t0, last, px, rest = struct.unpack('>I4I6I6I6', raw, at_index)
  local bg = 0
  if bit.band(flags, FLAG_BACKGROUND) ~= 0 then bg, rest = struct.unpack('>I6', raw, rest) end
  if user_given ~= '' then
    if bit.band(flags, FLAG_ERRORS) ~= 0 then rest = rest + 6 end
    local _, _, _, _, user = struct.unpack('>BHc0Hc0Hc0Hc0', raw, rest)
    if user_given ~= user then return nil end
  end
  if last > now then now = last end
  local at = fast_deadline(last, t0, bg, idle, max, inactivity)
  -- Past its deadline, or (with none) past client retention: for decide().
  if now >= (at or last + client_ret) then return nil end
  if op == 'current' or last == now then return raw, now end
  local retained = (fast_deadline(now, t0, bg, idle, max, inactivity) or now) + session_ret
  if retained > px then return nil end
  -- Last activity is the six bytes after the index and start.
  local offset = at_index - 1 + 4 + 6
  raw = string.sub(raw, 1, offset) .. packed_time(now) .. string.sub(raw, offset + 7)
  redis.call('HSET', key, member, raw)
  return raw, now
end
