//! What only the Redis store has to prove: every key of a client, a session or a day of stats
//! expires or is dropped by the sweeper once past retention, the per-bucket health keys stay
//! bounded, and raw client keys never reach Redis.

use redis::AsyncCommands;
use serde_json::json;

use crate::helpers::{
    SWEEP_BOUND, eventually, millis, new_client, spawn_on_redis, wait_past, wait_until,
};
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
    let keys: Vec<String> = con.keys(format!("{prefix}:*")).await.unwrap();
    let of_kind = |kind: &str| keys.iter().filter(|k| k.contains(kind)).count();
    let fields = |kind: &'static str| {
        let (mut con, keys) = (con.clone(), keys.clone());
        async move {
            let mut fields = 0;
            for key in keys.iter().filter(|k| k.contains(kind)) {
                fields += con.hlen::<_, usize>(key).await.unwrap();
            }
            fields
        }
    };
    // a: current session, archive and two id pointers; b: current session and one id pointer.
    // Current sessions are fields of records hashes, pointers fields of pointer hashes, each
    // shared by the clients or ids that start alike.
    assert_eq!((fields(":r:").await, of_kind(":a:")), (2, 1), "{keys:?}");
    assert_eq!(fields(":i:").await, 3, "{keys:?}");
    // The buckets of a and b (one or two) each hold a stats day, an event stream and the wake
    // index of their records hashes.
    let buckets = of_kind(":ev");
    assert!((1..=2).contains(&buckets), "{keys:?}");
    assert_eq!(
        (of_kind(":s:"), of_kind(":wake")),
        (buckets, buckets),
        "{keys:?}"
    );
    assert_eq!(
        keys.len(),
        of_kind(":r:") + 1 + of_kind(":i:") + 3 * buckets,
        "{keys:?}"
    );
    for key in &keys {
        let ttl: i64 = con.pttl(key).await.unwrap();
        // Event streams keep no expiry (their consumer groups would vanish with them); they
        // are trimmed to `events_max_len` instead. The sweeper drops records past retention,
        // and with them the records hashes and wake entries (tested below).
        let bounded_otherwise =
            key.ends_with(":ev") || key.ends_with(":wake") || key.contains(":r:");
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

/// The records hash (`PREFIX:{B}:r:XX`) and field (`NS:HASH`) of the one client of a prefix.
async fn record_of_one_client(
    con: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> (String, String) {
    let records: Vec<String> = con.keys(format!("{prefix}:*:r:*")).await.unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    let members: Vec<String> = con.hkeys(&records[0]).await.unwrap();
    assert_eq!(members.len(), 1, "{members:?}");
    (records[0].clone(), members[0].clone())
}

/// A client's record past client retention is gone: its next call starts its first session
/// again, even before the sweeper has dropped the record (it runs seldom here).
#[tokio::test]
async fn a_record_past_client_retention_is_gone_before_the_sweeper_drops_it() {
    let redis = redis_server::shared();
    let prefix = format!("g{}", &new_client()[..12]);
    let config = format!(
        "key_prefix = \"{prefix}\"\nsweep_interval = \"60s\"\nclient_retention = \"2s\"\nsession_retention = \"1s\"\n[namespaces.web]\nidle_timeout = \"1s\""
    );
    let app = spawn_on_redis(&config, redis.clone()).await;
    let client = new_client();
    let first = app
        .tick(json!({"namespace": "web", "client": client}))
        .await
        .expect(200);
    wait_until(millis(&first["last_activity_at"]) + 2_000).await;
    let mut con = redis.connection().await;
    let (records, member) = record_of_one_client(&mut con, &prefix).await;

    let again = app
        .tick(json!({"namespace": "web", "client": client}))
        .await
        .expect(200);
    assert_eq!(again["created"], true);
    assert_eq!(again["index"], 1, "a new client again: {again}");
    assert_eq!(again["previous_session_id"], json!(null));
    let record: Vec<u8> = con.hget(&records, &member).await.unwrap();
    assert_eq!(record.first(), Some(&2), "the new session's record");
}

/// The sweeper drops records past client retention, and with the last of a records hash its
/// entry in the wake index: neither grows with clients that went away.
#[tokio::test]
async fn the_sweeper_drops_records_past_client_retention() {
    let redis = redis_server::shared();
    let prefix = format!("h{}", &new_client()[..12]);
    let config = format!(
        "key_prefix = \"{prefix}\"\nsweep_interval = \"100ms\"\nclient_retention = \"2s\"\nsession_retention = \"1s\"\n[namespaces.web]\nidle_timeout = \"1s\""
    );
    let app = spawn_on_redis(&config, redis.clone()).await;
    let mut last = 0;
    for _ in 0..3 {
        let answer = app
            .tick(json!({"namespace": "web", "client": new_client()}))
            .await
            .expect(200);
        last = millis(&answer["last_activity_at"]);
    }
    let con = redis.connection().await;
    let kept = |pattern: &str| {
        let (mut con, pattern) = (con.clone(), format!("{prefix}:*:{pattern}"));
        async move { con.keys::<_, Vec<String>>(pattern).await.unwrap().len() }
    };
    assert!(kept("r:*").await >= 1 && kept("wake").await >= 1);
    wait_until(last + 2_000).await;
    let dropped = eventually(SWEEP_BOUND, || async {
        kept("r:*").await == 0 && kept("wake").await == 0
    })
    .await;
    assert!(dropped, "records hashes and wake entries are gone");
}

/// The Redis bytes one client costs with the default budgets (README, "Storage per client"),
/// each key's MEMORY USAGE summed over every key the clients wrote but the event streams
/// (`events_max_len` bounds them for the whole deployment). Every client is as costly as the
/// defaults allow: each attribute value at the 128-byte budget, its own user and platform, a
/// release and environment among the day's caps, eight crash reports by report_id, and its
/// session ended. 1,000 such clients share no records hash, so each pays a hash of its own.
#[tokio::test]
async fn the_costliest_client_the_defaults_allow_keeps_under_2_kb_of_redis() {
    const CLIENTS: usize = 1_000;
    let redis = std::sync::Arc::new(redis_server::RedisServer::start());
    let app = spawn_on_redis("[namespaces.web]\n", redis.clone()).await;
    let mut con = redis.connection().await;
    // 128 bytes each: 40 three-byte characters, then 8 of one byte.
    let value = |tag: &str, n: usize| format!("{}{tag}{n:07}", "€".repeat(40));
    let clients: Vec<String> = (0..CLIENTS).map(|_| new_client()).collect();
    let attributes = |n: usize| {
        json!({
            "release": value("r", n % 20),
            "environment": value("e", n % 10),
            "platform": value("p", n),
            "user_id": value("u", n),
        })
    };
    for n in 0..CLIENTS {
        assert_eq!(attributes(n)["user_id"].as_str().unwrap().len(), 128);
    }
    let usage = |mut con: redis::aio::MultiplexedConnection| async move {
        let keys: Vec<String> = con.keys("sd:*").await.unwrap();
        let mut bytes = 0u64;
        let mut groups = std::collections::BTreeMap::new();
        for key in keys.iter().filter(|k| !k.ends_with(":ev")) {
            let used: Option<u64> = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(key)
                .arg("SAMPLES")
                .arg(0)
                .query_async(&mut con)
                .await
                .unwrap();
            bytes += used.unwrap_or(0);
            let kind = key.split(':').nth(2).unwrap_or("").to_owned();
            *groups.entry(kind).or_insert(0u64) += used.unwrap_or(0);
        }
        println!("{groups:?} over {} keys", keys.len());
        bytes
    };
    for (chunk, names) in clients.chunks(10).enumerate() {
        let mut ops = Vec::new();
        for (k, client) in names.iter().enumerate() {
            let n = chunk * 10 + k;
            ops.push(json!({"op": "tick", "namespace": "web", "client": client,
                            "attributes": attributes(n)}));
            for r in 0..8 {
                let report_id = format!("{n:06}-{r:02}-{}", "x".repeat(54));
                ops.push(json!({"op": "report", "namespace": "web", "client": client,
                                "errors": 1000, "crashed": true, "report_id": report_id}));
            }
            ops.push(json!({"op": "end", "namespace": "web", "client": client}));
        }
        let answers = app.batch(json!(ops)).await.expect(200);
        for result in answers["results"].as_array().unwrap() {
            assert!(result["session_id"].is_string(), "{result}");
        }
    }
    let one_session = usage(con.clone()).await;
    // A second session each: the first is archived, readable by id for session_retention.
    for names in clients.chunks(100) {
        let ops: Vec<_> = names
            .iter()
            .map(|c| json!({"op": "tick", "namespace": "web", "client": c}))
            .collect();
        app.batch(json!(ops)).await.expect(200);
    }
    let two_sessions = usage(con.clone()).await;
    let per_client = one_session / CLIENTS as u64;
    let per_archived = (two_sessions - one_session) / CLIENTS as u64;
    println!(
        "Redis bytes per client: {per_client} with one session; each earlier session still retained adds {per_archived}"
    );
    assert!(per_client <= 2048, "{per_client} bytes per client");
    let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await.unwrap();
}

/// `limits.scope = "store"`: two instances' counts meet in their window's hash, which expires
/// three windows on, and each instance is listed as alive in `sd:instances`.
#[tokio::test]
async fn shared_limits_keep_their_counts_for_three_windows_and_list_the_instances() {
    let redis = std::sync::Arc::new(redis_server::RedisServer::start());
    let config = "[limits]\nscope = \"store\"\nshared_window = \"2s\"\n";
    let first = spawn_on_redis(config, redis.clone()).await;
    let second = spawn_on_redis(config, redis.clone()).await;
    let client = new_client();
    for app in [&first, &second, &first] {
        app.tick(json!({"client": client})).await.expect(200);
    }
    let con = redis.connection().await;
    let shared = eventually(std::time::Duration::from_secs(10), || {
        let mut con = con.clone();
        async move {
            let instances: usize = con.hlen("sd:instances").await.unwrap();
            let windows: Vec<String> = con.keys("sd:*:l:*").await.unwrap();
            let mut counted = 0;
            for key in &windows {
                let counts: std::collections::HashMap<String, u64> =
                    con.hgetall(key).await.unwrap();
                counted += counts
                    .iter()
                    .filter(|(f, _)| f.starts_with('c'))
                    .map(|(_, n)| n)
                    .sum::<u64>();
            }
            instances == 2 && counted == 3
        }
    })
    .await;
    assert!(
        shared,
        "both instances listed, and the client's three calls counted once each"
    );
    let metrics = first.get("/metrics").await.text;
    assert!(metrics.contains("call=\"share_limits\""), "{metrics}");
    // In memory the process is every instance: nothing is shared.
    let alone = crate::helpers::spawn_app(crate::helpers::Store::Memory, config).await;
    alone.tick(json!({"client": client})).await.expect(200);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let metrics = alone.get("/metrics").await.text;
    assert!(!metrics.contains("call=\"share_limits\""), "{metrics}");
    let mut con = con.clone();
    let windows: Vec<String> = con.keys("sd:*:l:*").await.unwrap();
    for key in windows {
        let ttl: i64 = con.pttl(&key).await.unwrap();
        assert!((1..=6_000).contains(&ttl), "{key} expires in {ttl} ms");
    }
}
