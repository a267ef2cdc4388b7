//! What only the Redis store has to prove: every key of a client, a session or a day of stats
//! expires or is dropped by the sweeper once past retention, the per-bucket health keys stay
//! bounded, raw client keys never reach Redis, and records of earlier versions are still read.

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
    // index of their records hashes; nothing is left in an earlier version's keys.
    let buckets = of_kind(":ev");
    assert!((1..=2).contains(&buckets), "{keys:?}");
    assert_eq!(
        (
            of_kind(":s:"),
            of_kind(":wake"),
            of_kind(":c:"),
            of_kind(":due")
        ),
        (buckets, buckets, 0, 0),
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

/// A session kept by an earlier version, as JSON or packed in the fixed-width format 1, in a
/// key of its own, is still read: the client keeps its session, and the record moves to its
/// records hash in the compact format on its next change.
#[tokio::test]
async fn a_session_record_an_earlier_version_wrote_is_still_read() {
    let redis = redis_server::shared();
    let prefix = format!("j{}", &new_client()[..12]);
    let app = spawn_on_redis(&format!("key_prefix = \"{prefix}\""), redis.clone()).await;
    for format in ["json", "fixed width"] {
        let client = new_client();
        let first = app
            .tick(json!({"client": client, "attributes": {"release": "1.0"}}))
            .await
            .expect(200);
        let mut con = redis.connection().await;
        let (records, member) = record_of_client(&mut con, &prefix, &first).await;
        let id = first["session_id"].as_str().unwrap();
        let started = millis(&first["started_at"]);
        let earlier = match format {
            "json" => json!({"s": id, "i": 1, "t0": started, "t": started, "st": "ok",
                "r": "new_client", "a": {"release": "1.0"}, "px": started + 86_400_000})
            .to_string()
            .into_bytes(),
            _ => fixed_width_record(id, started, "1.0"),
        };
        let earlier_key = earlier_key_of(&records, &member);
        let _: () = con.hdel(&records, &member).await.unwrap();
        let _: () = con.set(&earlier_key, earlier).await.unwrap();

        for call in ["current", "tick"] {
            let answer = app
                .post(&format!("/v1/sessions/{call}"), json!({"client": client}))
                .await
                .expect(200);
            assert_eq!(answer["session_id"], id, "{format} {call}");
            assert_eq!(answer["created"], false, "{format} {call}");
            assert_eq!(answer["index"], 1, "{format} {call}");
            assert_eq!(answer["attributes"]["release"], "1.0", "{format} {call}");
        }
        let record: Vec<u8> = con.hget(&records, &member).await.unwrap();
        assert_eq!(record.first(), Some(&2), "{format}: compact after the tick");
        let left: bool = con.exists(&earlier_key).await.unwrap();
        assert!(
            !left,
            "{format}: the earlier key is gone once the record moved"
        );
    }
}

/// A live session's record as earlier versions packed it (format 1: fixed width, ids in hex).
fn fixed_width_record(id: &str, started: i64, release: &str) -> Vec<u8> {
    let mut raw = vec![1, id.len() as u8];
    raw.extend_from_slice(id.as_bytes());
    raw.push(0); // no previous id
    raw.extend_from_slice(&1u32.to_be_bytes());
    // Started, last activity, background since, ended, pointer expiry, errors.
    for n in [started, started, 0, 0, started + 86_400_000, 0] {
        raw.extend_from_slice(&n.to_be_bytes()[2..]);
    }
    raw.extend_from_slice(&[0, 0, 0]); // ok, new_client, not finalized
    for value in [release, "", "", ""] {
        raw.extend_from_slice(&(value.len() as u16).to_be_bytes());
        raw.extend_from_slice(value.as_bytes());
    }
    raw
}

/// The records hash (`PREFIX:{B}:r:XX`) and field (`NS:HASH`) of the client whose session
/// `answer` shows.
async fn record_of_client(
    con: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    answer: &serde_json::Value,
) -> (String, String) {
    let id = answer["session_id"].as_str().unwrap();
    let pointers: Vec<String> = con.keys(format!("{prefix}:*:i:*")).await.unwrap();
    for pointers in pointers {
        if let Some(pointer) = con
            .hget::<_, _, Option<String>>(&pointers, &id[4..])
            .await
            .unwrap()
        {
            let member = pointer.split_once(':').unwrap().1.to_owned();
            // The bucket is the hash's second byte, the records hash its first.
            let hash = member.split_once(':').unwrap().1;
            return (
                format!("{prefix}:{{{}}}:r:{}", &hash[2..4], &hash[..2]),
                member,
            );
        }
    }
    panic!("no pointer for {id}")
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

/// Where an earlier version kept a client's current session: `PREFIX:{B}:c:NS:HASH`.
fn earlier_key_of(records: &str, member: &str) -> String {
    let (bucket, _) = records.split_once(":r:").unwrap();
    format!("{bucket}:c:{member}")
}

/// A session started by an earlier version, which kept its current session and its id's
/// pointer in keys of their own and made its client due in the bucket's one-level index, is
/// still found by id, and the sweeper still finalizes it once it idles out.
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

    // Rewrite its record, pointer and due entry as the earlier version kept them.
    let mut con = redis.connection().await;
    let (records, member) = record_of_one_client(&mut con, &prefix).await;
    let (bucket, sub) = records.split_once(":r:").unwrap();
    let wake = format!("{bucket}:wake");
    let at: i64 = con.zscore(&wake, sub).await.unwrap();
    let record: Vec<u8> = con.hget(&records, &member).await.unwrap();
    let _: () = con.del(&[&records, &wake]).await.unwrap();
    let _: () = con
        .set_ex(earlier_key_of(&records, &member), record, 60)
        .await
        .unwrap();
    let pointers: Vec<String> = con.keys(format!("{prefix}:*:i:*")).await.unwrap();
    assert_eq!(pointers.len(), 1, "{pointers:?}");
    let pointer: String = con.hget(&pointers[0], &id[4..]).await.unwrap();
    assert_eq!(pointer.split_once(':').unwrap().1, member);
    let _: () = con.del(&pointers[0]).await.unwrap();
    let _: () = con
        .set_ex(format!("{prefix}:id:{{{id}}}"), &member, 60)
        .await
        .unwrap();
    let _: () = con
        .zadd(format!("{bucket}:due"), &member, at)
        .await
        .unwrap();

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
