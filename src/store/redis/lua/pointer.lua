-- A session id's pointer to its client, which keeps ids unique among retained sessions and
-- finds a session by id. Pointers are fields of small hashes, 256 per bucket by the id's second
-- byte: Redis keeps small hashes compact (listpack), where a key per id cost about as much as
-- the session's record. A field cannot expire on its own (Redis 7.0), so its value carries its
-- expiry, readers treat an expired pointer as gone, and each reservation removes the expired
-- pointers among a few drawn from its hash: their share stays small without a sweep.
--
-- KEYS[1] the pointers' hash (`PREFIX:{I}:i:J`, I and J the id's first two bytes);
-- ARGV: field (the rest of the id), op ('reserve' or 'extend'), then for reserve how long the
--       pointer lasts (ms) and its owner (NS:HASH), for extend when it expires now (ms on this
--       clock). A pointer's value is `EXPIRES_AT_MS:NS:HASH`.
-- reserve sets the pointer unless an unexpired one holds the id; extend moves an unexpired
-- pointer's expiry later. Both return 1 if they wrote, else 0.
local now = clock()
local key, field, op, expires = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
if op == 'reserve' then expires = string.format('%d', now + tonumber(ARGV[3])) end

local function expiry(value)
  return tonumber(string.match(value, '^%d+'))
end

if op == 'reserve' then
  local pointer = expires .. ':' .. ARGV[4]
  -- Most ids are new to their hash: HSETNX settles them in one call.
  if redis.call('HSETNX', key, field, pointer) == 0 then
    if expiry(redis.call('HGET', key, field)) > now then return 0 end
    redis.call('HSET', key, field, pointer)
  end
  local drawn = redis.call('HRANDFIELD', key, 8, 'WITHVALUES')
  for n = 1, #drawn, 2 do
    if expiry(drawn[n + 1]) <= now then redis.call('HDEL', key, drawn[n]) end
  end
else
  local held = redis.call('HGET', key, field)
  local at = held and expiry(held)
  if not at or at <= now or at >= tonumber(expires) then return 0 end
  redis.call('HSET', key, field, expires .. string.match(held, '^%d+(:.*)$'))
end
-- The hash goes when its last pointer would expire: GT keeps a later expiry, and NX gives a
-- new hash its first one (GT does not apply to a key without an expiry).
if redis.call('PEXPIREAT', key, expires, 'GT') == 0 then
  redis.call('PEXPIREAT', key, expires, 'NX')
end
return 1
