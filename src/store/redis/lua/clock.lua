-- The store's clock, which every script starts with: the Redis server's TIME, in
-- milliseconds, and the id of an event appended now to a stream, which Redis stamps with the
-- same clock (and never below the stream's last).
-- (A store given a clock of its own, in tests, starts its scripts with one that reads the
-- call's last argument instead; redis/scripts.rs's GIVEN_CLOCK.)
local function event_id(stream) return '*' end

local function clock()
  local t = redis.call('TIME')
  -- Lua reads the two numeric strings itself; tonumber() would cost two more calls.
  return t[1] * 1000 + math.floor(t[2] / 1000)
end
