-- The hot script (after prelude.lua): a tick or current call, decided when the hot decision
-- (fast.lua) can, with only what it needs.
-- KEYS[1] the records hash of the client's current session; ARGV as redis/args.rs describes
-- them, with one call, of which this reads what the hot decision needs: the retentions, the
-- policy, the op, the client's field and the user id given. OP_CURRENT and OP_TICK come from
-- redis/args.rs.
-- Returns {now, record} when decided; 'none' when the client has no record, so a call that
-- starts a session can reserve its id before the full call (which would otherwise only answer
-- that it needs one); 'slow' when the caller must make the full call.
local client_ret, session_ret = struct.unpack('>I6I6', ARGV[1])
local idle, max, inactivity = struct.unpack('>I6I6B', ARGV[2])
local spec = ARGV[3]
local op_byte, _, form = string.byte(spec, 1, 3)
local op = (op_byte == OP_TICK and 'tick') or (op_byte == OP_CURRENT and 'current') or ''
local user_given = ''
if form == 43 then user_given = ARGV[4] end
if max == 0 then max = nil end
inactivity = inactivity == 1
local key, member, now = KEYS[1], string.sub(spec, 4), clock()
-- @fast
if fast_raw then return {fast_at, fast_raw} end
if fast_raw == false then return 'none' end
return 'slow'
