-- Reads one session by id from its client's records (appended to hot.lua and lib.lua): the
-- current session or the archive.
-- KEYS[1] the client's current session, KEYS[2] its archive; ARGV[1] the session id.
-- Returns {now, session_record}, with '' when neither holds the id.
local raw = redis.call('GET', KEYS[1])
if raw and unpack_record(raw).s == ARGV[1] then return {now, raw} end
return {now, redis.call('HGET', KEYS[2], ARGV[1]) or ''}
