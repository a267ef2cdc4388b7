//! What only Redis Cluster has to prove: one session per client through several instances
//! for clients on every primary, and an honest failover (CONTRACT sections 5 and 6). The
//! behaviour and health suites run on the cluster too (`on_every_store!`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sessiond::domain::{ClientHasher, ClientKey};
use sessiond::store::redis::client_hash_tag;

use crate::concurrency::{ids_and_created, race};
use crate::helpers::{ALONE, SECRET, TestApp, new_client, spawn_on_cluster};
use crate::redis_cluster::{self, RedisCluster};

/// The hash tag of a client's keys, which names its bucket.
pub fn tag_of(client: &str) -> String {
    let key = ClientKey::parse(client, 1).unwrap();
    client_hash_tag(&ClientHasher::new(&SECRET.into()).hash(&key))
}

/// The port of the primary holding a client's keys.
fn primary_of(cluster: &RedisCluster, client: &str) -> u16 {
    cluster.primary_for(&tag_of(client)).port
}

/// `per_primary` fresh clients for each primary of the cluster, by primary port.
fn clients_on_every_primary(
    cluster: &RedisCluster,
    per_primary: usize,
) -> HashMap<u16, Vec<String>> {
    let primaries = cluster.primaries().len();
    let mut clients: HashMap<u16, Vec<String>> = HashMap::new();
    while clients.len() < primaries || clients.values().any(|c| c.len() < per_primary) {
        let client = new_client();
        let group = clients.entry(primary_of(cluster, &client)).or_default();
        if group.len() < per_primary {
            group.push(client);
        }
    }
    clients
}

async fn on_cluster<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_concurrent_first_calls_through_three_instances_give_one_session_on_every_primary()
 {
    let cluster = on_cluster(redis_cluster::shared).await;
    let config = "[namespaces.web]\nidle_timeout = \"10m\"";
    let mut apps = Vec::new();
    for _ in 0..3 {
        apps.push(Arc::new(spawn_on_cluster(config, cluster.clone()).await));
    }
    let by_primary = {
        let cluster = cluster.clone();
        on_cluster(move || clients_on_every_primary(&cluster, 2)).await
    };
    assert_eq!(by_primary.len(), 3, "clients on all three primaries");
    for app in &apps {
        app.get("/readyz").await.expect(200);
    }
    // One client's 300 calls race at a time, each through all three instances.
    for client in by_primary.values().flatten() {
        let body = json!({"namespace": "web", "client": client});
        let answers = race(&apps, "/v1/sessions/current", body, 300).await;
        let (ids, created) = ids_and_created(&answers);
        assert_eq!(ids.len(), 1, "one id for all 300 calls: {ids:?}");
        assert_eq!(created, 1, "exactly one call started it");
        assert!(answers.iter().all(|a| a["index"] == 1));
    }
}

/// One call's outcome in the failover run.
struct Observed {
    at: Duration,
    status: u16,
    took: Duration,
    session_id: Option<String>,
}

/// Ticks one client every 20 ms until `stop`, recording every answer.
async fn keep_ticking(
    app: Arc<TestApp>,
    client: String,
    start: Instant,
    stop: Instant,
) -> Vec<Observed> {
    let mut seen = Vec::new();
    while Instant::now() < stop {
        let sent = Instant::now();
        let answer = app
            .tick(json!({"namespace": "web", "client": client}))
            .await;
        seen.push(Observed {
            at: sent - start,
            status: answer.status,
            took: sent.elapsed(),
            session_id: (answer.status == 200)
                .then(|| answer.json()["session_id"].as_str().unwrap().to_owned()),
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen
}

/// Under a steady stream of ticks, one primary is killed. The other primaries' clients keep
/// being served; the failed primary's clients get 503 (never a hang, never a 500) until its
/// replica is promoted, then are served again by the same sessiond.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_primary_gives_bounded_503s_for_its_clients_only_until_its_replica_takes_over() {
    let _alone = ALONE.lock().await;
    let cluster = Arc::new(on_cluster(RedisCluster::start).await);
    let app = Arc::new(
        spawn_on_cluster(
            "store_timeout = \"500ms\"\n[namespaces.web]\nidle_timeout = \"10m\"",
            cluster.clone(),
        )
        .await,
    );
    let by_primary = {
        let cluster = cluster.clone();
        on_cluster(move || clients_on_every_primary(&cluster, 2)).await
    };
    let victim = *by_primary.keys().min().unwrap();
    let start = Instant::now();
    let stop = start + Duration::from_secs(8);
    let tickers: Vec<_> = by_primary
        .iter()
        .flat_map(|(port, clients)| clients.iter().map(move |c| (*port, c.clone())))
        .map(|(port, client)| {
            let app = app.clone();
            (port, tokio::spawn(keep_ticking(app, client, start, stop)))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed_at = start.elapsed();
    {
        let cluster = cluster.clone();
        on_cluster(move || {
            cluster
                .nodes
                .iter()
                .find(|n| n.port == victim)
                .unwrap()
                .kill();
        })
        .await;
    }
    // One shard down does not make the instance unready: the load balancer keeps it, and
    // it keeps serving every other shard's clients.
    app.get("/readyz").await.expect(200);
    let mut failed_over = Vec::new();
    for (port, ticker) in tickers {
        let seen = ticker.await.unwrap();
        assert!(!seen.is_empty());
        // A call is never left hanging: each is answered within the store timeout and slack.
        let slowest = seen.iter().map(|o| o.took).max().unwrap();
        assert!(
            slowest < Duration::from_millis(1500),
            "a call took {slowest:?}"
        );
        if port == victim {
            failed_over.push(seen);
        } else {
            assert!(
                seen.iter().all(|o| o.status == 200),
                "clients of the other primaries are served throughout: {:?}",
                seen.iter().map(|o| o.status).collect::<Vec<_>>()
            );
        }
    }
    for seen in &failed_over {
        assert!(
            seen.iter().all(|o| matches!(o.status, 200 | 503)),
            "only 200 or 503: {:?}",
            seen.iter().map(|o| o.status).collect::<Vec<_>>()
        );
        let first_503 = seen.iter().find(|o| o.status == 503).map(|o| o.at);
        let last_503 = seen.iter().rev().find(|o| o.status == 503).map(|o| o.at);
        let (Some(first_503), Some(last_503)) = (first_503, last_503) else {
            panic!("the killed primary's clients saw it fail");
        };
        let recovered = seen.iter().filter(|o| o.at > last_503).count();
        assert!(
            recovered >= 10,
            "served again by the same sessiond after the failover"
        );
        let before: Vec<_> = seen
            .iter()
            .filter(|o| o.at < killed_at)
            .filter_map(|o| o.session_id.clone())
            .collect();
        let after: Vec<_> = seen
            .iter()
            .filter(|o| o.at > last_503)
            .filter_map(|o| o.session_id.clone())
            .collect();
        eprintln!(
            "failover: killed at {killed_at:?}; 503s from {first_503:?} to {last_503:?} \
             ({:?} unavailable); session kept across it: {}",
            last_503 - first_503,
            before.last() == after.first()
        );
    }
}

/// What one durability setting did for the sessions a killed primary had just acknowledged.
struct Durable {
    created: usize,
    lost: usize,
    latencies: Vec<Duration>,
}

/// Creates sessions for fresh clients of one primary as fast as 8 callers can until the
/// primary is killed (SIGKILL); once its replica took over, asks for every session that was
/// answered as created: a lost one is gone from the promoted replica.
async fn kill_under_new_sessions(cluster: &Arc<RedisCluster>, durability: &str) -> Durable {
    let app = Arc::new(
        spawn_on_cluster(
            &format!(
                "durability = \"{durability}\"\nstore_timeout = \"1s\"\n\
                 [namespaces.web]\nidle_timeout = \"10m\""
            ),
            cluster.clone(),
        )
        .await,
    );
    let (victim, clients) = {
        let cluster = cluster.clone();
        on_cluster(move || {
            let victim = cluster.primary_with_replica().port;
            let owners = cluster.bucket_owners();
            let clients: Vec<String> = std::iter::repeat_with(new_client)
                .filter(|c| owners[&tag_of(c)] == victim)
                .take(5_000)
                .collect();
            (victim, clients)
        })
        .await
    };
    let clients = Arc::new(clients);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (app, clients, next, stop) =
                (app.clone(), clients.clone(), next.clone(), stop.clone());
            tokio::spawn(async move {
                let mut created = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(client) = clients.get(n) else { break };
                    let sent = Instant::now();
                    let answer = app
                        .current(json!({"namespace": "web", "client": client}))
                        .await;
                    if answer.status == 200 && answer.json()["created"] == true {
                        let id = answer.json()["session_id"].as_str().unwrap().to_owned();
                        created.push((client.clone(), id, sent.elapsed()));
                    }
                }
                created
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    {
        let cluster = cluster.clone();
        on_cluster(move || {
            cluster.node(victim).kill();
        })
        .await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut created = Vec::new();
    for caller in callers {
        created.extend(caller.await.unwrap());
    }
    {
        let cluster = cluster.clone();
        on_cluster(move || cluster.wait_until_healthy(Duration::from_secs(30))).await;
    }
    let mut lost = 0;
    for (client, id, _) in &created {
        let answer = loop {
            let answer = app
                .current(json!({"namespace": "web", "client": client, "create": false}))
                .await;
            if answer.status != 503 {
                break answer;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        match answer.status {
            200 => assert_eq!(answer.json()["session_id"], id.as_str()),
            404 => lost += 1,
            other => panic!("after the failover a lookup answered {other}"),
        }
    }
    let waits = app.get("/metrics").await.text;
    let replicated = waits
        .lines()
        .find(|l| l.starts_with("sessiond_replication_waits_total{outcome=\"replicated\"}"));
    assert_eq!(
        replicated.is_some(),
        durability == "replicated",
        "replication waits are counted with durability = replicated only"
    );
    Durable {
        created: created.len(),
        lost,
        latencies: created.into_iter().map(|(_, _, took)| took).collect(),
    }
}

/// CONTRACT 5.8: with `durability = "replicated"`, a new session is answered only once a
/// replica has it, so killing its primary right after loses none; the figures of both
/// settings (sessions lost, and what waiting costs a new session) are printed for
/// deploy/README.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_killed_under_new_sessions_loses_none_that_waited_for_a_replica() {
    let _alone = ALONE.lock().await;
    let cluster = Arc::new(on_cluster(RedisCluster::start).await);
    for durability in ["async", "replicated"] {
        let mut seen = kill_under_new_sessions(&cluster, durability).await;
        seen.latencies.sort();
        let at = |q: f64| seen.latencies[((seen.latencies.len() - 1) as f64 * q) as usize];
        eprintln!(
            "durability {durability}: {} sessions created, {} lost to the primary's kill; \
             new session p50 {:?}, p99 {:?}",
            seen.created,
            seen.lost,
            at(0.5),
            at(0.99)
        );
        assert!(seen.created > 100, "sessions were created before the kill");
        if durability == "replicated" {
            assert_eq!(seen.lost, 0, "no session a replica acknowledged is lost");
        }
    }
}
