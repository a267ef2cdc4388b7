-- The hot script (after prelude.lua): a tick or current call, decided when the hot decision
-- (fast.lua) can, with only what it needs.
-- KEYS[1] the records hash of the client's current session; ARGV[1] its field (NS:HASH);
-- ARGV[2] the call, packed so that no number is parsed from text: the op ('c' current, 't'
-- tick), then as 6-byte big-endian numbers idle_ms, max_ms (0 for none), one byte for the
-- mode (1 inactivity, 0 background), client_retention_ms, session_retention_ms; then the user
-- id given, if any (the rest of the argument).
-- Returns {now, record} when decided; 'none' when the client has no record, so a call that
-- starts a session can reserve its id before the full call (which would otherwise only answer
-- that it needs one); 'slow' when the caller must make the full call.
local call = ARGV[2]
local op_byte, idle, max, mode, client_ret, session_ret = struct.unpack('>c1I6I6BI6I6', call)
local op = (op_byte == 'c' and 'current') or (op_byte == 't' and 'tick') or op_byte
local user_given = ''
if #call > 26 then user_given = string.sub(call, 27) end
if max == 0 then max = nil end
local inactivity = mode == 1
local key, member, now = KEYS[1], ARGV[1], clock()
-- @fast
if fast_raw then return {fast_at, fast_raw} end
if fast_raw == false then return 'none' end
return 'slow'
