//! The admin calls: the bearer-token check, lifecycle events and release-health stats.

use std::collections::HashMap;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use secrecy::ExposeSecret;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::AppState;
use super::body::truncate;
use super::problem::ApiError;
use super::views::{EventView, rfc3339};
use crate::domain::namespace::DEFAULT_NAMESPACE;
use crate::domain::stats::{HOUR_MS, StatsQuery, StatsSummary};
use crate::domain::{Attributes, EventId, Namespace};

/// Lookup, events and stats require the admin token, and are off (404, as an unknown route)
/// when none is configured: a fresh deployment never serves one client's data to another.
pub fn authorize(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let Some(token) = &state.settings.admin_token else {
        return Err(ApiError::RouteNotFound(truncate(req.path(), 100)));
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .unwrap_or("");
    // blake3's Hash compares in constant time, so the comparison reveals nothing of the token.
    if blake3::hash(given.as_bytes()) == blake3::hash(token.expose_secret().as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// Whether the call carries the configured admin token (never without one configured).
pub fn is_admin(req: &HttpRequest, state: &AppState) -> bool {
    authorize(req, state).is_ok()
}

/// The token of an `Authorization: Bearer TOKEN` value; the scheme's name is matched without
/// regard to case, as HTTP says (RFC 9110 section 11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

/// The query parameters of a GET call, refusing any the call does not know.
fn query(req: &HttpRequest, known: &[&str]) -> Result<HashMap<String, String>, ApiError> {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|e| ApiError::invalid("query", e))?
        .into_inner();
    let mut params = HashMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        // "The last one wins" would let a proxy and sessiond read different values.
        if params.contains_key(&name) {
            return Err(ApiError::invalid(
                truncate(&name, 64),
                "is given more than once",
            ));
        }
        params.insert(name, value);
    }
    if let Some(unknown) = params.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            truncate(unknown, 64),
            format!(
                "is not a parameter of this call (known: {})",
                known.join(", ")
            ),
        ));
    }
    Ok(params)
}

/// Most events one page answers.
const MAX_EVENTS_PAGE: usize = 1000;
const DEFAULT_EVENTS_PAGE: usize = 100;

#[derive(Serialize)]
struct EventsPage {
    events: Vec<EventView>,
    /// Pass as `after` for the next page; the same cursor again when there was nothing new.
    next: Option<String>,
}

/// `GET /v1/events?after=CURSOR&limit=N`: lifecycle events after the cursor, oldest first.
pub async fn events(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let params = query(&req, &["after", "limit"])?;
    let after = params
        .get("after")
        .map(|raw| {
            raw.parse::<EventId>()
                .map_err(|e| ApiError::invalid("after", e))
        })
        .transpose()?;
    let limit = match params.get("limit") {
        None => DEFAULT_EVENTS_PAGE,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_EVENTS_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(
                    "limit",
                    format!("is a whole number from 1 to {MAX_EVENTS_PAGE}"),
                )
            })?,
    };
    let events = state.store.events(after, limit).await;
    let events = events?;
    let next = events
        .last()
        .map(|e| e.id)
        .or(after)
        .map(|id| id.to_string());
    Ok(HttpResponse::Ok().json(EventsPage {
        events: events.into_iter().map(EventView::from).collect(),
        next,
    }))
}

/// The longest window one stats call may cover.
const MAX_WINDOW_HOURS: i64 = 31 * 24;

#[derive(Serialize)]
struct StatsAnswer {
    namespace: String,
    /// The window counted: whole hours, `from` rounded down and `to` up.
    from: String,
    to: String,
    #[serde(flatten)]
    summary: StatsSummary,
}

fn time_param(params: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    params
        .get(name)
        .map(|raw| {
            OffsetDateTime::parse(raw, &Rfc3339)
                .ok()
                // Stats are kept by day from 1970 on; a year past 9999 is no RFC 3339 time.
                .filter(|t| (1970..=9999).contains(&t.year()))
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                .ok_or_else(|| {
                    ApiError::invalid(
                        name,
                        "is an RFC 3339 time like 2026-11-24T09:00:00Z, in the years 1970 to 9999",
                    )
                })
        })
        .transpose()
}

/// `GET /v1/stats`: release-health stats of sessions started in a window (default: the
/// last 24 hours).
pub async fn stats(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let params = query(&req, &["namespace", "release", "environment", "from", "to"])?;
    let raw_ns = params
        .get("namespace")
        .map_or(DEFAULT_NAMESPACE, String::as_str);
    let namespace = Namespace::parse(raw_ns)
        .ok()
        .filter(|n| state.settings.namespaces.contains_key(n))
        .ok_or_else(|| ApiError::UnknownNamespace(truncate(raw_ns, 64)))?;
    let attribute = |name: &str| {
        params
            .get(name)
            .map(|v| {
                Attributes::check(v)
                    .map(|()| v.clone())
                    .map_err(|e| ApiError::invalid(name, e))
            })
            .transpose()
    };
    let (release, environment) = (attribute("release")?, attribute("environment")?);
    let to = time_param(&params, "to")?.unwrap_or_else(|| state.clock.now_ms());
    let from = time_param(&params, "from")?.unwrap_or(to - 24 * HOUR_MS);
    if from >= to {
        return Err(ApiError::invalid("from", "must be before `to`"));
    }
    let (from_hour, to_hour) = (
        from.div_euclid(HOUR_MS),
        to.div_euclid(HOUR_MS) + i64::from(to % HOUR_MS != 0),
    );
    if to_hour - from_hour > MAX_WINDOW_HOURS {
        return Err(ApiError::invalid("from", "the window is at most 31 days"));
    }
    let query = StatsQuery {
        namespace: namespace.to_string(),
        release,
        environment,
        from_hour,
        to_hour,
    };
    let summary = state.store.stats(&query).await;
    Ok(HttpResponse::Ok().json(StatsAnswer {
        namespace: query.namespace,
        from: rfc3339(from_hour * HOUR_MS),
        to: rfc3339(to_hour * HOUR_MS),
        summary: summary?,
    }))
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        for value in ["Bearer t0k", "bearer t0k", "BEARER  t0k"] {
            assert_eq!(bearer_token(value), Some("t0k"), "{value}");
        }
        assert_eq!(bearer_token("Basic t0k"), None);
        assert_eq!(bearer_token("Bearert0k"), None);
    }
}
