//! Guarantee 6: with the store gone, calls get 503 with Retry-After within the store
//! timeout, and when it returns the service recovers by itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{TestApp, eventually, new_client, spawn_on_redis};
use crate::redis_server::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redis_gives_bounded_503s_and_a_restarted_one_is_used_again() {
    let (redis, app) = app_on_its_own_redis("", Redis::Up).await;
    let client = new_client();
    app.tick(json!({"client": client})).await.expect(200);
    app.get("/readyz").await.expect(200);

    redis.stop();
    for _ in 0..3 {
        let started = Instant::now();
        let answer = app.tick(json!({"client": client})).await;
        let problem = answer.problem(503);
        assert_eq!(problem["type"], "urn:sessiond:problem:store-unavailable");
        assert_eq!(answer.header("retry-after"), Some("1"));
        // Bounded by the store timeout, never a hang (generous for a loaded machine).
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
        assert!(
            !answer.text.contains("redis"),
            "store details stay in the log: {}",
            answer.text
        );
    }
    app.get("/readyz").await.problem(503);
    let metrics = app.get("/metrics").await;
    assert!(
        metrics.text.contains("sessiond_store_up 0"),
        "{}",
        metrics.text
    );

    redis.restart();
    let recovered = tick_until_served(&app, &client).await;
    // The restarted Redis kept nothing (no persistence here), so this is a new first session.
    assert_eq!(recovered["index"], 1);
    ready_again(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessiond_starts_before_redis_and_serves_once_it_is_up() {
    let (redis, app) = app_on_its_own_redis("", Redis::Down).await;
    let client = new_client();
    app.get("/readyz").await.problem(503);
    app.tick(json!({"client": client})).await.problem(503);
    redis.restart();
    let served = tick_until_served(&app, &client).await;
    assert_eq!(served["created"], true);
    ready_again(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_that_needs_the_store_answers_503_while_it_is_down() {
    let (redis, app) = app_on_its_own_redis("", Redis::Up).await;
    let client = new_client();
    let session = app.tick(json!({"client": client})).await.expect(200);
    let id = session["session_id"].as_str().unwrap().to_owned();
    redis.stop();
    let session_calls = [
        ("current", json!({"client": client})),
        ("tick", json!({"client": client})),
        ("foreground", json!({"client": client})),
        ("background", json!({"client": client})),
        ("end", json!({"client": client})),
        ("report", json!({"client": client, "errors": 1})),
    ];
    for (call, body) in session_calls {
        let answer = app.post(&format!("/v1/sessions/{call}"), body).await;
        assert_eq!(
            answer.problem(503)["type"],
            "urn:sessiond:problem:store-unavailable"
        );
        assert_eq!(answer.header("retry-after"), Some("1"), "{call}");
    }
    for path in [
        format!("/v1/sessions/{id}"),
        "/v1/events".into(),
        "/v1/stats".into(),
    ] {
        app.get(&path).await.problem(503);
    }
    // In a batch each operation answers for itself, inside a 200.
    let batch = app
        .batch(json!([{"op": "tick", "client": client}]))
        .await
        .expect(200);
    assert_eq!(batch["results"][0]["status"], 503);
}

enum Redis {
    Up,
    Down,
}

const PROVISIONAL_WEB: &str = "[namespaces.web]\non_store_error = \"provisional\"";

/// An app with a short store timeout on a redis-server of its own, which the test may stop;
/// with `Redis::Down` the server is stopped before the app starts.
async fn app_on_its_own_redis(config: &str, at_start: Redis) -> (Arc<RedisServer>, TestApp) {
    let redis = Arc::new(RedisServer::start());
    if let Redis::Down = at_start {
        redis.stop();
    }
    let config = format!("store_timeout = \"300ms\"\n{config}");
    let app = spawn_on_redis(&config, redis.clone()).await;
    (redis, app)
}

/// Ticks until the service answers 200 (only 503 is acceptable meanwhile), within 10 s.
/// Waits for /readyz to answer 200 after Redis came back. Each worker has its own
/// connection, which comes back on its own within its reconnect backoff: one call served
/// does not mean the connection a readiness probe takes is back yet.
async fn ready_again(app: &TestApp) {
    let ready = eventually(Duration::from_secs(10), || async {
        app.get("/readyz").await.status == 200
    })
    .await;
    assert!(ready, "not ready within 10 s of Redis returning");
}

async fn tick_until_served(app: &TestApp, client: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = app.tick(json!({"client": client})).await;
        if answer.status == 200 {
            return answer.json();
        }
        answer.problem(503);
        assert!(
            Instant::now() < deadline,
            "no recovery within 10 s of Redis returning"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provisional_namespace_keeps_answering_while_redis_is_down() {
    let (redis, app) = app_on_its_own_redis(PROVISIONAL_WEB, Redis::Up).await;
    let client = new_client();
    let body = json!({"namespace": "web", "client": client, "attributes": {"release": "2.1"}});
    let stored = app.tick(body.clone()).await.expect(200);
    assert!(stored.get("provisional").is_none());

    redis.stop();
    let first = app.tick(body.clone()).await.expect(200);
    assert_eq!(first["provisional"], true);
    assert_eq!(first["index"], 0);
    assert_eq!(first["attributes"]["release"], "2.1");
    assert_ne!(first["session_id"], stored["session_id"]);
    let second = app.current(body.clone()).await.expect(200);
    if second["started_at"] == first["started_at"] {
        assert_eq!(
            second["session_id"], first["session_id"],
            "one provisional id per client and window"
        );
    } else {
        // The two calls straddled a window boundary: the next window starts where the first ended.
        assert_eq!(second["started_at"], first["expires_at"]);
        assert_ne!(second["session_id"], first["session_id"]);
    }
    let other = app
        .tick(json!({"namespace": "web", "client": new_client()}))
        .await
        .expect(200);
    assert_ne!(other["session_id"], first["session_id"]);
    // Calls that must not start a session, and namespaces that reject, still get 503.
    app.end(body.clone()).await.problem(503);
    app.tick(json!({"client": client})).await.problem(503);
    let metrics = app.get("/metrics").await;
    assert!(
        metrics
            .text
            .contains("sessiond_provisional_sessions_total{namespace=\"web\"} 3"),
        "{}",
        metrics.text
    );

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let real = loop {
        let answer = app.tick(body.clone()).await.expect(200);
        if answer.get("provisional").is_none() {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "still provisional 10 s after Redis returned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        real["index"], 1,
        "the restarted Redis kept nothing, and provisional ids were never stored"
    );
}

/// What one client saw during the provisional load test.
#[derive(Default)]
struct Seen {
    statuses: Vec<u16>,
    /// Each answer: (provisional, session_id, started_at).
    answers: Vec<(bool, String, String)>,
}

impl Seen {
    fn count(&self, provisional: bool) -> usize {
        self.answers.iter().filter(|a| a.0 == provisional).count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provisional_namespace_keeps_answering_under_load_while_redis_stops_and_returns() {
    let (redis, app) = app_on_its_own_redis(PROVISIONAL_WEB, Redis::Up).await;
    let app = Arc::new(app);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen: Vec<Arc<std::sync::Mutex<Seen>>> = (0..12).map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    for record in &seen {
        let (app, stop, record) = (app.clone(), stop.clone(), record.clone());
        tasks.push(tokio::spawn(async move {
            let body = json!({"namespace": "web", "client": new_client()});
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let answer = app.tick(body.clone()).await;
                let mut record = record.lock().unwrap();
                record.statuses.push(answer.status);
                if answer.status == 200 {
                    let s = answer.json();
                    record.answers.push((
                        s.get("provisional").is_some(),
                        s["session_id"].as_str().unwrap().to_owned(),
                        s["started_at"].as_str().unwrap().to_owned(),
                    ));
                }
            }
        }));
    }
    // Until every client has seen more than `floor[i]` answers of a kind, within 15 s.
    let all_past = |provisional: bool, floor: Vec<usize>| {
        let seen = seen.clone();
        async move {
            let past = || {
                let done = seen
                    .iter()
                    .zip(&floor)
                    .all(|(s, n)| s.lock().unwrap().count(provisional) > *n);
                std::future::ready(done)
            };
            assert!(
                eventually(Duration::from_secs(15), past).await,
                "clients waited 15 s"
            );
        }
    };
    let counts = |provisional: bool| -> Vec<usize> {
        seen.iter()
            .map(|s| s.lock().unwrap().count(provisional))
            .collect()
    };
    all_past(false, vec![2; seen.len()]).await;
    redis.stop();
    all_past(true, vec![2; seen.len()]).await;
    redis.restart();
    all_past(false, counts(false)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    for record in &seen {
        let record = record.lock().unwrap();
        assert!(
            record.statuses.iter().all(|s| *s == 200),
            "a provisional namespace answered every call: {:?}",
            record.statuses
        );
        // Within one window, one provisional id per client; stored ids are never provisional.
        let mut by_window = std::collections::HashMap::new();
        for (provisional, id, started) in &record.answers {
            if *provisional {
                let first = by_window
                    .entry(started.clone())
                    .or_insert_with(|| id.clone());
                assert_eq!(first, id, "one provisional id per client and window");
            }
        }
        let stored: std::collections::HashSet<_> = record
            .answers
            .iter()
            .filter(|a| !a.0)
            .map(|a| &a.1)
            .collect();
        assert!(by_window.values().all(|id| !stored.contains(id)));
    }
}
