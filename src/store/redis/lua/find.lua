-- Reads one session by id from its client's records (appended to prelude.lua and lib.lua): the
-- current session or the archive.
-- KEYS as transition.lua takes them: the client's records hash and its archive (and the guard,
-- unused here); ARGV[1] the session id.
-- Returns {now, session_record}, with '' when neither holds the id. Retention is the
-- caller's to judge, from the record.
local member = string.match(KEYS[2], '}:a:(.*)$')
local raw = redis.call('HGET', KEYS[1], member)
if raw and unpack_record(raw).s == ARGV[1] then return {now, raw} end
return {now, redis.call('HGET', KEYS[2], ARGV[1]) or ''}
