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
///
/// The serde names are short because the Redis store keeps this shape per session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    #[serde(rename = "s")]
    pub id: SessionId,
    #[serde(rename = "i")]
    pub index: u64,
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<SessionId>,
    #[serde(rename = "t0")]
    pub started_at: i64,
    #[serde(rename = "t")]
    pub last_activity_at: i64,
    /// Set while the app is in the background (background mode only).
    #[serde(rename = "bg", default, skip_serializing_if = "Option::is_none")]
    pub background_since: Option<i64>,
    /// Set when the session ended: by an end call, or for archived sessions, by expiry.
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<i64>,
    #[serde(rename = "st")]
    pub status: Status,
    /// Handled errors reported for this session.
    #[serde(rename = "n", default, skip_serializing_if = "is_zero")]
    pub errors: u64,
    /// Set once its `ended` event was written, so it is finalized exactly once. An idled-out
    /// session finalized by the sweeper keeps no `ended_at`: its deadline says when it ended.
    #[serde(rename = "f", default, skip_serializing_if = "std::ops::Not::not")]
    pub finalized: bool,
    #[serde(rename = "r")]
    pub reason: Reason,
    #[serde(rename = "a", default)]
    pub attributes: Attributes,
    /// The reports applied by `report_id`, so that a retry applies none again.
    #[serde(skip)]
    pub reports: RecentReports,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

// SessionId travels through serde as its string form; a stored id that is not one is corrupt.
impl Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SessionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        SessionId::parse(&raw).map_err(serde::de::Error::custom)
    }
}
