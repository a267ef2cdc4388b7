//! The caller's address: the socket's peer, or what a configured trusted proxy says it saw.

use std::net::IpAddr;

use actix_web::HttpRequest;

use crate::limits::LimitSettings;

/// The address the abuse limits count a request against. A forwarding header is believed only
/// when the peer is a trusted proxy; it is read from the right, skipping the trusted proxies
/// that appended to it, because everything left of them is whatever the caller wrote.
pub fn source_address(req: &HttpRequest, limits: &LimitSettings) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    let trusted = |ip: &IpAddr| limits.trusted_proxies.iter().any(|net| net.contains(ip));
    if !trusted(&peer) {
        return Some(peer);
    }
    let mut source = peer;
    for value in req.headers().get_all(limits.address_header.as_str()).rev() {
        let Ok(value) = value.to_str() else {
            return Some(source);
        };
        for hop in value.rsplit(',') {
            let Some(ip) = parse_hop(hop) else {
                return Some(source);
            };
            source = ip;
            if !trusted(&ip) {
                return Some(ip);
            }
        }
    }
    Some(source)
}

/// One entry of a forwarding header: an address, possibly with a port or in brackets.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Ok(socket) = hop.parse::<std::net::SocketAddr>() {
        return Some(socket.ip());
    }
    hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn limits(trusted: &[&str]) -> LimitSettings {
        LimitSettings {
            trusted_proxies: trusted.iter().map(|n| n.parse().unwrap()).collect(),
            ..LimitSettings::off()
        }
    }

    fn from(peer: &str, forwarded: Option<&str>) -> TestRequest {
        let req = TestRequest::default().peer_addr(peer.parse().unwrap());
        match forwarded {
            Some(value) => req.insert_header(("x-forwarded-for", value)),
            None => req,
        }
    }

    fn source(req: TestRequest, limits: &LimitSettings) -> String {
        source_address(&req.to_http_request(), limits)
            .unwrap()
            .to_string()
    }

    #[test]
    fn the_header_counts_only_from_a_trusted_proxy() {
        let proxies = limits(&["10.0.0.0/8"]);
        assert_eq!(
            source(from("203.0.113.9:5000", Some("198.51.100.1")), &proxies),
            "203.0.113.9"
        );
        assert_eq!(
            source(from("10.1.2.3:5000", Some("198.51.100.1")), &proxies),
            "198.51.100.1"
        );
        assert_eq!(source(from("10.1.2.3:5000", None), &proxies), "10.1.2.3");
        assert_eq!(
            source(from("10.1.2.3:5000", Some("198.51.100.1")), &limits(&[])),
            "10.1.2.3"
        );
    }

    #[test]
    fn a_forged_left_part_is_ignored_and_proxy_hops_are_skipped() {
        let proxies = limits(&["10.0.0.0/8"]);
        let chain = "1.1.1.1, 198.51.100.1:4711, 10.9.9.9";
        assert_eq!(
            source(from("10.1.2.3:5000", Some(chain)), &proxies),
            "198.51.100.1"
        );
        let v6 = "[2001:db8::1]";
        assert_eq!(
            source(from("10.1.2.3:5000", Some(v6)), &proxies),
            "2001:db8::1"
        );
        let garbage = "1.1.1.1, not-an-address";
        assert_eq!(
            source(from("10.1.2.3:5000", Some(garbage)), &proxies),
            "10.1.2.3"
        );
    }
}
