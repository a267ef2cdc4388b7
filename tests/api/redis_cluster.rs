//! A Redis Cluster owned by the test harness: three primaries and three replicas on loopback
//! ports, each redis-server in a temp dir of its own, created with `redis-cli --cluster
//! create`, and stopped by PID when dropped or killed by a test. Each node runs under a shell
//! that holds a pipe from this process and kills the node when the pipe closes, so the
//! cluster shared by the whole suite is stopped when the test binary exits, however it does.
//! `cluster-require-full-coverage no`, as the deployment docs recommend, so one shard
//! failing over leaves the others serving.

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use redis::Value;

pub struct Node {
    pub port: u16,
    /// The shell guarding the node; its stdin is the pipe whose end stops the node.
    guard: Mutex<Option<Child>>,
    /// redis-server's own PID, while it runs.
    pid: Mutex<Option<u32>>,
    /// Whether the node is a member of the cluster (spares are not until added).
    member: AtomicBool,
}

impl Node {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `host:port`, as redis-cli names nodes.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The node's id in the cluster (CLUSTER MYID).
    pub fn id(&self) -> String {
        match self.query(&["CLUSTER", "MYID"]) {
            Ok(Value::BulkString(id)) => String::from_utf8(id).unwrap(),
            other => panic!("CLUSTER MYID answered {other:?}"),
        }
    }

    /// Kills the server by PID, as a crash would, and waits until it no longer answers.
    pub fn kill(&self) {
        if let Some(pid) = self.pid.lock().unwrap().take() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            wait_until("a killed node is gone", Duration::from_secs(10), || {
                TcpStream::connect(("127.0.0.1", self.port)).is_err()
            });
        }
        if let Some(mut guard) = self.guard.lock().unwrap().take() {
            let _ = guard.kill();
            let _ = guard.wait();
        }
    }

    fn is_running(&self) -> bool {
        self.pid.lock().unwrap().is_some()
    }

    /// Marks the node as a member of the cluster (after `add-node`) or not (after `del-node`).
    pub fn set_member(&self, member: bool) {
        self.member.store(member, Ordering::SeqCst);
    }

    pub fn query(&self, args: &[&str]) -> redis::RedisResult<Value> {
        let client = redis::Client::open(self.url())?;
        let mut con = client.get_connection_with_timeout(Duration::from_secs(2))?;
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut con)
    }

    /// A text answer (CLUSTER INFO, INFO), or "" when the node does not answer.
    fn text(&self, args: &[&str]) -> String {
        match self.query(args) {
            Ok(Value::BulkString(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
            Ok(Value::VerbatimString { text, .. }) => text,
            _ => String::new(),
        }
    }
}

pub struct RedisCluster {
    _dir: tempfile::TempDir,
    /// Every node started, the spares included once they join.
    pub nodes: Vec<Node>,
}

/// A port that is free, with its cluster bus port (port + 10000) free too. Both are taken
/// below Linux's ephemeral range (32768 up), so no outgoing connection grabs a bus port
/// between this check and redis-server binding it.
fn free_port_pair() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Ports 20000 to 22699 (bus ports 30000 to 32699), from a per-process starting point.
    let offset = (std::process::id() % 2_700) as u16;
    loop {
        let port = 20_000 + (offset + NEXT.fetch_add(1, Ordering::SeqCst)) % 2_700;
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
}

fn wait_until(what: &str, bound: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {bound:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl RedisCluster {
    /// Starts six nodes and forms a cluster of three primaries, each with one replica, and
    /// waits until every node sees the cluster as ok and every replica is in sync.
    pub fn start() -> Self {
        Self::start_with_spares(0)
    }

    /// Starts six nodes formed into a cluster as `start` does, and `spares` more that run
    /// outside the cluster until a test adds them (`redis-cli --cluster add-node`). They come
    /// last in `nodes`.
    pub fn start_with_spares(spares: usize) -> Self {
        assert!(
            Command::new("redis-server")
                .arg("--version")
                .output()
                .is_ok(),
            "redis-server must be installed (the README's test command installs it)"
        );
        let dir = tempfile::tempdir().expect("a temp dir for the cluster");
        let mut nodes = Vec::new();
        for _ in 0..6 + spares {
            let port = free_port_pair();
            let node_dir = dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let server = format!(
                "redis-server --port {port} --bind 127.0.0.1 --cluster-enabled yes \
                 --cluster-config-file nodes.conf --cluster-node-timeout 1000 \
                 --cluster-require-full-coverage no --save '' --appendonly no --dir '{}'",
                node_dir.display()
            );
            // The shell reads its stdin until this process closes the pipe (by exiting, or
            // by `kill`), then kills the node.
            let guard = Command::new("sh")
                .arg("-c")
                .arg(format!("{server} & read _; kill -9 $!"))
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("sh starts redis-server");
            nodes.push(Node {
                port,
                guard: Mutex::new(Some(guard)),
                pid: Mutex::new(None),
                member: AtomicBool::new(nodes.len() < 6),
            });
        }
        let cluster = Self { _dir: dir, nodes };
        for node in &cluster.nodes {
            wait_until("a node answers", Duration::from_secs(10), || {
                node.text(&["INFO", "server"]).contains("process_id:")
            });
            let info = node.text(&["INFO", "server"]);
            let pid = info
                .lines()
                .find_map(|l| l.strip_prefix("process_id:"))
                .and_then(|p| p.trim().parse().ok());
            *node.pid.lock().unwrap() = pid;
        }

        let addresses: Vec<String> = cluster.nodes[..6].iter().map(Node::address).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(created.success(), "redis-cli --cluster create succeeded");
        cluster.wait_until_healthy(Duration::from_secs(30));
        cluster
    }

    /// Runs `redis-cli --cluster ARGS...`, as an operator would, and asserts it succeeded.
    pub fn redis_cli(&self, args: &[&str]) {
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs");
        assert!(
            output.status.success(),
            "redis-cli --cluster {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Waits until every running member knows `nodes` nodes, says cluster_state:ok, and has
    /// its replicas in sync.
    pub fn wait_until_known(&self, nodes: usize, bound: Duration) {
        wait_until("every member knows the new topology", bound, || {
            self.running().all(|n| {
                n.text(&["CLUSTER", "INFO"])
                    .contains(&format!("cluster_known_nodes:{nodes}\r"))
            })
        });
        self.wait_until_healthy(bound);
    }

    /// Waits until every running node says cluster_state:ok and every replica is in sync.
    pub fn wait_until_healthy(&self, bound: Duration) {
        wait_until("the cluster is ok and in sync", bound, || {
            self.running().all(|node| {
                let ok = node.text(&["CLUSTER", "INFO"]).contains("cluster_state:ok");
                let replication = node.text(&["INFO", "replication"]);
                ok && (replication.contains("role:master")
                    || replication.contains("master_link_status:up"))
            })
        });
    }

    /// The members of the cluster that are running.
    fn running(&self) -> impl Iterator<Item = &Node> {
        self.nodes
            .iter()
            .filter(|n| n.is_running() && n.member.load(Ordering::SeqCst))
    }

    /// Which primary serves each of sessiond's 256 client buckets (`{00}` to `{ff}`), as the
    /// cluster says now: one CLUSTER SLOTS, and the slot of each bucket's hash tag.
    pub fn bucket_owners(&self) -> HashMap<String, u16> {
        let primaries = self.primaries();
        let node = self.running().next().unwrap();
        (0..256)
            .map(|bucket| {
                let tag = format!("{{{bucket:02x}}}");
                let Ok(Value::Int(slot)) = node.query(&["CLUSTER", "KEYSLOT", &tag]) else {
                    panic!("CLUSTER KEYSLOT answers")
                };
                let port = primaries
                    .iter()
                    .find(|(_, ranges)| ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
                    .map(|(node, _)| node.port)
                    .unwrap_or_else(|| panic!("no primary serves slot {slot}"));
                (tag, port)
            })
            .collect()
    }

    /// A running primary with a replica in sync, which a failover would promote.
    pub fn primary_with_replica(&self) -> &Node {
        self.primaries()
            .into_iter()
            .map(|(node, _)| node)
            .find(|node| {
                let replication = node.text(&["INFO", "replication"]);
                replication.contains("connected_slaves:1") && replication.contains("state=online")
            })
            .expect("a primary with a replica in sync")
    }

    /// The node listening on a port.
    pub fn node(&self, port: u16) -> &Node {
        self.nodes.iter().find(|n| n.port == port).unwrap()
    }

    /// The seed URLs sessiond is given.
    pub fn urls(&self) -> Vec<String> {
        self.running().map(Node::url).collect()
    }

    /// The node currently serving a key's slot as primary.
    pub fn primary_for(&self, key: &str) -> &Node {
        let slot = match self
            .running()
            .next()
            .unwrap()
            .query(&["CLUSTER", "KEYSLOT", key])
        {
            Ok(Value::Int(slot)) => slot,
            other => panic!("CLUSTER KEYSLOT answered {other:?}"),
        };
        self.primaries()
            .into_iter()
            .find(|(_, ranges)| ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map(|(node, _)| node)
            .unwrap_or_else(|| panic!("no primary serves slot {slot}"))
    }

    /// The running primaries and the slot ranges each serves, as CLUSTER SLOTS says.
    pub fn primaries(&self) -> Vec<(&Node, Vec<(i64, i64)>)> {
        let slots = self
            .running()
            .find_map(|n| n.query(&["CLUSTER", "SLOTS"]).ok())
            .expect("a node answers CLUSTER SLOTS");
        let Value::Array(ranges) = slots else {
            panic!("CLUSTER SLOTS answered {slots:?}")
        };
        let mut primaries: Vec<(&Node, Vec<(i64, i64)>)> = Vec::new();
        for range in ranges {
            let Value::Array(parts) = range else { continue };
            let (Value::Int(start), Value::Int(end), Value::Array(primary)) =
                (&parts[0], &parts[1], &parts[2])
            else {
                continue;
            };
            let Value::Int(port) = primary[1] else {
                continue;
            };
            let node = self
                .nodes
                .iter()
                .find(|n| i64::from(n.port) == port)
                .unwrap();
            match primaries.iter_mut().find(|(n, _)| n.port == node.port) {
                Some((_, r)) => r.push((*start, *end)),
                None => primaries.push((node, vec![(*start, *end)])),
            }
        }
        primaries
    }

    /// Every key matching a pattern, from every running primary.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys = Vec::new();
        for (node, _) in self.primaries() {
            if let Ok(Value::Array(found)) = node.query(&["KEYS", pattern]) {
                keys.extend(found.into_iter().filter_map(|k| match k {
                    Value::BulkString(b) => String::from_utf8(b).ok(),
                    _ => None,
                }));
            }
        }
        keys
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            node.kill();
        }
    }
}

/// One cluster for the whole suite, started by the first test that asks (a cluster takes
/// seconds to form, so it is not started again per test); its nodes stop when the test
/// binary exits. Tests that kill nodes start a cluster of their own.
pub fn shared() -> Arc<RedisCluster> {
    static SHARED: OnceLock<Arc<RedisCluster>> = OnceLock::new();
    SHARED
        .get_or_init(|| Arc::new(RedisCluster::start()))
        .clone()
}
