#!lua
-- One bucket's page of lifecycle events, with the clock of the Redis node holding it, so the
-- reader can leave out what is not settled yet (see RedisStore::events).
-- KEYS[1] the bucket's event stream; ARGV: the start of the range (XRANGE syntax), count.
-- Returns {now_ms, entries}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {now, redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])}
