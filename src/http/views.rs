//! The JSON shapes of sessions in responses, and RFC 3339 times with milliseconds.

use std::fmt::{self, Write};
use std::time::{Duration, UNIX_EPOCH};

use actix_web::HttpResponse;
use actix_web::http::header::{CONTENT_TYPE, HeaderValue};
use arrayvec::ArrayString;
use serde::Serialize;
use serde::ser::{SerializeStruct, Serializer};

use super::problem::ApiError;
use crate::domain::decision::{deadline, finalized, over};
use crate::domain::{
    ClientKey, Event, EventKind, Namespace, Policy, Reason, SessionId, SessionState, Status,
};

/// What the store knows of one session, as answered by every call and by lookup. It is
/// serialized straight from the session: an answer is written without building its strings.
#[derive(Debug)]
pub struct SessionRecord {
    namespace: Namespace,
    /// The session as shown: one that is over, finalized.
    session: SessionState,
    /// When it idles out if nothing happens; for a session that is over, when it ended.
    expires_at: i64,
}

/// A session as the answer to a call: the record's fields, then the call's own.
#[derive(Debug)]
pub struct SessionBody {
    pub record: SessionRecord,
    /// Whether this call started it.
    pub created: bool,
    /// The client key the service minted for a caller that brought none.
    pub client: Option<ClientKey>,
    /// Drawn while the store was unreachable and never stored (index 0).
    pub provisional: bool,
}

impl SessionRecord {
    /// Presents a session at `now`: one that is over shows when it ended and its final status.
    pub fn at(namespace: Namespace, session: SessionState, policy: &Policy, now: i64) -> Self {
        let session = if over(&session, policy, now).is_some() {
            finalized(&session, policy, now)
        } else {
            session
        };
        let expires_at = deadline(&session, policy).map_or(session.last_activity_at, |(at, _)| at);
        Self {
            namespace,
            session,
            expires_at,
        }
    }

    /// Its fields, in the order openapi.yaml lists them.
    fn serialize_fields<S: SerializeStruct>(&self, out: &mut S) -> Result<(), S::Error> {
        let s = &self.session;
        out.serialize_field("session_id", s.id.as_str())?;
        out.serialize_field("namespace", self.namespace.as_str())?;
        out.serialize_field("index", &s.index)?;
        out.serialize_field(
            "previous_session_id",
            &s.previous.as_ref().map(SessionId::as_str),
        )?;
        out.serialize_field("started_at", &Rfc3339(s.started_at))?;
        out.serialize_field("last_activity_at", &Rfc3339(s.last_activity_at))?;
        out.serialize_field("expires_at", &Rfc3339(self.expires_at))?;
        out.serialize_field("ended_at", &s.ended_at.map(Rfc3339))?;
        out.serialize_field("reason", &s.reason)?;
        out.serialize_field("status", &s.status)?;
        out.serialize_field("errors", &s.errors)?;
        out.serialize_field("attributes", &s.attributes)
    }
}

impl Serialize for SessionRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("SessionRecord", 12)?;
        self.serialize_fields(&mut out)?;
        out.end()
    }
}

impl Serialize for SessionBody {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("SessionBody", 15)?;
        self.record.serialize_fields(&mut out)?;
        out.serialize_field("created", &self.created)?;
        if let Some(client) = &self.client {
            out.serialize_field("client", client.as_str())?;
        }
        if self.provisional {
            out.serialize_field("provisional", &true)?;
        }
        out.end()
    }
}

/// A JSON answer, written into a buffer of `size_hint` bytes so that it rarely grows (an
/// answered session takes under 512).
pub fn json<T: Serialize>(value: &T, size_hint: usize) -> Result<HttpResponse, ApiError> {
    let mut body = Vec::with_capacity(size_hint);
    // Only a failing Serialize impl errs, and none of the answers has one.
    serde_json::to_writer(&mut body, value).map_err(|e| {
        tracing::error!(error = %e, "an answer could not be written as JSON");
        ApiError::Internal
    })?;
    // A static header value: the typed ContentType is parsed and copied on every answer.
    Ok(HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
        .body(body))
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

/// A time as RFC 3339 in UTC with milliseconds, e.g. `2026-11-23T01:52:58.123Z`.
/// humantime's formatter is a few times cheaper than a format description, and every answer
/// has three or four; serialized, it is written straight into the answer.
#[derive(Debug, Clone, Copy)]
pub struct Rfc3339(pub i64);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Its range ends with year 9999; the store's clock is far from either end.
        const LAST_MS: u64 = 253_402_300_799_999;
        let ms = u64::try_from(self.0).unwrap_or(0).min(LAST_MS);
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).fmt(f)
    }
}

impl Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Formatted on the stack first: one string to write, not a formatter's pieces.
        let mut text = ArrayString::<24>::new();
        write!(text, "{self}").map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(&text)
    }
}

pub fn rfc3339(ms: i64) -> String {
    Rfc3339(ms).to_string()
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
