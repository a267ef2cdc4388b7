//! Every error the API answers, and its one mapping to RFC 9457 problem+json.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use std::time::Duration;

use crate::limits::{LimitKind, Limited};
use crate::store::StoreError;
use crate::telemetry::{self, LogThrottle};

fn rate_limited_detail(limited: &Limited) -> String {
    let what = match limited.kind {
        LimitKind::Client => "too many calls for this client",
        LimitKind::Address => "too many calls from this address",
        LimitKind::NewClients => "too many new clients from this address this minute",
    };
    format!("{what}; retry in {} s", limited.retry_after_seconds())
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// The request field at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{field}: {message}")]
    InvalidField { field: String, message: String },
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("the body must be application/json or text/plain, not {0}")]
    UnsupportedMediaType(String),
    #[error("the body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the whole body did not arrive within {} ms", .0.as_millis())]
    BodyTimeout(Duration),
    #[error("too many connections from this address; retry in {RETRY_AFTER_SECONDS} s")]
    TooManyConnections,
    #[error("no namespace {0:?} is configured")]
    UnknownNamespace(String),
    #[error("the client has no live session")]
    NoLiveSession,
    #[error("no session {0} is retained")]
    SessionNotFound(String),
    #[error("no route {0}")]
    RouteNotFound(String),
    #[error("{method} is not allowed here; allowed: {allowed}")]
    MethodNotAllowed {
        method: String,
        allowed: &'static str,
    },
    #[error("this call requires the admin token as `Authorization: Bearer TOKEN`")]
    Unauthorized,
    #[error("origin {0:?} is not allowed for this namespace")]
    OriginNotAllowed(String),
    #[error("{}", rate_limited_detail(.0))]
    RateLimited(Limited),
    #[error("the session store is unavailable; retry shortly")]
    StoreUnavailable,
    #[error("an internal error occurred")]
    Internal,
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl ToString) -> Self {
        Self::InvalidField {
            field: field.into(),
            message: message.to_string(),
        }
    }

    fn slug_and_title(&self) -> (&'static str, &'static str) {
        match self {
            Self::InvalidField { .. } => ("invalid-field", "A field is invalid"),
            Self::MalformedJson(_) => ("malformed-json", "The body is not valid JSON"),
            Self::UnsupportedMediaType(_) => ("unsupported-media-type", "Unsupported media type"),
            Self::PayloadTooLarge { .. } => ("payload-too-large", "The body is too large"),
            Self::BodyTimeout(_) => ("body-timeout", "The body did not arrive in time"),
            Self::TooManyConnections => ("too-many-connections", "Too many connections"),
            Self::UnknownNamespace(_) => ("unknown-namespace", "Unknown namespace"),
            Self::NoLiveSession => ("no-live-session", "No live session"),
            Self::SessionNotFound(_) => ("session-not-found", "Session not found"),
            Self::RouteNotFound(_) => ("not-found", "Not found"),
            Self::MethodNotAllowed { .. } => ("method-not-allowed", "Method not allowed"),
            Self::Unauthorized => ("unauthorized", "Unauthorized"),
            Self::OriginNotAllowed(_) => ("origin-not-allowed", "Origin not allowed"),
            Self::RateLimited(_) => ("rate-limited", "Too many requests"),
            Self::StoreUnavailable => ("store-unavailable", "The session store is unavailable"),
            Self::Internal => ("internal", "Internal error"),
        }
    }

    pub fn problem(&self) -> Problem {
        let (slug, title) = self.slug_and_title();
        Problem {
            kind: format!("urn:sessiond:problem:{slug}"),
            title,
            status: self.status_code().as_u16(),
            detail: self.to_string(),
            field: match self {
                Self::InvalidField { field, .. } => Some(field.clone()),
                _ => None,
            },
        }
    }
}

/// Seconds a client should wait before retrying after a 503.
pub const RETRY_AFTER_SECONDS: u32 = 1;

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidField { .. } | Self::MalformedJson(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::TooManyConnections => StatusCode::TOO_MANY_REQUESTS,
            Self::UnknownNamespace(_)
            | Self::NoLiveSession
            | Self::SessionNotFound(_)
            | Self::RouteNotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::OriginNotAllowed(_) => StatusCode::FORBIDDEN,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        response.content_type("application/problem+json");
        match self {
            Self::StoreUnavailable => {
                response
                    .insert_header((header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS)));
            }
            // The rest of a late body, or the next request of a connection over its
            // address's cap, is not waited for: the connection closes.
            Self::BodyTimeout(_) => {
                response.force_close();
            }
            Self::TooManyConnections => {
                response
                    .insert_header((header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS)))
                    .force_close();
            }
            Self::RateLimited(limited) => {
                response.insert_header((
                    header::RETRY_AFTER,
                    HeaderValue::from(limited.retry_after_seconds()),
                ));
            }
            Self::Unauthorized => {
                response
                    .insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
            }
            Self::MethodNotAllowed { allowed, .. } => {
                response.insert_header((header::ALLOW, HeaderValue::from_static(allowed)));
            }
            _ => {}
        }
        response.json(self.problem())
    }
}

// Store details go to the log with context, never into a response body.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(detail) => {
                // An outage fails every call: ten lines per ten seconds say so.
                static UNAVAILABLE: LogThrottle = LogThrottle::new(Duration::from_secs(10), 10);
                if let Some(held_back) = UNAVAILABLE.allow() {
                    let request_id = telemetry::request_id();
                    tracing::warn!(request_id, %detail, held_back, "session store unavailable");
                }
                Self::StoreUnavailable
            }
            StoreError::Corrupt(detail) | StoreError::Failed(detail) => {
                let request_id = telemetry::request_id();
                tracing::error!(request_id, %detail, "session store call failed");
                Self::Internal
            }
        }
    }
}
