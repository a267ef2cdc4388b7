//! The session decision: given what the store holds, a call and the store's clock, what happens.
//!
//! This is the one definition of the policy: [`crate::domain::transition`] carries the
//! verdict through to the answer and the effects, the in-memory store carries those out, and
//! the Redis scripts mirror both, function for function by the same names (`lib.lua` this
//! module, `transition.lua` the transition; `fast.lua` the live tick and current rows in
//! straight-line form). The model test and the decision table test drive every store to prove
//! they agree.
//!
//! | stored session            | call                           | decision                  |
//! |---------------------------|--------------------------------|---------------------------|
//! | none                      | current(create=false), end     | no live session           |
//! | none                      | any other                      | start (new_client)        |
//! | none                      | report                         | no live session           |
//! | any, naming another id    | end, report (session_id)       | other: end answers it as it is, report amends it |
//! | over                      | report                         | report: finalize now, or amend if finalized |
//! | live                      | report                         | report: errors and status |
//! | over (ended or expired)   | current(create=false)          | no live session           |
//! | over                      | end                            | keep (nothing new ends)   |
//! | over                      | current, tick, fg, bg          | start (why it is over)    |
//! | live                      | end                            | end with the given status |
//! | live                      | current(create=false)          | update: bind user only    |
//! | live, user changed, restart | current, tick, fg, bg        | start (user_change)       |
//! | live                      | current                        | update: bind user only    |
//! | live                      | tick                           | update: activity          |
//! | live                      | foreground                     | update: activity, leave background |
//! | live                      | background                     | update: activity, enter background (background mode) |
//!
//!
//! A session is over once it ended, or once the store's clock reached its deadline: the
//! earliest of `started + max_duration`, `last activity + idle_timeout` (inactivity mode) and
//! `background since + idle_timeout` (background mode, while backgrounded).

use super::health::{Report, final_status};
use super::{
    Attributes, ClientHash, ClientHasher, EndStatus, Mode, Namespace, OnUserChange, Policy, Reason,
    RecentReports, SessionId, SessionState, Status,
};

/// What a call asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Current {
        create: bool,
    },
    Tick,
    Foreground,
    Background,
    End {
        status: EndStatus,
        session_id: Option<SessionId>,
    },
    Report {
        report: Report,
        session_id: Option<SessionId>,
    },
}

impl Op {
    /// Whether this call may start a session.
    pub fn may_start(&self) -> bool {
        !matches!(
            self,
            Op::Current { create: false } | Op::End { .. } | Op::Report { .. }
        )
    }

    /// The earlier session the call names, if any.
    pub fn names(&self) -> Option<&SessionId> {
        match self {
            Op::End { session_id, .. } | Op::Report { session_id, .. } => session_id.as_ref(),
            _ => None,
        }
    }
}

/// What a report does to the session it names (see `health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportEffect {
    /// A live session: errors and status only.
    Live,
    /// Over but not finalized yet: applied, then finalized now.
    Finalize,
    /// Already finalized: its final status is amended.
    Amend,
}

/// How an update treats the background clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackgroundChange {
    Keep,
    Enter,
    Leave,
}

/// Changes to a live session that keep its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Update {
    pub activity: bool,
    pub background: BackgroundChange,
    pub bind_user: bool,
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Answer with the stored session, changing nothing.
    Keep,
    Update(Update),
    /// Finalize the stored session (if any) and start a new one.
    Start(Reason),
    End(EndStatus),
    Report(ReportEffect),
    /// The call named a session that is not the client's current one: `end` answers with
    /// it unchanged if it is still retained, `report` amends it.
    Other(SessionId),
    NoLiveSession,
}

/// When the session stops being live if nothing happens, and why.
pub fn deadline(session: &SessionState, policy: &Policy) -> Option<(i64, Reason)> {
    if let Some(ended) = session.ended_at {
        return Some((ended, Reason::Ended));
    }
    let max = policy
        .max_duration_ms
        .map(|max| (session.started_at + max, Reason::MaxDuration));
    let idle = match policy.mode {
        Mode::Inactivity => Some(session.last_activity_at),
        Mode::Background => session.background_since,
    }
    .map(|from| (from + policy.idle_timeout_ms, Reason::IdleTimeout));
    // The earlier deadline wins; on a tie the idle timeout is the reason.
    match (idle, max) {
        (Some(i), Some(m)) => Some(if m.0 < i.0 { m } else { i }),
        (i, m) => i.or(m),
    }
}

/// Whether the session is over at `now`, and why.
pub fn over(session: &SessionState, policy: &Policy, now: i64) -> Option<(i64, Reason)> {
    deadline(session, policy).filter(|(at, _)| now >= *at)
}

/// The clock the decision uses: the store's, never earlier than the last activity or the end
/// it recorded, so a clock that moved back after a failover cannot make time run backwards,
/// nor make an ended session live again.
pub fn effective_now(session: Option<&SessionState>, store_now: i64) -> i64 {
    session.map_or(store_now, |s| {
        store_now
            .max(s.last_activity_at)
            .max(s.ended_at.unwrap_or(0))
    })
}

/// The decision table of this module's documentation.
pub fn decide(
    stored: Option<&SessionState>,
    op: &Op,
    user_id: Option<&str>,
    policy: &Policy,
    now: i64,
) -> Decision {
    let Some(session) = stored else {
        return if op.may_start() {
            Decision::Start(Reason::NewClient)
        } else {
            Decision::NoLiveSession
        };
    };
    if let Some(id) = op.names()
        && *id != session.id
    {
        return Decision::Other(id.clone());
    }
    if let Some((_, reason)) = over(session, policy, now) {
        return match op {
            Op::End { .. } => Decision::Keep,
            Op::Report { .. } if session.finalized => Decision::Report(ReportEffect::Amend),
            Op::Report { .. } => Decision::Report(ReportEffect::Finalize),
            _ if op.may_start() => Decision::Start(reason),
            _ => Decision::NoLiveSession,
        };
    }
    match op {
        Op::End { status, .. } => return Decision::End(*status),
        Op::Report { .. } => return Decision::Report(ReportEffect::Live),
        _ => {}
    }
    let bound = session.attributes.user_id.as_deref();
    let user_changed = matches!((user_id, bound), (Some(new), Some(old)) if new != old);
    if user_changed && policy.on_user_change == OnUserChange::Restart && op.may_start() {
        return Decision::Start(Reason::UserChange);
    }
    let bind_user = user_id.is_some() && bound.is_none();
    let (activity, background) = match op {
        Op::Tick => (true, BackgroundChange::Keep),
        Op::Foreground => (true, BackgroundChange::Leave),
        Op::Background if policy.mode == Mode::Background => (true, BackgroundChange::Enter),
        Op::Background => (true, BackgroundChange::Keep),
        Op::Current { .. } | Op::End { .. } | Op::Report { .. } => (false, BackgroundChange::Keep),
    };
    Decision::Update(Update {
        activity,
        background,
        bind_user,
    })
}

/// Applies an update in place; returns whether anything changed.
pub fn apply_update(
    session: &mut SessionState,
    update: Update,
    user_id: Option<&str>,
    now: i64,
) -> bool {
    let mut changed = false;
    if update.activity && now > session.last_activity_at {
        session.last_activity_at = now;
        changed = true;
    }
    match update.background {
        BackgroundChange::Keep => {}
        // A repeated background call keeps the first time, so retries do not extend the session.
        BackgroundChange::Enter => {
            if session.background_since.is_none() {
                session.background_since = Some(now);
                changed = true;
            }
        }
        BackgroundChange::Leave => changed |= session.background_since.take().is_some(),
    }
    if update.bind_user && session.attributes.user_id.as_deref() != user_id {
        session.attributes.user_id = user_id.map(str::to_owned);
        changed = true;
    }
    changed
}

/// Ends a live session now with a client-given status, finalizing it.
pub fn end(session: &mut SessionState, status: EndStatus, now: i64) {
    session.ended_at = Some(now);
    session.status = final_status(session, Some(status));
    session.finalized = true;
}

/// When a session ended: when it was ended, else its deadline if it is over, else now (a
/// live session replaced by a user change).
pub fn ended_at(session: &SessionState, policy: &Policy, now: i64) -> i64 {
    session
        .ended_at
        .unwrap_or_else(|| over(session, policy, now).map_or(now, |(at, _)| at))
}

/// Finalizes a session in place (it is over, or replaced now): its final status, once.
/// Returns whether this call finalized it, i.e. whether an `ended` event is due.
pub fn finalize(session: &mut SessionState) -> bool {
    if session.finalized {
        return false;
    }
    session.status = final_status(session, None);
    session.finalized = true;
    true
}

/// The record of a session that is over (or replaced now by a user change), as retained and
/// as shown: finalized, with when it ended.
pub fn finalized(session: &SessionState, policy: &Policy, now: i64) -> SessionState {
    let mut done = session.clone();
    finalize(&mut done);
    done.ended_at = Some(ended_at(session, policy, now));
    done.background_since = None;
    done
}

/// What the sweeper does with a client found in its due index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// Nothing left to finalize (no record, or its session already finalized).
    Drop,
    /// The session idled out and its client never came back: finalize it now.
    Finalize,
    /// Still live (activity moved its deadline): look again then.
    Recheck(i64),
}

/// The sweeper's decision for the session a due index entry points at.
pub fn sweep(stored: Option<&SessionState>, policy: &Policy, now: i64) -> Sweep {
    let Some(session) = stored.filter(|s| !s.finalized) else {
        return Sweep::Drop;
    };
    let now = effective_now(Some(session), now);
    match deadline(session, policy) {
        Some((at, _)) if now < at => Sweep::Recheck(at),
        _ => Sweep::Finalize,
    }
}

/// The first state of a session started by `op`: in background mode, one started by a
/// background call starts with its idle clock running, as any session that goes there does.
pub fn started_by(
    op: &Op,
    policy: &Policy,
    id: SessionId,
    previous: Option<&SessionState>,
    reason: Reason,
    attributes: Attributes,
    now: i64,
) -> SessionState {
    let mut session = started(id, previous, reason, attributes, now);
    if matches!(op, Op::Background) && policy.mode == Mode::Background {
        session.background_since = Some(now);
    }
    session
}

/// The first state of a new session.
pub fn started(
    id: SessionId,
    previous: Option<&SessionState>,
    reason: Reason,
    attributes: Attributes,
    now: i64,
) -> SessionState {
    SessionState {
        id,
        index: previous.map_or(1, |p| p.index + 1),
        previous: previous.map(|p| p.id.clone()),
        started_at: now,
        last_activity_at: now,
        background_since: None,
        ended_at: None,
        status: Status::Ok,
        errors: 0,
        finalized: false,
        reason,
        attributes,
        reports: RecentReports::default(),
    }
}

/// A session drawn while the store is unreachable, for a namespace with `on_store_error =
/// "provisional"` (CONTRACT section 5.6): never stored, index 0. Its id is shared by every
/// call for the client within one idle-timeout window, so the client's instruments still
/// agree, and it starts, and idles out, with its window, so no client caches it past it.
pub fn provisional(
    hasher: &ClientHasher,
    namespace: &Namespace,
    client: &ClientHash,
    policy: &Policy,
    attributes: Attributes,
    now: i64,
) -> SessionState {
    // The configuration guarantees a positive idle timeout; max(1) keeps division safe anyway.
    let span = policy.idle_timeout_ms.max(1);
    let window = now / span;
    let id = hasher.provisional_id(namespace.as_str(), client, window);
    let mut session = started(id, None, Reason::NewClient, attributes, window * span);
    session.index = 0;
    session
}

/// How long a session that sees no call after it starts stays live.
pub fn untouched_lifetime(policy: &Policy) -> i64 {
    let fresh = started(
        SessionId::from_bytes([0; SessionId::BYTES]),
        None,
        Reason::NewClient,
        Attributes::default(),
        0,
    );
    deadline(&fresh, policy).map_or(0, |(at, _)| at)
}

/// When the session stops being retained: `session_retention` after it is over (for a live
/// session, after its current deadline).
pub fn retained_until(session: &SessionState, policy: &Policy, session_retention_ms: i64) -> i64 {
    deadline(session, policy).map_or(session.last_activity_at, |(at, _)| at) + session_retention_ms
}

/// When the client's record may be dropped: `client_retention` after its last activity, and
/// never before its current session's retention ends.
pub fn record_expires_at(
    session: &SessionState,
    policy: &Policy,
    client_retention_ms: i64,
    session_retention_ms: i64,
) -> i64 {
    (session.last_activity_at + client_retention_ms).max(retained_until(
        session,
        policy,
        session_retention_ms,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn policy(mode: Mode, max: Option<i64>, on_user_change: OnUserChange) -> Policy {
        Policy {
            idle_timeout_ms: 30 * MIN,
            max_duration_ms: max,
            mode,
            on_user_change,
        }
    }

    fn web() -> Policy {
        policy(Mode::Inactivity, None, OnUserChange::Keep)
    }

    fn session(started: i64, last: i64) -> SessionState {
        started_at(started, last, None)
    }

    fn started_at(started: i64, last: i64, user: Option<&str>) -> SessionState {
        let mut s = super::started(
            SessionId::parse("00000000000000000001").unwrap(),
            None,
            Reason::NewClient,
            Attributes {
                user_id: user.map(str::to_owned),
                ..Attributes::default()
            },
            started,
        );
        s.last_activity_at = last;
        s
    }

    const TICK: Update = Update {
        activity: true,
        background: BackgroundChange::Keep,
        bind_user: false,
    };

    #[test]
    fn a_session_a_background_call_starts_is_in_the_background_in_background_mode_only() {
        let id = || SessionId::parse("00000000000000000002").unwrap();
        let start = |policy: &Policy| {
            let attributes = Attributes::default();
            started_by(
                &Op::Background,
                policy,
                id(),
                None,
                Reason::NewClient,
                attributes,
                MIN,
            )
        };
        let app = policy(Mode::Background, Some(24 * 60 * MIN), OnUserChange::Keep);
        assert_eq!(start(&app).background_since, Some(MIN));
        assert_eq!(start(&web()).background_since, None);
        let by_tick = started_by(
            &Op::Tick,
            &app,
            id(),
            None,
            Reason::NewClient,
            Attributes::default(),
            MIN,
        );
        assert_eq!(by_tick.background_since, None);
    }

    #[test]
    fn a_new_client_starts_a_session_unless_the_call_must_not_create() {
        assert_eq!(
            decide(None, &Op::Tick, None, &web(), 0),
            Decision::Start(Reason::NewClient)
        );
        assert_eq!(
            decide(None, &Op::Current { create: false }, None, &web(), 0),
            Decision::NoLiveSession
        );
        let end = Op::End {
            status: EndStatus::Exited,
            session_id: None,
        };
        assert_eq!(decide(None, &end, None, &web(), 0), Decision::NoLiveSession);
    }

    #[test]
    fn activity_before_the_idle_timeout_extends() {
        let s = session(0, 10 * MIN);
        assert_eq!(
            decide(Some(&s), &Op::Tick, None, &web(), 39 * MIN),
            Decision::Update(TICK)
        );
    }

    #[test]
    fn activity_at_the_idle_timeout_rotates() {
        let s = session(0, 10 * MIN);
        assert_eq!(
            decide(Some(&s), &Op::Tick, None, &web(), 40 * MIN),
            Decision::Start(Reason::IdleTimeout)
        );
    }

    #[test]
    fn current_does_not_count_as_activity() {
        let s = session(0, 0);
        let d = decide(Some(&s), &Op::Current { create: true }, None, &web(), MIN);
        assert_eq!(
            d,
            Decision::Update(Update {
                activity: false,
                background: BackgroundChange::Keep,
                bind_user: false
            })
        );
    }

    #[test]
    fn max_duration_rotates_an_active_session() {
        let p = policy(Mode::Inactivity, Some(60 * MIN), OnUserChange::Keep);
        let s = session(0, 59 * MIN);
        assert_eq!(
            decide(Some(&s), &Op::Tick, None, &p, 60 * MIN),
            Decision::Start(Reason::MaxDuration)
        );
    }

    #[test]
    fn a_foregrounded_session_in_background_mode_never_idles_out() {
        let p = policy(Mode::Background, Some(24 * 60 * MIN), OnUserChange::Keep);
        let s = session(0, 0);
        assert!(matches!(
            decide(Some(&s), &Op::Tick, None, &p, 600 * MIN),
            Decision::Update(_)
        ));
    }

    #[test]
    fn background_mode_renews_after_a_long_background_and_resumes_after_a_short_one() {
        let p = policy(Mode::Background, Some(24 * 60 * MIN), OnUserChange::Keep);
        let mut s = session(0, 0);
        s.background_since = Some(MIN);
        assert!(matches!(
            decide(Some(&s), &Op::Foreground, None, &p, 30 * MIN),
            Decision::Update(_)
        ));
        assert_eq!(
            decide(Some(&s), &Op::Foreground, None, &p, 31 * MIN),
            Decision::Start(Reason::IdleTimeout)
        );
    }

    #[test]
    fn a_repeated_background_call_keeps_the_first_background_time() {
        let mut s = session(0, 0);
        let enter = Update {
            activity: true,
            background: BackgroundChange::Enter,
            bind_user: false,
        };
        assert!(apply_update(&mut s, enter, None, MIN));
        apply_update(&mut s, enter, None, 2 * MIN);
        assert_eq!(s.background_since, Some(MIN));
    }

    #[test]
    fn an_ended_session_is_over_and_the_next_activity_starts_with_reason_ended() {
        let mut s = session(0, 0);
        end(&mut s, EndStatus::Crashed, MIN);
        assert_eq!(
            decide(Some(&s), &Op::Tick, None, &web(), MIN),
            Decision::Start(Reason::Ended)
        );
        let again = Op::End {
            status: EndStatus::Exited,
            session_id: None,
        };
        assert_eq!(decide(Some(&s), &again, None, &web(), MIN), Decision::Keep);
    }

    #[test]
    fn end_naming_another_session_is_looked_up_not_applied() {
        let s = session(0, 0);
        let other = SessionId::parse("0000000000000000000f").unwrap();
        let op = Op::End {
            status: EndStatus::Exited,
            session_id: Some(other.clone()),
        };
        assert_eq!(
            decide(Some(&s), &op, None, &web(), 0),
            Decision::Other(other)
        );
    }

    fn report(session_id: Option<SessionId>) -> Op {
        Op::Report {
            report: Report::new(1, false, None).unwrap(),
            session_id,
        }
    }

    #[test]
    fn a_report_updates_a_live_session_finalizes_an_over_one_and_amends_a_finalized_one() {
        assert_eq!(
            decide(None, &report(None), None, &web(), 0),
            Decision::NoLiveSession
        );
        let mut s = session(0, 0);
        assert_eq!(
            decide(Some(&s), &report(None), None, &web(), MIN),
            Decision::Report(ReportEffect::Live)
        );
        assert_eq!(
            decide(
                Some(&s),
                &report(Some(s.id.clone())),
                None,
                &web(),
                31 * MIN
            ),
            Decision::Report(ReportEffect::Finalize)
        );
        assert!(finalize(&mut s));
        assert!(!finalize(&mut s), "finalized once");
        assert_eq!(
            decide(Some(&s), &report(None), None, &web(), 31 * MIN),
            Decision::Report(ReportEffect::Amend)
        );
    }

    #[test]
    fn the_sweeper_finalizes_what_idled_out_rechecks_what_moved_and_drops_the_rest() {
        let s = session(0, 10 * MIN);
        assert_eq!(sweep(None, &web(), 0), Sweep::Drop);
        assert_eq!(sweep(Some(&s), &web(), 30 * MIN), Sweep::Recheck(40 * MIN));
        assert_eq!(sweep(Some(&s), &web(), 40 * MIN), Sweep::Finalize);
        let mut done = s.clone();
        finalize(&mut done);
        assert_eq!(sweep(Some(&done), &web(), 40 * MIN), Sweep::Drop);
    }

    #[test]
    fn user_id_binds_once_and_is_kept_under_keep() {
        let s = started_at(0, 0, None);
        let d = decide(Some(&s), &Op::Tick, Some("u1"), &web(), MIN);
        assert_eq!(
            d,
            Decision::Update(Update {
                bind_user: true,
                ..TICK
            })
        );
        let bound = started_at(0, 0, Some("u1"));
        assert_eq!(
            decide(Some(&bound), &Op::Tick, Some("u2"), &web(), MIN),
            Decision::Update(TICK)
        );
    }

    #[test]
    fn a_different_user_restarts_under_restart() {
        let p = policy(Mode::Inactivity, None, OnUserChange::Restart);
        let bound = started_at(0, 0, Some("u1"));
        assert_eq!(
            decide(Some(&bound), &Op::Tick, Some("u2"), &p, MIN),
            Decision::Start(Reason::UserChange)
        );
        assert_eq!(
            decide(Some(&bound), &Op::Tick, Some("u1"), &p, MIN),
            Decision::Update(TICK)
        );
    }

    #[test]
    fn the_clock_never_runs_behind_the_last_recorded_activity() {
        let s = session(0, 10 * MIN);
        assert_eq!(effective_now(Some(&s), 5 * MIN), 10 * MIN);
        assert_eq!(effective_now(None, 5 * MIN), 5 * MIN);
    }

    #[test]
    fn ending_keeps_the_worse_of_health_and_end_status() {
        let mut s = session(0, 0);
        s.status = Status::Errored;
        end(&mut s, EndStatus::Exited, MIN);
        assert_eq!(s.status, Status::Errored);
        assert!(s.finalized);
    }

    #[test]
    fn finalizing_an_idled_out_session_ends_it_at_its_deadline() {
        let s = session(0, 10 * MIN);
        let done = finalized(&s, &web(), 90 * MIN);
        assert_eq!(done.ended_at, Some(40 * MIN));
        assert_eq!(done.status, Status::Exited);
        assert!(done.finalized);
    }

    #[test]
    fn an_untouched_session_lives_until_its_first_deadline() {
        assert_eq!(untouched_lifetime(&web()), 30 * MIN);
        let capped = policy(Mode::Inactivity, Some(10 * MIN), OnUserChange::Keep);
        assert_eq!(untouched_lifetime(&capped), 10 * MIN);
        let ios = policy(Mode::Background, Some(600 * MIN), OnUserChange::Keep);
        assert_eq!(untouched_lifetime(&ios), 600 * MIN);
    }

    #[test]
    fn a_new_session_links_the_previous_one() {
        let prev = session(0, 0);
        let next = started(
            SessionId::parse("00000000000000000002").unwrap(),
            Some(&prev),
            Reason::IdleTimeout,
            Attributes::default(),
            5,
        );
        assert_eq!(next.index, 2);
        assert_eq!(next.previous, Some(prev.id));
        assert_eq!(next.reason, Reason::IdleTimeout);
    }
}
