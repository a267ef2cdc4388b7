-- What the decision scripts share before anything else (after clock.lua): a record's flags,
-- and the hot decision's (fast.lua) last packed time. It defines no function, since a script
-- defines its functions again on every call.

-- The flags of a packed record (lib.lua's record format 2): which optional parts it holds.
local FLAG_PREVIOUS, FLAG_BACKGROUND, FLAG_ENDED, FLAG_ERRORS, FLAG_FINALIZED, FLAG_REPORTS =
  1, 2, 4, 8, 16, 32

-- The last time record format 2 was written for, packed (six bytes): a batch's ticks all
-- write the batch's clock.
local packed_at, packed
