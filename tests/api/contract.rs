//! The API description: served byte for byte, and every documented operation routed.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{Store, spawn_app};
use crate::spec::{OPENAPI_YAML, spec};

#[tokio::test]
async fn the_served_openapi_file_is_the_repository_file() {
    let app = spawn_app(Store::Memory, "").await;
    let served = app.get("/openapi.yaml").await;
    assert_eq!(served.status, 200);
    assert_eq!(served.header("content-type"), Some("application/yaml"));
    assert_eq!(served.text, OPENAPI_YAML);
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_answers_as_documented() {
    let app = spawn_app(
        Store::Memory,
        "demo = true\n[namespaces.web]\nallowed_origins = [\"https://a.example\"]",
    )
    .await;
    let paths = spec().doc()["paths"].as_object().unwrap().clone();
    for (template, item) in paths {
        let path = template.replace("{session_id}", "0123456789abcdef0123");
        for method in item.as_object().unwrap().keys() {
            let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
            let headers: &[(&str, &str)] = if method == Method::OPTIONS {
                &[
                    ("origin", "https://a.example"),
                    ("access-control-request-method", "POST"),
                ]
            } else {
                &[]
            };
            let body = (method == Method::POST).then(|| json!({"operations": []}));
            let body = if path.ends_with("/batch") {
                body
            } else {
                body.map(|_| json!({}))
            };
            // The helper checks the answer against the document; here it must also be routed.
            let answer = app.request(method.clone(), &path, headers, body).await;
            assert!(
                !matches!(answer.status, 405)
                    && !answer.text.contains("urn:sessiond:problem:not-found"),
                "{method} {path} is documented but not routed: {}",
                answer.text
            );
        }
    }
}

#[tokio::test]
async fn health_and_metrics_answer() {
    let app = spawn_app(Store::Memory, "").await;
    assert_eq!(app.get("/healthz").await.expect(200)["status"], "ok");
    assert_eq!(app.get("/readyz").await.expect(200)["store"], "memory");
    app.tick(json!({})).await.expect(200);
    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.text.contains(
            "sessiond_sessions_created_total{namespace=\"default\",reason=\"new_client\"} 1"
        ),
        "{}",
        metrics.text
    );
    assert!(metrics.text.contains("sessiond_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/sessions/tick\",status=\"200\"} 1"), "{}", metrics.text);
}

/// Requests are labelled by route pattern, whatever path matched it; a method outside the
/// standard ones and a path no route matches have one label each, so callers cannot grow
/// the label set.
#[tokio::test]
async fn request_metrics_label_by_route_pattern() {
    let app = spawn_app(Store::Memory, "").await;
    let id_lookup = app.get("/v1/sessions/0123456789abcdef0123").await.status;
    app.get("/v1/sessions/tick").await.expect(405);
    app.get("/no/such/path").await.expect(404);
    let purge = reqwest::Method::from_bytes(b"PURGE").unwrap();
    app.request(purge, "/v1/sessions/tick", &[], None)
        .await
        .expect(405);
    let metrics = app.get("/metrics").await.text;
    for series in [
        format!(r#"{{method="GET",route="/v1/sessions/{{session_id}}",status="{id_lookup}"}} 1"#),
        r#"{method="GET",route="/v1/sessions/tick",status="405"} 1"#.to_owned(),
        r#"{method="GET",route="unmatched",status="404"} 1"#.to_owned(),
        r#"{method="other",route="/v1/sessions/tick",status="405"} 1"#.to_owned(),
    ] {
        let line = format!("sessiond_http_request_duration_seconds_count{series}");
        assert!(metrics.contains(&line), "no {line} in\n{metrics}");
    }
}
