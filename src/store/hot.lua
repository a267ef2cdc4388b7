-- The store's clock, and the hot path: the calls most traffic makes, decided before the rest
-- of a script is set up (setting it up costs more than deciding them). Implements the same
-- decision as decide.lua for the cases it takes; keep the two in step.

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A tick or current call (KEYS and ARGV as decide.lua takes them) that finds its client's
-- session live and has nothing to change but the last activity: returns decide()'s reply.
-- Anything else (no session, a named id, a user to bind or change, a deadline passed, an
-- ended session, a pointer to extend, a record of the JSON format) returns nil for decide().
local function decide_fast(KEYS, ARGV, now)
  local op = ARGV[1]
  if (op ~= 'tick' and op ~= 'current') or ARGV[4] ~= '' then return nil end
  local raw = redis.call('GET', KEYS[1])
  if not raw or string.byte(raw, 1) ~= 1 then return nil end
  local _, s, p, _, t0, last, bg, e, px, _, _, _, _, _, _, _, user =
    struct.unpack('>BBc0Bc0I4I6I6I6I6I6I6BBBHc0Hc0Hc0Hc0', raw)
  if e ~= 0 or (ARGV[16] ~= '' and ARGV[16] ~= user) then return nil end
  now = math.max(now, last)
  local idle, max, inactivity = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7] == 'inactivity'
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
  local retained = (deadline(now) or now) + tonumber(ARGV[10])
  if retained > px then return nil end
  -- Last activity is the six bytes after format, id, previous id, index and start.
  local offset = 1 + 1 + #s + 1 + #p + 4 + 6
  raw = string.sub(raw, 1, offset) .. struct.pack('>I6', now) .. string.sub(raw, offset + 7)
  redis.call('SET', KEYS[1], raw, 'PXAT', math.max(now + tonumber(ARGV[9]), retained))
  return {'s', now, raw, 0, ''}
end
