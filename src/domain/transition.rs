//! A call's transition: the decision (`decision.rs`) carried through to the answer and to
//! the effects a store carries out (save the record, archive the previous session, append
//! events with the stats they move, mark users, wake the sweeper).
//!
//! This is the one definition of what a call does. The in-memory store only carries the
//! effects out, in the order given; the Redis script (`store/redis/lua/decide.lua`) mirrors
//! this file function for function, under the same names, and the model and decision-table
//! tests run every store against it.

use super::decision::{
    BackgroundChange, Decision, Op, ReportEffect, apply_update, deadline, decide, effective_now,
    end, ended_at, finalize, finalized, record_expires_at, retained_until, started_by,
};
use super::{Attributes, EventKind, Policy, Retention, SessionId, SessionState, Status};

/// One call, as the transition reads it.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub op: &'a Op,
    pub policy: &'a Policy,
    pub attributes: &'a Attributes,
    pub retention: &'a Retention,
}

/// What the call is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "nearly every answer is a session; boxing it would allocate on every call"
)]
pub enum Answer {
    /// The session the call resolved to, as it is after the effects: the client's current
    /// one, or the earlier one the call named. `finalized` is the final status of the session
    /// the call finalized, if it finalized one.
    Session {
        session: SessionState,
        created: bool,
        finalized: Option<Status>,
    },
    NoLiveSession,
    /// The call named a session the client does not have, or no longer retains.
    UnknownSession,
}

/// What a store does for a call, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The client's current session was changed in place: save it, kept until `expires_at`.
    Save { expires_at: i64 },
    /// A new session replaces the client's current one, kept until `expires_at`.
    Start {
        session: SessionState,
        expires_at: i64,
    },
    /// The finalized previous session stays readable by id until its retention ends.
    Archive(SessionState),
    /// The earlier session the call named was changed in place: save it in the archive.
    SaveNamed,
    /// A lifecycle event, and the stats it moves (`stats::on_started`, `on_finalized`,
    /// `on_amended` from `before`).
    Event {
        kind: EventKind,
        session: SessionState,
        ended_at: Option<i64>,
        before: Status,
    },
    /// The session's user is marked in its start day's stats (`stats::user_marks`).
    UserMarks(SessionState),
    /// The sweeper must look at the client by `at`, or earlier.
    Wake(i64),
}

/// A call's answer, the clock it was decided on, and its effects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub now: i64,
    pub answer: Answer,
    pub effects: Vec<Effect>,
}

/// Whether an archived (ended) session is still readable by id at `now`.
pub fn still_retained(session: &SessionState, retention: &Retention, now: i64) -> bool {
    session
        .ended_at
        .is_some_and(|ended| ended + retention.session_ms() > now)
}

/// What a call does. `current` is the client's current session, if its record is there;
/// `named` the earlier session the call names, if the client's archive holds it; `fresh_id`
/// draws the id of a session the call starts. Both sessions are changed in place, as the
/// effects then say.
pub fn transition(
    current: Option<&mut SessionState>,
    named: Option<&mut SessionState>,
    call: Call<'_>,
    fresh_id: impl FnOnce() -> SessionId,
    store_now: i64,
) -> Transition {
    let Call { op, policy, .. } = call;
    let now = effective_now(current.as_deref(), store_now);
    let user_id = call.attributes.user_id.as_deref();
    let decision = decide(current.as_deref(), op, user_id, policy, now);
    let mut effects = Vec::new();
    let answer = match (decision, current) {
        (Decision::Keep, Some(s)) => answer(s, false, None),
        (Decision::Update(update), Some(s)) => {
            let entering =
                update.background == BackgroundChange::Enter && s.background_since.is_none();
            if apply_update(s, update, user_id, now) {
                effects.push(save(s, call));
            }
            if update.bind_user {
                effects.push(Effect::UserMarks(s.clone()));
            }
            // Its idle clock starts: the sweeper must look at it then, not at its max duration.
            if entering && let Some((at, _)) = deadline(s, policy) {
                effects.push(Effect::Wake(at));
            }
            answer(s, false, None)
        }
        (Decision::Other(_), _) => match named.filter(|x| still_retained(x, call.retention, now)) {
            None => Answer::UnknownSession,
            Some(x) => {
                if let Op::Report { report, .. } = op {
                    let before = x.status;
                    if report.apply(x) {
                        effects.push(event(EventKind::Amended, x, x.ended_at, before));
                    }
                    effects.push(Effect::SaveNamed);
                }
                answer(x, false, None)
            }
        },
        (Decision::End(status), Some(s)) => {
            end(s, status, now);
            effects.push(event(EventKind::Ended, s, Some(now), s.status));
            effects.push(save(s, call));
            answer(s, false, Some(s.status))
        }
        (Decision::Report(effect), Some(s)) => {
            report(s, effect, call, now, &mut effects).unwrap_or(Answer::UnknownSession)
        }
        (Decision::Start(reason), previous) => {
            start(previous, reason, call, fresh_id(), now, &mut effects)
        }
        // The table keeps, updates, ends or reports only a session that is there.
        (Decision::NoLiveSession, _)
        | (Decision::Keep | Decision::Update(_) | Decision::End(_) | Decision::Report(_), None) => {
            Answer::NoLiveSession
        }
    };
    Transition {
        now,
        answer,
        effects,
    }
}

fn answer(session: &SessionState, created: bool, finalized: Option<Status>) -> Answer {
    Answer::Session {
        session: session.clone(),
        created,
        finalized,
    }
}

fn save(session: &SessionState, call: Call<'_>) -> Effect {
    Effect::Save {
        expires_at: expires_at(session, call),
    }
}

/// When the client's record may go, as it holds `session`.
fn expires_at(session: &SessionState, call: Call<'_>) -> i64 {
    let retention = call.retention;
    record_expires_at(
        session,
        call.policy,
        retention.client_ms(),
        retention.session_ms(),
    )
}

fn event(kind: EventKind, session: &SessionState, ended_at: Option<i64>, before: Status) -> Effect {
    Effect::Event {
        kind,
        session: session.clone(),
        ended_at,
        before,
    }
}

/// A report on the client's current session: errors and status while it is live; over, it
/// is finalized now, or its final status amended. `None` when it is past retention.
fn report(
    s: &mut SessionState,
    effect: ReportEffect,
    call: Call<'_>,
    now: i64,
    effects: &mut Vec<Effect>,
) -> Option<Answer> {
    let Op::Report { report, .. } = call.op else {
        return Some(Answer::NoLiveSession);
    };
    if effect != ReportEffect::Live
        && retained_until(s, call.policy, call.retention.session_ms()) <= now
    {
        return None;
    }
    let before = s.status;
    let changed = report.apply(s);
    let mut finalized_now = None;
    match effect {
        ReportEffect::Live => effects.push(Effect::UserMarks(s.clone())),
        ReportEffect::Finalize => {
            finalize(s);
            let ended = ended_at(s, call.policy, now);
            effects.push(event(EventKind::Ended, s, Some(ended), before));
            finalized_now = Some(s.status);
        }
        // The current record keeps no ended_at when it idled out; the event says when it
        // ended, as the archived record would.
        ReportEffect::Amend if changed => {
            let shown = finalized(s, call.policy, now);
            effects.push(event(EventKind::Amended, &shown, shown.ended_at, before));
        }
        ReportEffect::Amend => {}
    }
    effects.push(save(s, call));
    Some(answer(s, false, finalized_now))
}

/// A new session for the client: the previous one (if any) finalized, once, and archived.
fn start(
    previous: Option<&mut SessionState>,
    reason: super::Reason,
    call: Call<'_>,
    id: SessionId,
    now: i64,
    effects: &mut Vec<Effect>,
) -> Answer {
    let mut finalized_now = None;
    if let Some(prev) = &previous {
        let done = finalized(prev, call.policy, now);
        if let (false, Some(ended)) = (prev.finalized, done.ended_at) {
            effects.push(event(EventKind::Ended, &done, Some(ended), prev.status));
            finalized_now = Some(done.status);
        }
        effects.push(Effect::Archive(done));
    }
    let session = started_by(
        call.op,
        call.policy,
        id,
        previous.as_deref(),
        reason,
        call.attributes.clone(),
        now,
    );
    effects.push(event(EventKind::Started, &session, None, session.status));
    if let Some((at, _)) = deadline(&session, call.policy) {
        effects.push(Effect::Wake(at));
    }
    let created = answer(&session, true, finalized_now);
    effects.push(Effect::Start {
        expires_at: expires_at(&session, call),
        session,
    });
    created
}
