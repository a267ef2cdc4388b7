//! A call's transition: the decision of [`decide`] carried through to the answer and the
//! effects it implies (save the record, archive the previous session, lifecycle events and
//! the stats they move, the sweeper's wake-up).
//!
//! This is the one definition of what a call does. The in-memory store carries the effects
//! out; the Redis scripts (`store/redis/lua/transition.lua`) mirror these functions, one for
//! one and by the same names, writing each effect where this module lists it.

use super::decision::{
    BackgroundChange, Decision, Op, ReportEffect, apply_update, deadline, decide, effective_now,
    end, ended_at, finalize, finalized, record_expires_at, retained_until, started_by,
};
use super::{Attributes, EventKind, Policy, Reason, Retention, SessionId, SessionState, Status};

/// One call, as the transition reads it.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub op: &'a Op,
    pub policy: &'a Policy,
    pub attributes: &'a Attributes,
    pub retention: &'a Retention,
}

/// What the call answers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "nearly every answer is a session; boxing it would allocate on every call"
)]
pub enum Answer {
    /// The session the call resolved to; `finalized` is the final status of the session the
    /// call finalized (the one it replaced, ended, or reported on after it was over).
    Session {
        session: SessionState,
        created: bool,
        finalized: Option<Status>,
    },
    NoLiveSession,
    /// The call named a session this client does not have, or no longer retains.
    UnknownSession,
}

/// What the store does for a call, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The current session changed in place: keep its record until `expires_at`.
    Save { expires_at: i64 },
    /// The earlier session the call named changed in place (a report amended it).
    SaveNamed,
    /// A finalized session to keep readable by id (it was replaced).
    Archive(SessionState),
    /// A new session is the client's current one, its record kept until `expires_at`.
    Start {
        session: SessionState,
        expires_at: i64,
    },
    /// A lifecycle event, and the stats it moves (`domain::stats`); `before` is the status
    /// an `amended` event moved from.
    Event {
        kind: EventKind,
        session: SessionState,
        ended_at: Option<i64>,
        before: Status,
    },
    /// The stats marks of the session's user (`domain::stats::user_marks`).
    UserMarks(SessionState),
    /// The sweeper must look at the client at this time or earlier.
    Wake(i64),
}

/// A call's answer, the clock it was decided on, and its effects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub now: i64,
    pub answer: Answer,
    pub effects: Vec<Effect>,
}

/// Whether an earlier (ended) session is still readable by id at `now`.
pub fn still_retained(session: &SessionState, now: i64, session_retention_ms: i64) -> bool {
    session
        .ended_at
        .is_some_and(|ended| ended + session_retention_ms > now)
}

/// The transition of a call for a client whose live record holds `current` (changed in place
/// by the call), `named` being the earlier session of the client the call names, if the store
/// has it. `fresh_id` draws the id of a session the call starts.
pub fn transition(
    current: Option<&mut SessionState>,
    named: Option<&mut SessionState>,
    call: &Call<'_>,
    fresh_id: impl FnOnce() -> SessionId,
    store_now: i64,
) -> Transition {
    let now = effective_now(current.as_deref(), store_now);
    let mut t = Transition {
        now,
        answer: Answer::NoLiveSession,
        effects: Vec::new(),
    };
    let user_id = call.attributes.user_id.as_deref();
    let Some(s) = current else {
        if call.op.may_start() {
            start(&mut t, None, Reason::NewClient, call, fresh_id);
        }
        return t;
    };
    match decide(Some(s), call.op, user_id, call.policy, now) {
        Decision::NoLiveSession => {}
        Decision::Keep => t.answer = answer(s, false, None),
        Decision::Update(update) => {
            let was_background = s.background_since.is_some();
            if apply_update(s, update, user_id, now) {
                if update.bind_user {
                    t.effects.push(Effect::UserMarks(s.clone()));
                }
                // Its idle clock starts: the sweeper must look at it then, not at its max
                // duration.
                if update.background == BackgroundChange::Enter
                    && !was_background
                    && let Some((at, _)) = deadline(s, call.policy)
                {
                    t.effects.push(Effect::Wake(at));
                }
                save(&mut t, s, call);
            }
            t.answer = answer(s, false, None);
        }
        Decision::Start(reason) => start(&mut t, Some(s), reason, call, fresh_id),
        Decision::End(status) => {
            end(s, status, now);
            t.effects
                .push(event(EventKind::Ended, s, Some(now), s.status));
            save(&mut t, s, call);
            t.answer = answer(s, false, Some(s.status));
        }
        Decision::Report(effect) => report(&mut t, s, effect, call),
        Decision::Other(_) => {
            let Some(x) = named.filter(|x| still_retained(x, now, call.retention.session_ms()))
            else {
                t.answer = Answer::UnknownSession;
                return t;
            };
            if let Op::Report { report, .. } = call.op {
                let before = x.status;
                if report.apply(x) {
                    t.effects
                        .push(event(EventKind::Amended, x, x.ended_at, before));
                }
                t.effects.push(Effect::SaveNamed);
            }
            t.answer = answer(x, false, None);
        }
    }
    t
}

fn answer(session: &SessionState, created: bool, finalized: Option<Status>) -> Answer {
    Answer::Session {
        session: session.clone(),
        created,
        finalized,
    }
}

/// When the client's record may be dropped, once it holds `session`.
fn expires_at(session: &SessionState, call: &Call<'_>) -> i64 {
    let r = call.retention;
    record_expires_at(session, call.policy, r.client_ms(), r.session_ms())
}

fn save(t: &mut Transition, session: &SessionState, call: &Call<'_>) {
    t.effects.push(Effect::Save {
        expires_at: expires_at(session, call),
    });
}

fn event(kind: EventKind, session: &SessionState, ended_at: Option<i64>, before: Status) -> Effect {
    Effect::Event {
        kind,
        session: session.clone(),
        ended_at,
        before,
    }
}

/// A report on the client's current session: live, over but not finalized yet (it is
/// finalized now), or finalized (its final status is amended).
fn report(t: &mut Transition, s: &mut SessionState, effect: ReportEffect, call: &Call<'_>) {
    let Op::Report { report, .. } = call.op else {
        return;
    };
    let now = t.now;
    if effect != ReportEffect::Live
        && retained_until(s, call.policy, call.retention.session_ms()) <= now
    {
        t.answer = Answer::UnknownSession;
        return;
    }
    let before = s.status;
    let changed = report.apply(s);
    let mut finalized_now = None;
    match effect {
        ReportEffect::Live => t.effects.push(Effect::UserMarks(s.clone())),
        ReportEffect::Finalize => {
            finalize(s);
            let ended = ended_at(s, call.policy, now);
            t.effects
                .push(event(EventKind::Ended, s, Some(ended), before));
            finalized_now = Some(s.status);
        }
        // The current record keeps no ended_at when it idled out; the event says when it
        // ended, as the archived record would.
        ReportEffect::Amend if changed => {
            let shown = finalized(s, call.policy, now);
            t.effects
                .push(event(EventKind::Amended, &shown, shown.ended_at, before));
        }
        ReportEffect::Amend => {}
    }
    save(t, s, call);
    t.answer = answer(s, false, finalized_now);
}

/// Starts a session, finalizing and archiving the `previous` one.
fn start(
    t: &mut Transition,
    previous: Option<&mut SessionState>,
    reason: Reason,
    call: &Call<'_>,
    fresh_id: impl FnOnce() -> SessionId,
) {
    let now = t.now;
    let mut finalized_now = None;
    if let Some(prev) = previous.as_deref() {
        let done = finalized(prev, call.policy, now);
        if !prev.finalized {
            t.effects
                .push(event(EventKind::Ended, &done, done.ended_at, done.status));
            finalized_now = Some(done.status);
        }
        t.effects.push(Effect::Archive(done));
    }
    let session = started_by(
        call.op,
        call.policy,
        fresh_id(),
        previous.as_deref(),
        reason,
        call.attributes.clone(),
        now,
    );
    t.effects
        .push(event(EventKind::Started, &session, None, session.status));
    if let Some((at, _)) = deadline(&session, call.policy) {
        t.effects.push(Effect::Wake(at));
    }
    t.answer = answer(&session, true, finalized_now);
    t.effects.push(Effect::Start {
        expires_at: expires_at(&session, call),
        session,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::decision::started;
    use crate::domain::{Mode, OnUserChange, Report};

    const MIN: i64 = 60_000;
    const IDLE: i64 = 30 * MIN;

    fn id(n: u8) -> SessionId {
        let mut bytes = [0; SessionId::BYTES];
        bytes[SessionId::BYTES - 1] = n;
        SessionId::from_bytes(bytes)
    }

    fn policy(mode: Mode) -> Policy {
        Policy {
            idle_timeout_ms: IDLE,
            max_duration_ms: None,
            mode,
            on_user_change: OnUserChange::Keep,
        }
    }

    fn run(
        current: Option<&mut SessionState>,
        named: Option<&mut SessionState>,
        op: Op,
        policy: Policy,
        now: i64,
    ) -> Transition {
        let call = Call {
            op: &op,
            policy: &policy,
            attributes: &Attributes::default(),
            retention: &Retention::default(),
        };
        transition(current, named, &call, || id(9), now)
    }

    fn session_of(t: &Transition) -> &SessionState {
        match &t.answer {
            Answer::Session { session, .. } => session,
            other => panic!("no session: {other:?}"),
        }
    }

    fn kinds(t: &Transition) -> Vec<&'static str> {
        t.effects
            .iter()
            .map(|e| match e {
                Effect::Save { .. } => "save",
                Effect::SaveNamed => "save named",
                Effect::Archive(_) => "archive",
                Effect::Start { .. } => "start",
                Effect::Event { kind, .. } => kind.as_str(),
                Effect::UserMarks(_) => "user marks",
                Effect::Wake(_) => "wake",
            })
            .collect()
    }

    #[test]
    fn a_tick_on_a_live_session_saves_its_activity_and_a_current_call_changes_nothing() {
        let web = policy(Mode::Inactivity);
        let mut s = started(id(1), None, Reason::NewClient, Attributes::default(), 0);
        let t = run(Some(&mut s), None, Op::Tick, web, MIN);
        assert_eq!(s.last_activity_at, MIN);
        assert_eq!(session_of(&t), &s);
        let retention = Retention::default();
        assert_eq!(
            t.effects,
            vec![Effect::Save {
                expires_at: MIN + retention.client_ms()
            }]
        );
        let t = run(
            Some(&mut s),
            None,
            Op::Current { create: true },
            web,
            2 * MIN,
        );
        assert!(t.effects.is_empty(), "{:?}", t.effects);
        assert_eq!(s.last_activity_at, MIN);
    }

    #[test]
    fn a_tick_past_the_idle_deadline_ends_archives_and_starts_in_that_order() {
        let web = policy(Mode::Inactivity);
        let mut s = started(id(1), None, Reason::NewClient, Attributes::default(), 0);
        let t = run(Some(&mut s), None, Op::Tick, web, IDLE);
        assert_eq!(
            kinds(&t),
            ["ended", "archive", "started", "wake", "start"],
            "{:?}",
            t.effects
        );
        let Effect::Archive(done) = &t.effects[1] else {
            unreachable!()
        };
        assert_eq!(
            (done.ended_at, done.status, done.finalized),
            (Some(IDLE), Status::Exited, true)
        );
        assert_eq!(t.effects[3], Effect::Wake(2 * IDLE));
        let new = session_of(&t);
        assert_eq!(
            (new.id.clone(), new.index, new.previous.clone()),
            (id(9), 2, Some(id(1)))
        );
        assert_eq!(new.reason, Reason::IdleTimeout);
        assert!(matches!(
            t.answer,
            Answer::Session {
                created: true,
                finalized: Some(Status::Exited),
                ..
            }
        ));
    }

    #[test]
    fn entering_the_background_wakes_the_sweeper_once() {
        let app = policy(Mode::Background);
        let mut s = started(id(1), None, Reason::NewClient, Attributes::default(), 0);
        let t = run(Some(&mut s), None, Op::Background, app, MIN);
        assert_eq!(kinds(&t), ["wake", "save"]);
        assert_eq!(t.effects[0], Effect::Wake(MIN + IDLE));
        let t = run(Some(&mut s), None, Op::Background, app, MIN);
        assert!(t.effects.is_empty(), "{:?}", t.effects);
    }

    #[test]
    fn a_report_on_an_earlier_session_amends_it_while_it_is_retained() {
        let web = policy(Mode::Inactivity);
        let mut current = started(id(2), None, Reason::NewClient, Attributes::default(), IDLE);
        let mut earlier = started(id(1), None, Reason::NewClient, Attributes::default(), 0);
        earlier.ended_at = Some(IDLE);
        earlier.status = Status::Exited;
        earlier.finalized = true;
        let report = |session_id| Op::Report {
            report: Report::new(2, false, None).unwrap(),
            session_id: Some(session_id),
        };
        let t = run(
            Some(&mut current),
            Some(&mut earlier),
            report(id(1)),
            web,
            IDLE + MIN,
        );
        assert_eq!(kinds(&t), ["amended", "save named"]);
        assert_eq!((earlier.errors, earlier.status), (2, Status::Errored));
        let Effect::Event {
            before, ended_at, ..
        } = &t.effects[0]
        else {
            unreachable!()
        };
        assert_eq!((*before, *ended_at), (Status::Exited, Some(IDLE)));
        let past = IDLE + Retention::default().session_ms();
        let t = run(
            Some(&mut current),
            Some(&mut earlier),
            report(id(1)),
            web,
            past,
        );
        assert_eq!(t.answer, Answer::UnknownSession);
        assert!(t.effects.is_empty());
        assert_eq!(earlier.errors, 2);
    }

    #[test]
    fn an_end_finalizes_the_live_session_now() {
        let web = policy(Mode::Inactivity);
        let mut s = started(id(1), None, Reason::NewClient, Attributes::default(), 0);
        let end = Op::End {
            status: crate::domain::EndStatus::Crashed,
            session_id: None,
        };
        let t = run(Some(&mut s), None, end, web, MIN);
        assert_eq!(kinds(&t), ["ended", "save"]);
        assert_eq!(
            (s.ended_at, s.status, s.finalized),
            (Some(MIN), Status::Crashed, true)
        );
        assert!(matches!(
            t.answer,
            Answer::Session {
                finalized: Some(Status::Crashed),
                ..
            }
        ));
        let t = run(None, None, Op::Current { create: false }, web, MIN);
        assert_eq!((t.answer, t.effects.len()), (Answer::NoLiveSession, 0));
    }
}
