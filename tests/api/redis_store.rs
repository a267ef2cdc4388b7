//! What only the Redis store has to prove: every key it writes expires, and raw client keys
//! never reach Redis.

use redis::AsyncCommands;
use serde_json::json;

use crate::helpers::{new_client, spawn_on_redis, wait_past};
use crate::redis_server;

#[tokio::test]
async fn every_key_expires_and_no_raw_client_key_reaches_redis() {
    let redis = redis_server::shared();
    // A prefix of its own, so this test sees only its keys on the shared server.
    let prefix = format!("t{}", &new_client()[..12]);
    let config = format!("key_prefix = \"{prefix}\"\n[namespaces.web]\nidle_timeout = \"1s\"");
    let app = spawn_on_redis(&config, redis.clone()).await;
    let (a, b) = (new_client(), new_client());
    let first = app
        .tick(json!({"namespace": "web", "client": a, "attributes": {"user_id": "u"}}))
        .await
        .expect(200);
    app.end(json!({"namespace": "web", "client": b}))
        .await
        .problem(404);
    app.batch(json!([{"op": "tick", "namespace": "web", "client": b}, {"op": "end", "namespace": "web", "client": b}]))
        .await
        .expect(200);
    wait_past(&first["expires_at"]).await;
    app.tick(json!({"namespace": "web", "client": a}))
        .await
        .expect(200);
    app.lookup(first["session_id"].as_str().unwrap())
        .await
        .expect(200);

    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = con.keys(format!("{prefix}:*")).await.unwrap();
    // a: current session, archive and two id pointers; b: current session and one id pointer.
    assert_eq!(keys.len(), 6, "{keys:?}");
    for key in &keys {
        let ttl: i64 = con.pttl(key).await.unwrap();
        assert!(ttl > 0, "{key} has no expiry ({ttl})");
        assert!(
            !key.contains(&a) && !key.contains(&b),
            "raw client key in {key}"
        );
        let kind: String = redis::cmd("TYPE")
            .arg(key)
            .query_async(&mut con)
            .await
            .unwrap();
        let value = match kind.as_str() {
            "string" => con.get::<_, String>(key).await.unwrap(),
            "hash" => format!("{:?}", con.hgetall::<_, Vec<String>>(key).await.unwrap()),
            other => panic!("unexpected key type {other} for {key}"),
        };
        assert!(
            !value.contains(&a) && !value.contains(&b),
            "raw client key in the value of {key}"
        );
    }
}
