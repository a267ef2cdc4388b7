//! Lookup by id: what the store knows of one session, while it is retained.

use actix_web::{HttpRequest, HttpResponse, web};

use super::problem::ApiError;
use super::views::{self, SessionRecord};
use super::{AppState, admin};
use crate::domain::decision::retained_until;
use crate::domain::{Policy, SessionId};

/// `GET /v1/sessions/{session_id}`.
pub async fn lookup(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    admin::authorize(&req, &state)?;
    let raw = req.match_info().get("session_id").unwrap_or("");
    let id = SessionId::parse(raw).map_err(|e| ApiError::invalid("session_id", e))?;
    let found = state.store.find(&id).await;
    let found = found?.ok_or_else(|| ApiError::SessionNotFound(id.to_string()))?;
    // A namespace removed from the configuration still has its sessions readable.
    let policy = (state.settings.namespaces.get(&found.namespace))
        .map_or_else(Policy::default, |ns| ns.policy);
    let retention = state.settings.retention.session_ms();
    if found.now >= retained_until(&found.session, &policy, retention) {
        return Err(ApiError::SessionNotFound(id.to_string()));
    }
    views::json(
        &SessionRecord::at(found.namespace, found.session, &policy, found.now),
        512,
    )
}
