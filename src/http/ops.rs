//! The ops address (`--ops-listen`): with one, /metrics and the admin calls are served there
//! and only there, and the public calls only on the public address, so that a deployment can
//! keep the ops calls off the public address altogether. Health checks and the API
//! description answer on both.

use std::net::SocketAddr;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;

use super::body::truncate;
use super::problem::ApiError;

/// Where the ops listener is bound, when there is one.
#[derive(Debug, Clone, Copy)]
pub struct OpsAddress(pub SocketAddr);

/// Wraps the ops calls: on the public address, when there is an ops address, they are an
/// unknown route.
pub async fn ops_call(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    served_here(true, req, next).await
}

/// Wraps the public calls: on the ops address they are an unknown route.
pub async fn public_call(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    served_here(false, req, next).await
}

/// Answers a call on the listener that does not serve it as an unknown route, so that
/// neither address tells what the other serves.
async fn served_here(
    ops: bool,
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let on_ops = req
        .app_data::<OpsAddress>()
        .map(|address| req.app_config().local_addr() == address.0);
    // Without an ops address, everything is served on the one listener.
    if on_ops.is_some_and(|on_ops| on_ops != ops) {
        let (req, _) = req.into_parts();
        let error = ApiError::RouteNotFound(truncate(req.path(), 100));
        let response = actix_web::ResponseError::error_response(&error);
        return Ok(ServiceResponse::new(req, response).map_into_right_body());
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}
