-- The hot decision: the calls most traffic makes, decided without setting up the rest
-- (lib.lua and transition.lua cost more to set up than these calls cost to decide). Implements
-- the same decision as transition.lua for the cases it takes; keep the two in step.
--
-- Straight-line code, not a function: the scripts that use it (tick.lua, calls.lua) have it
-- put in place of their line `-- @fast`. Defining and calling a function here cost a single
-- call a tenth of its time in Redis.
--
-- In scope where it is put: key and member, the records hash and field of the client's
-- current session (lib.lua's records_key()); op ('tick', 'current', or another call's name);
-- user_given, the user id given ('' for none); idle, max (nil for none) and inactivity
-- (whether the policy's mode is inactivity); client_ret and session_ret; now, the clock.
-- It leaves fast_raw and fast_at: the session's record and the clock the call was decided on
-- (now, or the session's last activity if that is later) when it found the session live
-- with nothing to change but the last activity; fast_raw false when the client has no
-- record in its records hash (most often a new client); nil for anything else (no session,
-- another call, a user to bind or change, a deadline passed, an ended session, a pointer to
-- extend), for transition().
local fast_raw, fast_at
repeat
  if op ~= 'tick' and op ~= 'current' then break end
  local raw = redis.call('HGET', key, member)
  if not raw then fast_raw = false break end
  -- Read by position (lib.lua's record format 2), so that no string is made of the ids: the
  -- flags byte follows format and id; an ended session is transition()'s.
  local flags = string.byte(raw, FLAGS_AT)
  if bit.band(flags, FLAG_ENDED) ~= 0 then break end
  local at_index = FLAGS_AT + 1
  if bit.band(flags, FLAG_PREVIOUS) ~= 0 then at_index = at_index + ID_BYTES end
  local _, t0, last, px, rest = struct.unpack('>I4I6I6I6', raw, at_index)
  local bg = 0
  if bit.band(flags, FLAG_BACKGROUND) ~= 0 then bg, rest = struct.unpack('>I6', raw, rest) end
  if user_given ~= '' then
    if bit.band(flags, FLAG_ERRORS) ~= 0 then rest = rest + 6 end
    local _, _, _, _, user = struct.unpack('>BHc0Hc0Hc0Hc0', raw, rest)
    if user_given ~= user then break end
  end
  local at_now = now
  if last > at_now then at_now = last end
  -- Its deadline (lib.lua's deadline()): idle after the last activity (or after it went to
  -- the background), or the max duration after its start, whichever comes first.
  local at
  if inactivity then at = last + idle elseif bg > 0 then at = bg + idle end
  if max and (not at or t0 + max < at) then at = t0 + max end
  -- Past its deadline, or (with none) past client retention: for transition().
  if at_now >= (at or last + client_ret) then break end
  if op == 'tick' and last ~= at_now then
    -- Retained until its deadline as of this tick, plus session retention: only an idle
    -- deadline moves with the tick.
    local due = at
    if inactivity then
      due = at_now + idle
      if max and t0 + max < due then due = t0 + max end
    end
    if (due or at_now) + session_ret > px then break end
    if at_now ~= packed_at then packed_at, packed = at_now, struct.pack('>I6', at_now) end
    -- Last activity is the six bytes after the index and start.
    local offset = at_index - 1 + 4 + 6
    raw = string.sub(raw, 1, offset) .. packed .. string.sub(raw, offset + 7)
    redis.call('HSET', key, member, raw)
  end
  fast_raw, fast_at = raw, at_now
until true
