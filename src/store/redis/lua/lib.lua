-- Shared by the decision, sweep and find scripts, which follow it (after prelude.lua):
-- the store's clock, records, the policy of src/domain/decision.rs (its functions by the same
-- names: deadline, over, decide, apply_update, ended_at, finalize, finalized, started_by ...),
-- and the effects of domain/transition.rs that the sweeper shares (record_event, user_marks).
--
-- A health context H = {prefix, ns, stats_ret, events_max} names the client's bucket
-- (`PREFIX:{bucket}:`, whose hash tag every key written here carries), its namespace, how
-- long stats are kept, and about how many events the bucket's stream keeps.

local now = clock()
local HOUR = 3600000
local RANK = {ok = 0, exited = 0, errored = 1, abnormal = 2, crashed = 3}

-- A session record, as a records hash and an archive keep it: packed with struct, which costs
-- a fraction of cjson to read and write. Decoded, a record is the table
-- {s, i, p, t0, t, bg, e, st, n, f, r, px, a = {release, environment, platform, user_id}, k};
-- absent fields are nil; k is the list of the digests of its recent report ids, oldest
-- first. src/store/redis/record.rs reads the same layouts; keep them in step.
-- Packed (big-endian), format 2: the format byte, the id's 10 bytes, a byte of FLAGS (which
-- optional parts follow, and whether it is finalized: FLAG_*), the previous id's 10 bytes, index,
-- started, last activity, pointer expiry, background since, ended, errors (each time 6 bytes),
-- status * 16 + reason, then the four attributes, each after its 2-byte length ('' when
-- absent), then the count of report digests and the digests (8 bytes each). At about 60
-- bytes a record fits a compact hash entry.
-- A report id's digest is 8 bytes (domain::ReportId), and a record keeps the last 8
-- (domain::RecentReports).
local REPORT_BYTES, REPORTS_KEPT = 8, 8
-- FORMAT, FLAGS_AT, ID_BYTES, FLAG_*, STATUS and REASON (code -> name) come from record.rs,
-- which puts them before this file.
local STATUS_CODE, REASON_CODE = {}, {}
for code, name in pairs(STATUS) do STATUS_CODE[name] = code end
for code, name in pairs(REASON) do REASON_CODE[name] = code end

local function present(v, absent)
  if v == absent then return nil end
  return v
end

local function id_bytes(id)
  local bytes = {}
  for n = 1, #id, 2 do bytes[#bytes + 1] = tonumber(string.sub(id, n, n + 1), 16) end
  return string.char(unpack(bytes))
end

local function id_hex(bytes)
  return string.format(string.rep('%02x', #bytes), string.byte(bytes, 1, -1))
end

local function attributes(release, environment, platform, user)
  return {release = present(release, ''), environment = present(environment, ''),
          platform = present(platform, ''), user_id = present(user, '')}
end

local function unpack_record(raw)
  local flags = string.byte(raw, FLAGS_AT)
  local function has(flag) return bit.band(flags, flag) ~= 0 end
  local x, at = {s = id_hex(string.sub(raw, 2, FLAGS_AT - 1)), f = has(FLAG_FINALIZED) or nil},
    FLAGS_AT + 1
  if has(FLAG_PREVIOUS) then x.p, at = id_hex(string.sub(raw, at, at + ID_BYTES - 1)), at + ID_BYTES end
  x.i, x.t0, x.t, x.px, at = struct.unpack('>I4I6I6I6', raw, at)
  if has(FLAG_BACKGROUND) then x.bg, at = struct.unpack('>I6', raw, at) end
  if has(FLAG_ENDED) then x.e, at = struct.unpack('>I6', raw, at) end
  if has(FLAG_ERRORS) then x.n, at = struct.unpack('>I6', raw, at) end
  local code, release, environment, platform, user
  code, release, environment, platform, user, at = struct.unpack('>BHc0Hc0Hc0Hc0', raw, at)
  x.st, x.r = STATUS[math.floor(code / 16)], REASON[code % 16]
  x.a = attributes(release, environment, platform, user)
  if has(FLAG_REPORTS) then
    x.k = {}
    for n = 1, string.byte(raw, at) do
      local from = at + 1 + (n - 1) * REPORT_BYTES
      x.k[n] = string.sub(raw, from, from + REPORT_BYTES - 1)
    end
  end
  return x
end

local function pack_record(x)
  local a = x.a
  local flags = (x.p and FLAG_PREVIOUS or 0) + (x.bg and FLAG_BACKGROUND or 0) +
    (x.e and FLAG_ENDED or 0) + (x.n and FLAG_ERRORS or 0) + (x.f and FLAG_FINALIZED or 0) +
    (x.k and FLAG_REPORTS or 0)
  local parts = {struct.pack('>Bc0B', FORMAT, id_bytes(x.s), flags)}
  if x.p then parts[#parts + 1] = id_bytes(x.p) end
  parts[#parts + 1] = struct.pack('>I4I6I6I6', x.i, x.t0, x.t, x.px or 0)
  for _, t in ipairs({x.bg or false, x.e or false, x.n or false}) do
    if t then parts[#parts + 1] = struct.pack('>I6', t) end
  end
  local release, environment = a.release or '', a.environment or ''
  local platform, user = a.platform or '', a.user_id or ''
  parts[#parts + 1] = struct.pack('>BHc0Hc0Hc0Hc0', STATUS_CODE[x.st] * 16 + REASON_CODE[x.r],
    #release, release, #environment, environment, #platform, platform, #user, user)
  if x.k then
    parts[#parts + 1] = string.char(#x.k)
    for _, digest in ipairs(x.k) do parts[#parts + 1] = digest end
  end
  return table.concat(parts)
end

-- A client's records: the hash of the records of the bucket's clients whose hash starts as
-- the client's (`PREFIX:{bucket}:r:XX`, XX the first byte of the client's hash), where its field
-- (`NS:HASH`) holds its current session. About fifteen clients share a hash at a million
-- sessions, so a record costs a hash field, not a key with its own expiry.
local function records_key(prefix, member)
  return prefix .. 'r:' .. string.match(member, ':(..)')
end

-- Asks the sweeper to look at the records hash of a client (`NS:HASH`) of the bucket at `at`
-- or earlier: the bucket's `wake` sorted set holds its records hashes (by XX) by when the first
-- of their records is due (next_look() below), so one small entry serves every client of a
-- hash.
local function schedule(prefix, member, at)
  redis.call('ZADD', prefix .. 'wake', 'LT', at, string.match(member, ':(..)'))
end

-- The worse of two statuses; on a tie the second, so ok ended as exited is exited.
local function worse(a, b)
  if RANK[b] >= RANK[a] then return b end
  return a
end

-- When session x stops being live under policy p = {idle, max, mode}, and why.
local function deadline(x, p)
  if x.e then return x.e, 'ended' end
  local at, why
  if p.mode == 'inactivity' then
    at, why = x.t + p.idle, 'idle_timeout'
  elseif x.bg then
    at, why = x.bg + p.idle, 'idle_timeout'
  end
  if p.max and (not at or x.t0 + p.max < at) then at, why = x.t0 + p.max, 'max_duration' end
  return at, why
end

local function over(x, p, at_time)
  local at, why = deadline(x, p)
  if at and at_time >= at then return at, why end
  return nil
end

-- decision.rs's retained_until: when x stops being readable by id.
local function retained_until(x, p, session_ret)
  return (deadline(x, p) or x.t) + session_ret
end

-- decision.rs's record_expires_at: when x's record is gone. A record is kept in a hash field,
-- which cannot expire on its own: readers treat a record past this as gone, and the sweeper
-- removes it.
local function record_expires_at(x, p, client_ret, session_ret)
  return math.max(x.t + client_ret, retained_until(x, p, session_ret))
end

-- transition.rs's still_retained: whether an earlier (ended) session is readable at at_time.
local function still_retained(x, at_time, session_ret)
  return x.e ~= nil and x.e + session_ret > at_time
end

-- When the sweeper must look at x's record next: at its deadline while it is not finalized,
-- else when it is gone.
local function next_look(x, p, client_ret, session_ret)
  return (not x.f and deadline(x, p)) or record_expires_at(x, p, client_ret, session_ret)
end

-- decision.rs's ended_at: when x ended: when it was ended, else its deadline if over, else
-- now (replaced live).
local function ended_at(x, p, at_time)
  return x.e or over(x, p, at_time) or at_time
end

-- decision.rs's effective_now: the store's clock, never earlier than x's last activity or
-- its end.
local function effective_now(x, store_now)
  if x then return math.max(store_now, x.t, x.e or 0) end
  return store_now
end

-- Op::may_start: whether the call may start a session.
local function may_start(op, create)
  return not ((op == 'current' and not create) or op == 'end' or op == 'report')
end

-- decision.rs's decide: the verdict for the call op (create, the session id it names, or
-- '', the user it gives, or nil) on x under policy p at at_time, and its detail: 'nolive',
-- 'keep', 'other', 'end', 'start' and the reason, 'report' and its effect (live, finalize
-- or amend), or 'update' and {activity, background (keep, enter or leave), bind_user}.
local function decide(x, op, create, named, user, p, at_time)
  if not x then
    if may_start(op, create) then return 'start', 'new_client' end
    return 'nolive'
  end
  if named ~= '' and named ~= x.s then return 'other' end
  local _, why = over(x, p, at_time)
  if why then
    if op == 'end' then return 'keep' end
    if op == 'report' then return 'report', x.f and 'amend' or 'finalize' end
    if may_start(op, create) then return 'start', why end
    return 'nolive'
  end
  if op == 'end' then return 'end' end
  if op == 'report' then return 'report', 'live' end
  local bound = x.a.user_id
  if user and bound and user ~= bound and p.restart and may_start(op, create) then
    return 'start', 'user_change'
  end
  local background = 'keep'
  if op == 'foreground' then
    background = 'leave'
  elseif op == 'background' and p.mode == 'background' then
    background = 'enter'
  end
  return 'update', {activity = op ~= 'current', background = background,
                    bind_user = user ~= nil and bound == nil}
end

-- decision.rs's apply_update: applies update u to x in place; returns whether x changed.
local function apply_update(x, u, user, at_time)
  local changed = false
  if u.activity and at_time > x.t then
    x.t = at_time
    changed = true
  end
  -- A repeated background call keeps the first time, so retries do not extend the session.
  if u.background == 'enter' and not x.bg then
    x.bg = at_time
    changed = true
  elseif u.background == 'leave' and x.bg then
    x.bg = nil
    changed = true
  end
  if u.bind_user and x.a.user_id ~= user then
    x.a.user_id = user
    changed = true
  end
  return changed
end

local function duration_bucket(ms)
  if ms < 1 then return 0 end
  local e, p = 0, 1
  while p * 2 <= ms do p, e = p * 2, e + 1 end
  return 1 + 4 * e + math.floor(ms * 4 / p) - 4
end

-- How a session's release or environment (dimension 'r' or 'e') is written in the counter
-- fields of the stats hash `key` of its start day: '' for none, the name's ordinal once
-- admitted to the day, or while the namespace's day has admitted fewer than `cap`, else '0'
-- for other (and H.other is set). domain::stats says how the admitted names are kept;
-- STATS_MAX_* come from the store's configuration, put before this file.
local function counted_name(H, key, dimension, name, cap)
  if not name then return '' end
  local marker = '\t' .. H.ns .. '\t' .. dimension .. '\t' .. name
  local ordinal = redis.call('HGET', key, marker)
  if ordinal then return ordinal end
  local count = '\t' .. H.ns .. '\t' .. dimension
  local admitted = tonumber(redis.call('HGET', key, count) or 0)
  if admitted >= cap then
    H.other = true
    return '0'
  end
  redis.call('HSET', key, marker, admitted + 1, count, admitted + 1)
  return tostring(admitted + 1)
end

-- Adds `by` to a stats counter of x's start hour, or sets a membership field when by is nil.
local function stat(H, x, kind, by)
  local hour = math.floor(x.t0 / HOUR)
  local day = math.floor(hour / 24)
  local key = H.prefix .. 's:' .. day
  if not x.sr then
    x.sr = counted_name(H, key, 'r', x.a.release, STATS_MAX_RELEASES)
    x.se = counted_name(H, key, 'e', x.a.environment, STATS_MAX_ENVIRONMENTS)
  end
  local field = hour .. '\t' .. H.ns .. '\t' .. x.sr .. '\t' .. x.se .. '\t' .. kind
  if by then redis.call('HINCRBY', key, field, by) else redis.call('HSET', key, field, 1) end
  redis.call('PEXPIREAT', key, (day + 1) * 24 * HOUR + H.stats_ret)
end

local function user_marks(H, x)
  local user = x.a.user_id
  if not user then return end
  -- As domain::stats writes users: the first 16 hex digits of the id's SHA-1.
  user = string.sub(redis.sha1hex(user), 1, 16)
  stat(H, x, 'u' .. user)
  if x.st == 'crashed' then stat(H, x, 'x' .. user) end
end

local function event(H, kind, x, ended)
  local stream = H.prefix .. 'ev'
  local args = {'XADD', stream, 'MAXLEN', '~', H.events_max, event_id(stream),
    'type', kind, 'namespace', H.ns, 'session_id', x.s, 'index', x.i, 'reason', x.r,
    'started_at', x.t0, 'last_activity_at', x.t, 'status', x.st, 'errors', x.n or 0}
  local function add(k, v) if v then args[#args + 1] = k; args[#args + 1] = v end end
  add('previous_session_id', x.p)
  add('ended_at', ended)
  for _, k in ipairs({'release', 'environment', 'platform', 'user_id'}) do add(k, x.a[k]) end
  redis.call(unpack(args))
end

-- health.rs's final_status: x's health, made no better by how it ended (exited when it idled
-- out or was replaced).
local function final_status(x, ended_with)
  return worse(x.st, ended_with or 'exited')
end

-- decision.rs's end: ends the live x now with a client-given status, finalizing it.
local function end_session(x, status, at_time)
  x.e = at_time
  x.st = final_status(x, status)
  x.f = true
end

-- decision.rs's finalize: x's final status, once; returns whether this finalized it.
local function finalize(x)
  if x.f then return false end
  x.st = final_status(x)
  x.f = true
  return true
end

-- decision.rs's finalized: the record of x, over (or replaced now), as retained and shown.
local function finalized(x, p, at_time)
  local done = {s = x.s, i = x.i, p = x.p, t0 = x.t0, t = x.t, e = ended_at(x, p, at_time),
                st = x.st, n = x.n, f = x.f, r = x.r, a = x.a, k = x.k}
  finalize(done)
  return done
end

-- decision.rs's started and started_by: the first state of a session started by op; in
-- background mode one started by a background call starts with its idle clock running.
local function started(id, previous, reason, attrs, at_time)
  return {s = id, i = previous and previous.i + 1 or 1, p = previous and previous.s or nil,
          t0 = at_time, t = at_time, st = 'ok', r = reason, a = attrs, px = 0}
end

local function started_by(op, p, id, previous, reason, attrs, at_time)
  local x = started(id, previous, reason, attrs, at_time)
  if op == 'background' and p.mode == 'background' then x.bg = at_time end
  return x
end

-- transition.rs's Effect::Event as the store carries it out: the lifecycle event kind of x
-- (ended at `ended`, nil for none) and the stats it moves (domain::stats's on_started,
-- on_finalized and on_amended; before is the status an amended event moved from). A
-- started session counting as other sets H.other (counted_name()).
local function record_event(H, kind, x, ended, before)
  event(H, kind, x, ended)
  if kind == 'started' then
    stat(H, x, 'started', 1)
  elseif kind == 'ended' then
    stat(H, x, x.st, 1)
    stat(H, x, 'd' .. duration_bucket(x.t - x.t0), 1)
  elseif before ~= x.st then
    stat(H, x, before, -1)
    stat(H, x, x.st, 1)
  end
  user_marks(H, x)
end

-- health.rs's Report::apply: adds a report's errors and crash to x, unless x has a report of its id (digest, '' for
-- none) among its last REPORTS_KEPT; returns whether its errors or status changed, and
-- whether the record changed at all.
local function apply_report(x, errors, crashed, digest)
  if digest ~= '' then
    x.k = x.k or {}
    for _, seen in ipairs(x.k) do
      if seen == digest then return false, false end
    end
    if #x.k >= REPORTS_KEPT then table.remove(x.k, 1) end
    x.k[#x.k + 1] = digest
  end
  local n0, st0 = x.n or 0, x.st
  local n = n0 + errors
  if n > 0 then x.n = n end
  x.st = worse(x.st, crashed and 'crashed' or 'errored')
  return n ~= n0 or x.st ~= st0, true
end

