//! The HTTP layer: routes, the JSON body extractor, CORS, and problem+json errors.

pub mod admin;
pub mod body;
pub mod connections;
pub mod cors;
pub mod demo;
pub mod lookup;
pub mod ops;
pub mod problem;
pub mod sessions;
pub mod source;
pub mod system;
pub mod views;

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::HeaderName;
use actix_web::middleware::{Next, from_fn};
use actix_web::{HttpRequest, Route, web};

use crate::config::Settings;
use crate::domain::{ClientHasher, Clock, IdSource};
use crate::limits::{Limited, Limiter};
use crate::store::SessionStore;
use crate::telemetry::{self, LimitLabels, Metrics, RequestLabels, RequestSeries};
use problem::ApiError;
use sessions::OpName;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn SessionStore>,
    pub settings: Arc<Settings>,
    pub hasher: ClientHasher,
    pub ids: Arc<dyn IdSource>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub limiter: Arc<Limiter>,
}

impl AppState {
    /// Counts a refusal and turns it into its answer.
    pub fn refuse(&self, limited: Limited) -> ApiError {
        self.metrics
            .rate_limited
            .get_or_create(&LimitLabels {
                limit: limited.kind.as_str(),
            })
            .inc();
        ApiError::RateLimited(limited)
    }
}

fn post(op: OpName) -> Route {
    web::post().to(move |req, state, body| sessions::call(op, req, state, body))
}

/// 405 for a known path called with another method.
fn only(allowed: &'static str) -> Route {
    web::route().to(move |req: HttpRequest| async move {
        Err::<actix_web::HttpResponse, _>(ApiError::MethodNotAllowed {
            method: req.method().to_string(),
            allowed,
        })
    })
}

/// A route's pattern, kept with its resource so the request metrics can label by route
/// without matching the path again.
#[derive(Clone, Copy)]
struct RoutePattern(&'static str);

/// A resource at `path` (relative to its scope), labelled `pattern` in the request metrics.
fn resource(path: &'static str, pattern: &'static str) -> actix_web::Resource {
    web::resource(path).app_data(RoutePattern(pattern))
}

/// Registers every route of the API.
pub fn routes(cfg: &mut web::ServiceConfig) {
    let calls = [
        ("/current", "/v1/sessions/current", OpName::Current),
        ("/tick", "/v1/sessions/tick", OpName::Tick),
        ("/foreground", "/v1/sessions/foreground", OpName::Foreground),
        ("/background", "/v1/sessions/background", OpName::Background),
        ("/end", "/v1/sessions/end", OpName::End),
        ("/report", "/v1/sessions/report", OpName::Report),
    ];
    let mut scope = web::scope("/v1/sessions").wrap(from_fn(cors::middleware));
    for (path, pattern, op) in calls {
        scope = scope.service(
            resource(path, pattern)
                .route(post(op))
                .default_service(only("POST"))
                .wrap(from_fn(ops::public_call)),
        );
    }
    scope = scope
        .service(
            resource("/batch", "/v1/sessions/batch")
                .route(web::post().to(sessions::batch))
                .default_service(only("POST"))
                .wrap(from_fn(ops::public_call)),
        )
        .service(
            resource("/{session_id}", "/v1/sessions/{session_id}")
                .route(web::get().to(lookup::lookup))
                .default_service(only("GET"))
                .wrap(from_fn(ops::ops_call)),
        );
    cfg.service(scope);
    let get = |path: &'static str, handler: Route| {
        resource(path, path)
            .route(handler)
            .default_service(only("GET"))
    };
    for (path, handler) in [
        ("/v1/events", web::get().to(admin::events)),
        ("/v1/stats", web::get().to(admin::stats)),
        ("/metrics", web::get().to(system::metrics)),
    ] {
        cfg.service(get(path, handler).wrap(from_fn(ops::ops_call)));
    }
    for (path, handler) in [
        ("/demo", web::get().to(demo::page)),
        ("/demo/sessiond.js", web::get().to(demo::client)),
    ] {
        cfg.service(get(path, handler).wrap(from_fn(ops::public_call)));
    }
    for (path, handler) in [
        ("/healthz", web::get().to(system::healthz)),
        ("/readyz", web::get().to(system::readyz)),
        ("/openapi.yaml", web::get().to(system::openapi)),
    ] {
        cfg.service(get(path, handler));
    }
    cfg.default_service(web::to(|req: HttpRequest| async move {
        Err::<actix_web::HttpResponse, _>(ApiError::RouteNotFound(body::truncate(req.path(), 100)))
    }));
}

/// The header carrying a request's id, taken from the caller when it sent a usable one.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Gives every request an id (the caller's `x-request-id` when it is 1 to 64 characters of
/// `A-Z a-z 0-9 . _ -`, else a new one) that log lines written while serving it carry, echoes
/// it in the response, and observes the request's duration by route pattern, method and status.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = method_label(req.method());
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .filter(|v| usable_request_id(v.as_bytes()))
        .cloned()
        .unwrap_or_else(telemetry::new_request_id);
    let (response, id) = telemetry::serve_as(id, next.call(req)).await;
    let mut response = response?;
    if let Some(id) = id {
        response.headers_mut().insert(REQUEST_ID, id);
    }
    if method != "OPTIONS"
        && let Some(series) = response.request().app_data::<RequestSeries>()
    {
        let route = response
            .request()
            .app_data::<RoutePattern>()
            .map_or("unmatched", |r| r.0);
        let labels = RequestLabels {
            method,
            route,
            status: response.status().as_u16(),
        };
        series.observe(labels, started.elapsed());
    }
    Ok(response)
}

/// A request's method as a metric label: any other than the standard ones is `other`, so
/// callers cannot grow the label set.
fn method_label(method: &Method) -> &'static str {
    const LABELS: [(Method, &str); 7] = [
        (Method::GET, "GET"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::PATCH, "PATCH"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
    ];
    LABELS
        .iter()
        .find(|(m, _)| m == method)
        .map_or("other", |(_, label)| label)
}

fn usable_request_id(raw: &[u8]) -> bool {
    (1..=64).contains(&raw.len())
        && raw
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
