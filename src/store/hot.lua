-- The store's clock, a record's flags, and the hot decision's (fast.lua) last packed time.
-- Every script starts with this file; it defines one function, since a script defines its
-- functions again on every call.

-- The flags of a packed record (lib.lua's record format 2): which optional parts it holds.
local FLAG_PREVIOUS, FLAG_BACKGROUND, FLAG_ENDED, FLAG_ERRORS, FLAG_FINALIZED, FLAG_REPORTS =
  1, 2, 4, 8, 16, 32

local function clock()
  local t = redis.call('TIME')
  -- Lua reads the two numeric strings itself; tonumber() would cost two more calls.
  return t[1] * 1000 + math.floor(t[2] / 1000)
end

-- The last time record format 2 was written for, packed (six bytes): a batch's ticks all
-- write the batch's clock.
local packed_at, packed
