//! Guarantee 5: bad input gets a clear problem+json answer naming what is wrong, and changes
//! nothing in the store.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{SESSION_CALLS, Store, TestApp, new_client, spawn_app};
use crate::on_every_store;

on_every_store!(every_class_of_bad_input_gets_its_problem_and_changes_nothing);

const CONFIG: &str = r#"
body_limit = 2048
max_batch = 3
min_client_length = 8

[namespaces.web]
idle_timeout = "10m"
"#;

/// What a client's session looks like, read without counting as activity.
async fn snapshot(app: &TestApp, client: &str) -> Value {
    app.current(json!({"namespace": "web", "client": client, "create": false}))
        .await
        .expect(200)
}

/// The keys this app's Redis store holds (under its own prefix, since other tests share the
/// Redis), sorted; None on the in-memory store.
async fn keys(app: &TestApp, prefix: &str) -> Option<Vec<String>> {
    app.redis_keys(&format!("{prefix}:*")).await
}

async fn every_class_of_bad_input_gets_its_problem_and_changes_nothing(store: Store) {
    let prefix = format!("t{}", &new_client()[..12]);
    let app = spawn_app(store, &format!("key_prefix = \"{prefix}\"\n{CONFIG}")).await;
    let client = new_client();
    app.tick(json!({"namespace": "web", "client": client}))
        .await
        .expect(200);
    let before = snapshot(&app, &client).await;
    let keys_before = keys(&app, &prefix).await;
    let tick = "/v1/sessions/tick";
    let with = |extra: Value| {
        let mut body = json!({"namespace": "web", "client": client});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };

    // (request, status, problem type, field)
    let json_cases: Vec<(&str, Value, u16, &str, Option<&str>)> = vec![
        (
            tick,
            with(json!({"client": 42})),
            400,
            "invalid-field",
            Some("client"),
        ),
        (
            tick,
            with(json!({"client": "has space"})),
            400,
            "invalid-field",
            Some("client"),
        ),
        (
            tick,
            with(json!({"client": "short"})),
            400,
            "invalid-field",
            Some("client"),
        ),
        (
            tick,
            with(json!({"client": "x".repeat(129)})),
            400,
            "invalid-field",
            Some("client"),
        ),
        (
            tick,
            with(json!({"attributes": {"release": "r".repeat(300)}})),
            400,
            "invalid-field",
            Some("attributes.release"),
        ),
        (
            tick,
            with(json!({"attributes": {"user_id": ""}})),
            400,
            "invalid-field",
            Some("attributes.user_id"),
        ),
        (
            tick,
            with(json!({"attributes": {"color": "red"}})),
            400,
            "invalid-field",
            Some("attributes"),
        ),
        (
            tick,
            with(json!({"attributes": "1.0"})),
            400,
            "invalid-field",
            Some("attributes"),
        ),
        (
            tick,
            with(json!({"surprise": true})),
            400,
            "invalid-field",
            Some("surprise"),
        ),
        (
            tick,
            with(json!({"create": false})),
            400,
            "invalid-field",
            Some("create"),
        ),
        (
            tick,
            with(json!({"op": "tick"})),
            400,
            "invalid-field",
            Some("op"),
        ),
        (
            tick,
            with(json!({"namespace": "nowhere"})),
            404,
            "unknown-namespace",
            None,
        ),
        (
            tick,
            with(json!({"namespace": "Web{}"})),
            404,
            "unknown-namespace",
            None,
        ),
        (
            "/v1/sessions/end",
            with(json!({"status": "exploded"})),
            400,
            "invalid-field",
            Some("status"),
        ),
        (
            "/v1/sessions/end",
            with(json!({"session_id": "XYZ"})),
            400,
            "invalid-field",
            Some("session_id"),
        ),
        (
            "/v1/sessions/current",
            with(json!({"create": "no"})),
            400,
            "invalid-field",
            Some("create"),
        ),
        (
            "/v1/sessions/batch",
            json!({"operations": [{}, {}, {}, {}]}),
            400,
            "invalid-field",
            Some("operations"),
        ),
        (
            "/v1/sessions/batch",
            json!({"operations": "all"}),
            400,
            "invalid-field",
            Some("operations"),
        ),
        (
            "/v1/sessions/batch",
            json!({}),
            400,
            "invalid-field",
            Some("body"),
        ),
        (
            tick,
            with(json!({"attributes": {"release": "r".repeat(129)}})),
            400,
            "invalid-field",
            Some("attributes.release"),
        ),
        (
            tick,
            // 43 three-byte characters: 129 bytes, over the default budget of 128.
            with(json!({"attributes": {"user_id": "€".repeat(43)}})),
            400,
            "invalid-field",
            Some("attributes.user_id"),
        ),
        (
            "/v1/sessions/report",
            with(json!({"errors": 1, "report_id": "too-short"})),
            400,
            "invalid-field",
            Some("report_id"),
        ),
        (
            "/v1/sessions/report",
            with(json!({"errors": 1, "report_id": "has/slash-0123456789"})),
            400,
            "invalid-field",
            Some("report_id"),
        ),
        (
            tick,
            with(json!({"report_id": "report-0123456789"})),
            400,
            "invalid-field",
            Some("report_id"),
        ),
    ];
    for (path, body, status, kind, field) in json_cases {
        let problem = app.post(path, body.clone()).await.problem(status);
        assert_eq!(
            problem["type"],
            format!("urn:sessiond:problem:{kind}"),
            "{path} {body}"
        );
        assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
        if let Some(field) = field {
            let named = problem["field"].as_str().unwrap_or_default();
            assert!(
                named == field || named.starts_with(&format!("{field}.")),
                "{path} {body}: field {named}, expected {field}"
            );
        }
    }

    // Bodies that are not what JSON calls accept.
    let raw_cases: Vec<(Option<&str>, Vec<u8>, u16, &str)> = vec![
        (
            Some("application/json"),
            b"{\"client\": ".to_vec(),
            400,
            "malformed-json",
        ),
        (
            Some("application/json"),
            b"{} {}".to_vec(),
            400,
            "malformed-json",
        ),
        (
            Some("application/json"),
            b"[1, 2]".to_vec(),
            400,
            "invalid-field",
        ),
        (
            Some("application/json"),
            b"\"tick\"".to_vec(),
            400,
            "invalid-field",
        ),
        (
            Some("application/json"),
            vec![0xff, 0xfe],
            400,
            "malformed-json",
        ),
        (
            Some("text/plain"),
            b"not json".to_vec(),
            400,
            "malformed-json",
        ),
        (
            Some("application/x-www-form-urlencoded"),
            b"client=abc".to_vec(),
            415,
            "unsupported-media-type",
        ),
        (
            Some("application/json"),
            format!("{{\"client\": \"{}\"}}", "a".repeat(3000)).into_bytes(),
            413,
            "payload-too-large",
        ),
    ];
    for (content_type, body, status, kind) in raw_cases {
        let problem = app.post_raw(tick, content_type, body).await.problem(status);
        assert_eq!(
            problem["type"],
            format!("urn:sessiond:problem:{kind}"),
            "{content_type:?}"
        );
    }

    // Routes and methods.
    let wrong_method = app.request(Method::GET, tick, &[], None).await;
    assert_eq!(
        wrong_method.problem(405)["type"],
        "urn:sessiond:problem:method-not-allowed"
    );
    assert_eq!(wrong_method.header("allow"), Some("POST"));
    app.request(
        Method::DELETE,
        "/v1/sessions/0123456789abcdef0123",
        &[],
        None,
    )
    .await
    .problem(405);
    app.request(Method::POST, "/healthz", &[], None)
        .await
        .problem(405);
    app.get("/v2/anything").await.problem(404);

    // Nothing above changed the session or added a key.
    assert_eq!(snapshot(&app, &client).await, before);
    assert_eq!(keys(&app, &prefix).await, keys_before);
}

/// Every session call answers each refusal it documents, so the reachability check of
/// scripts/api-fuzz.sh never rests on what random requests happened to hit.
#[tokio::test]
async fn every_session_call_answers_each_documented_refusal() {
    let app = spawn_app(
        Store::Memory,
        "[namespaces.web]\nallowed_origins = [\"https://app.example\"]\n",
    )
    .await;
    for call in SESSION_CALLS {
        let path = format!("/v1/sessions/{call}");
        let body = match call {
            "report" => json!({"namespace": "web", "client": new_client(), "errors": 1}),
            "batch" => json!({"operations": []}),
            _ => json!({"namespace": "web", "client": new_client()}),
        };
        app.post(&path, json!({"unknown": 1})).await.problem(400);
        app.post_raw(&path, Some("application/xml"), "<a/>")
            .await
            .problem(415);
        if call != "batch" {
            let unknown = json!({"namespace": "nowhere", "client": new_client(), "errors": 1});
            let unknown = match call {
                "report" => unknown,
                _ => json!({"namespace": "nowhere", "client": new_client()}),
            };
            app.post(&path, unknown).await.problem(404);
            let foreign = [("origin", "https://elsewhere.example")];
            let answer = app
                .request(Method::POST, &path, &foreign, Some(body.clone()))
                .await;
            answer.problem(403);
        }
        let allowed = [("origin", "https://app.example")];
        let preflight = app.request(Method::OPTIONS, &path, &allowed, None).await;
        assert_eq!(preflight.status, 204, "{call}: {}", preflight.text);
        let foreign = [("origin", "https://elsewhere.example")];
        app.request(Method::OPTIONS, &path, &foreign, None)
            .await
            .problem(403);
        app.request(Method::OPTIONS, &path, &[], None)
            .await
            .problem(405);
    }
    app.get("/v1/events?limit=0").await.problem(400);
    app.get("/v1/stats?namespace=nowhere").await.problem(404);
    app.get("/v1/stats?from=2026-01-01T00:00:00Z&to=2026-03-01T00:00:00Z")
        .await
        .problem(400);
    // A window outside the years stats are kept in is refused, not read as 1970.
    let early = app
        .get("/v1/stats?from=1969-12-31T00:00:00Z&to=1970-01-01T01:00:00Z")
        .await
        .problem(400);
    assert_eq!(early["field"], "from");
    // A repeated parameter is refused: no reader may take another one of them than sessiond.
    let repeated = app.get("/v1/events?limit=5&limit=1000").await.problem(400);
    assert_eq!(repeated["field"], "limit");
    app.get("/v1/stats?namespace=default&namespace=default")
        .await
        .problem(400);
}
