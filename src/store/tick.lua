-- The hot script (appended to hot.lua): a tick or current call, decided when decide_fast()
-- can, with only what it needs.
-- KEYS[1] the records hash of the client's current session; ARGV: its field (NS:HASH), op,
-- user_id ('' when not given), idle_ms, max_ms ('' for none), mode, client_retention_ms,
-- session_retention_ms.
-- Returns decide()'s reply, or {'slow', now, '', 0, ''}: the caller then makes the full call;
-- {'none', ...} when the client has no record, so a call that starts a session can reserve
-- its id before the full call (which would otherwise only answer that it needs one).
local now = clock()
local raw, at = decide_fast(KEYS[1], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]),
  tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8]), now)
if raw then return {'s', at, raw, 0, ''} end
if raw == false then return {'none', now, '', 0, ''} end
return {'slow', now, '', 0, ''}
