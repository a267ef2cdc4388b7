//! Callers that hold connections open as an attacker would: bodies that trickle in after
//! their head (answered 408 at `body_timeout`, the connection closed), and more connections
//! from one address than `max_connections_per_address` (answered 429, closed). The memory
//! such connections cost is measured on the binary in process.rs.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{SESSION_CALLS, Store, TestApp, eventually, new_client, spawn_app};
use crate::spec::spec;

/// One response read off a raw connection: status, content type and body.
pub struct RawResponse {
    pub status: u16,
    pub content_type: String,
    pub connection_close: bool,
    pub body: String,
}

/// Reads one response (its head, then `Content-Length` bytes of body).
pub async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .expect("the response is readable");
        assert!(n > 0, "the connection closed before a whole response");
        received.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&received).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let header = |name: &str| {
            head.lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case(name)
                        .then(|| v.trim().to_owned())
                })
                .unwrap_or_default()
        };
        let length: usize = header("content-length").parse().unwrap_or(0);
        if body.len() >= length {
            return RawResponse {
                status: head[9..12].parse().unwrap(),
                content_type: header("content-type"),
                connection_close: header("connection").eq_ignore_ascii_case("close"),
                body: body[..length].to_owned(),
            };
        }
    }
}

/// Whether the server closed the connection: a read gives end of stream.
async fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

fn address(app: &TestApp) -> String {
    app.address.trim_start_matches("http://").to_owned()
}

/// A call's head declaring a body of `length` bytes, and the first bytes of it.
fn head(path: &str, length: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: sessiond\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n\r\n{{\"cl"
    )
}

#[tokio::test]
async fn every_session_call_answers_a_body_still_arriving_at_body_timeout_with_408_and_closes() {
    let app = spawn_app(Store::Memory, "body_timeout = \"300ms\"").await;
    let mut calls = Vec::new();
    for call in SESSION_CALLS {
        let path = format!("/v1/sessions/{call}");
        let mut stream = TcpStream::connect(address(&app)).await.unwrap();
        stream
            .write_all(head(&path, 1_000_000).as_bytes())
            .await
            .unwrap();
        calls.push((path, stream));
    }
    for (path, stream) in &mut calls {
        let answer = read_response(stream).await;
        spec().check(
            "POST",
            path,
            answer.status,
            &answer.content_type,
            &answer.body,
        );
        assert_eq!(answer.status, 408, "{path}: {}", answer.body);
        assert!(answer.body.contains("urn:sessiond:problem:body-timeout"));
        assert!(answer.connection_close, "{path} says it closes");
        assert!(closed(stream).await, "{path}: the connection is closed");
    }
    // The service is as it was.
    let client = new_client();
    app.tick(serde_json::json!({"client": client}))
        .await
        .expect(200);
}

#[tokio::test]
async fn connections_over_an_addresss_cap_are_refused_and_their_places_come_back() {
    let app = spawn_app(Store::Memory, "max_connections_per_address = 3").await;
    let call = |client: &str| {
        let body = format!("{{\"client\": \"{client}\"}}");
        format!(
            "POST /v1/sessions/tick HTTP/1.1\r\nHost: sessiond\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let client = new_client();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(address(&app)).await.unwrap();
        stream.write_all(call(&client).as_bytes()).await.unwrap();
        assert_eq!(read_response(&mut stream).await.status, 200);
        held.push(stream);
    }
    let mut fourth = TcpStream::connect(address(&app)).await.unwrap();
    fourth.write_all(call(&client).as_bytes()).await.unwrap();
    let refused = read_response(&mut fourth).await;
    spec().check(
        "POST",
        "/v1/sessions/tick",
        429,
        &refused.content_type,
        &refused.body,
    );
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(refused.body.contains("too-many-connections"));
    assert!(
        closed(&mut fourth).await,
        "the refused connection is closed"
    );
    // Health checks are never caught by a caller's connections.
    app.get("/healthz").await.expect(200);

    // Once a held connection closes, its place is free again.
    drop(held.pop());
    let served = eventually(Duration::from_secs(5), || async {
        let mut stream = TcpStream::connect(address(&app)).await.unwrap();
        stream.write_all(call(&client).as_bytes()).await.unwrap();
        read_response(&mut stream).await.status == 200
    })
    .await;
    assert!(served, "a closed connection gives its place back");
}

/// The README's one exception to "every 4xx is problem+json": a request the HTTP parser
/// cannot read (a Content-Length that is no number or is given twice, a head over 128 KiB
/// or with more than 96 headers)
/// gets the parser's bare 400 or 431 and a closed connection. Anything it can read and
/// sessiond refuses is a problem, also when the declared body is too large or the body is
/// chunked.
#[tokio::test]
async fn unreadable_requests_get_a_bare_4xx_and_are_closed_and_readable_ones_a_problem() {
    let app = spawn_app(Store::Memory, "body_limit = 1024").await;
    let tick =
        "POST /v1/sessions/tick HTTP/1.1\r\nHost: sessiond\r\nContent-Type: application/json\r\n";
    let unreadable = [
        (format!("{tick}Content-Length: ten\r\n\r\n"), 400),
        (
            format!("{tick}Content-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}"),
            400,
        ),
        (
            format!(
                "{tick}X-Padding: {}\r\nContent-Length: 2\r\n\r\n{{}}",
                "p".repeat(140_000)
            ),
            431,
        ),
        (
            format!(
                "{tick}{}Content-Length: 2\r\n\r\n{{}}",
                "X-Many: 1\r\n".repeat(100)
            ),
            431,
        ),
    ];
    for (request, status) in unreadable {
        let mut stream = TcpStream::connect(address(&app)).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let answer = read_response(&mut stream).await;
        assert_eq!(
            answer.status,
            status,
            "{:?}",
            &request[..200.min(request.len())]
        );
        assert_eq!(answer.body, "", "the parser's answer has no body");
        assert!(closed(&mut stream).await, "the connection is closed");
    }
    let readable = [
        (
            format!("{tick}Content-Length: 5000\r\n\r\n{{}}"),
            413,
            "payload-too-large",
        ),
        (
            format!("{tick}Transfer-Encoding: chunked\r\n\r\n4\r\n{{\"cl\r\n0\r\n\r\n"),
            400,
            "malformed-json",
        ),
    ];
    for (request, status, kind) in readable {
        let mut stream = TcpStream::connect(address(&app)).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let answer = read_response(&mut stream).await;
        spec().check(
            "POST",
            "/v1/sessions/tick",
            answer.status,
            &answer.content_type,
            &answer.body,
        );
        assert_eq!(answer.status, status, "{}", answer.body);
        assert!(
            answer
                .body
                .contains(&format!("urn:sessiond:problem:{kind}")),
            "{}",
            answer.body
        );
    }
    app.tick(serde_json::json!({"client": new_client()}))
        .await
        .expect(200);
}
