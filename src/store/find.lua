#!lua
-- Reads one session by id from its client's records: the current session or the archive.
-- KEYS[1] the client's current session, KEYS[2] its archive; ARGV[1] the session id.
-- Returns {now, session_json}, with '' when neither holds the id.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local raw = redis.call('GET', KEYS[1])
if raw and cjson.decode(raw).s == ARGV[1] then return {now, raw} end
return {now, redis.call('HGET', KEYS[2], ARGV[1]) or ''}
