//! Guarantee 1: at most one live session per client, however many calls race, through
//! however many instances share the store.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::helpers::{Store, TestApp, new_client, spawn_app, spawn_on_redis, wait_past};
use crate::redis_server;

/// Sends `n` calls at once, alternating between the apps, and returns every answer.
pub async fn race(apps: &[Arc<TestApp>], path: &'static str, body: Value, n: usize) -> Vec<Value> {
    let calls = (0..n).map(|i| {
        let app = apps[i % apps.len()].clone();
        let body = body.clone();
        tokio::spawn(async move { app.post(path, body).await.expect(200) })
    });
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("the call task finished"))
        .collect()
}

pub fn ids_and_created(answers: &[Value]) -> (HashSet<String>, usize) {
    let ids = answers
        .iter()
        .map(|a| a["session_id"].as_str().unwrap().to_owned())
        .collect();
    let created = answers.iter().filter(|a| a["created"] == true).count();
    (ids, created)
}

async fn two_instances_on_one_redis() -> Vec<Arc<TestApp>> {
    let redis = redis_server::shared();
    let config = "[namespaces.web]\nidle_timeout = \"1s\"";
    let mut apps = Vec::new();
    for _ in 0..2 {
        apps.push(Arc::new(spawn_on_redis(config, redis.clone()).await));
    }
    apps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_first_calls_through_two_instances_yield_one_session() {
    let apps = two_instances_on_one_redis().await;
    let client = new_client();
    let answers = race(
        &apps,
        "/v1/sessions/current",
        json!({"namespace": "web", "client": client}),
        200,
    )
    .await;
    let (ids, created) = ids_and_created(&answers);
    assert_eq!(ids.len(), 1, "one id for all: {ids:?}");
    assert_eq!(created, 1, "exactly one call started it");
    assert!(answers.iter().all(|a| a["index"] == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_ticks_after_expiry_rotate_exactly_once() {
    let apps = two_instances_on_one_redis().await;
    let client = new_client();
    let body = json!({"namespace": "web", "client": client});
    let first = apps[0].tick(body.clone()).await.expect(200);
    let live = race(&apps, "/v1/sessions/tick", body.clone(), 100).await;
    let (ids, created) = ids_and_created(&live);
    assert_eq!(
        ids,
        HashSet::from([first["session_id"].as_str().unwrap().to_owned()])
    );
    assert_eq!(created, 0, "ticks on a live session never make a second id");
    let last_expiry = live
        .iter()
        .map(|a| a["expires_at"].as_str().unwrap().to_owned())
        .max()
        .unwrap();
    wait_past(&json!(last_expiry)).await;
    let rotated = race(&apps, "/v1/sessions/tick", body, 100).await;
    let (ids, created) = ids_and_created(&rotated);
    assert_eq!(ids.len(), 1, "one new id: {ids:?}");
    assert_eq!(created, 1);
    assert!(
        rotated
            .iter()
            .all(|a| a["index"] == 2 && a["previous_session_id"] == first["session_id"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_memory_store_gives_one_session_to_concurrent_first_calls() {
    let app = Arc::new(spawn_app(Store::Memory, "").await);
    let client = new_client();
    let answers = race(&[app], "/v1/sessions/tick", json!({"client": client}), 200).await;
    let (ids, created) = ids_and_created(&answers);
    assert_eq!(ids.len(), 1);
    assert_eq!(created, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_batches_and_single_calls_agree_on_one_session() {
    let apps = two_instances_on_one_redis().await;
    let client = new_client();
    let op = json!({"op": "tick", "namespace": "web", "client": client});
    let batches = (0..20).map(|i| {
        let app = apps[i % 2].clone();
        let operations = json!([op.clone(), op.clone(), op.clone()]);
        tokio::spawn(async move { app.batch(operations).await.expect(200) })
    });
    let singles = race(
        &apps,
        "/v1/sessions/tick",
        json!({"namespace": "web", "client": client}),
        40,
    )
    .await;
    let mut answers: Vec<Value> = singles;
    for batch in futures_util::future::join_all(batches).await {
        answers.extend(
            batch.unwrap()["results"]
                .as_array()
                .unwrap()
                .iter()
                .cloned(),
        );
    }
    let (ids, created) = ids_and_created(&answers);
    assert_eq!(answers.len(), 100);
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(created, 1);
}
