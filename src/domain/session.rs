//! A session as the store keeps it, and the vocabularies of its status and start reason.

use serde::{Deserialize, Serialize};

use super::{Attributes, RecentReports, SessionId};

/// Why a session started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    NewClient,
    IdleTimeout,
    MaxDuration,
    Ended,
    UserChange,
}

/// A session's status. While live it is its health (`ok`, `errored`, `crashed`); once it
/// ended or was finalized, its final status (`exited`, `errored`, `crashed`, `abnormal`).
/// It only ever moves to a worse one ([`Status::worse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Exited,
    Errored,
    Abnormal,
    Crashed,
}

impl Status {
    /// How bad a status is: `ok` and `exited` (nothing wrong) < `errored` < `abnormal` <
    /// `crashed`.
    fn rank(self) -> u8 {
        match self {
            Status::Ok | Status::Exited => 0,
            Status::Errored => 1,
            Status::Abnormal => 2,
            Status::Crashed => 3,
        }
    }

    /// The worse of two statuses; on a tie the second, so a live `ok` session ended with
    /// `exited` becomes `exited`.
    pub fn worse(self, other: Status) -> Status {
        if other.rank() >= self.rank() {
            other
        } else {
            self
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Exited => "exited",
            Status::Errored => "errored",
            Status::Abnormal => "abnormal",
            Status::Crashed => "crashed",
        }
    }
}

/// The statuses a client may end a session with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndStatus {
    Exited,
    Crashed,
    Abnormal,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NewClient => "new_client",
            Reason::IdleTimeout => "idle_timeout",
            Reason::MaxDuration => "max_duration",
            Reason::Ended => "ended",
            Reason::UserChange => "user_change",
        }
    }
}

impl From<EndStatus> for Status {
    fn from(s: EndStatus) -> Self {
        match s {
            EndStatus::Exited => Status::Exited,
            EndStatus::Crashed => Status::Crashed,
            EndStatus::Abnormal => Status::Abnormal,
        }
    }
}

/// One session of one client. Times are milliseconds on the store's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionState {
    pub id: SessionId,
    pub index: u64,
    pub previous: Option<SessionId>,
    pub started_at: i64,
    pub last_activity_at: i64,
    /// Set while the app is in the background (background mode only).
    pub background_since: Option<i64>,
    /// Set when the session ended: by an end call, or for archived sessions, by expiry.
    pub ended_at: Option<i64>,
    pub status: Status,
    /// Handled errors reported for this session.
    pub errors: u64,
    /// Set once its `ended` event was written, so it is finalized exactly once. An idled-out
    /// session finalized by the sweeper keeps no `ended_at`: its deadline says when it ended.
    pub finalized: bool,
    pub reason: Reason,
    pub attributes: Attributes,
    /// The reports applied by `report_id`, so that a retry applies none again.
    pub reports: RecentReports,
}
