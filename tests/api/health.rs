//! Session health (CONTRACT section 8), on both stores: reports, exactly-once finalization by
//! every path (rotation, end, the sweeper), lifecycle events, stats and the admin token.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_TOKEN, SWEEP_BOUND, Store, TestApp, eventually, millis, new_client, spawn_app,
    spawn_app_without_admin_token, spawn_instances, spawn_on_redis, spawn_with_ops_address,
    wait_past, wait_until,
};
use crate::on_every_store;
use crate::redis_server;

/// A configuration of its own: short timeouts, a quick sweeper, and a key prefix no other
/// test shares, so counts on the shared redis-server are this test's alone.
fn config(extra: &str) -> String {
    format!(
        "key_prefix = \"h{}\"\nsweep_interval = \"100ms\"\n{extra}\n[namespaces.app]\nidle_timeout = \"1s\"\n",
        &new_client()[..12]
    )
}

/// The admin calls, one path each, for a session the app answered.
fn admin_paths(session: &Value) -> [String; 3] {
    [
        format!("/v1/sessions/{}", id(session)),
        "/v1/events".to_owned(),
        "/v1/stats?namespace=app".to_owned(),
    ]
}

/// Every event the app's log holds, page by page.
async fn all_events(app: &TestApp) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(cursor) => format!("/v1/events?limit=7&after={cursor}"),
            None => "/v1/events?limit=7".to_owned(),
        };
        let page = app.get(&path).await.expect(200);
        let batch = page["events"].as_array().unwrap().clone();
        if batch.is_empty() {
            assert_eq!(page["next"], after.map_or(Value::Null, Value::from));
            return events;
        }
        after = page["next"].as_str().map(str::to_owned);
        assert_eq!(after.as_deref(), batch.last().unwrap()["id"].as_str());
        events.extend(batch);
    }
}

/// The events of some sessions, as (session, type, status) in log order.
fn sequence<'a>(events: &'a [Value], sessions: &[&str]) -> Vec<(&'a str, &'a str, &'a str)> {
    events
        .iter()
        .filter(|e| sessions.contains(&e["session_id"].as_str().unwrap()))
        .map(|e| {
            (
                e["session_id"].as_str().unwrap(),
                e["type"].as_str().unwrap(),
                e["status"].as_str().unwrap(),
            )
        })
        .collect()
}

fn id(session: &Value) -> &str {
    session["session_id"].as_str().unwrap()
}

/// Stats of the app namespace for one release, over the hours around now.
async fn stats_of(app: &TestApp, release: &str) -> Value {
    stats_where(app, &format!("release={release}")).await
}

/// Stats of the app namespace narrowed by `filter` (`release=R`, `environment=E`, or both
/// joined by `&`), over the hours around now.
async fn stats_where(app: &TestApp, filter: &str) -> Value {
    let now = time::OffsetDateTime::now_utc();
    let fmt = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let path = format!(
        "/v1/stats?namespace=app&{filter}&from={}&to={}",
        fmt(now - time::Duration::hours(1)),
        fmt(now + time::Duration::hours(1))
    );
    app.get(&path).await.expect(200)
}

/// Waits until the log holds an `ended` event for each of these sessions; returns the log.
async fn until_ended(app: &TestApp, sessions: &[&str]) -> Vec<Value> {
    let all_ended = |events: &[Value]| {
        sessions.iter().all(|s| {
            events
                .iter()
                .any(|e| e["session_id"] == *s && e["type"] == "ended")
        })
    };
    let finalized = eventually(SWEEP_BOUND * 3, || async {
        all_ended(&all_events(app).await)
    })
    .await;
    let events = all_events(app).await;
    assert!(finalized, "every session was finalized: {events:?}");
    events
}

on_every_store!(
    a_scripted_day_gives_exact_stats_and_events,
    late_user_binding_adds_a_user_and_not_a_session,
    a_report_for_an_unknown_or_expired_session_is_404_and_changes_nothing,
    reports_are_batch_operations_too,
    admin_calls_require_the_admin_token_when_one_is_set,
    finalizations_are_counted_by_final_status,
    only_the_owners_key_or_the_admin_token_reports_on_a_session,
    admin_calls_are_off_without_an_admin_token,
    a_retried_report_applies_once_through_any_instance,
    a_day_counts_its_capped_number_of_releases_and_environments_and_the_rest_as_other,
);

/// A day's stats count at most `stats_max_releases` distinct releases and
/// `stats_max_environments` environments of a namespace (per client bucket on Redis: one
/// client here). Sessions of any others count as `other`, from start to finalization, and
/// `sessiond_stats_other_sessions_total` counts them.
async fn a_day_counts_its_capped_number_of_releases_and_environments_and_the_rest_as_other(
    store: Store,
) {
    let app = spawn_app(
        store,
        &config("stats_max_releases = 2\nstats_max_environments = 1"),
    )
    .await;
    let client = new_client();
    let tag = &new_client()[..8];
    let releases: Vec<String> = (1..=4).map(|n| format!("{tag}-{n}")).collect();
    let environments = ["production", "production", "production", "staging"];
    for (release, environment) in releases.iter().zip(environments) {
        let attributes = json!({"release": release, "environment": environment});
        app.tick(json!({"namespace": "app", "client": client, "attributes": attributes}))
            .await
            .expect(200);
        app.end(json!({"namespace": "app", "client": client}))
            .await
            .expect(200);
    }
    for (release, sessions) in [(&releases[0], 1), (&releases[1], 1), (&releases[2], 0)] {
        let stats = stats_of(&app, release).await;
        assert_eq!(stats["sessions"], sessions, "{release}: {stats}");
    }
    let other = stats_of(&app, "other").await;
    assert_eq!(
        (other["sessions"].as_u64(), other["exited"].as_u64()),
        (Some(2), Some(2)),
        "{other}"
    );
    let production = stats_where(&app, "environment=production").await;
    assert_eq!(production["sessions"], 3, "{production}");
    let staging = stats_where(&app, "environment=staging").await;
    assert_eq!(staging["sessions"], 0, "{staging}");
    let metrics = app.get("/metrics").await.text;
    assert!(
        metrics.contains("sessiond_stats_other_sessions_total{namespace=\"app\"} 2"),
        "{metrics}"
    );
}

/// CONTRACT 8: the same `report_id` on a session applies once, however often and through
/// however many instances it is sent, concurrently or after the session ended; a repeat
/// answers as the first did and changes no counter or event.
async fn a_retried_report_applies_once_through_any_instance(store: Store) {
    let apps = spawn_instances(store, &config(""), 2).await;
    let client = new_client();
    let release = format!("retry-{}", &new_client()[..8]);
    let session = apps[0]
        .tick(json!({"namespace": "app", "client": client, "attributes": {"release": release}}))
        .await
        .expect(200);
    let report = |report_id: &str, extra: Value| {
        let mut body = json!({"namespace": "app", "client": client, "session_id": id(&session),
                              "report_id": report_id});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let first = report("first-report-0001", json!({"errors": 3}));
    // Twenty tries of one report at once, through both instances.
    let tries = (0..20).map(|n| apps[n % 2].post("/v1/sessions/report", first.clone()));
    for answer in futures_util::future::join_all(tries).await {
        let answer = answer.expect(200);
        assert_eq!(
            (answer["errors"].as_u64(), answer["status"].as_str()),
            (Some(3), Some("errored"))
        );
    }
    // In a batch, a retry beside a new report: only the new one applies.
    let second = report("second-report-002", json!({"crashed": true}));
    let mut ops = [first.clone(), second.clone()];
    for op in &mut ops {
        op["op"] = json!("report");
    }
    let batch = apps[1].batch(json!(ops)).await.expect(200);
    let results = batch["results"].as_array().unwrap();
    assert_eq!(results[0]["errors"], 3, "{batch}");
    assert_eq!(results[0]["status"], "errored", "{batch}");
    assert_eq!(results[1]["status"], "crashed", "{batch}");
    // Ended, then sent again (a crash report retried on the next launch): nothing moves.
    let ended = apps[0]
        .end(json!({"namespace": "app", "client": client}))
        .await
        .expect(200);
    assert_eq!(ended["status"], "crashed");
    for (n, retry) in [&first, &second, &first].into_iter().enumerate() {
        let answer = apps[n % 2]
            .post("/v1/sessions/report", retry.clone())
            .await
            .expect(200);
        assert_eq!(
            (answer["errors"].as_u64(), answer["status"].as_str()),
            (Some(3), Some("crashed"))
        );
    }
    // A new report on the ended session amends it once, however often it is sent.
    let late = report("late-report-00003", json!({"errors": 1}));
    for app in [&apps[0], &apps[1], &apps[0]] {
        let answer = app
            .post("/v1/sessions/report", late.clone())
            .await
            .expect(200);
        assert_eq!(answer["errors"], 4);
    }
    let events = all_events(&apps[0]).await;
    assert_eq!(
        sequence(&events, &[id(&session)]),
        [
            (id(&session), "started", "ok"),
            (id(&session), "ended", "crashed"),
            (id(&session), "amended", "crashed"),
        ]
    );
    let stats = stats_of(&apps[1], &release).await;
    assert_eq!(
        (stats["sessions"].as_u64(), stats["crashed"].as_u64()),
        (Some(1), Some(1)),
        "{stats}"
    );
    assert_eq!(stats["errored"], 0, "{stats}");
}

/// CONTRACT 8: with an ops address (`--ops-listen`), /metrics and the admin calls answer
/// there only; the public address answers them as unknown routes, and the session calls
/// and the demo are the public address's alone. Health checks answer on both.
#[tokio::test]
async fn with_an_ops_address_metrics_and_admin_calls_are_served_there_only() {
    let (public, ops) = spawn_with_ops_address("demo = true\n[namespaces.app]\n").await;
    let session = public
        .tick(json!({"namespace": "app", "client": new_client(), "attributes": {"user_id": "u-1"}}))
        .await
        .expect(200);
    let mut ops_paths = admin_paths(&session).to_vec();
    ops_paths.push("/metrics".to_owned());
    for path in &ops_paths {
        let hidden = public.get(path).await;
        assert_eq!(
            hidden.problem(404)["type"],
            "urn:sessiond:problem:not-found",
            "{path}"
        );
        assert!(!hidden.text.contains("u-1"), "{path}");
        assert_eq!(ops.get(path).await.status, 200, "{path}");
    }
    assert!(
        ops.get("/metrics")
            .await
            .text
            .contains("sessiond_http_request_duration")
    );
    let ops_tick = ops
        .tick(json!({"namespace": "app", "client": new_client()}))
        .await;
    assert_eq!(
        ops_tick.problem(404)["type"],
        "urn:sessiond:problem:not-found"
    );
    ops.get("/demo").await.problem(404);
    for path in ["/healthz", "/readyz", "/openapi.yaml", "/demo"] {
        assert_eq!(public.get(path).await.status, 200, "{path}");
    }
    for path in ["/healthz", "/readyz", "/openapi.yaml"] {
        assert_eq!(ops.get(path).await.status, 200, "{path}");
    }
}

/// CONTRACT 8: without a configured admin token, lookup, events and stats are off: 404 as an
/// unknown route, whatever the caller sends, so a fresh deployment serves no one's data.
async fn admin_calls_are_off_without_an_admin_token(store: Store) {
    let app = spawn_app_without_admin_token(store, &config("")).await;
    let session = app
        .tick(json!({"namespace": "app", "client": new_client(), "attributes": {"user_id": "u-1"}}))
        .await
        .expect(200);
    for path in admin_paths(&session) {
        for auth in [None, Some("Bearer anything-at-all-0123")] {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| ("authorization", a)).into_iter().collect();
            let off = app
                .request(reqwest::Method::GET, &path, &headers, None)
                .await;
            assert_eq!(
                off.problem(404)["type"],
                "urn:sessiond:problem:not-found",
                "{path}"
            );
            assert!(!off.text.contains("u-1"));
        }
    }
    // A report by session id alone has no admin to come from either.
    app.post(
        "/v1/sessions/report",
        json!({"session_id": id(&session), "crashed": true}),
    )
    .await
    .problem(404);
}

/// CONTRACT 8: a report by session id must carry the key of the client that owns it, or the
/// admin token. Anyone else gets the 404 of an unknown id, changes nothing, is charged to
/// their own allowance, and never sees the session.
async fn only_the_owners_key_or_the_admin_token_reports_on_a_session(store: Store) {
    // The harness's admin token (helpers::ADMIN_TOKEN) is configured, since this names none.
    let app = spawn_app(
        store,
        &config(
            "[limits]\nclient_per_second = 0.01\nclient_burst = 2\n\
             address_per_second = 0\nnew_clients_per_address_per_minute = 0",
        ),
    )
    .await;
    let (victim, stranger) = (new_client(), new_client());
    let tick = json!({"namespace": "app", "client": victim, "attributes": {"user_id": "u-victim"}});
    let session = app.tick(tick.clone()).await.expect(200);
    let events_before = all_events(&app).await;
    let attacks = [
        json!({"session_id": id(&session), "crashed": true}),
        json!({"namespace": "app", "session_id": id(&session), "errors": 1000}),
        json!({"namespace": "app", "client": stranger, "session_id": id(&session), "errors": 5}),
    ];
    for attack in &attacks {
        // The same call naming an id no session has: the answers must not tell them apart.
        let mut twin = attack.clone();
        twin["session_id"] = json!("00000000000000000000");
        let unknown = app.post("/v1/sessions/report", twin).await.problem(404);
        let refused = app
            .post("/v1/sessions/report", attack.clone())
            .await
            .problem(404);
        assert_eq!(refused["type"], unknown["type"], "{attack}");
        assert_eq!(refused["title"], unknown["title"], "{attack}");
        assert!(!refused.to_string().contains("u-victim"));
        let batch = app
            .batch(json!([{
                "op": "report",
                "session_id": id(&session),
                "crashed": true
            }]))
            .await
            .expect(200);
        assert_eq!(batch["results"][0]["status"], 404, "{batch}");
    }
    assert_eq!(all_events(&app).await, events_before, "nothing was written");
    // The stranger's reports were not charged to the victim, whose next call is served and
    // finds its session as it was.
    let again = app.tick(tick).await.expect(200);
    assert_eq!(again["session_id"], session["session_id"]);
    assert_eq!(again["status"], "ok");
    assert_eq!(again["errors"], 0);
    // A report over the bound of one report is refused whole.
    let over = json!({"namespace": "app", "client": victim, "errors": 1001});
    assert_eq!(
        app.post("/v1/sessions/report", over).await.problem(400)["field"],
        "errors"
    );
    // The admin token may report by id alone; the answer shows none of the owner's attributes.
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let by_admin = app
        .request(
            reqwest::Method::POST,
            "/v1/sessions/report",
            &[("authorization", &bearer)],
            Some(json!({"session_id": id(&session), "crashed": true})),
        )
        .await
        .expect(200);
    assert_eq!(by_admin["status"], "crashed");
    assert_eq!(by_admin["attributes"], json!({}), "{by_admin}");
}

/// `sessiond_sessions_finalized_total{status}` counts each finalization once, whoever makes it:
/// an end, or the sweeper.
async fn finalizations_are_counted_by_final_status(store: Store) {
    let app = spawn_app(
        store,
        "sweep_interval = \"50ms\"\n[namespaces.app]\nidle_timeout = \"300ms\"\n",
    )
    .await;
    let (ended, idle) = (new_client(), new_client());
    app.tick(json!({"namespace": "app", "client": ended}))
        .await
        .expect(200);
    let body = json!({"namespace": "app", "client": ended, "status": "crashed"});
    app.end(body.clone()).await.expect(200);
    app.end(body).await.expect(200);
    app.tick(json!({"namespace": "app", "client": idle}))
        .await
        .expect(200);
    let report = json!({"namespace": "app", "client": idle, "errors": 2});
    app.post("/v1/sessions/report", report).await.expect(200);
    let counted = |status: &str| {
        let name = format!("sessiond_sessions_finalized_total{{status=\"{status}\"}} ");
        let app = &app;
        async move {
            let text = app.get("/metrics").await.text;
            text.lines()
                .find_map(|l| l.strip_prefix(name.as_str()).map(str::to_owned))
        }
    };
    // The idle session is found by the sweeper once it idles out.
    let swept = eventually(std::time::Duration::from_secs(10), || async {
        counted("errored").await.as_deref() == Some("1")
    })
    .await;
    assert!(swept, "the sweeper's finalization was counted");
    assert_eq!(
        counted("crashed").await.as_deref(),
        Some("1"),
        "an end, counted once"
    );
    assert_eq!(counted("exited").await, None);
}

async fn a_scripted_day_gives_exact_stats_and_events(store: Store) {
    let app = spawn_app(store, &config("")).await;
    let release = format!("day-{}", &new_client()[..8]);
    let call = |client: &str, user: Option<&str>| {
        let mut attributes = json!({"release": release, "environment": "production"});
        if let Some(user) = user {
            attributes["user_id"] = json!(user);
        }
        json!({"namespace": "app", "client": client, "attributes": attributes})
    };
    let clients: Vec<String> = (0..7).map(|_| new_client()).collect();
    let c = |n: usize| clients[n - 1].as_str();

    // 1 exits normally.
    let s1 = app.tick(call(c(1), Some("u1"))).await.expect(200);
    app.end(json!({"namespace": "app", "client": c(1)}))
        .await
        .expect(200);
    // 2 reports handled errors, then exits: its final status is errored.
    let s2 = app.tick(call(c(2), None)).await.expect(200);
    let errored = app
        .post(
            "/v1/sessions/report",
            json!({"namespace": "app", "client": c(2), "errors": 2}),
        )
        .await
        .expect(200);
    assert_eq!(
        (errored["status"].as_str(), errored["errors"].as_u64()),
        (Some("errored"), Some(2))
    );
    let ended = app
        .end(json!({"namespace": "app", "client": c(2)}))
        .await
        .expect(200);
    assert_eq!(ended["status"], "errored", "an exit does not hide errors");
    // 3 crashes while live, then idles out and never returns.
    let s3 = app.tick(call(c(3), Some("u3"))).await.expect(200);
    let crashed = app
        .post(
            "/v1/sessions/report",
            json!({"namespace": "app", "client": c(3), "crashed": true}),
        )
        .await
        .expect(200);
    assert_eq!(crashed["status"], "crashed");
    // 4 idles out and never returns.
    let s4 = app.tick(call(c(4), None)).await.expect(200);
    // 5 is identified late, then ends abnormally.
    let s5 = app.tick(call(c(5), None)).await.expect(200);
    let bound = app.current(call(c(5), Some("u5"))).await.expect(200);
    assert_eq!(bound["session_id"], s5["session_id"]);
    app.end(json!({"namespace": "app", "client": c(5), "status": "abnormal"}))
        .await
        .expect(200);
    // 6 exits; its crash report arrives afterwards (on the next launch), naming the session.
    let s6 = app.tick(call(c(6), Some("u6"))).await.expect(200);
    app.end(json!({"namespace": "app", "client": c(6)}))
        .await
        .expect(200);
    let amended = app
        .post(
            "/v1/sessions/report",
            json!({"namespace": "app", "client": c(6), "session_id": id(&s6), "crashed": true}),
        )
        .await
        .expect(200);
    assert_eq!(amended["status"], "crashed");
    assert_eq!(amended["session_id"], s6["session_id"]);
    // 7 comes back after the idle timeout: its first session rotates, the second stays live.
    let s7 = app.tick(call(c(7), None)).await.expect(200);
    wait_past(&s7["expires_at"]).await;
    let s7b = app.tick(call(c(7), None)).await.expect(200);
    assert_eq!(s7b["index"], 2);

    let sessions = [&s1, &s2, &s3, &s4, &s5, &s6, &s7, &s7b].map(id);
    let events = until_ended(&app, &[id(&s3), id(&s4), id(&s7)]).await;
    let mut by_session: HashMap<&str, Vec<(&str, &str)>> = HashMap::new();
    for (session, kind, status) in sequence(&events, &sessions) {
        by_session.entry(session).or_default().push((kind, status));
    }
    let expect = [
        (id(&s1), vec![("started", "ok"), ("ended", "exited")]),
        (id(&s2), vec![("started", "ok"), ("ended", "errored")]),
        (id(&s3), vec![("started", "ok"), ("ended", "crashed")]),
        (id(&s4), vec![("started", "ok"), ("ended", "exited")]),
        (id(&s5), vec![("started", "ok"), ("ended", "abnormal")]),
        (
            id(&s6),
            vec![
                ("started", "ok"),
                ("ended", "exited"),
                ("amended", "crashed"),
            ],
        ),
        (id(&s7), vec![("started", "ok"), ("ended", "exited")]),
        (id(&s7b), vec![("started", "ok")]),
    ];
    for (session, kinds) in expect {
        assert_eq!(by_session[session], kinds, "events of {session}");
    }
    // The log is in order: ids grow, and every event carries what the contract lists.
    let ours: Vec<&Value> = events
        .iter()
        .filter(|e| sessions.contains(&e["session_id"].as_str().unwrap()))
        .collect();
    for pair in events.windows(2) {
        assert!(cursor(&pair[0]) < cursor(&pair[1]), "{pair:?}");
    }
    let finals: Vec<&&Value> = ours.iter().filter(|e| e["type"] == "ended").collect();
    for event in &finals {
        assert!(millis(&event["ended_at"]) >= millis(&event["started_at"]));
        assert_eq!(event["release"], release.as_str());
        assert!(event["duration_ms"].as_i64().unwrap() >= 0);
    }
    let s5_end = finals
        .iter()
        .find(|e| e["session_id"] == s5["session_id"])
        .unwrap();
    assert_eq!(s5_end["user_id"], "u5", "a late user is in the final event");
    let s2_end = finals
        .iter()
        .find(|e| e["session_id"] == s2["session_id"])
        .unwrap();
    assert_eq!(s2_end["errors"], 2);
    let s4_end = finals
        .iter()
        .find(|e| e["session_id"] == s4["session_id"])
        .unwrap();
    assert_eq!(
        s4_end["ended_at"], s4["expires_at"],
        "idled out at its deadline"
    );
    assert_eq!(s4_end["duration_ms"], 0);

    let stats = stats_of(&app, &release).await;
    assert_eq!(stats["sessions"], 8);
    assert_eq!(stats["active"], 1);
    assert_eq!(stats["exited"], 3);
    assert_eq!(stats["errored"], 1);
    assert_eq!(stats["crashed"], 2);
    assert_eq!(stats["abnormal"], 1);
    assert_eq!(stats["crash_free_sessions"], 0.75);
    assert_eq!(stats["users"], 4);
    assert_eq!(stats["crash_free_users"], 0.5);
    assert!(stats["duration_ms"]["p50"].is_i64());
    // Another release sees none of it.
    assert_eq!(stats_of(&app, "other").await["sessions"], 0);
}

fn cursor(event: &Value) -> (u64, u64, u64) {
    let parts: Vec<u64> = event["id"]
        .as_str()
        .unwrap()
        .split('-')
        .map(|p| p.parse().unwrap())
        .collect();
    (parts[0], parts[1], parts[2])
}

async fn late_user_binding_adds_a_user_and_not_a_session(store: Store) {
    let app = spawn_app(store, &config("")).await;
    let release = format!("late-{}", &new_client()[..8]);
    let client = new_client();
    let body = |user: Option<&str>| {
        let mut b =
            json!({"namespace": "app", "client": client, "attributes": {"release": release}});
        if let Some(user) = user {
            b["attributes"]["user_id"] = json!(user);
        }
        b
    };
    let first = app.tick(body(None)).await.expect(200);
    let before = stats_of(&app, &release).await;
    assert_eq!(
        (before["sessions"].as_i64(), before["users"].as_i64()),
        (Some(1), Some(0))
    );
    let bound = app.tick(body(Some("late-user"))).await.expect(200);
    assert_eq!(bound["session_id"], first["session_id"]);
    let again = app.current(body(Some("late-user"))).await.expect(200);
    assert_eq!(again["session_id"], first["session_id"]);
    let after = stats_of(&app, &release).await;
    assert_eq!(after["sessions"], 1, "the session is not counted again");
    assert_eq!(after["users"], 1, "the user is counted once");
    assert_eq!(after["crash_free_users"], 1.0);
    let started: Vec<Value> = all_events(&app)
        .await
        .into_iter()
        .filter(|e| e["session_id"] == first["session_id"])
        .collect();
    assert_eq!(
        started.len(),
        1,
        "binding a user writes no event: {started:?}"
    );
}

async fn a_report_for_an_unknown_or_expired_session_is_404_and_changes_nothing(store: Store) {
    let app = spawn_app(store, &config("session_retention = \"1s\"")).await;
    let client = new_client();
    let release = format!("gone-{}", &new_client()[..8]);
    let body = json!({"namespace": "app", "client": client, "attributes": {"release": release}});
    let first = app.tick(body).await.expect(200);
    let ended = app
        .end(json!({"namespace": "app", "client": client}))
        .await
        .expect(200);
    // Past the session's retention (ended + 1s), it is gone for reports as for lookups.
    wait_until(millis(&ended["ended_at"]) + 1_000).await;
    let events_before = all_events(&app).await;
    let stats_before = stats_of(&app, &release).await;
    let cases = [
        (
            json!({"namespace": "app", "client": client, "session_id": id(&first), "crashed": true}),
            "session-not-found",
        ),
        (
            json!({"namespace": "app", "client": client, "session_id": id(&first), "errors": 1}),
            "session-not-found",
        ),
        (
            json!({"session_id": "00000000000000000000", "errors": 1}),
            "session-not-found",
        ),
        (
            json!({"namespace": "app", "client": new_client(), "errors": 1}),
            "no-live-session",
        ),
    ];
    for (report, problem) in cases {
        let answer = app.post("/v1/sessions/report", report.clone()).await;
        assert_eq!(
            answer.problem(404)["type"],
            format!("urn:sessiond:problem:{problem}"),
            "{report}"
        );
    }
    assert_eq!(
        all_events(&app).await,
        events_before,
        "no event was written"
    );
    assert_eq!(
        stats_of(&app, &release).await,
        stats_before,
        "no stat moved"
    );
    // Bad reports are 400 and name their field.
    for (report, field) in [
        (json!({"namespace": "app", "client": client}), "errors"),
        (json!({"namespace": "app", "errors": 1}), "client"),
        (
            json!({"namespace": "app", "client": client, "errors": -1}),
            "errors",
        ),
        (
            json!({"namespace": "app", "client": client, "crashed": true, "attributes": {}}),
            "attributes",
        ),
    ] {
        assert_eq!(
            app.post("/v1/sessions/report", report).await.problem(400)["field"],
            field
        );
    }
    assert_eq!(
        app.tick(json!({"namespace": "app", "client": client, "errors": 1}))
            .await
            .problem(400)["field"],
        "errors"
    );
}

async fn reports_are_batch_operations_too(store: Store) {
    let app = spawn_app(store, &config("")).await;
    let client = new_client();
    let first = app
        .tick(json!({"namespace": "app", "client": client}))
        .await
        .expect(200);
    let answer = app
        .batch(json!([
            {"op": "report", "namespace": "app", "client": client, "errors": 3},
            {"op": "report", "namespace": "app", "client": client, "session_id": id(&first), "crashed": true},
            {"op": "report", "session_id": "00000000000000000000", "errors": 1},
        ]))
        .await
        .expect(200);
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results[0]["status"], "errored");
    assert_eq!(results[1]["status"], "crashed");
    assert_eq!(results[1]["errors"], 3);
    assert_eq!(results[2]["status"], 404);
}

async fn admin_calls_require_the_admin_token_when_one_is_set(store: Store) {
    let token = "admin-token-0123456789";
    let app = spawn_app(store, &config(&format!("admin_token = \"{token}\""))).await;
    let session = app
        .tick(json!({"namespace": "app", "client": new_client()}))
        .await
        .expect(200);
    for path in admin_paths(&session) {
        let refused = app.get(&path).await;
        assert_eq!(
            refused.problem(401)["type"],
            "urn:sessiond:problem:unauthorized"
        );
        assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
        let wrong = app
            .request(
                reqwest::Method::GET,
                &path,
                &[("authorization", "Bearer wrong")],
                None,
            )
            .await;
        wrong.problem(401);
        let bearer = format!("Bearer {token}");
        let allowed = app
            .request(
                reqwest::Method::GET,
                &path,
                &[("authorization", &bearer)],
                None,
            )
            .await;
        allowed.expect(200);
        assert!(!allowed.text.contains(token));
        // The scheme's name is matched in any case, as HTTP says.
        let lower = format!("bearer {token}");
        app.request(
            reqwest::Method::GET,
            &path,
            &[("authorization", &lower)],
            None,
        )
        .await
        .expect(200);
    }
}

/// Two instances sweeping one Redis: every session that idles out is finalized exactly once,
/// within the documented bound after its expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_sweeping_one_redis_finalize_each_session_exactly_once() {
    let redis = redis_server::shared();
    let config = config("");
    let apps = [
        Arc::new(spawn_on_redis(&config, redis.clone()).await),
        Arc::new(spawn_on_redis(&config, redis.clone()).await),
    ];
    let n = 60;
    let mut sessions = Vec::new();
    for i in 0..n {
        let answer = apps[i % 2]
            .tick(json!({"namespace": "app", "client": new_client()}))
            .await
            .expect(200);
        sessions.push(answer);
    }
    let ids: Vec<&str> = sessions.iter().map(id).collect();
    wait_past(&sessions.last().unwrap()["expires_at"]).await;
    let events = until_ended(&apps[0], &ids).await;
    let ended: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "ended" && ids.contains(&e["session_id"].as_str().unwrap()))
        .collect();
    assert_eq!(
        ended.len(),
        n,
        "exactly one ended event per session, none twice"
    );
    let mut worst = 0;
    for (event, session) in ended.iter().map(|e| {
        (
            e,
            sessions
                .iter()
                .find(|s| s["session_id"] == e["session_id"])
                .unwrap(),
        )
    }) {
        assert_eq!(event["ended_at"], session["expires_at"]);
        let lag = millis(&event["recorded_at"]) - millis(&event["ended_at"]);
        assert!(lag >= 0, "finalized after it expired: {event}");
        worst = worst.max(lag);
    }
    assert!(
        worst <= SWEEP_BOUND.as_millis() as i64,
        "every session finalized within {SWEEP_BOUND:?} of its expiry; worst {worst} ms"
    );
    // Both instances read the same log.
    assert_eq!(all_events(&apps[1]).await.len(), events.len());
    // The sweepers shared the work or not, but together finalized each session once.
    let mut swept = 0;
    for app in &apps {
        let metrics = app.get("/metrics").await.text;
        swept += metrics
            .lines()
            .find_map(|l| l.strip_prefix("sessiond_swept_sessions_total "))
            .map_or(0, |v| v.parse::<usize>().unwrap());
    }
    assert_eq!(
        swept, n,
        "the instances' sweeper counts add up to the sessions"
    );
}
