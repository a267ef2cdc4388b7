-- What the decision scripts share before anything else (after the clock and record.rs's
-- constants of the record layout): the hot decision's (fast.lua) last packed time.

-- The last time record format 2 was written for, packed (six bytes): a batch's ticks all
-- write the batch's clock.
local packed_at, packed
