//! What only the Redis store has to prove: every key of a client, a session or a day of stats
//! expires, the per-bucket health keys stay bounded, raw client keys never reach Redis, and
//! records of earlier versions are still read.

use redis::AsyncCommands;
use serde_json::json;

use crate::helpers::{SWEEP_BOUND, eventually, millis, new_client, spawn_on_redis, wait_past};
use crate::redis_server;

#[tokio::test]
async fn client_session_and_stats_keys_expire_and_no_raw_client_key_reaches_redis() {
    let redis = redis_server::shared();
    // A prefix of its own, so this test sees only its keys on the shared server.
    let prefix = format!("t{}", &new_client()[..12]);
    let config = format!(
        "key_prefix = \"{prefix}\"\nsweep_interval = \"100ms\"\n[namespaces.web]\nidle_timeout = \"1s\""
    );
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

    let mut con = redis.connection().await;
    // Once the sweeper has passed b's deadline it drops b's entry (b's session was ended, so
    // finalized already): a due index holds live sessions only, and stays bounded without an
    // expiry (an emptied one is gone). Clients are due in the sub-indexes (`d:XX`) of a bucket.
    let due_pattern = format!("{prefix}:*:d:*");
    let only_a_due = eventually(SWEEP_BOUND, || {
        let mut con = con.clone();
        let due_pattern = due_pattern.clone();
        async move {
            let mut due = Vec::new();
            for key in con.keys::<_, Vec<String>>(due_pattern).await.unwrap() {
                due.extend(con.zrange::<_, Vec<String>>(key, 0, -1).await.unwrap());
            }
            due.len() == 1
        }
    })
    .await;
    assert!(only_a_due, "only a's live session stays due");

    let keys: Vec<String> = con.keys(format!("{prefix}:*")).await.unwrap();
    let of_kind = |kind: &str| keys.iter().filter(|k| k.contains(kind)).count();
    // a: current session, archive and two id pointers; b: current session and one id pointer.
    // Pointers are fields of hashes shared by ids with the same first two bytes.
    assert_eq!((of_kind(":c:"), of_kind(":a:")), (2, 1), "{keys:?}");
    let mut pointers = 0;
    for key in keys.iter().filter(|k| k.contains(":i:")) {
        pointers += con.hlen::<_, usize>(key).await.unwrap();
    }
    assert_eq!(pointers, 3, "{keys:?}");
    // The buckets of a and b (one or two) each hold a stats day and an event stream; a's
    // holds the one due index and its one sub-index.
    let buckets = of_kind(":ev");
    assert!((1..=2).contains(&buckets), "{keys:?}");
    assert_eq!(
        (of_kind(":s:"), of_kind(":due"), of_kind(":d:")),
        (buckets, 1, 1),
        "{keys:?}"
    );
    assert_eq!(keys.len(), 5 + of_kind(":i:") + 2 * buckets, "{keys:?}");
    for key in &keys {
        let ttl: i64 = con.pttl(key).await.unwrap();
        // Event streams keep no expiry (their consumer groups would vanish with them); they
        // are trimmed to `events_max_len` instead. Due indexes hold live sessions only.
        let bounded_otherwise =
            key.ends_with(":ev") || key.ends_with(":due") || key.contains(":d:");
        assert!(ttl > 0 || bounded_otherwise, "{key} has no expiry ({ttl})");
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
            // Session records are packed binary; their text parts show through.
            "string" => {
                String::from_utf8_lossy(&con.get::<_, Vec<u8>>(key).await.unwrap()).into_owned()
            }
            "hash" => con
                .hgetall::<_, Vec<Vec<u8>>>(key)
                .await
                .unwrap()
                .iter()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            "zset" => format!(
                "{:?}",
                con.zrange::<_, Vec<String>>(key, 0, -1).await.unwrap()
            ),
            "stream" => format!(
                "{:?}",
                redis::cmd("XRANGE")
                    .arg(key)
                    .arg("-")
                    .arg("+")
                    .query_async::<redis::Value>(&mut con)
                    .await
                    .unwrap()
            ),
            other => panic!("unexpected key type {other} for {key}"),
        };
        assert!(
            !value.contains(&a) && !value.contains(&b),
            "raw client key in the value of {key}"
        );
    }
}

/// A session kept as JSON by an earlier version is still read: the client keeps its session,
/// and the record is written back packed on its next change.
#[tokio::test]
async fn a_session_record_written_as_json_by_an_earlier_version_is_still_read() {
    let redis = redis_server::shared();
    let prefix = format!("j{}", &new_client()[..12]);
    let app = spawn_on_redis(&format!("key_prefix = \"{prefix}\""), redis.clone()).await;
    let client = new_client();
    let first = app
        .tick(json!({"client": client, "attributes": {"release": "1.0"}}))
        .await
        .expect(200);
    let mut con = redis.connection().await;
    let keys: Vec<String> = con.keys(format!("{prefix}:*:c:*")).await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let started = millis(&first["started_at"]);
    let earlier = json!({"s": first["session_id"], "i": 1, "t0": started, "t": started,
        "st": "ok", "r": "new_client", "a": {"release": "1.0"}, "px": started + 86_400_000});
    let _: () = con.set(&keys[0], earlier.to_string()).await.unwrap();

    for call in ["current", "tick"] {
        let answer = app
            .post(&format!("/v1/sessions/{call}"), json!({"client": client}))
            .await
            .expect(200);
        assert_eq!(answer["session_id"], first["session_id"], "{call}");
        assert_eq!(answer["created"], false, "{call}");
        assert_eq!(answer["attributes"]["release"], "1.0", "{call}");
    }
    let record: Vec<u8> = con.get(&keys[0]).await.unwrap();
    assert_eq!(record.first(), Some(&1), "rewritten packed after the tick");
}

/// A session started by an earlier version, which kept its id's pointer in a key of its own
/// and made its client due in the bucket's one-level index, is still found by id, and the
/// sweeper still finalizes it once it idles out.
#[tokio::test]
async fn a_session_an_earlier_version_started_is_found_by_id_and_swept() {
    let redis = redis_server::shared();
    let prefix = format!("u{}", &new_client()[..12]);
    let config = format!(
        "key_prefix = \"{prefix}\"\nsweep_interval = \"100ms\"\n[namespaces.web]\nidle_timeout = \"1s\""
    );
    let app = spawn_on_redis(&config, redis.clone()).await;
    let first = app
        .tick(json!({"namespace": "web", "client": new_client()}))
        .await
        .expect(200);
    let id = first["session_id"].as_str().unwrap();

    // Rewrite its pointer and due entry as the earlier version kept them.
    let mut con = redis.connection().await;
    let keys = |pattern: &str| {
        let (mut con, pattern) = (con.clone(), format!("{prefix}:*:{pattern}"));
        async move { con.keys::<_, Vec<String>>(pattern).await.unwrap() }
    };
    let (pointers, subs, due) = (keys("i:*").await, keys("d:*").await, keys("due").await);
    assert_eq!((pointers.len(), subs.len(), due.len()), (1, 1, 1));
    let pointer: String = con.hget(&pointers[0], &id[4..]).await.unwrap();
    let owner = pointer.split_once(':').unwrap().1.to_owned();
    let at: i64 = con.zscore(&subs[0], &owner).await.unwrap();
    let _: () = con.del(&[&pointers[0], &subs[0], &due[0]]).await.unwrap();
    let _: () = con
        .set_ex(format!("{prefix}:id:{{{id}}}"), &owner, 60)
        .await
        .unwrap();
    let _: () = con.zadd(&due[0], &owner, at).await.unwrap();

    let found = app.lookup(id).await.expect(200);
    assert_eq!(found["namespace"], "web");
    wait_past(&first["expires_at"]).await;
    let ended = eventually(SWEEP_BOUND, || async {
        let page = app.get("/v1/events?limit=100").await.expect(200);
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "ended" && e["session_id"] == id)
    })
    .await;
    assert!(ended, "the sweeper finalized the earlier version's session");
}
