//! The demo page (only with `demo = true`): five instruments that share one session through
//! the browser client, served with the client itself.

use actix_web::{HttpResponse, web};

use super::AppState;
use super::problem::ApiError;

const PAGE: &str = include_str!("demo.html");
const CLIENT: &str = include_str!("../../clients/js/sessiond.js");

fn enabled(state: &AppState, path: &str) -> Result<(), ApiError> {
    if state.settings.demo {
        Ok(())
    } else {
        Err(ApiError::RouteNotFound(path.to_owned()))
    }
}

/// `GET /demo`.
pub async fn page(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    enabled(&state, "/demo")?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE))
}

/// `GET /demo/sessiond.js`: clients/js/sessiond.js.
pub async fn client(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    enabled(&state, "/demo/sessiond.js")?;
    Ok(HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .body(CLIENT))
}
