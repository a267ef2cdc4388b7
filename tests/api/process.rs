//! The sessiond binary as operators run it: configuration errors stop it with the key named,
//! and it serves on the in-memory store, saying so, until SIGTERM ends it cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

fn sessiond() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sessiond"));
    command
        .env_remove("SESSIOND_REDIS_URL")
        .env_remove("SESSIOND_CONFIG")
        .env_remove("SESSIOND_SECRET");
    command
}

#[test]
fn a_bad_configuration_stops_the_process_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sessiond.toml");
    std::fs::write(&file, "[namespaces.ios]\nmode = \"background\"\n").unwrap();
    let output = sessiond().arg("--config").arg(&file).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("namespaces.ios.max_duration"), "{stderr}");

    let output = sessiond()
        .args(["--redis-url", "redis://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("secret"));
}

/// A sessiond process logging JSON, its log lines read as they come.
struct Running {
    child: std::process::Child,
    lines: mpsc::Receiver<Value>,
    port: u16,
}

impl Running {
    /// Starts the binary with these arguments and waits until it says it listens; `before`
    /// collects the log lines up to then.
    fn start(args: &[&str], env: &[(&str, &str)], before: &mut Vec<Value>) -> Self {
        let mut child = sessiond()
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(args)
            .envs(env.iter().copied())
            .env("SESSIOND_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (send, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let event: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
                if send.send(event).is_err() {
                    break;
                }
            }
        });
        let port = loop {
            let event = lines
                .recv_timeout(Duration::from_secs(20))
                .expect("sessiond logs its start");
            let listening = event["message"] == "sessiond is listening";
            let port = event["port"].as_u64();
            before.push(event);
            if listening {
                break port.expect("the port is logged") as u16;
            }
        };
        Self { child, lines, port }
    }

    /// The next log line that satisfies `wanted`, within 20 s.
    fn log_line(&self, wanted: impl Fn(&Value) -> bool) -> Value {
        loop {
            let event = self
                .lines
                .recv_timeout(Duration::from_secs(20))
                .expect("the log line comes");
            if wanted(&event) {
                return event;
            }
        }
    }

    fn terminate(&self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
    }

    /// Waits for the process to end; its exit code.
    fn exit_code(mut self) -> Option<i32> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sessiond did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Sends raw bytes on a connection and reads until the response to them is complete
/// (`Content-Length`), returning its head and body.
fn exchange(stream: &mut std::net::TcpStream, bytes: &[u8]) -> (String, String) {
    use std::io::{Read, Write};
    stream.write_all(bytes).unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the connection closed before the response was complete"
        );
        received.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return (head.to_owned(), body.to_owned());
            }
        }
    }
}

#[test]
fn ops_listen_serves_metrics_on_its_own_address_and_says_where() {
    let mut started = Vec::new();
    let app = Running::start(&["--ops-listen", "127.0.0.1:0"], &[], &mut started);
    let said = started
        .iter()
        .find(|e| e["message"] == "/metrics and the admin calls are served on the ops address only")
        .expect("the start log names the ops address");
    let ops = said["ops"].as_str().unwrap().to_owned();
    let status = |address: String| {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        let (head, _) = exchange(
            &mut stream,
            b"GET /metrics HTTP/1.1\r\nHost: sessiond\r\nConnection: close\r\n\r\n",
        );
        head[9..12].to_owned()
    };
    assert_eq!(status(ops), "200");
    assert_eq!(status(format!("127.0.0.1:{}", app.port)), "404");
    app.terminate();
    assert_eq!(app.exit_code(), Some(0));
}

#[test]
fn logs_are_json_and_carry_the_request_id_each_response_echoes() {
    let mut started = Vec::new();
    // A Redis nobody listens on: the call fails, and the warning is logged within the request.
    let app = Running::start(
        &["--redis-url", "redis://127.0.0.1:1"],
        &[("SESSIOND_SECRET", "process-test-secret-0123")],
        &mut started,
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{}/v1/sessions/tick", app.port);
    let (echoed, generated) = runtime.block_on(async {
        let http = reqwest::Client::new();
        let body = r#"{"client": "process-test-client-01"}"#;
        let given = http
            .post(&url)
            .header("x-request-id", "checkout-7f3a.42")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(given.status(), 503);
        let unusable = http
            .post(&url)
            .header("x-request-id", "has spaces")
            .body(body)
            .send()
            .await
            .unwrap();
        let header =
            |r: &reqwest::Response| r.headers()["x-request-id"].to_str().unwrap().to_owned();
        (header(&given), header(&unusable))
    });
    assert_eq!(echoed, "checkout-7f3a.42");
    assert!(
        generated.len() == 24 && generated.bytes().all(|b| b.is_ascii_hexdigit()),
        "{generated}"
    );
    let warning = app.log_line(|e| e["message"] == "session store unavailable");
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["request_id"], "checkout-7f3a.42", "{warning}");
    let second = app.log_line(|e| e["message"] == "session store unavailable");
    assert_eq!(second["request_id"], generated.as_str(), "{second}");
    app.terminate();
    assert_eq!(app.exit_code(), Some(0));
}

#[test]
fn sigterm_stops_accepting_finishes_the_call_in_flight_and_exits_0() {
    let mut started = Vec::new();
    let app = Running::start(&[], &[], &mut started);
    let said_memory = started.iter().any(|e| {
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("kept in memory")
    });
    assert!(said_memory, "the in-memory store is announced at start");

    // A connection the server has surely accepted: it answered a first call on it.
    let address = format!("127.0.0.1:{}", app.port);
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let (head, _) = exchange(
        &mut stream,
        b"GET /healthz HTTP/1.1\r\nHost: sessiond\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // A call in flight: its head read by the server (it answered 100 Continue) and half its
    // body sent when SIGTERM arrives.
    let body = br#"{"client": "in-flight-at-sigterm-01"}"#;
    let head = format!(
        "POST /v1/sessions/tick HTTP/1.1\r\nHost: sessiond\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    let (first_half, second_half) = body.split_at(body.len() / 2);
    {
        use std::io::{Read, Write};
        stream.write_all(head.as_bytes()).unwrap();
        let mut interim = Vec::new();
        let mut byte = [0u8; 1];
        while !interim.ends_with(b"\r\n\r\n") {
            assert_eq!(
                stream.read(&mut byte).unwrap(),
                1,
                "closed before 100 Continue"
            );
            interim.push(byte[0]);
        }
        let interim = String::from_utf8_lossy(&interim);
        assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
        stream.write_all(first_half).unwrap();
    }
    app.terminate();
    app.log_line(|e| {
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("graceful shutdown")
    });
    // Stopped accepting: the listener closes, and new connections are refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(&address).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "new connections were still taken 5 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The call in flight is finished and answered.
    let (head, answer) = exchange(&mut stream, second_half);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let session: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(session["created"], true);
    drop(stream);
    assert_eq!(app.exit_code(), Some(0), "a graceful stop exits 0");
}

/// The resident memory of a process, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS is reported");
    kb * 1024
}

/// 2,000 connections each declare a body of a megabyte and send a few bytes of it. The body
/// is read as it arrives, so they pin no memory they did not send; a normal call meanwhile is
/// answered; and at `body_timeout` every one of them is answered 408 and closed.
#[test]
fn two_thousand_slow_bodies_keep_memory_bounded_and_are_closed_at_the_body_timeout() {
    use std::io::{Read, Write};
    const SLOW: usize = 2_000;
    // Both ends hold 2,000 sockets.
    rlimit::increase_nofile_limit(3 * SLOW as u64).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sessiond.toml");
    std::fs::write(
        &file,
        "body_timeout = \"4s\"\nmax_connections_per_address = 0\n",
    )
    .unwrap();
    let mut started = Vec::new();
    let app = Running::start(&["--config", file.to_str().unwrap()], &[], &mut started);
    let pid = app.child.id();
    let address = format!("127.0.0.1:{}", app.port);
    let before = rss_bytes(pid);
    let head = "POST /v1/sessions/tick HTTP/1.1\r\nHost: sessiond\r\n\
                Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{\"cl";
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        slow.push(stream);
    }
    // A normal call, on a connection of its own, while they wait.
    let sent = std::time::Instant::now();
    let mut normal = std::net::TcpStream::connect(&address).unwrap();
    let body = r#"{"client": "slow-bodies-test-01"}"#;
    let (head_back, _) = exchange(
        &mut normal,
        format!(
            "POST /v1/sessions/tick HTTP/1.1\r\nHost: sessiond\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let normal_took = sent.elapsed();
    assert!(head_back.starts_with("HTTP/1.1 200"), "{head_back}");
    // The most memory the process held while the slow bodies were open.
    let mut peak = rss_bytes(pid);
    let mut answered = 0;
    for stream in &mut slow {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        peak = peak.max(rss_bytes(pid));
        let response = String::from_utf8_lossy(&response);
        assert!(response.starts_with("HTTP/1.1 408"), "{response}");
        assert!(response.contains("application/problem+json"), "{response}");
        answered += 1;
    }
    eprintln!(
        "{SLOW} slow bodies: RSS {} MB before, {} MB at most; a normal call meanwhile took {normal_took:?}",
        before / 1_000_000,
        peak / 1_000_000
    );
    assert_eq!(
        answered, SLOW,
        "every slow body was answered 408 and closed"
    );
    assert!(peak < 150_000_000, "RSS reached {} MB", peak / 1_000_000);
    app.terminate();
    assert_eq!(app.exit_code(), Some(0));
}
