-- One call's transition for one client, on this Redis server's clock (after lib.lua and
-- args.lua; calls.lua calls it): src/domain/transition.rs, function for function and by the
-- same names, each of its effects written where that module lists it:
--   Effect::Save       save(): the record's field in the records hash;
--   Effect::SaveNamed  the archive's field of the earlier session;
--   Effect::Archive    archive();
--   Effect::Start      save() of the new session;
--   Effect::Event      lib.lua's record_event() (the stream, and the stats it moves);
--   Effect::UserMarks  lib.lua's user_marks();
--   Effect::Wake       wake(): the bucket's wake index.
--
-- key is the records hash holding the client's current session (lib.lua's records_key()) and
-- member the client's field there (NS:HASH); its archive is `PREFIX:{bucket}:a:NS:HASH`
-- (hash: id -> packed record). Every key written carries the client's {bucket} tag, as do
-- the bucket's health keys written through H. P is the call's policy (args.lua's POLICIES),
-- r its own arguments, as redis/args.rs lists them.
-- Returns {kind, now, session_record, pointer_expires_at, finalized, other}; kind is
-- s(ession), need(s an id), nolive or unknown; finalized is the final status of the session
-- the call finalized, or ''; other is '1' when the session the call started counts as 'other'
-- in stats (lib.lua's counted_name()), else ''. pointer_expires_at > 0 asks the caller to
-- extend the id's pointer.

local function transition(key, member, op, P, r)
  local create, end_status, named = r[2] == '1', r[3], r[4]
  local candidate = r[11]
  local attrs = attributes(r[5], r[6], r[7], r[1])
  local prefix = string.match(key, '^(.*}:)r:')
  local archive_key = prefix .. 'a:' .. member
  local H = {prefix = prefix, ns = string.match(member, '^[^:]*'), stats_ret = stats_ret,
             events_max = events_max}
  local report_errors, report_crashed, report_id = tonumber(r[8]), r[9] == '1', r[10]

  local raw = redis.call('HGET', key, member)
  local s = raw and unpack_record(raw)
  if s and now >= record_expires_at(s, P, client_ret, session_ret) then raw, s = false, nil end
  -- Transition: the clock it is decided on, the final status of the session it finalized,
  -- and whether the session it started counts as other.
  local t = {now = effective_now(s, now), finalized = '', other = ''}

  local function reply(kind, record, pointer)
    return {kind, t.now, record or '', pointer or 0, t.finalized, t.other}
  end

  local function answer(record, pointer)
    return reply('s', record, pointer)
  end

  -- The record's expiry (transition.rs's expires_at) is its fields' (record_expires_at()),
  -- which readers and the sweeper apply; what a save may extend is the id's pointer. Returns
  -- the record and the pointer expiry to extend, if due.
  local function save(x)
    local pointer = 0
    local retained = retained_until(x, P, session_ret)
    if retained > x.px then
      x.px = retained + slack
      pointer = x.px
    end
    local record = pack_record(x)
    redis.call('HSET', key, member, record)
    return record, pointer
  end

  local function wake(at)
    schedule(H.prefix, member, at)
  end

  -- Keeps a finalized session readable by id, dropping archived ones past retention.
  local function archive(done)
    local latest = 0
    local entries = redis.call('HGETALL', archive_key)
    for n = 1, #entries, 2 do
      local e = unpack_record(entries[n + 1]).e
      if e + session_ret <= t.now then redis.call('HDEL', archive_key, entries[n]) else latest = math.max(latest, e) end
    end
    if still_retained(done, t.now, session_ret) then
      redis.call('HSET', archive_key, done.s, pack_record(done))
      latest = math.max(latest, done.e)
    end
    if latest > 0 then redis.call('PEXPIREAT', archive_key, latest + session_ret) end
  end

  -- A report on the current session x: live, over but not finalized yet (finalized now), or
  -- finalized (its final status is amended). A report the record already holds changes
  -- nothing.
  local function report(x, effect)
    if effect ~= 'live' and retained_until(x, P, session_ret) <= t.now then
      return reply('unknown')
    end
    local before = x.st
    local changed, written = apply_report(x, report_errors, report_crashed, report_id)
    if effect == 'live' then
      if not written then return answer(raw) end
      user_marks(H, x)
    elseif effect == 'finalize' then
      finalize(x)
      record_event(H, 'ended', x, ended_at(x, P, t.now), before)
      t.finalized = x.st
    elseif changed then
      -- The current record keeps no ended_at when it idled out; the event says when it
      -- ended, as the archived record would.
      local shown = finalized(x, P, t.now)
      record_event(H, 'amended', shown, shown.e, before)
    elseif not written then
      return answer(raw)
    end
    return answer(save(x))
  end

  -- Starts a session, finalizing and archiving the previous one.
  local function start(previous, reason)
    if candidate == '' then return reply('need') end
    if previous then
      local done = finalized(previous, P, t.now)
      if not previous.f then
        record_event(H, 'ended', done, done.e, done.st)
        t.finalized = done.st
      end
      archive(done)
    end
    local x = started_by(op, P, candidate, previous, reason, attrs, t.now)
    H.other = nil
    record_event(H, 'started', x, nil, x.st)
    if H.other then t.other = '1' end
    -- Also with no deadline: the record's field cannot expire by itself.
    wake(next_look(x, P, client_ret, session_ret))
    -- The caller reserved the id's pointer for this first stretch; nothing to extend yet.
    return answer((save(x)))
  end

  local user = attrs.user_id
  local verdict, what = decide(s, op, create, named, user, P, t.now)
  if verdict == 'nolive' then return reply('nolive') end
  if verdict == 'keep' then return answer(raw) end
  if verdict == 'update' then
    local was_background = s.bg
    if not apply_update(s, what, user, t.now) then return answer(raw) end
    if what.bind_user then user_marks(H, s) end
    -- Its idle clock starts: the sweeper must look at it then, not at its max duration.
    if what.background == 'enter' and not was_background then wake((deadline(s, P))) end
    return answer(save(s))
  end
  if verdict == 'start' then return start(s, what) end
  if verdict == 'end' then
    end_session(s, end_status, t.now)
    record_event(H, 'ended', s, t.now, s.st)
    t.finalized = s.st
    return answer(save(s))
  end
  if verdict == 'report' then return report(s, what) end

  -- 'other': the call named an earlier session of the client; a report amends it.
  local archived = redis.call('HGET', archive_key, named)
  local x = archived and unpack_record(archived)
  if not (x and still_retained(x, t.now, session_ret)) then return reply('unknown') end
  if op == 'report' then
    local before = x.st
    local changed, written = apply_report(x, report_errors, report_crashed, report_id)
    if changed then record_event(H, 'amended', x, x.e, before) end
    if written then
      archived = pack_record(x)
      redis.call('HSET', archive_key, named, archived)
    end
  end
  return answer(archived)
end
