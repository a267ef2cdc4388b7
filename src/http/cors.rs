//! CORS: browsers may call from the origins a namespace allows; preflights are answered here.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, header};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};

use super::AppState;
use super::body::truncate;
use super::problem::ApiError;
use crate::config::NamespaceSettings;

fn allows(ns: &NamespaceSettings, origin: &str) -> bool {
    ns.allowed_origins.iter().any(|o| o == "*" || o == origin)
}

/// A page served by this host itself needs no permission. Only the Host header counts:
/// forwarding headers are the caller's to set.
fn same_origin(req: &HttpRequest, origin: &str) -> bool {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    host.is_some() && origin.split_once("://").map(|(_, h)| h) == host
}

fn origin_of(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("").to_owned())
}

/// Refuses a browser call from an origin the namespace does not allow, before anything changes.
pub fn check(req: &HttpRequest, ns: &NamespaceSettings) -> Result<(), ApiError> {
    match origin_of(req) {
        Some(origin) if !same_origin(req, &origin) && !allows(ns, &origin) => {
            Err(ApiError::OriginNotAllowed(truncate(&origin, 100)))
        }
        _ => Ok(()),
    }
}

/// Answers preflights and marks responses readable by origins some namespace allows; which
/// namespace a call is for is in its body, so the handler enforces the namespace's own list.
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(origin) = origin_of(req.request()) else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let allowed = same_origin(req.request(), &origin)
        || req
            .app_data::<web::Data<AppState>>()
            .is_some_and(|s| s.settings.namespaces.values().any(|ns| allows(ns, &origin)));
    if req.method() == Method::OPTIONS {
        let response = if allowed {
            HttpResponse::NoContent()
                .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.as_str()))
                .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "POST, GET"))
                .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, "content-type"))
                .insert_header((header::ACCESS_CONTROL_MAX_AGE, "86400"))
                .insert_header((header::VARY, "Origin"))
                .finish()
        } else {
            ApiError::OriginNotAllowed(truncate(&origin, 100)).error_response()
        };
        return Ok(req.into_response(response));
    }
    let mut response = next.call(req).await?.map_into_boxed_body();
    let headers = response.headers_mut();
    headers.insert(header::VARY, header::HeaderValue::from_static("Origin"));
    if allowed && let Ok(value) = header::HeaderValue::from_str(&origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    }
    Ok(response)
}
