//! Abuse limits: 429 problem+json with Retry-After per client, per source address (the
//! socket's, or a trusted proxy's header), and for too many new clients from one address.

use std::sync::Arc;

use serde_json::{Value, json};
use sessiond::domain::{ManualClock, OsRandom};
use sessiond::startup::Sources;

use crate::helpers::{
    SESSION_CALLS, Store, TestApp, TestResponse, new_client, spawn_app, spawn_app_with,
    spawn_instances,
};
use crate::on_every_store;

on_every_store!(
    a_client_over_its_rate_waits_and_other_clients_do_not,
    an_address_is_the_proxys_word_only_when_the_proxy_is_trusted,
    an_address_creating_too_many_clients_keeps_the_ones_it_has,
    no_batch_and_no_crowd_of_calls_creates_more_new_clients_than_the_cap,
);

/// `limits.scope = "store"`: one client flooding two instances gets its configured rate across
/// both, within 10%, where each instance alone would grant it the rate again. Counted over
/// the flood's steady part (after its first window, which admits a window's worth at once).
async fn a_shared_limit_holds_a_client_to_its_rate_across_two_instances(store: Store) {
    const RATE: f64 = 20.0;
    let config = "[limits]\nscope = \"store\"\nshared_window = \"1s\"\nclient_per_second = 20\n\
                  client_burst = 1\naddress_per_second = 0\nnew_clients_per_address_per_minute = 0\n";
    let apps = spawn_instances(store, config, 2).await;
    let client = new_client();
    let started = std::time::Instant::now();
    let (from, to) = (
        std::time::Duration::from_secs(2),
        std::time::Duration::from_secs(6),
    );
    let floods = (0..8).map(|n| {
        let app = apps[n % 2].clone();
        let body = json!({"client": client});
        async move {
            let mut admitted = 0;
            while started.elapsed() < to {
                let status = app.tick(body.clone()).await.status;
                assert!(status == 200 || status == 429, "{status}");
                let at = started.elapsed();
                if status == 200 && at >= from && at < to {
                    admitted += 1;
                }
            }
            admitted
        }
    });
    let admitted: u32 = futures_util::future::join_all(floods)
        .await
        .into_iter()
        .sum();
    let expected = RATE * (to - from).as_secs_f64();
    println!(
        "{store:?}: {admitted} calls admitted in {:?}, {expected} expected",
        to - from
    );
    assert!(
        (f64::from(admitted) - expected).abs() <= expected * 0.1,
        "{admitted} admitted, {expected} expected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_limit_on_redis() {
    a_shared_limit_holds_a_client_to_its_rate_across_two_instances(Store::Redis).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_limit_on_the_cluster() {
    a_shared_limit_holds_a_client_to_its_rate_across_two_instances(Store::Cluster).await
}

/// The new-client cap is taken at admission, atomically: a batch counts each of its new
/// clients, and concurrent single calls cannot all pass the check before any is counted.
async fn no_batch_and_no_crowd_of_calls_creates_more_new_clients_than_the_cap(store: Store) {
    let clock = Arc::new(ManualClock::starting_at(1_795_000_020_000));
    let sources = Sources {
        ids: Arc::new(OsRandom),
        clock: clock.clone(),
    };
    let config = "[limits]\nclient_per_second = 0\naddress_per_second = 0\n\
                  new_clients_per_address_per_minute = 20\ntrusted_proxies = [\"127.0.0.1\"]\n";
    let app = spawn_app_with(store, config, sources).await;
    let operations: Vec<Value> = (0..100)
        .map(|_| json!({"op": "tick", "client": new_client()}))
        .collect();
    let answer = app
        .request(
            reqwest::Method::POST,
            "/v1/sessions/batch",
            &[("x-forwarded-for", "198.51.100.1")],
            Some(json!({ "operations": operations })),
        )
        .await
        .expect(200);
    let results = answer["results"].as_array().unwrap();
    let created = results.iter().filter(|r| r["created"] == true).count();
    let refused = results.iter().filter(|r| r["status"] == 429).count();
    assert_eq!(
        (created, refused),
        (20, 80),
        "a batch creates at most the cap"
    );
    assert!(
        results
            .iter()
            .filter(|r| r["status"] == 429)
            .all(|r| r["type"] == "urn:sessiond:problem:rate-limited")
    );

    let crowd = (0..200).map(|_| tick_from(&app, "198.51.100.2", json!({"client": new_client()})));
    let answers = futures_util::future::join_all(crowd).await;
    let created = answers.iter().filter(|a| a.status == 200).count();
    for refused in answers.iter().filter(|a| a.status != 200) {
        assert_limited(refused, "new_clients");
    }
    assert_eq!(created, 20, "200 concurrent new clients, 20 admitted");
    assert_eq!(metric(&app, "new_clients").await, "260");
}

#[tokio::test]
async fn every_session_call_refuses_a_body_over_the_limit_and_a_caller_over_its_rate() {
    let app = spawn_app(
        Store::Memory,
        "body_limit = 1024\n[limits]\nclient_per_second = 0.0167\nclient_burst = 1\n",
    )
    .await;
    for call in SESSION_CALLS {
        let path = format!("/v1/sessions/{call}");
        let big = json!({"client": new_client(), "attributes": {"release": "x".repeat(2000)}});
        let answer = app.post(&path, big).await;
        assert_eq!(
            answer.problem(413)["type"],
            "urn:sessiond:problem:payload-too-large"
        );

        let client = new_client();
        let body = match call {
            "report" => json!({"client": client, "errors": 1}),
            "batch" => json!({"operations": [{"op": "tick", "client": client}]}),
            _ => json!({"client": client}),
        };
        let first = app.post(&path, body.clone()).await;
        assert!(matches!(first.status, 200 | 404), "{call}: {}", first.text);
        let second = app.post(&path, body).await;
        if call == "batch" {
            // A batch refuses the limited client's operation in its place.
            assert_eq!(second.expect(200)["results"][0]["status"], 429);
        } else {
            assert_limited(&second, "client");
        }
    }
}

#[tokio::test]
async fn a_batch_over_its_address_allowance_is_refused_whole() {
    let app = spawn_app(
        Store::Memory,
        "[limits]\nclient_per_second = 0\naddress_per_second = 0.0167\naddress_burst = 2\n",
    )
    .await;
    let ops =
        json!([{"op": "tick", "client": new_client()}, {"op": "tick", "client": new_client()}]);
    app.batch(ops.clone()).await.expect(200);
    assert_limited(&app.batch(ops).await, "address");
}

/// Asserts a 429 from the given limit, with a Retry-After of at least a second.
fn assert_limited(answer: &TestResponse, limit: &str) -> Value {
    let problem = answer.problem(429);
    assert_eq!(problem["type"], "urn:sessiond:problem:rate-limited");
    let detail = problem["detail"].as_str().unwrap();
    let expected = match limit {
        "client" => "too many calls for this client",
        "address" => "too many calls from this address",
        _ => "too many new clients from this address",
    };
    assert!(detail.starts_with(expected), "{detail}");
    let retry: u64 = answer.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1, "Retry-After {retry}");
    problem
}

async fn tick_from(app: &TestApp, address: &str, body: Value) -> TestResponse {
    let headers = [("x-forwarded-for", address)];
    app.request(
        reqwest::Method::POST,
        "/v1/sessions/tick",
        &headers,
        Some(body),
    )
    .await
}

async fn metric(app: &TestApp, limit: &str) -> String {
    let text = app.get("/metrics").await.text;
    let name = format!("sessiond_rate_limited_total{{limit=\"{limit}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(name.as_str()))
        .unwrap_or("none")
        .to_owned()
}

async fn a_client_over_its_rate_waits_and_other_clients_do_not(store: Store) {
    // One call a minute after a burst of three: no refill happens during the test.
    let app = spawn_app(
        store,
        "[limits]\nclient_per_second = 0.0167\nclient_burst = 3\naddress_per_second = 0\n",
    )
    .await;
    let client = new_client();
    let first = app.tick(json!({"client": client})).await.expect(200);
    for _ in 0..2 {
        let again = app.tick(json!({"client": client})).await.expect(200);
        assert_eq!(again["session_id"], first["session_id"]);
    }
    assert_limited(&app.tick(json!({"client": client})).await, "client");
    app.tick(json!({"client": new_client()})).await.expect(200);

    // In a batch the limited client's operations are refused one by one; the others go on.
    let other = new_client();
    let answer = app
        .batch(json!([
            {"op": "tick", "client": client},
            {"op": "tick", "client": other},
        ]))
        .await
        .expect(200);
    assert_eq!(answer["results"][0]["status"], 429);
    assert_eq!(
        answer["results"][0]["type"],
        "urn:sessiond:problem:rate-limited"
    );
    assert_eq!(answer["results"][1]["index"], 1);
    assert_eq!(metric(&app, "client").await, "2");
}

async fn an_address_is_the_proxys_word_only_when_the_proxy_is_trusted(store: Store) {
    // One call a minute after a burst of five.
    let limits =
        "[limits]\nclient_per_second = 0\naddress_per_second = 0.0167\naddress_burst = 5\n";
    // The test calls from 127.0.0.1: first as an untrusted peer, whose header is ignored.
    let untrusted = spawn_app(store, limits).await;
    for n in 0..5 {
        let forged = format!("198.51.100.{n}");
        tick_from(&untrusted, &forged, json!({"client": new_client()}))
            .await
            .expect(200);
    }
    let answer = tick_from(&untrusted, "198.51.100.99", json!({"client": new_client()})).await;
    assert_limited(&answer, "address");

    // Behind a trusted proxy each forwarded address has its own allowance, and a batch pays
    // for each of its operations.
    let trusted = spawn_app(
        store,
        &format!("{limits}trusted_proxies = [\"127.0.0.0/8\"]\n"),
    )
    .await;
    let ops: Vec<Value> = (0..4)
        .map(|_| json!({"op": "tick", "client": new_client()}))
        .collect();
    let headers = [("x-forwarded-for", "203.0.113.1")];
    let batch = json!({"operations": ops});
    let answer = trusted
        .request(
            reqwest::Method::POST,
            "/v1/sessions/batch",
            &headers,
            Some(batch.clone()),
        )
        .await;
    answer.expect(200);
    tick_from(&trusted, "203.0.113.1", json!({"client": new_client()}))
        .await
        .expect(200);
    let answer = trusted
        .request(
            reqwest::Method::POST,
            "/v1/sessions/batch",
            &headers,
            Some(batch),
        )
        .await;
    assert_limited(&answer, "address");
    // A forged entry left of the proxy's own does not buy a fresh allowance.
    let forged = "10.9.9.9, 203.0.113.1";
    assert_limited(
        &tick_from(&trusted, forged, json!({"client": new_client()})).await,
        "address",
    );
    tick_from(&trusted, "203.0.113.2", json!({"client": new_client()}))
        .await
        .expect(200);
    assert_eq!(metric(&trusted, "address").await, "2");
}

async fn an_address_creating_too_many_clients_keeps_the_ones_it_has(store: Store) {
    // The cap counts per minute of the service's clock: 30 s into a minute, held still.
    let clock = Arc::new(ManualClock::starting_at(1_795_000_020_000));
    let sources = Sources {
        ids: Arc::new(OsRandom),
        clock: clock.clone(),
    };
    let config = "[limits]\nclient_per_second = 0\naddress_per_second = 0\n\
                  new_clients_per_address_per_minute = 2\ntrusted_proxies = [\"127.0.0.1\"]\n";
    let app = spawn_app_with(store, config, sources).await;
    let (a, b) = (new_client(), new_client());
    for client in [&a, &b] {
        let session = tick_from(&app, "203.0.113.5", json!({"client": client})).await;
        assert_eq!(session.expect(200)["reason"], "new_client");
    }
    let refused = tick_from(&app, "203.0.113.5", json!({"client": new_client()})).await;
    assert_limited(&refused, "new_clients");
    let minted = tick_from(&app, "203.0.113.5", json!({})).await;
    assert_limited(&minted, "new_clients");
    // The clients it brought keep their sessions; other addresses are not affected.
    let again = tick_from(&app, "203.0.113.5", json!({"client": a})).await;
    assert_eq!(again.expect(200)["index"], 1);
    tick_from(&app, "203.0.113.6", json!({"client": new_client()}))
        .await
        .expect(200);
    // A new minute, a new allowance.
    clock.advance(60_000);
    tick_from(&app, "203.0.113.5", json!({"client": new_client()}))
        .await
        .expect(200);
    assert_eq!(metric(&app, "new_clients").await, "2");
}
