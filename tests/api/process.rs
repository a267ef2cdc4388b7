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

#[test]
fn the_binary_serves_in_memory_says_so_and_stops_cleanly_on_sigterm() {
    let mut child = sessiond()
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .env("SESSIOND_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines, received) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut said_memory = false;
    let port = loop {
        let line = received
            .recv_timeout(Duration::from_secs(20))
            .expect("sessiond logs its start");
        let event: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        let message = event["message"].as_str().unwrap_or_default();
        said_memory |= message.contains("kept in memory");
        if message == "sessiond is listening" {
            break event["port"].as_u64().expect("the port is logged");
        }
    };
    assert!(said_memory, "the in-memory store is announced at start");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let health = runtime.block_on(async {
        reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .unwrap()
            .status()
    });
    assert_eq!(health, 200);

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sessiond did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "a graceful stop exits 0");
}
