//! Session health (CONTRACT section 8): error and crash reports, final statuses, and the
//! lifecycle events written when a session starts, is finalized, or is amended.
//!
//! | session the report names       | effect                                                    |
//! |--------------------------------|-----------------------------------------------------------|
//! | live                           | errors added, status worsened (ok -> errored -> crashed)  |
//! | over, not yet finalized        | applied, then finalized now: one `ended` event            |
//! | finalized (rotated, ended, swept) | final status amended: stats follow, one `amended` event |
//! | past retention, or unknown     | 404, nothing changes                                      |

use std::fmt;
use std::str::FromStr;

use super::{EndStatus, SessionState, Status};

/// What one report adds to a session. Built only through [`Report::new`]: it carries
/// something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    errors: u64,
    crashed: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a report carries at least one error or a crash")]
pub struct EmptyReport;

impl Report {
    /// At most this many errors in one report, so counters never overflow.
    pub const MAX_ERRORS: u64 = 1_000;

    pub fn new(errors: u64, crashed: bool) -> Result<Self, EmptyReport> {
        if errors == 0 && !crashed {
            return Err(EmptyReport);
        }
        Ok(Self { errors, crashed })
    }

    pub fn errors(&self) -> u64 {
        self.errors
    }

    pub fn crashed(&self) -> bool {
        self.crashed
    }

    /// The status this report alone shows.
    pub fn status(&self) -> Status {
        if self.crashed {
            Status::Crashed
        } else {
            Status::Errored
        }
    }

    /// Adds the report to a session; returns whether anything changed.
    pub fn apply(&self, session: &mut SessionState) -> bool {
        let before = (session.errors, session.status);
        session.errors = session.errors.saturating_add(self.errors);
        session.status = session.status.worse(self.status());
        before != (session.errors, session.status)
    }
}

/// The final status of a session finalized now: its health, made no better by how it ended
/// (`exited` when it idled out or was replaced).
pub fn final_status(session: &SessionState, ended_with: Option<EndStatus>) -> Status {
    session
        .status
        .worse(ended_with.map_or(Status::Exited, Status::from))
}

/// The kinds of lifecycle events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Started,
    Ended,
    Amended,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Started => "started",
            EventKind::Ended => "ended",
            EventKind::Amended => "amended",
        }
    }
}

/// Where an event stands in the store's event log: milliseconds and sequence of its entry,
/// and the shard (Redis: the bucket's stream) holding it. Events are ordered by all three,
/// and this is the cursor of `GET /v1/events`, written `MS-SEQ-SHARD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventId {
    pub ms: u64,
    pub seq: u64,
    pub shard: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("an event cursor is written MS-SEQ-SHARD, as the `id` of an event")]
pub struct InvalidEventId;

impl FromStr for EventId {
    type Err = InvalidEventId;

    fn from_str(raw: &str) -> Result<Self, InvalidEventId> {
        let mut parts = raw.split('-');
        let mut next = || parts.next().ok_or(InvalidEventId);
        let (ms, seq, shard) = (next()?, next()?, next()?);
        // ASCII digits only, as many as the API description allows (and u64 and u16 hold).
        let digits = |p: &str, most: usize| {
            (1..=most).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit())
        };
        if parts.next().is_some() || !digits(ms, 19) || !digits(seq, 19) || !digits(shard, 3) {
            return Err(InvalidEventId);
        }
        Ok(Self {
            ms: ms.parse().map_err(|_| InvalidEventId)?,
            seq: seq.parse().map_err(|_| InvalidEventId)?,
            shard: shard.parse().map_err(|_| InvalidEventId)?,
        })
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.ms, self.seq, self.shard)
    }
}

/// One lifecycle event, as both stores keep it. Times are milliseconds on the store's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: EventId,
    pub kind: EventKind,
    pub namespace: String,
    /// The session as of the event: for `ended` and `amended`, its final record.
    pub session: SessionState,
    /// When it ended (`ended` and `amended` only).
    pub ended_at: Option<i64>,
}

impl Event {
    /// An event not yet placed in the log (its id is given when it is appended).
    pub fn new(
        kind: EventKind,
        namespace: &str,
        session: &SessionState,
        ended_at: Option<i64>,
    ) -> Self {
        Self {
            id: EventId::default(),
            kind,
            namespace: namespace.to_owned(),
            session: session.clone(),
            ended_at,
        }
    }

    /// Last activity minus start, for a session that ended.
    pub fn duration_ms(&self) -> Option<i64> {
        self.ended_at
            .map(|_| self.session.last_activity_at - self.session.started_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::decision::started;
    use crate::domain::{Attributes, Reason, SessionId};

    fn live() -> SessionState {
        started(
            SessionId::parse("00000000000000000001").unwrap(),
            None,
            Reason::NewClient,
            Attributes::default(),
            0,
        )
    }

    #[test]
    fn a_report_carries_something() {
        assert_eq!(Report::new(0, false), Err(EmptyReport));
        assert!(Report::new(0, true).is_ok());
        assert!(Report::new(2, false).is_ok());
    }

    #[test]
    fn status_moves_one_way_ok_errored_crashed() {
        let mut s = live();
        assert!(Report::new(2, false).unwrap().apply(&mut s));
        assert_eq!((s.status, s.errors), (Status::Errored, 2));
        assert!(Report::new(0, true).unwrap().apply(&mut s));
        assert_eq!(s.status, Status::Crashed);
        Report::new(1, false).unwrap().apply(&mut s);
        assert_eq!((s.status, s.errors), (Status::Crashed, 3), "never back");
    }

    #[test]
    fn the_final_status_is_the_worse_of_health_and_how_it_ended() {
        let mut s = live();
        assert_eq!(final_status(&s, None), Status::Exited);
        assert_eq!(
            final_status(&s, Some(EndStatus::Abnormal)),
            Status::Abnormal
        );
        s.status = Status::Errored;
        assert_eq!(final_status(&s, Some(EndStatus::Exited)), Status::Errored);
        assert_eq!(
            final_status(&s, Some(EndStatus::Abnormal)),
            Status::Abnormal
        );
        s.status = Status::Crashed;
        assert_eq!(final_status(&s, Some(EndStatus::Abnormal)), Status::Crashed);
    }

    #[test]
    fn an_amended_final_status_only_gets_worse() {
        let mut s = live();
        s.status = Status::Exited;
        Report::new(1, false).unwrap().apply(&mut s);
        assert_eq!(s.status, Status::Errored);
        s.status = Status::Abnormal;
        Report::new(1, false).unwrap().apply(&mut s);
        assert_eq!(s.status, Status::Abnormal);
        Report::new(0, true).unwrap().apply(&mut s);
        assert_eq!(s.status, Status::Crashed);
    }

    #[test]
    fn event_ids_round_trip_and_order_by_time_sequence_and_shard() {
        let id: EventId = "1795555144510-3-17".parse().unwrap();
        assert_eq!(id.to_string(), "1795555144510-3-17");
        let a: EventId = "10-0-5".parse().unwrap();
        let b: EventId = "10-0-6".parse().unwrap();
        let c: EventId = "10-1-0".parse().unwrap();
        assert!(a < b && b < c);
        for bad in [
            "",
            "1-2",
            "1-2-3-4",
            "a-0-0",
            "1-0-70000",
            "-1-0-0",
            "+1-0-0",
            "1-0-1000",
            "99999999999999999999-0-0",
            "\u{663}-0-0",
        ] {
            assert!(bad.parse::<EventId>().is_err(), "{bad}");
        }
    }
}
