-- One decision for one client, on this Redis server's clock (after lib.lua and args.lua;
-- calls.lua calls it). Implements the decision table of src/domain/decision.rs; keep the
-- two in step.
--
-- key is the records hash holding the client's current session (lib.lua's records_key()) and
-- member the client's field there (NS:HASH); its archive is `PREFIX:{bucket}:a:NS:HASH`
-- (hash: id -> packed record). Every key written carries the client's {bucket} tag, as do
-- the bucket's health keys written through H. P is the call's policy (args.lua's POLICIES),
-- r its own arguments, as redis/args.rs lists them.
-- decide() returns {kind, now, session_record, pointer_expires_at, finalized, other};
-- kind is s(ession), need(s an id), nolive or unknown; finalized is the final status of the
-- session the call finalized, or ''; other is '1' when the session the call started counts as
-- 'other' in stats (lib.lua's counted_name()), else ''. pointer_expires_at > 0 asks the
-- caller to extend the id's pointer.

local function decide(key, member, op, P, r)
  -- The store's clock, moved on to a session's last activity when that is later.
  local now = now
  local create, end_status, named = r[2] == '1', r[3], r[4]
  local candidate = r[11]
  local attrs = attributes(r[5], r[6], r[7], r[1])
  local prefix = string.match(key, '^(.*}:)r:')
  local archive_key = prefix .. 'a:' .. member
  local H = {prefix = prefix, ns = string.match(member, '^[^:]*'), stats_ret = stats_ret,
             events_max = events_max}
  local report_errors, report_crashed, report_id = tonumber(r[8]), r[9] == '1', r[10]
  local may_start = not ((op == 'current' and not create) or op == 'end' or op == 'report')

  local function retained_until(x)
    local at = deadline(x, P)
    return (at or x.t) + session_ret
  end

  local raw = redis.call('HGET', key, member)
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
    redis.call('HSET', key, member, record)
    return record, pointer
  end

  -- Keeps a finalized session readable by id, dropping archived ones past retention.
  local function archive(done)
    local latest = 0
    local entries = redis.call('HGETALL', archive_key)
    for n = 1, #entries, 2 do
      local e = unpack_record(entries[n + 1]).e
      if e + session_ret <= now then redis.call('HDEL', archive_key, entries[n]) else latest = math.max(latest, e) end
    end
    if done.e + session_ret > now then
      redis.call('HSET', archive_key, done.s, pack_record(done))
      latest = math.max(latest, done.e)
    end
    if latest > 0 then redis.call('PEXPIREAT', archive_key, latest + session_ret) end
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
    local archived = redis.call('HGET', archive_key, named)
    if not archived then return reply('unknown') end
    local x = unpack_record(archived)
    if x.e + session_ret <= now then return reply('unknown') end
    if op == 'report' then
      local before = x.st
      local changed, written = apply_report(x, report_errors, report_crashed, report_id)
      if changed then amend(H, x, before, x.e) end
      if written then
        archived = pack_record(x)
        redis.call('HSET', archive_key, named, archived)
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
  if user and bound and user ~= bound and P.restart and may_start then
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
