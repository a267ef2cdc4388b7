//! The behaviour suite of CONTRACT sections 2 to 5, run against both stores.

use serde_json::json;
use sessiond::startup::Sources;

use crate::helpers::{
    ScriptedIds, Store, millis, new_client, spawn_app, spawn_app_with, wait_past, wait_until,
};
use crate::on_every_store;

/// One second of idleness ends a session, so tests wait briefly and exactly.
const SHORT: &str = r#"
[namespaces.web]
idle_timeout = "1s"
allowed_origins = ["https://shop.example"]

[namespaces.capped]
idle_timeout = "10s"
max_duration = "1500ms"

[namespaces.ios]
idle_timeout = "1s"
max_duration = "1h"
mode = "background"

[namespaces.strict]
idle_timeout = "1s"
on_user_change = "restart"
"#;

/// The body of a call for one client of the `web` namespace.
fn web(client: &str) -> serde_json::Value {
    json!({"namespace": "web", "client": client})
}

on_every_store!(
    a_new_client_gets_index_1_and_a_re_read_returns_the_same_session,
    tick_extends_the_session_it_finds,
    tick_after_idle_timeout_rotates_and_links_previous,
    max_duration_rotates_an_active_session,
    end_finalizes_and_the_next_call_starts_with_reason_ended,
    end_is_idempotent_and_names_sessions_by_id,
    a_foregrounded_session_in_background_mode_never_idles_out,
    a_long_background_renews_on_foreground_and_a_short_one_resumes,
    release_environment_and_platform_are_frozen_at_start,
    user_id_binds_once_late_and_is_kept,
    a_different_user_restarts_the_session_under_restart,
    current_with_create_false_never_creates,
    a_client_key_is_minted_when_the_caller_brings_none,
    batch_answers_every_operation_in_order,
    a_batch_decides_each_call_by_its_namespaces_policy_and_binds_users,
    a_long_batch_keeps_each_clients_calls_in_order,
    lookup_shows_live_and_earlier_sessions_while_retained,
    lookup_forgets_sessions_past_session_retention,
    a_colliding_session_id_is_never_issued_twice,
    cors_allows_the_namespace_origins_and_refuses_others,
);

async fn a_new_client_gets_index_1_and_a_re_read_returns_the_same_session(store: Store) {
    let app = spawn_app(store, SHORT).await;
    let client = new_client();
    let first = app.current(web(&client)).await.expect(200);
    assert_eq!(first["index"], 1);
    assert_eq!(first["created"], true);
    assert_eq!(first["reason"], "new_client");
    assert_eq!(first["status"], "ok");
    assert_eq!(first["previous_session_id"], json!(null));
    assert_eq!(first["namespace"], "web");
    assert!(
        first.get("client").is_none(),
        "a caller's own key is not echoed"
    );
    let again = app.current(web(&client)).await.expect(200);
    assert_eq!(again["session_id"], first["session_id"]);
    assert_eq!(again["created"], false);
    // current is not activity: the expiry stays where it was.
    assert_eq!(again["expires_at"], first["expires_at"]);
    assert_eq!(
        millis(&first["expires_at"]) - millis(&first["last_activity_at"]),
        1000
    );
}

async fn tick_extends_the_session_it_finds(store: Store) {
    let app = spawn_app(store, SHORT).await;
    let client = new_client();
    let first = app.tick(web(&client)).await.expect(200);
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let second = app.tick(web(&client)).await.expect(200);
    assert_eq!(second["session_id"], first["session_id"]);
    assert!(millis(&second["expires_at"]) >= millis(&first["expires_at"]) + 500);
    // Past the first expiry but before the extended one, the session is still the same.
    wait_past(&first["expires_at"]).await;
    let third = app.tick(web(&client)).await.expect(200);
    assert_eq!(third["session_id"], first["session_id"]);
    assert_eq!(third["index"], 1);
}

async fn tick_after_idle_timeout_rotates_and_links_previous(store: Store) {
    let app = spawn_app(store, SHORT).await;
    let client = new_client();
    let first = app.tick(web(&client)).await.expect(200);
    wait_past(&first["expires_at"]).await;
    let second = app.tick(web(&client)).await.expect(200);
    assert_ne!(second["session_id"], first["session_id"]);
    assert_eq!(second["index"], 2);
    assert_eq!(second["previous_session_id"], first["session_id"]);
    assert_eq!(second["reason"], "idle_timeout");
    assert_eq!(second["created"], true);
    // The earlier session is finalized as of its expiry.
    let old = app
        .lookup(first["session_id"].as_str().unwrap())
        .await
        .expect(200);
    assert_eq!(old["status"], "exited");
    assert_eq!(old["ended_at"], first["expires_at"]);
}

async fn max_duration_rotates_an_active_session(store: Store) {
    let app = spawn_app(store, SHORT).await;
    let client = new_client();
    let body = json!({"namespace": "capped", "client": client});
    let first = app.tick(body.clone()).await.expect(200);
    assert_eq!(
        millis(&first["expires_at"]) - millis(&first["started_at"]),
        1500
    );
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let active = app.tick(body.clone()).await.expect(200);
    assert_eq!(active["session_id"], first["session_id"]);
    assert_eq!(
        active["expires_at"], first["expires_at"],
        "activity cannot pass max_duration"
    );
    wait_past(&first["expires_at"]).await;
    let rotated = app.tick(body).await.expect(200);
    assert_eq!(rotated["reason"], "max_duration");
    assert_eq!(rotated["index"], 2);
    assert_eq!(rotated["previous_session_id"], first["session_id"]);
}

async fn end_finalizes_and_the_next_call_starts_with_reason_ended(store: Store) {
    let app = spawn_app(store, SHORT).await;
    let client = new_client();
    let first = app.tick(web(&client)).await.expect(200);
    let ended = app
        .end(json!({"namespace": "web", "client": client, "status": "crashed"}))
        .await
        .expect(200);
    assert_eq!(ended["session_id"], first["session_id"]);
    assert_eq!(ended["status"], "crashed");
    assert!(ended["ended_at"].is_string());
    assert_eq!(
        app.current(json!({"namespace": "web", "client": client, "create": false}))
            .await
            .problem(404)["type"],
        "urn:sessiond:problem:no-live-session"
    );
    let next = app.tick(web(&client)).await.expect(200);
    assert_eq!(next["reason"], "ended");
    assert_eq!(next["index"], 2);
    assert_eq!(next["previous_session_id"], first["session_id"]);
}

async fn end_is_idempotent_and_names_sessions_by_id(store: Store) {
    let app = spawn_app(store, SHORT).await;
    let client = new_client();
    let first = app.tick(web(&client)).await.expect(200);
    let id = first["session_id"].as_str().unwrap();
    let ended = app
        .end(json!({"namespace": "web", "client": client, "session_id": id}))
        .await
        .expect(200);
    assert_eq!(ended["status"], "exited");
    // A retried end changes nothing, not even the status it is asked for.
    let retried = app
        .end(json!({"namespace": "web", "client": client, "session_id": id, "status": "crashed"}))
        .await
        .expect(200);
    assert_eq!(retried["status"], "exited");
    assert_eq!(retried["ended_at"], ended["ended_at"]);
    // A late retry that names the first session does not end the next one.
    let next = app.tick(web(&client)).await.expect(200);
    let late = app
        .end(json!({"namespace": "web", "client": client, "session_id": id}))
        .await
        .expect(200);
    assert_eq!(late["session_id"], first["session_id"]);
    let still = app
        .current(json!({"namespace": "web", "client": client, "create": false}))
        .await
        .expect(200);
    assert_eq!(still["session_id"], next["session_id"]);
    assert_eq!(still["status"], "ok");
    // An id this client never had is not found, and nothing changes.
    let unknown = app
        .end(json!({"namespace": "web", "client": client, "session_id": "00000000000000000000"}))
        .await;
    assert_eq!(
        unknown.problem(404)["type"],
        "urn:sessiond:problem:session-not-found"
    );
    // With no session at all there is nothing to end.
    let stranger = app
        .end(json!({"namespace": "web", "client": new_client()}))
        .await;
    assert_eq!(
        stranger.problem(404)["type"],
        "urn:sessiond:problem:no-live-session"
    );
}

async fn a_foregrounded_session_in_background_mode_never_idles_out(store: Store) {
    let app = spawn_app(store, SHORT).await;
    let client = new_client();
    let body = json!({"namespace": "ios", "client": client});
    let first = app.foreground(body.clone()).await.expect(200);
    // In the foreground the only deadline is max_duration.
    assert_eq!(
        millis(&first["expires_at"]) - millis(&first["started_at"]),
        3_600_000
    );
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let later = app.tick(body).await.expect(200);
    assert_eq!(later["session_id"], first["session_id"]);
    assert_eq!(later["created"], false);
}

async fn a_long_background_renews_on_foreground_and_a_short_one_resumes(store: Store) {
    let app = spawn_app(store, SHORT).await;
    let client = new_client();
    let body = json!({"namespace": "ios", "client": client});
    let first = app.foreground(body.clone()).await.expect(200);
    let away = app.background(body.clone()).await.expect(200);
    assert_eq!(
        millis(&away["expires_at"]) - millis(&away["last_activity_at"]),
        1000
    );
    let back = app.foreground(body.clone()).await.expect(200);
    assert_eq!(
        back["session_id"], first["session_id"],
        "a short background resumes"
    );
    let away = app.background(body.clone()).await.expect(200);
    wait_past(&away["expires_at"]).await;
    let renewed = app.foreground(body).await.expect(200);
    assert_ne!(renewed["session_id"], first["session_id"]);
    assert_eq!(renewed["reason"], "idle_timeout");
    assert_eq!(renewed["index"], 2);
}

async fn release_environment_and_platform_are_frozen_at_start(store: Store) {
    let app = spawn_app(store, SHORT).await;
    let client = new_client();
    let attrs = json!({"release": "1.4.2", "environment": "production", "platform": "web"});
    let first = app
        .tick(json!({"namespace": "web", "client": client, "attributes": attrs}))
        .await
        .expect(200);
    assert_eq!(first["attributes"], attrs);
    let other = json!({"release": "2.0.0", "environment": "staging", "platform": "android"});
    let later = app
        .tick(json!({"namespace": "web", "client": client, "attributes": other}))
        .await
        .expect(200);
    assert_eq!(later["session_id"], first["session_id"]);
    assert_eq!(later["attributes"], attrs);
    // A new session takes the attributes of the call that starts it.
    wait_past(&later["expires_at"]).await;
    let next = app
        .tick(json!({"namespace": "web", "client": client, "attributes": other}))
        .await
        .expect(200);
    assert_eq!(next["index"], 2);
    assert_eq!(next["attributes"], other);
}

async fn user_id_binds_once_late_and_is_kept(store: Store) {
    let app = spawn_app(store, SHORT).await;
    let client = new_client();
    let first = app
        .tick(json!({"namespace": "web", "client": client, "attributes": {"release": "1.0"}}))
        .await
        .expect(200);
    assert!(first["attributes"].get("user_id").is_none());
    let bound = app
        .current(json!({"namespace": "web", "client": client, "attributes": {"user_id": "u-1"}}))
        .await
        .expect(200);
    assert_eq!(
        bound["session_id"], first["session_id"],
        "binding a user does not start a session"
    );
    assert_eq!(
        bound["attributes"],
        json!({"release": "1.0", "user_id": "u-1"})
    );
    let kept = app
        .tick(json!({"namespace": "web", "client": client, "attributes": {"user_id": "u-2"}}))
        .await
        .expect(200);
    assert_eq!(kept["session_id"], first["session_id"]);
    assert_eq!(kept["attributes"]["user_id"], "u-1");
}

async fn a_different_user_restarts_the_session_under_restart(store: Store) {
    let app = spawn_app(store, SHORT).await;
    let client = new_client();
    let body = |user: &str| json!({"namespace": "strict", "client": client, "attributes": {"user_id": user}});
    let first = app.tick(body("u-1")).await.expect(200);
    let same = app.tick(body("u-1")).await.expect(200);
    assert_eq!(same["session_id"], first["session_id"]);
    let restarted = app.tick(body("u-2")).await.expect(200);
    assert_ne!(restarted["session_id"], first["session_id"]);
    assert_eq!(restarted["reason"], "user_change");
    assert_eq!(restarted["index"], 2);
    assert_eq!(restarted["attributes"]["user_id"], "u-2");
    let old = app
        .lookup(first["session_id"].as_str().unwrap())
        .await
        .expect(200);
    assert_eq!(old["status"], "exited");
    assert!(old["ended_at"].is_string());
}

async fn current_with_create_false_never_creates(store: Store) {
    let app = spawn_app(store, SHORT).await;
    let client = new_client();
    let none = app
        .current(json!({"namespace": "web", "client": client, "create": false}))
        .await;
    assert_eq!(
        none.problem(404)["type"],
        "urn:sessiond:problem:no-live-session"
    );
    let created = app.current(web(&client)).await.expect(200);
    let found = app
        .current(json!({"namespace": "web", "client": client, "create": false}))
        .await
        .expect(200);
    assert_eq!(found["session_id"], created["session_id"]);
    wait_past(&created["expires_at"]).await;
    let expired = app
        .current(json!({"namespace": "web", "client": client, "create": false}))
        .await;
    assert_eq!(
        expired.problem(404)["type"],
        "urn:sessiond:problem:no-live-session"
    );
}

async fn a_client_key_is_minted_when_the_caller_brings_none(store: Store) {
    let app = spawn_app(store, SHORT).await;
    let first = app.tick(json!({})).await.expect(200);
    let client = first["client"]
        .as_str()
        .expect("a minted client key")
        .to_owned();
    assert_eq!(client.len(), 32);
    assert_eq!(first["namespace"], "default");
    let again = app.tick(json!({"client": client})).await.expect(200);
    assert_eq!(again["session_id"], first["session_id"]);
    assert!(again.get("client").is_none());
    let other = app.tick(json!({})).await.expect(200);
    assert_ne!(other["client"], first["client"]);
    assert_ne!(other["session_id"], first["session_id"]);
}

async fn batch_answers_every_operation_in_order(store: Store) {
    let app = spawn_app(store, SHORT).await;
    let (a, b) = (new_client(), new_client());
    let results = app
        .batch(json!([
            {"op": "tick", "namespace": "web", "client": a},
            {"op": "current", "namespace": "web", "client": b, "attributes": {"release": "3"}},
            {"op": "tick", "namespace": "nowhere", "client": a},
            {"op": "tick", "namespace": "web", "client": "bad key"},
            {"op": "current", "namespace": "web", "client": a},
            {"op": "end", "namespace": "web", "client": b, "status": "abnormal"},
            {"namespace": "web", "client": a},
            {"op": "current", "namespace": "web", "client": new_client(), "create": false},
            "tick",
            {"op": "tick", "namespace": "web", "client": a, "attributes": {"release": 5}},
        ]))
        .await
        .expect(200)["results"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(results.len(), 10);
    assert_eq!(results[0]["created"], true);
    assert_eq!(results[1]["attributes"]["release"], "3");
    assert_eq!(results[2]["status"], 404);
    assert_eq!(results[3]["status"], 400);
    assert_eq!(results[3]["field"], "operations[3].client");
    assert_eq!(results[4]["session_id"], results[0]["session_id"]);
    assert_eq!(results[5]["session_id"], results[1]["session_id"]);
    assert_eq!(results[5]["status"], "abnormal");
    assert_eq!(results[6]["field"], "operations[6].op");
    assert_eq!(results[7]["type"], "urn:sessiond:problem:no-live-session");
    assert_eq!(results[8]["field"], "operations[8]");
    assert_eq!(results[9]["field"], "operations[9].attributes.release");
    // The batch's decisions are the ones single calls see.
    let single = app
        .current(json!({"namespace": "web", "client": a}))
        .await
        .expect(200);
    assert_eq!(single["session_id"], results[0]["session_id"]);
}

/// A batch over namespaces of different policies, for live sessions: each call is decided by
/// its own namespace's policy, and user ids bind or restart as they do in single calls.
async fn a_batch_decides_each_call_by_its_namespaces_policy_and_binds_users(store: Store) {
    let app = spawn_app(store, SHORT).await;
    let (a, b, c) = (new_client(), new_client(), new_client());
    let started_b = app
        .tick(json!({"namespace": "capped", "client": b}))
        .await
        .expect(200);
    let started_c = app
        .tick(json!({"namespace": "strict", "client": c}))
        .await
        .expect(200);
    let started_a = app.tick(web(&a)).await.expect(200);
    let results = app
        .batch(json!([
            {"op": "tick", "namespace": "web", "client": a},
            {"op": "tick", "namespace": "capped", "client": b},
            {"op": "tick", "namespace": "strict", "client": c, "attributes": {"user_id": "u1"}},
            {"op": "tick", "namespace": "web", "client": a, "attributes": {"user_id": "x"}},
            {"op": "tick", "namespace": "strict", "client": c, "attributes": {"user_id": "u2"}},
            {"op": "current", "namespace": "web", "client": a, "attributes": {"user_id": "x"}},
        ]))
        .await
        .expect(200)["results"]
        .as_array()
        .unwrap()
        .clone();
    let lifetime =
        |r: &serde_json::Value| millis(&r["expires_at"]) - millis(&r["last_activity_at"]);
    assert_eq!(results[0]["session_id"], started_a["session_id"]);
    assert_eq!(lifetime(&results[0]), 1000, "web idles out after 1s");
    assert_eq!(results[1]["session_id"], started_b["session_id"]);
    assert_eq!(
        millis(&results[1]["expires_at"]),
        millis(&started_b["started_at"]) + 1500,
        "capped ends 1500ms after its start"
    );
    assert_eq!(results[2]["session_id"], started_c["session_id"]);
    assert_eq!(results[2]["attributes"]["user_id"], "u1");
    assert_eq!(results[3]["session_id"], started_a["session_id"]);
    assert_eq!(results[3]["attributes"]["user_id"], "x");
    assert_eq!(results[4]["created"], true);
    assert_eq!(results[4]["reason"], "user_change");
    assert_eq!(results[4]["previous_session_id"], started_c["session_id"]);
    assert_eq!(results[5]["session_id"], started_a["session_id"]);
    assert_eq!(results[5]["attributes"]["user_id"], "x");
}

/// More calls than one store step takes (the Redis store decides up to 100 per script),
/// with sessions starting, ending and starting again within the batch, for a new client and
/// for clients whose sessions were live before it.
async fn a_long_batch_keeps_each_clients_calls_in_order(store: Store) {
    let app = spawn_app(store, SHORT).await;
    let a = new_client();
    let others: Vec<String> = (0..30).map(|_| new_client()).collect();
    let mut before = Vec::new();
    for other in &others {
        before.push(app.tick(web(other)).await.expect(200)["session_id"].clone());
    }
    let mut operations = Vec::new();
    for round in 0..250 {
        let op = match round {
            120 => "end",
            _ => "tick",
        };
        operations.push(json!({"op": op, "namespace": "web", "client": a}));
        // others[0] ends its session at its 3rd call (round 60) and starts another.
        let op = if round == 60 { "end" } else { "tick" };
        let other = &others[round % others.len()];
        operations.push(json!({"op": op, "namespace": "web", "client": other}));
    }
    let results = app.batch(json!(operations)).await.expect(200)["results"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(results.len(), 500);
    let mine: Vec<_> = results.iter().step_by(2).collect();
    let first = &mine[0]["session_id"];
    assert_eq!(mine[0]["created"], true);
    assert!(
        mine[..=120].iter().all(|r| r["session_id"] == *first),
        "one session until the end call"
    );
    assert!(
        mine[120]["ended_at"].is_string(),
        "the end call answers the ended session"
    );
    let second = &mine[121];
    assert_eq!(second["created"], true);
    assert_eq!(second["index"], 2);
    assert_eq!(second["reason"], "ended");
    assert_eq!(second["previous_session_id"], *first);
    assert!(
        mine[121..]
            .iter()
            .all(|r| r["session_id"] == second["session_id"]),
        "one session after it"
    );
    for (n, other) in others.iter().enumerate() {
        let theirs: Vec<_> = results
            .iter()
            .skip(1)
            .step_by(2)
            .zip(operations.iter().skip(1).step_by(2))
            .filter(|(_, op)| op["client"] == other.as_str())
            .map(|(r, _)| r)
            .collect();
        let same = |rs: &[&serde_json::Value], id: &serde_json::Value| {
            rs.iter()
                .all(|r| r["session_id"] == *id && r["created"] == false)
        };
        if n == 0 {
            assert!(same(&theirs[..=2], &before[0]), "live until its end call");
            assert_eq!(theirs[3]["created"], true);
            assert_eq!(theirs[3]["previous_session_id"], before[0]);
            assert!(same(&theirs[4..], &theirs[3]["session_id"]));
        } else {
            assert!(
                same(&theirs, &before[n]),
                "the session live before the batch"
            );
        }
    }
}

async fn lookup_shows_live_and_earlier_sessions_while_retained(store: Store) {
    let app = spawn_app(store, SHORT).await;
    let client = new_client();
    let first = app
        .tick(json!({"namespace": "web", "client": client, "attributes": {"release": "9"}}))
        .await
        .expect(200);
    let id = first["session_id"].as_str().unwrap();
    let live = app.lookup(id).await.expect(200);
    assert_eq!(live["namespace"], "web");
    assert_eq!(live["index"], 1);
    assert_eq!(live["status"], "ok");
    assert_eq!(live["ended_at"], json!(null));
    assert_eq!(live["started_at"], first["started_at"]);
    assert_eq!(live["attributes"]["release"], "9");
    assert!(live.get("created").is_none());
    app.end(web(&client)).await.expect(200);
    app.tick(web(&client)).await.expect(200);
    let ended = app.lookup(id).await.expect(200);
    assert_eq!(ended["status"], "exited");
    assert!(ended["ended_at"].is_string());
    assert_eq!(
        app.lookup("0123456789abcdef0123").await.problem(404)["type"],
        "urn:sessiond:problem:session-not-found"
    );
    assert_eq!(
        app.lookup("not-an-id").await.problem(400)["field"],
        "session_id"
    );
}

async fn lookup_forgets_sessions_past_session_retention(store: Store) {
    let app = spawn_app(store, &format!("session_retention = \"1s\"\n{SHORT}")).await;
    let client = new_client();
    let first = app.tick(web(&client)).await.expect(200);
    let id = first["session_id"].as_str().unwrap();
    let ended = app.end(web(&client)).await.expect(200);
    app.lookup(id).await.expect(200);
    wait_until(millis(&ended["ended_at"]) + 1000).await;
    assert_eq!(
        app.lookup(id).await.problem(404)["type"],
        "urn:sessiond:problem:session-not-found"
    );
}

async fn a_colliding_session_id_is_never_issued_twice(store: Store) {
    const X: &str = "aaaaaaaaaaaaaaaaaaaa";
    const Y: &str = "bbbbbbbbbbbbbbbbbbbb";
    // Ids unique per store: a fresh pair for each run on the shared redis-server.
    let (x, y) = (
        format!("{}{}", &X[..10], &new_client()[..10]),
        format!("{}{}", &Y[..10], &new_client()[..10]),
    );
    let sources = Sources {
        ids: ScriptedIds::new(&[&x, &x, &y]),
        ..Sources::default()
    };
    let app = spawn_app_with(store, SHORT, sources).await;
    let a = app
        .tick(json!({"namespace": "web", "client": new_client()}))
        .await
        .expect(200);
    assert_eq!(a["session_id"], x.as_str());
    let b = app
        .tick(json!({"namespace": "web", "client": new_client()}))
        .await
        .expect(200);
    assert_eq!(
        b["session_id"],
        y.as_str(),
        "the second draw collided, so a fresh id was drawn"
    );
    assert_eq!(
        app.lookup(&x).await.expect(200)["session_id"],
        a["session_id"]
    );
    assert_eq!(
        app.lookup(&y).await.expect(200)["session_id"],
        b["session_id"]
    );
}

async fn cors_allows_the_namespace_origins_and_refuses_others(store: Store) {
    use reqwest::Method;
    let app = spawn_app(store, SHORT).await;
    let client = new_client();
    let body = web(&client);
    let allowed = app
        .request(
            Method::POST,
            "/v1/sessions/tick",
            &[("origin", "https://shop.example")],
            Some(body.clone()),
        )
        .await;
    allowed.expect(200);
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    let refused = app
        .request(
            Method::POST,
            "/v1/sessions/tick",
            &[("origin", "https://evil.example")],
            Some(json!({"namespace": "web", "client": new_client()})),
        )
        .await;
    assert_eq!(
        refused.problem(403)["type"],
        "urn:sessiond:problem:origin-not-allowed"
    );
    assert_eq!(refused.header("access-control-allow-origin"), None);
    // The default namespace allows no origin at all.
    let elsewhere = app
        .request(
            Method::POST,
            "/v1/sessions/tick",
            &[("origin", "https://shop.example")],
            Some(json!({"client": client})),
        )
        .await;
    elsewhere.problem(403);
    // ... except pages served by this service's own origin.
    let own = app
        .request(
            Method::POST,
            "/v1/sessions/tick",
            &[("origin", app.address.as_str())],
            Some(json!({"client": client})),
        )
        .await;
    own.expect(200);
    assert_eq!(
        own.header("access-control-allow-origin"),
        Some(app.address.as_str())
    );
    // Forwarding headers cannot pass another origin off as this one.
    let spoofed = app
        .request(
            Method::POST,
            "/v1/sessions/tick",
            &[
                ("origin", "https://evil.example"),
                ("x-forwarded-host", "evil.example"),
                ("forwarded", "host=evil.example"),
            ],
            Some(json!({"client": client})),
        )
        .await;
    spoofed.problem(403);
    let preflight = app
        .request(
            Method::OPTIONS,
            "/v1/sessions/tick",
            &[
                ("origin", "https://shop.example"),
                ("access-control-request-method", "POST"),
            ],
            None,
        )
        .await;
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    let denied = app
        .request(
            Method::OPTIONS,
            "/v1/sessions/tick",
            &[("origin", "https://evil.example")],
            None,
        )
        .await;
    denied.problem(403);
    // A CORS-simple call (text/plain, as sendBeacon sends) works the same as JSON.
    let beacon = app
        .post_raw(
            "/v1/sessions/tick",
            Some("text/plain;charset=UTF-8"),
            body.to_string(),
        )
        .await
        .expect(200);
    assert_eq!(beacon["session_id"], allowed.json()["session_id"]);
}
