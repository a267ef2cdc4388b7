//! The cap on concurrent connections per caller address: each connection is counted from
//! accept to close, and a session call on one over its address's cap is answered 429 and the
//! connection closed. Only the session calls, the ones that take bodies from the public, are
//! refused: health checks and scrapes are never caught by a caller's flood.

use std::any::Any;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Extensions, ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::rt::net::TcpStream;
use ipnet::IpNet;

use super::problem::ApiError;

/// Open connections by peer address.
pub struct ConnectionCounts {
    per_address: usize,
    exempt: Vec<IpNet>,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection's place in the count, kept in the connection's data; it leaves the count
/// when the connection closes.
struct Counted {
    counts: Arc<ConnectionCounts>,
    peer: IpAddr,
    over: bool,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

impl ConnectionCounts {
    /// `per_address` 0: no cap. Connections from `exempt` (trusted proxies, which carry many
    /// callers) are not capped.
    pub fn new(per_address: usize, exempt: Vec<IpNet>) -> Arc<Self> {
        Arc::new(Self {
            per_address,
            exempt,
            open: Mutex::default(),
        })
    }

    /// Counts a connection as it is accepted (actix's `on_connect`).
    pub fn on_connect(self: &Arc<Self>, connection: &dyn Any, data: &mut Extensions) {
        if self.per_address == 0 {
            return;
        }
        let Some(peer) = connection
            .downcast_ref::<TcpStream>()
            .and_then(|s| s.peer_addr().ok())
            .map(|a| a.ip())
        else {
            return;
        };
        if self.exempt.iter().any(|net| net.contains(&peer)) {
            return;
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(peer).or_default();
        *n += 1;
        let over = *n > self.per_address;
        drop(open);
        data.insert(Counted {
            counts: self.clone(),
            peer,
            over,
        });
    }
}

/// Answers a session call on a connection over its address's cap with 429, and closes it.
pub async fn admit(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let over = req.path().starts_with("/v1/sessions/")
        && req.request().conn_data::<Counted>().is_some_and(|c| c.over);
    if over {
        let (req, _) = req.into_parts();
        let response = actix_web::ResponseError::error_response(&ApiError::TooManyConnections);
        return Ok(ServiceResponse::new(req, response).map_into_right_body());
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}
