-- One session decision for one client, on this Redis server's clock (appended to lib.lua,
-- and followed by session.lua or batch.lua, which call it). Implements the decision table
-- of src/domain/decision.rs; keep the two in step.
--
-- KEYS[1] the records hash holding the client's current session (lib.lua's records_key()),
-- KEYS[2] its archive (`PREFIX:{bucket}:a:NS:HASH`, hash: id -> packed record), KEYS[3] the
-- bucket's migration guard (never written; redis.rs says why); all carry the client's {bucket}
-- tag, as do the bucket's health keys written through H, whose prefix and namespace KEYS[2]
-- gives.
-- ARGV: op, create, end_status, named session id (end, report), idle_ms, max_ms, mode,
--       on_user_change, client_retention_ms, session_retention_ms, pointer_slack_ms,
--       candidate, release, environment, platform, user_id ('' when not given),
--       stats_retention_ms, events_max, report errors, report crashed, report id digest
-- decide(KEYS, ARGV) returns {kind, now, session_record, pointer_expires_at, finalized, other};
-- kind is s(ession), need(s an id), nolive or unknown; finalized is the final status of the
-- session the call finalized, or ''; other is '1' when the session the call started counts as
-- 'other' in stats (lib.lua's counted_name()), else ''. pointer_expires_at > 0 asks the
-- caller to extend the id's pointer.

local function decide(KEYS, ARGV)
  -- The store's clock, moved on to a session's last activity when that is later.
  local now = now
  local op, create, end_status, named = ARGV[1], ARGV[2] == '1', ARGV[3], ARGV[4]
  local P = {idle = tonumber(ARGV[5]), max = tonumber(ARGV[6]), mode = ARGV[7]}
  local on_user_change = ARGV[8]
  local client_ret, session_ret, slack = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
  local candidate = ARGV[12]
  local attrs = {release = present(ARGV[13], ''), environment = present(ARGV[14], ''),
                 platform = present(ARGV[15], ''), user_id = present(ARGV[16], '')}
  local prefix, member = string.match(KEYS[2], '^(.*}:)a:(.*)$')
  local H = {prefix = prefix, ns = string.match(member, '^[^:]*'), stats_ret = tonumber(ARGV[17]),
             events_max = ARGV[18]}
  local report_errors, report_crashed, report_id = tonumber(ARGV[19]), ARGV[20] == '1', ARGV[21]
  local may_start = not ((op == 'current' and not create) or op == 'end' or op == 'report')

  local function retained_until(x)
    local at = deadline(x, P)
    return (at or x.t) + session_ret
  end

  local raw = redis.call('HGET', KEYS[1], member)
  local s = raw and unpack_record(raw)
  if s and now >= record_expires(s, P, client_ret, session_ret) then raw, s = false, nil end

  -- The final status of the session this call finalized, if it did, and whether the session
  -- it started counts as 'other' in stats (for metrics).
  local finalized, counted_other = '', ''
  local function finalize_now(x, ended, end_status)
    if finalize(H, x, ended, end_status) then finalized = x.st end
  end

  local function reply(kind, x, pointer)
    return {kind, now, x or '', pointer or 0, finalized, counted_other}
  end

  -- Saves the current session; returns its record and the pointer expiry to extend, if due.
  local function save(x)
    local pointer = 0
    if retained_until(x) > x.px then
      x.px = retained_until(x) + slack
      pointer = x.px
    end
    local record = pack_record(x)
    redis.call('HSET', KEYS[1], member, record)
    return record, pointer
  end

  -- Keeps a finalized session readable by id, dropping archived ones past retention.
  local function archive(done)
    local latest = 0
    local entries = redis.call('HGETALL', KEYS[2])
    for n = 1, #entries, 2 do
      local e = unpack_record(entries[n + 1]).e
      if e + session_ret <= now then redis.call('HDEL', KEYS[2], entries[n]) else latest = math.max(latest, e) end
    end
    if done.e + session_ret > now then
      redis.call('HSET', KEYS[2], done.s, pack_record(done))
      latest = math.max(latest, done.e)
    end
    if latest > 0 then redis.call('PEXPIREAT', KEYS[2], latest + session_ret) end
  end

  local function start(prev, reason)
    if candidate == '' then return reply('need') end
    if prev then
      local ended = ended_at(prev, P, now)
      finalize_now(prev, ended)
      archive({s = prev.s, i = prev.i, p = prev.p, t0 = prev.t0, t = prev.t, e = ended,
               st = prev.st, n = prev.n, f = true, r = prev.r, a = prev.a, k = prev.k})
    end
    local x = {s = candidate, i = prev and prev.i + 1 or 1, p = prev and prev.s or nil,
               t0 = now, t = now, st = 'ok', r = reason, a = attrs, px = 0}
    -- decision.rs's started_by: started by a background call, the idle clock runs already.
    if op == 'background' and P.mode == 'background' then x.bg = now end
    event(H, 'started', x)
    H.other = nil
    stat(H, x, 'started', 1)
    if H.other then counted_other = '1' end
    user_marks(H, x)
    schedule(H.prefix, member, next_look(x, P, client_ret, session_ret))
    local record = save(x)
    -- The caller reserved the id's pointer for this first stretch; nothing to extend yet.
    return reply('s', record)
  end

  if not s then
    if may_start then return start(nil, 'new_client') end
    return reply('nolive')
  end
  now = math.max(now, s.t)

  if named ~= '' and named ~= s.s then
    local archived = redis.call('HGET', KEYS[2], named)
    if not archived then return reply('unknown') end
    local x = unpack_record(archived)
    if x.e + session_ret <= now then return reply('unknown') end
    if op == 'report' then
      local before = x.st
      local changed, written = apply_report(x, report_errors, report_crashed, report_id)
      if changed then amend(H, x, before, x.e) end
      if written then
        archived = pack_record(x)
        redis.call('HSET', KEYS[2], named, archived)
      end
    end
    return reply('s', archived)
  end

  local _, why = over(s, P, now)
  if why then
    if op == 'report' then
      if retained_until(s) <= now then return reply('unknown') end
      local before, was_final = s.st, s.f
      local changed, written = apply_report(s, report_errors, report_crashed, report_id)
      if was_final and not written then return reply('s', raw) end
      local ended = ended_at(s, P, now)
      if not was_final then
        finalize_now(s, ended)
      elseif changed then
        amend(H, s, before, ended)
      end
      return reply('s', save(s))
    end
    if op == 'end' then return reply('s', raw) end
    if may_start then return start(s, why) end
    return reply('nolive')
  end

  if op == 'end' then
    s.e = now
    finalize_now(s, now, end_status)
    return reply('s', save(s))
  end

  if op == 'report' then
    if not select(2, apply_report(s, report_errors, report_crashed, report_id)) then
      return reply('s', raw)
    end
    user_marks(H, s)
    return reply('s', save(s))
  end

  local user, bound = attrs.user_id, s.a.user_id
  if user and bound and user ~= bound and on_user_change == 'restart' and may_start then
    return start(s, 'user_change')
  end

  local changed = false
  if user and not bound then
    s.a.user_id = user
    user_marks(H, s)
    changed = true
  end
  if op ~= 'current' and s.t < now then
    s.t = now
    changed = true
  end
  if op == 'foreground' and s.bg then
    s.bg = nil
    changed = true
  elseif op == 'background' and P.mode == 'background' and not s.bg then
    s.bg = now
    changed = true
    -- Its idle clock starts: the sweeper must look at it then, not at its max duration.
    schedule(H.prefix, member, (deadline(s, P)))
  end
  if not changed then return reply('s', raw) end
  local record, pointer = save(s)
  return reply('s', record, pointer)
end
