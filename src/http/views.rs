//! The JSON shapes of sessions in responses, and RFC 3339 times with milliseconds.

use serde::Serialize;
use std::time::{Duration, UNIX_EPOCH};

use crate::domain::decision::{deadline, finalized, over};
use crate::domain::{Attributes, Event, EventKind, Policy, Reason, SessionState, Status};

/// What the store knows of one session, as answered by every call and by lookup.
#[derive(Debug, Serialize)]
pub struct SessionRecord {
    pub session_id: String,
    pub namespace: String,
    pub index: u64,
    pub previous_session_id: Option<String>,
    pub started_at: String,
    pub last_activity_at: String,
    /// When it idles out if nothing happens; for a session that is over, when it ended.
    pub expires_at: String,
    pub ended_at: Option<String>,
    pub reason: Reason,
    pub status: Status,
    /// Handled errors reported for it.
    pub errors: u64,
    pub attributes: Attributes,
}

/// A session as the answer to a call.
#[derive(Debug, Serialize)]
pub struct SessionBody {
    #[serde(flatten)]
    pub record: SessionRecord,
    /// Whether this call started it.
    pub created: bool,
    /// The client key the service minted for a caller that brought none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Drawn while the store was unreachable and never stored (index 0).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub provisional: bool,
}

impl SessionRecord {
    /// Presents a session at `now`: one that is over shows when it ended and its final status.
    pub fn at(namespace: &str, session: &SessionState, policy: &Policy, now: i64) -> Self {
        let shown = if over(session, policy, now).is_some() {
            finalized(session, policy, now)
        } else {
            session.clone()
        };
        let expires = deadline(&shown, policy).map_or(shown.last_activity_at, |(at, _)| at);
        Self {
            session_id: shown.id.to_string(),
            namespace: namespace.to_owned(),
            index: shown.index,
            previous_session_id: shown.previous.as_ref().map(ToString::to_string),
            started_at: rfc3339(shown.started_at),
            last_activity_at: rfc3339(shown.last_activity_at),
            expires_at: rfc3339(expires),
            ended_at: shown.ended_at.map(rfc3339),
            reason: shown.reason,
            status: shown.status,
            errors: shown.errors,
            attributes: shown.attributes,
        }
    }
}

/// A lifecycle event as `GET /v1/events` answers it: the fields of the Redis stream entry,
/// with times in RFC 3339.
#[derive(Debug, Serialize)]
pub struct EventView {
    /// Its cursor: pass it as `after` to read on from here.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// When the store wrote it.
    pub recorded_at: String,
    pub session_id: String,
    pub namespace: String,
    pub index: u64,
    pub previous_session_id: Option<String>,
    pub reason: Reason,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub status: Status,
    pub errors: u64,
    pub release: Option<String>,
    pub environment: Option<String>,
    pub platform: Option<String>,
    pub user_id: Option<String>,
}

impl From<Event> for EventView {
    fn from(event: Event) -> Self {
        let duration_ms = event.duration_ms();
        let s = event.session;
        Self {
            id: event.id.to_string(),
            kind: event.kind,
            recorded_at: rfc3339(event.id.ms as i64),
            session_id: s.id.to_string(),
            namespace: event.namespace,
            index: s.index,
            previous_session_id: s.previous.as_ref().map(ToString::to_string),
            reason: s.reason,
            started_at: rfc3339(s.started_at),
            ended_at: event.ended_at.map(rfc3339),
            duration_ms,
            status: s.status,
            errors: s.errors,
            release: s.attributes.release,
            environment: s.attributes.environment,
            platform: s.attributes.platform,
            user_id: s.attributes.user_id,
        }
    }
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-23T01:52:58.123Z`. humantime's
/// formatter is a few times cheaper than a format description, and every answer has four.
pub fn rfc3339(ms: i64) -> String {
    // Its range ends with year 9999; the store's clock is far from either end.
    const LAST_MS: u64 = 253_402_300_799_999;
    let ms = u64::try_from(ms).unwrap_or(0).min(LAST_MS);
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_with_milliseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_225_978_123), "2026-11-21T01:52:58.123Z");
        assert_eq!(rfc3339(1_795_225_978_000), "2026-11-21T01:52:58.000Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00.000Z");
    }
}
