//! Redis Cluster under the operations operators run, with the real `redis-cli --cluster`
//! commands, under steady load through two sessiond instances: a live reshard, a scale-out
//! (add-node, then rebalance onto the new primary) and a scale-in (emptying a primary, then
//! del-node and stopping it). Slots move under calls in flight, so every path of the router
//! (MOVED, ASK, TRYAGAIN, NOSCRIPT on a new node, a node that left) is walked for real.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use redis::AsyncCommands;
use redis::Value as Reply;
use redis::aio::ConnectionManagerConfig;
use sessiond::store::redis::cluster::ClusterRouter;

use crate::cluster::tag_of;
use crate::helpers::{ALONE, TestApp, new_client, spawn_on_cluster, wait_past};
use crate::redis_cluster::{Node, RedisCluster};

const CLIENTS: usize = 200;
/// The short namespace's idle timeout: a client that pauses longer starts a new session, and
/// its last session is finalized by the sweeper once the load stops.
const SHORT_IDLE: Duration = Duration::from_secs(4);

/// One call as a client saw it.
struct Call {
    sent: Duration,
    status: u16,
    session_id: Option<String>,
    reason: Option<String>,
    /// The client paused longer than its idle timeout just before this call.
    after_pause: bool,
}

struct Client {
    short: bool,
    calls: Vec<Call>,
}

/// Ticks one client through the instances in turn until `stop`, every 400 to 600 ms; a
/// short-namespace client pauses past its idle timeout every 25 calls or so.
async fn run_client(
    apps: Arc<Vec<TestApp>>,
    n: usize,
    key: String,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> Client {
    let short = n.is_multiple_of(2);
    let namespace = if short { "short" } else { "long" };
    let every = Duration::from_millis(400 + (n as u64 * 37) % 200);
    let mut calls = Vec::new();
    let mut after_pause = false;
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let sent = start.elapsed();
        let answer = apps[i % apps.len()]
            .tick(json!({"namespace": namespace, "client": key}))
            .await;
        let body = (answer.status == 200).then(|| answer.json());
        calls.push(Call {
            sent,
            status: answer.status,
            session_id: body
                .as_ref()
                .map(|b| b["session_id"].as_str().unwrap().into()),
            reason: body.as_ref().map(|b| b["reason"].as_str().unwrap().into()),
            after_pause,
        });
        i += 1;
        after_pause = short && (i + n).is_multiple_of(25);
        let pause = if after_pause {
            SHORT_IDLE + Duration::from_secs(1)
        } else {
            every
        };
        tokio::time::sleep(pause).await;
    }
    Client { short, calls }
}

/// When an operation ran, as offsets from the start of the load.
struct Operation {
    name: &'static str,
    began: Duration,
    finished: Duration,
}

/// The runs of 503s a client saw: how long each lasted, from its first 503 to the next call
/// answered 200 (or the client's last call).
fn unavailable_runs(calls: &[Call]) -> Vec<(Duration, Duration)> {
    let mut runs = Vec::new();
    let mut open: Option<Duration> = None;
    for call in calls {
        match (call.status, open) {
            (503, None) => open = Some(call.sent),
            (200, Some(began)) => {
                runs.push((began, call.sent - began));
                open = None;
            }
            _ => {}
        }
    }
    if let (Some(began), Some(last)) = (open, calls.last()) {
        runs.push((began, last.sent - began));
    }
    runs
}

fn on_cluster<T: Send + 'static>(
    cluster: &Arc<RedisCluster>,
    work: impl FnOnce(&RedisCluster) -> T + Send + 'static,
) -> impl Future<Output = T> {
    let cluster = cluster.clone();
    async move {
        tokio::task::spawn_blocking(move || work(&cluster))
            .await
            .unwrap()
    }
}

/// The ports of the primaries holding the clients' keys now.
fn owners_of(cluster: &RedisCluster, clients: &[String]) -> Vec<u16> {
    let owners = cluster.bucket_owners();
    clients.iter().map(|c| owners[&tag_of(c)]).collect()
}

/// Every event of an app's log, page by page.
async fn all_events(app: &TestApp) -> Vec<Value> {
    let mut events = Vec::new();
    let mut path = "/v1/events?limit=1000".to_owned();
    loop {
        let page = app.get(&path).await.expect(200);
        let batch = page["events"].as_array().unwrap();
        if batch.is_empty() {
            return events;
        }
        events.extend(batch.iter().cloned());
        path = format!(
            "/v1/events?limit=1000&after={}",
            page["next"].as_str().unwrap()
        );
    }
}

/// A counter of an app's /metrics, summed over the series whose labels contain `labels`.
async fn metric(app: &TestApp, name: &str, labels: &str) -> f64 {
    let text = app.get("/metrics").await.text;
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resharding_scaling_out_and_scaling_in_keep_every_session_whole() {
    let _alone = ALONE.lock().await;
    let cluster = Arc::new(
        tokio::task::spawn_blocking(|| RedisCluster::start_with_spares(2))
            .await
            .unwrap(),
    );
    let config = "store_timeout = \"500ms\"\nsweep_interval = \"250ms\"\n\
                  [namespaces.short]\nidle_timeout = \"4s\"\n\
                  [namespaces.long]\nidle_timeout = \"10m\"";
    let apps = Arc::new(vec![
        spawn_on_cluster(config, cluster.clone()).await,
        spawn_on_cluster(config, cluster.clone()).await,
    ]);
    for app in apps.iter() {
        app.get("/readyz").await.expect(200);
    }
    let keys: Vec<String> = (0..CLIENTS).map(|_| new_client()).collect();
    let owners_before: Vec<u16> = {
        let keys = keys.clone();
        on_cluster(&cluster, move |c| owners_of(c, &keys)).await
    };

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(n, key)| {
            tokio::spawn(run_client(
                apps.clone(),
                n,
                key.clone(),
                start,
                stop.clone(),
            ))
        })
        .collect();
    // Calls settle before the first operation.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut operations = Vec::new();
    let began = start.elapsed();
    on_cluster(&cluster, |c| {
        let primaries = c.primaries();
        let (from, to) = (primaries[0].0, primaries[1].0);
        c.redis_cli(&[
            "reshard",
            &from.address(),
            "--cluster-from",
            &from.id(),
            "--cluster-to",
            &to.id(),
            "--cluster-slots",
            "3000",
            "--cluster-yes",
        ]);
    })
    .await;
    operations.push(Operation {
        name: "reshard of 3,000 slots",
        began,
        finished: start.elapsed(),
    });
    tokio::time::sleep(Duration::from_secs(12)).await;

    let began = start.elapsed();
    on_cluster(&cluster, |c| {
        let member = c.nodes[0].address();
        let (primary, replica) = (&c.nodes[6], &c.nodes[7]);
        c.redis_cli(&["add-node", &primary.address(), &member]);
        primary.set_member(true);
        c.wait_until_known(7, Duration::from_secs(30));
        c.redis_cli(&[
            "add-node",
            &replica.address(),
            &member,
            "--cluster-slave",
            "--cluster-master-id",
            &primary.id(),
        ]);
        replica.set_member(true);
        c.wait_until_known(8, Duration::from_secs(30));
        c.redis_cli(&["rebalance", &member, "--cluster-use-empty-masters"]);
        assert!(
            c.primaries().iter().any(|(n, _)| n.port == primary.port),
            "the new primary serves slots"
        );
    })
    .await;
    operations.push(Operation {
        name: "add-node and rebalance",
        began,
        finished: start.elapsed(),
    });
    tokio::time::sleep(Duration::from_secs(12)).await;

    let began = start.elapsed();
    let removed = on_cluster(&cluster, |c| {
        let victim = c.primaries()[0].0;
        let member = c
            .nodes
            .iter()
            .find(|n| n.port != victim.port && n.port != c.nodes[7].port)
            .unwrap()
            .address();
        let weight = format!("{}=0", victim.id());
        c.redis_cli(&["rebalance", &member, "--cluster-weight", &weight]);
        assert!(
            c.primaries().iter().all(|(n, _)| n.port != victim.port),
            "the emptied primary serves no slot"
        );
        c.redis_cli(&["del-node", &member, &victim.id()]);
        victim.set_member(false);
        victim.kill();
        c.wait_until_known(7, Duration::from_secs(30));
        victim.port
    })
    .await;
    operations.push(Operation {
        name: "rebalance off a primary, del-node and stop it",
        began,
        finished: start.elapsed(),
    });
    tokio::time::sleep(Duration::from_secs(12)).await;

    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for client in clients {
        seen.push(client.await.unwrap());
    }
    let ended_load = start.elapsed();

    // Only 200 and 503; every 503 run short, and none 10 s after an operation finished.
    for (n, client) in seen.iter().enumerate() {
        assert!(client.calls.len() > 20, "client {n} kept calling");
        for call in &client.calls {
            assert!(
                matches!(call.status, 200 | 503),
                "client {n} got {} at {:?}",
                call.status,
                call.sent
            );
        }
    }
    for (i, op) in operations.iter().enumerate() {
        let quiet_from = op.finished + Duration::from_secs(10);
        let quiet_to = operations.get(i + 1).map_or(ended_load, |next| next.began);
        let mut runs = Vec::new();
        let mut unavailable = 0;
        for client in &seen {
            let during: Vec<&Call> = client
                .calls
                .iter()
                .filter(|c| c.sent >= op.began && c.sent < quiet_to)
                .collect();
            unavailable += during.iter().filter(|c| c.status == 503).count();
            let late: Vec<_> = during
                .iter()
                .filter(|c| c.status == 503 && c.sent >= quiet_from)
                .map(|c| c.sent)
                .collect();
            assert!(
                late.is_empty(),
                "{}: 503s 10 s after it finished ({:?}): {late:?}",
                op.name,
                op.finished
            );
            runs.extend(
                unavailable_runs(&client.calls)
                    .into_iter()
                    .filter(|(at, _)| *at >= op.began && *at < quiet_to)
                    .map(|(_, took)| took),
            );
        }
        let worst = runs.iter().max().copied().unwrap_or_default();
        eprintln!(
            "{}: took {:?}; {unavailable} calls answered 503; worst run of 503s {worst:?}",
            op.name,
            op.finished - op.began
        );
        assert!(
            worst < Duration::from_secs(2),
            "{}: a client saw 503s for {worst:?}",
            op.name
        );
    }

    // A client's id changes only after it paused past its idle timeout, and then it does.
    let mut owner_of_id: HashMap<&str, usize> = HashMap::new();
    let mut rotations = 0;
    for (n, client) in seen.iter().enumerate() {
        let answered: Vec<&Call> = client.calls.iter().filter(|c| c.status == 200).collect();
        for pair in answered.windows(2) {
            let (before, after) = (pair[0], pair[1]);
            let paused = client
                .calls
                .iter()
                .any(|c| c.after_pause && c.sent > before.sent && c.sent <= after.sent);
            let changed = before.session_id != after.session_id;
            assert_eq!(
                changed, paused,
                "client {n}: session {:?} at {:?} then {:?} at {:?}, paused: {paused}",
                before.session_id, before.sent, after.session_id, after.sent
            );
            if changed {
                rotations += 1;
                assert_eq!(after.reason.as_deref(), Some("idle_timeout"));
            }
        }
        for call in &answered {
            let id = call.session_id.as_deref().unwrap();
            let first = *owner_of_id.entry(id).or_insert(n);
            assert_eq!(first, n, "session {id} was given to two clients");
        }
    }
    assert!(rotations > 50, "short clients rotated: {rotations}");

    // Every session started once; every short one (the load stopped, so each idles out and
    // the sweeper finalizes the last) ended exactly once, the long ones not at all.
    let short_ids: HashSet<&str> = seen
        .iter()
        .filter(|c| c.short)
        .flat_map(|c| c.calls.iter().filter_map(|c| c.session_id.as_deref()))
        .collect();
    let all_ids: HashSet<&str> = owner_of_id.keys().copied().collect();
    // Polled: the sweeper's work is seen, not triggered.
    let deadline = Instant::now() + SHORT_IDLE + Duration::from_secs(10);
    let events = loop {
        let events = all_events(&apps[0]).await;
        let ended: HashSet<&str> = events
            .iter()
            .filter(|e| e["type"] == "ended")
            .filter_map(|e| e["session_id"].as_str())
            .collect();
        let finalized = short_ids.iter().all(|id| ended.contains(id));
        if finalized || Instant::now() > deadline {
            assert!(finalized, "every short session was finalized");
            break events;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut counts: HashMap<(&str, &str), usize> = HashMap::new();
    for event in &events {
        let id = event["session_id"].as_str().unwrap();
        *counts
            .entry((id, event["type"].as_str().unwrap()))
            .or_default() += 1;
    }
    for id in &all_ids {
        assert_eq!(counts.get(&(*id, "started")), Some(&1), "{id} started once");
        let ended = counts.get(&(*id, "ended")).copied().unwrap_or(0);
        let expected = usize::from(short_ids.contains(id));
        assert_eq!(ended, expected, "{id} ended {ended} times");
    }

    // The sweeper finalized the last sessions of clients whose buckets moved.
    let owners_after: Vec<u16> = {
        let keys = keys.clone();
        on_cluster(&cluster, move |c| owners_of(c, &keys)).await
    };
    let moved_and_swept = seen
        .iter()
        .zip(owners_before.iter().zip(&owners_after))
        .filter(|(client, (before, after))| client.short && before != after)
        .count();
    assert!(
        moved_and_swept > 10,
        "short clients whose buckets moved: {moved_and_swept}"
    );
    assert!(
        owners_after.iter().all(|port| *port != removed),
        "no client is served by the removed node"
    );
    for app in apps.iter() {
        assert!(metric(app, "sessiond_store_redirects_total", "kind=\"moved\"").await > 0.0);
        // Read at the first call, on the MOVED answers, and every 5 s.
        let refreshes = metric(app, "sessiond_store_slot_map_refreshes_total", "").await;
        assert!(refreshes >= 10.0, "slot map refreshes: {refreshes}");
        let age = metric(app, "sessiond_store_slot_map_age_seconds", "").await;
        assert!((0.0..=6.0).contains(&age), "slot map age: {age}");
        app.get("/readyz").await.expect(200);
    }
}

/// Starts migrating a slot from `from` to `to` by hand, as redis-cli does it, and moves the
/// slot's keys that `moves` picks.
fn begin_migration(from: &Node, to: &Node, slot: i64, moves: impl Fn(&str) -> bool) {
    let slot = slot.to_string();
    for (node, state, other) in [(to, "IMPORTING", from), (from, "MIGRATING", to)] {
        node.query(&["CLUSTER", "SETSLOT", &slot, state, &other.id()])
            .unwrap();
    }
    migrate_keys(from, to, &slot, moves);
}

/// Moves the slot's keys that `moves` picks from `from` to `to` with MIGRATE.
fn migrate_keys(from: &Node, to: &Node, slot: &str, moves: impl Fn(&str) -> bool) {
    let Ok(Reply::Array(keys)) = from.query(&["CLUSTER", "GETKEYSINSLOT", slot, "10000"]) else {
        panic!("GETKEYSINSLOT answers")
    };
    let keys: Vec<String> = keys
        .into_iter()
        .filter_map(|k| match k {
            Reply::BulkString(k) => String::from_utf8(k).ok(),
            _ => None,
        })
        .filter(|k| moves(k))
        .collect();
    if keys.is_empty() {
        return;
    }
    let port = to.port.to_string();
    let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
    args.extend(keys.iter().map(String::as_str));
    // A key created on the target while the slot migrated would make this fail (BUSYKEY).
    let answer = from.query(&args);
    assert!(
        matches!(answer, Ok(Reply::Okay)),
        "MIGRATE {keys:?}: {answer:?}"
    );
}

/// Moves the slot's remaining keys and gives the slot to `to` on every node.
fn finish_migration(cluster: &RedisCluster, from: &Node, to: &Node, slot: i64) {
    let slot = slot.to_string();
    migrate_keys(from, to, &slot, |_| true);
    let owner = to.id();
    for node in [to, from] {
        node.query(&["CLUSTER", "SETSLOT", &slot, "NODE", &owner])
            .unwrap();
    }
    for (node, _) in cluster.primaries() {
        let _ = node.query(&["CLUSTER", "SETSLOT", &slot, "NODE", &owner]);
    }
}

/// A slot caught halfway through its migration, its records hashes moved and the rest of the
/// bucket (events, stats, wake index, archives) not yet: a tick that only extends a session is
/// answered at once, from the target after ASK; calls whose scripts write several keys (an
/// end, a batch) wait until the slot is whole again, then answer; no key is created on the
/// target while the source still holds it, so the migration completes; and every session
/// still starts and ends exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_caught_mid_migration_holds_calls_that_write_several_keys_until_it_is_whole() {
    let _alone = ALONE.lock().await;
    let cluster = Arc::new(
        tokio::task::spawn_blocking(RedisCluster::start)
            .await
            .unwrap(),
    );
    let app = spawn_on_cluster(
        "store_timeout = \"3s\"\n[namespaces.web]\nidle_timeout = \"1s\"",
        cluster.clone(),
    )
    .await;
    // Two clients of one bucket, each with a rotated session, so the bucket has records, an
    // archive, events, stats and a wake index.
    let a = new_client();
    let tag = tag_of(&a);
    let b = std::iter::repeat_with(new_client)
        .find(|c| tag_of(c) == tag)
        .unwrap();
    let mut firsts = Vec::new();
    for client in [&a, &b] {
        let first = app
            .tick(json!({"namespace": "web", "client": client}))
            .await
            .expect(200);
        firsts.push(first);
    }
    wait_past(&firsts[1]["expires_at"]).await;
    let mut seconds = Vec::new();
    for client in [&a, &b] {
        let second = app
            .tick(json!({"namespace": "web", "client": client}))
            .await
            .expect(200);
        assert_eq!(second["reason"], "idle_timeout");
        seconds.push(second);
    }

    // A router of its own that learns the slot map now, before the slot moves, for the
    // pipeline and the transaction below.
    let mut router = ClusterRouter::new(
        &cluster.urls(),
        ConnectionManagerConfig::new().set_response_timeout(Some(Duration::from_secs(2))),
        Duration::from_secs(2),
    )
    .unwrap();
    let moved_key = format!("t:{tag}:k");
    let _: () = router.set(&moved_key, "before").await.unwrap();

    let (from, to, slot) = on_cluster(&cluster, move |c| {
        let from = c.primary_for(&tag).port;
        let to = c
            .primaries()
            .iter()
            .map(|(n, _)| n.port)
            .find(|p| *p != from)
            .unwrap();
        let slot = match c.nodes[0].query(&["CLUSTER", "KEYSLOT", &tag]) {
            Ok(Reply::Int(slot)) => slot,
            other => panic!("KEYSLOT answered {other:?}"),
        };
        let (from_node, to_node) = (c.node(from), c.node(to));
        begin_migration(from_node, to_node, slot, |key| key.contains(":r:"));
        (from, to, slot)
    })
    .await;

    let hot = app
        .tick(json!({"namespace": "web", "client": a}))
        .await
        .expect(200);
    assert_eq!(hot["session_id"], seconds[0]["session_id"]);
    let app = Arc::new(app);
    let end = {
        let (app, a) = (app.clone(), a.clone());
        tokio::spawn(async move { app.end(json!({"namespace": "web", "client": a})).await })
    };
    let batch = {
        let (app, b) = (app.clone(), b.clone());
        tokio::spawn(async move {
            app.batch(json!([{"op": "end", "namespace": "web", "client": b}]))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !end.is_finished(),
        "an end waits while the slot migrates: {:?}",
        if end.is_finished() {
            Some(end.await.unwrap().text)
        } else {
            None
        }
    );
    assert!(
        !batch.is_finished(),
        "a batch waits while the slot migrates: {:?}",
        if batch.is_finished() {
            Some(batch.await.unwrap().text)
        } else {
            None
        }
    );
    on_cluster(&cluster, move |c| {
        finish_migration(c, c.node(from), c.node(to), slot);
    })
    .await;
    end.await.unwrap().expect(200);
    let batch = batch.await.unwrap().expect(200);
    // The router still maps the slot to its old owner: a pipeline's commands and a
    // transaction each follow the MOVED they get there.
    let (read, other): (String, Option<String>) = redis::pipe()
        .get(&moved_key)
        .get("t:{elsewhere}:k")
        .query_async(&mut router)
        .await
        .unwrap();
    assert_eq!((read.as_str(), other), ("before", None));
    let (written,): (String,) = redis::pipe()
        .atomic()
        .set(&moved_key, "after")
        .ignore()
        .get(&moved_key)
        .query_async(&mut router)
        .await
        .unwrap();
    assert_eq!(written, "after");
    assert_eq!(
        batch["results"][0]["session_id"], seconds[1]["session_id"],
        "{batch}"
    );
    assert_eq!(batch["results"][0]["status"], "exited", "{batch}");

    let events = all_events(&app).await;
    for session in firsts.iter().chain(&seconds) {
        let id = session["session_id"].as_str().unwrap();
        for kind in ["started", "ended"] {
            let n = events
                .iter()
                .filter(|e| e["session_id"] == id && e["type"] == kind)
                .count();
            assert_eq!(n, 1, "{id}: {n} {kind} events");
        }
    }
    for kind in ["ask", "tryagain"] {
        let followed = metric(
            &app,
            "sessiond_store_redirects_total",
            &format!("kind=\"{kind}\""),
        )
        .await;
        assert!(followed > 0.0, "{kind} redirections followed: {followed}");
    }
}
