-- One bucket's page of lifecycle events, with the clock of the Redis node holding it, so the
-- reader can leave out what is not settled yet (see RedisStore::events).
-- KEYS[1] the bucket's event stream; ARGV: the start of the range (XRANGE syntax), count.
-- Returns {now_ms, entries}.
local now = clock()
return {now, redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])}
