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
    id: Option<ReportId>,
}

/// A report's `report_id` (CONTRACT 8), which makes a retried report apply once. Kept as the
/// first 8 bytes of its BLAKE3 digest: a session remembers its recent reports in its record,
/// so each costs 8 bytes however long the id, and ids are the owner's own (a collision could
/// only drop one of its own reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReportId([u8; ReportId::BYTES]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a report_id is 16 to 64 of A-Z a-z 0-9 . _ ~ -")]
pub struct InvalidReportId;

impl ReportId {
    pub const BYTES: usize = 8;

    pub fn parse(raw: &str) -> Result<Self, InvalidReportId> {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-');
        if !(16..=64).contains(&raw.len()) || !raw.bytes().all(allowed) {
            return Err(InvalidReportId);
        }
        let digest = blake3::hash(raw.as_bytes());
        let mut bytes = [0; Self::BYTES];
        bytes.copy_from_slice(&digest.as_bytes()[..Self::BYTES]);
        Ok(Self(bytes))
    }

    pub fn from_bytes(bytes: [u8; Self::BYTES]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; Self::BYTES] {
        &self.0
    }
}

/// The reports a session remembers by id, oldest first: the last [`RecentReports::CAPACITY`],
/// so a record stays small; a retry comes soon after its first try.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecentReports(arrayvec::ArrayVec<ReportId, { RecentReports::CAPACITY }>);

impl RecentReports {
    pub const CAPACITY: usize = 8;

    pub fn contains(&self, id: &ReportId) -> bool {
        self.0.contains(id)
    }

    /// Remembers a report, forgetting the oldest when full.
    pub fn remember(&mut self, id: ReportId) {
        if self.0.is_full() {
            self.0.remove(0);
        }
        self.0.push(id);
    }

    pub fn iter(&self) -> impl Iterator<Item = &ReportId> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a report carries at least one error or a crash")]
pub struct EmptyReport;

impl Report {
    /// At most this many errors in one report, so counters never overflow.
    pub const MAX_ERRORS: u64 = 1_000;

    pub fn new(errors: u64, crashed: bool, id: Option<ReportId>) -> Result<Self, EmptyReport> {
        if errors == 0 && !crashed {
            return Err(EmptyReport);
        }
        Ok(Self {
            errors,
            crashed,
            id,
        })
    }

    pub fn errors(&self) -> u64 {
        self.errors
    }

    pub fn crashed(&self) -> bool {
        self.crashed
    }

    pub fn id(&self) -> Option<&ReportId> {
        self.id.as_ref()
    }

    /// The status this report alone shows.
    pub fn status(&self) -> Status {
        if self.crashed {
            Status::Crashed
        } else {
            Status::Errored
        }
    }

    /// Adds the report to a session, unless the session already has a report of its id;
    /// returns whether its errors or status changed.
    pub fn apply(&self, session: &mut SessionState) -> bool {
        if let Some(id) = self.id {
            if session.reports.contains(&id) {
                return false;
            }
            session.reports.remember(id);
        }
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
        // Events say nothing of the reports a session remembers.
        let session = SessionState {
            reports: RecentReports::default(),
            ..session.clone()
        };
        Self {
            id: EventId::default(),
            kind,
            namespace: namespace.to_owned(),
            session,
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
        assert_eq!(Report::new(0, false, None), Err(EmptyReport));
        assert!(Report::new(0, true, None).is_ok());
        assert!(Report::new(2, false, None).is_ok());
    }

    #[test]
    fn status_moves_one_way_ok_errored_crashed() {
        let mut s = live();
        assert!(Report::new(2, false, None).unwrap().apply(&mut s));
        assert_eq!((s.status, s.errors), (Status::Errored, 2));
        assert!(Report::new(0, true, None).unwrap().apply(&mut s));
        assert_eq!(s.status, Status::Crashed);
        Report::new(1, false, None).unwrap().apply(&mut s);
        assert_eq!((s.status, s.errors), (Status::Crashed, 3), "never back");
    }

    #[test]
    fn a_report_of_a_known_id_applies_once_and_the_last_ids_are_remembered() {
        let id = |n: usize| ReportId::parse(&format!("report-{n:0>10}")).unwrap();
        let report = |n| Report::new(3, false, Some(id(n))).unwrap();
        let mut s = live();
        assert!(report(0).apply(&mut s));
        assert!(!report(0).apply(&mut s), "a repeat changes nothing");
        assert_eq!(s.errors, 3);
        for n in 1..=RecentReports::CAPACITY {
            assert!(report(n).apply(&mut s));
        }
        assert_eq!(s.reports.len(), RecentReports::CAPACITY);
        assert!(!s.reports.contains(&id(0)), "the oldest is forgotten");
        assert!(!report(RecentReports::CAPACITY).apply(&mut s));
    }

    #[test]
    fn report_ids_are_16_to_64_of_the_unreserved_characters() {
        for good in ["a".repeat(16), "A-z0.9_~".repeat(8)] {
            assert!(ReportId::parse(&good).is_ok(), "{good}");
        }
        for bad in [
            "a".repeat(15),
            "a".repeat(65),
            format!("{}/", "a".repeat(16)),
            format!("{}é", "a".repeat(16)),
        ] {
            assert_eq!(ReportId::parse(&bad), Err(InvalidReportId), "{bad}");
        }
        assert_ne!(
            ReportId::parse(&"a".repeat(16)),
            ReportId::parse(&"a".repeat(17))
        );
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
        Report::new(1, false, None).unwrap().apply(&mut s);
        assert_eq!(s.status, Status::Errored);
        s.status = Status::Abnormal;
        Report::new(1, false, None).unwrap().apply(&mut s);
        assert_eq!(s.status, Status::Abnormal);
        Report::new(0, true, None).unwrap().apply(&mut s);
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
