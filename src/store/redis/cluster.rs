//! Redis Cluster routing: one reconnecting connection per primary, each command sent to the
//! primary of its key's slot, following MOVED, ASK and TRYAGAIN, and a slot map that heals
//! itself when slots move, nodes join or nodes leave.
//!
//! Why not the redis crate's async cluster client: in redis 1.8.1 (and 2.0.0-rc.2) it
//! deadlocks when a primary dies while many requests are in flight. A background node repair
//! queues for the connection map's write lock, the client then starts a slot refresh and stops
//! polling that repair while the refresh waits for the same lock, and from then on every
//! request to every shard times out, for good. Measured here with 256 concurrent calls, one
//! per sessiond bucket, as every sweep makes; 8 concurrent calls did not trigger it. Here no
//! lock is held across an await, one node's connection cannot block another's, and the
//! pieces that need care (reconnection, scripts, the protocol) are still the crate's:
//! `ConnectionManager` per node and `Script::invoke_async`.
//!
//! The redis crate hands a server's error answer back as `Ok(Value::ServerError)` from a
//! connection, and only `Cmd::query_async` turns it into an `Err`; a router that looked at
//! `Err` alone never saw a MOVED. [`Answer::of`] reads both forms, and its unit tests pin the
//! forms the crate's own parser gives, so an upgrade cannot change them silently.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use crate::telemetry::LogThrottle;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo, Pipeline, RedisError,
    RedisFuture, RedisResult, ServerErrorKind, Value,
};

const SLOTS: usize = 16384;

/// The slot of a key, as Redis Cluster computes it: CRC16 of its hash tag (or the whole key).
pub fn slot_of(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|b| *b == b'}')
                .map(|close| &rest[..close])
        })
        .filter(|tag| !tag.is_empty())
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % SLOTS as u16
}

/// No node serves the slot.
const UNSERVED: u16 = u16::MAX;

/// Which primary serves which slot: for each slot an index into `nodes` (`host:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct SlotMap {
    owner: Box<[u16]>,
    nodes: Vec<String>,
}

impl Default for SlotMap {
    fn default() -> Self {
        Self {
            owner: vec![UNSERVED; SLOTS].into(),
            nodes: Vec::new(),
        }
    }
}

impl SlotMap {
    fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn primary(&self, slot: u16) -> Option<&str> {
        let owner = *self.owner.get(usize::from(slot))?;
        self.nodes.get(usize::from(owner)).map(String::as_str)
    }

    /// Every node that serves at least one slot, sorted.
    fn primaries(&self) -> Vec<String> {
        let mut serving = vec![false; self.nodes.len()];
        for &owner in self.owner.iter() {
            if let Some(s) = serving.get_mut(usize::from(owner)) {
                *s = true;
            }
        }
        let mut all: Vec<String> = self
            .nodes
            .iter()
            .zip(serving)
            .filter(|(_, serves)| *serves)
            .map(|(node, _)| node.clone())
            .collect();
        all.sort();
        all
    }

    /// The map with one slot moved to `addr`, as a MOVED answer says.
    fn with_owner(&self, slot: u16, addr: &str) -> Self {
        let mut map = self.clone();
        let index = match map.nodes.iter().position(|n| n == addr) {
            Some(i) => i,
            None => {
                map.nodes.push(addr.to_owned());
                map.nodes.len() - 1
            }
        };
        if let (Some(owner), Ok(index)) = (map.owner.get_mut(usize::from(slot)), index.try_into()) {
            *owner = index;
        }
        map
    }

    /// A CLUSTER SLOTS answer: ranges of `[first, last, [host, port, ...], replicas...]`. None
    /// when it names no slot (a node that was reset or removed from the cluster).
    fn parse(value: Value) -> Option<Self> {
        let Value::Array(ranges) = value else {
            return None;
        };
        let mut map = Self::default();
        for range in ranges {
            let Value::Array(parts) = range else { continue };
            let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(primary))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                continue;
            };
            let host = match primary.first() {
                Some(Value::BulkString(host)) => String::from_utf8_lossy(host).into_owned(),
                Some(Value::SimpleString(host)) => host.clone(),
                _ => continue,
            };
            let Some(Value::Int(port)) = primary.get(1) else {
                continue;
            };
            let addr = format!("{host}:{port}");
            let (first, last) = (usize::try_from(*first).ok()?, usize::try_from(*last).ok()?);
            if first > last || last >= SLOTS {
                return None;
            }
            map = map.with_range(first..=last, &addr);
        }
        (!map.is_empty()).then_some(map)
    }

    fn with_range(mut self, slots: std::ops::RangeInclusive<usize>, addr: &str) -> Self {
        let index = match self.nodes.iter().position(|n| n == addr) {
            Some(i) => i,
            None => {
                self.nodes.push(addr.to_owned());
                self.nodes.len() - 1
            }
        };
        let index = u16::try_from(index).unwrap_or(UNSERVED);
        self.owner[slots].fill(index);
        self
    }
}

/// What a node's answer asks the router to do.
#[derive(Debug, PartialEq)]
enum Answer {
    /// The answer to give the caller: a value, or an error that no retry here would mend.
    Done(RedisResult<Value>),
    /// The slot is served by another node now: learn it and go there.
    Moved { slot: u16, addr: String },
    /// The slot is being migrated and the key is on `addr`: ASKING, then the command there.
    Ask { addr: String },
    /// The slot is being migrated and the call's keys are split between the two nodes, or a
    /// script met a key that already left (TRYAGAIN): the same call again, shortly.
    TryAgain,
    /// The node does not have the script (a node that joined, or a promoted replica).
    NoScript,
    /// The node could not be reached or its shard has no primary: learn the map again.
    Unreachable(RedisError),
}

impl Answer {
    /// Reads a node's answer in either form the redis crate gives an error in.
    fn of(answer: RedisResult<Value>) -> Self {
        let error = match answer {
            Ok(Value::ServerError(e)) => RedisError::from(e),
            Ok(value) => return Self::Done(Ok(value)),
            Err(e) => e,
        };
        match error.kind() {
            ErrorKind::Server(ServerErrorKind::Moved) => match error.redirect_node() {
                Some((addr, slot)) => Self::Moved {
                    slot,
                    addr: addr.to_owned(),
                },
                None => Self::Done(Err(error)),
            },
            ErrorKind::Server(ServerErrorKind::Ask) => match error.redirect_node() {
                Some((addr, _)) => Self::Ask {
                    addr: addr.to_owned(),
                },
                None => Self::Done(Err(error)),
            },
            ErrorKind::Server(ServerErrorKind::TryAgain) => Self::TryAgain,
            // A script that touches a key of its slot that has already been migrated fails
            // with this before it writes (the scripts read every key they write first).
            ErrorKind::Server(ServerErrorKind::ResponseError)
                if error
                    .detail()
                    .is_some_and(|d| d.contains("attempted to access a non local key")) =>
            {
                Self::TryAgain
            }
            ErrorKind::Server(ServerErrorKind::NoScript) => Self::NoScript,
            ErrorKind::Server(ServerErrorKind::ClusterDown | ServerErrorKind::MasterDown) => {
                Self::Unreachable(error)
            }
            _ if error.is_io_error()
                || error.is_timeout()
                || error.is_connection_dropped()
                || error.is_connection_refusal() =>
            {
                Self::Unreachable(error)
            }
            _ => Self::Done(Err(error)),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RedirectLabels {
    kind: &'static str,
}

/// What the router counts, for `/metrics`: redirections by kind, slot map refreshes, and how
/// old the map is.
#[derive(Debug, Default)]
struct Health {
    redirects: Family<RedirectLabels, Counter>,
    refreshes: AtomicU64,
    /// Milliseconds since the epoch of the last refresh that answered, 0 before one.
    refreshed_at_ms: AtomicU64,
}

impl Health {
    fn redirected(&self, kind: &'static str) {
        self.redirects.get_or_create(&RedirectLabels { kind }).inc();
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The slot map's refresh count and age, computed when scraped.
#[derive(Debug)]
struct SlotMapCollector(Weak<Inner>);

impl Collector for SlotMapCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(inner) = self.0.upgrade() else {
            return Ok(());
        };
        let refreshes = ConstCounter::new(inner.health.refreshes.load(Ordering::Relaxed));
        refreshes.encode(encoder.encode_descriptor(
            "store_slot_map_refreshes",
            "Times the Redis Cluster slot map was read from the cluster",
            None,
            refreshes.metric_type(),
        )?)?;
        let at = inner.health.refreshed_at_ms.load(Ordering::Relaxed);
        let age = if at == 0 {
            -1.0
        } else {
            unix_ms().saturating_sub(at) as f64 / 1000.0
        };
        let age = ConstGauge::new(age);
        age.encode(encoder.encode_descriptor(
            "store_slot_map_age_seconds",
            "Seconds since the Redis Cluster slot map was last read from the cluster (-1: never)",
            None,
            age.metric_type(),
        )?)?;
        Ok(())
    }
}

/// Redirections that failed (a slot that kept moving, a migration that did not end within
/// the store timeout): an ERROR line, at most one per ten seconds, counting the others.
fn redirection_failed(what: &str, error: &RedisError) {
    static FAILED: LogThrottle = LogThrottle::new(Duration::from_secs(10), 1);
    if let Some(held_back) = FAILED.allow() {
        tracing::error!(error = %error, held_back, "Redis Cluster: {what} failed");
    }
}

struct Inner {
    /// The seed nodes; their first one lends its credentials and TLS mode to every node.
    seeds: Vec<ConnectionInfo>,
    config: ConnectionManagerConfig,
    slots: RwLock<Arc<SlotMap>>,
    nodes: Mutex<HashMap<String, ConnectionManager>>,
    /// SCRIPT LOAD commands seen, by the digest the cluster answered, so that a node that
    /// says NOSCRIPT (a new primary, a promoted replica) gets the script at once.
    scripts: RwLock<HashMap<String, Cmd>>,
    refreshing: AtomicBool,
    last_refresh: Mutex<Option<Instant>>,
    /// How long one call waits out a slot in migration (TRYAGAIN) at most.
    patience: Duration,
    health: Health,
}

/// A connection to a whole Redis Cluster, cheap to clone.
#[derive(Clone)]
pub struct ClusterRouter(Arc<Inner>);

/// Refreshes of the slot map are at least this far apart, however many calls fail.
const REFRESH_GAP: Duration = Duration::from_millis(100);

/// The slot map is read again this often even when nothing failed, so nodes that joined
/// (and slots that moved to them) are known before the first call meets a MOVED, and nodes
/// that left are dropped.
const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// MOVED and ASK redirections one call follows at most: a slot moves once at a time, so a
/// longer chain is a loop.
const MAX_REDIRECTS: usize = 5;

/// TRYAGAIN answers are waited out for at most the router's `patience` (the store timeout)
/// from the call's start, with a doubling pause between tries from `TRY_AGAIN_FIRST` to
/// `TRY_AGAIN_MOST`. A slot's keys migrate in milliseconds.
const TRY_AGAIN_FIRST: Duration = Duration::from_millis(2);
const TRY_AGAIN_MOST: Duration = Duration::from_millis(50);

impl ClusterRouter {
    /// Prepares the router; it connects and learns the slot map on first use, and reads the
    /// map again every few seconds while it is in use. A call waits out a slot in migration
    /// for at most `patience`.
    pub fn new(
        seeds: &[String],
        config: ConnectionManagerConfig,
        patience: Duration,
    ) -> RedisResult<Self> {
        let seeds = seeds
            .iter()
            .map(|s| s.as_str().into_connection_info())
            .collect::<RedisResult<Vec<_>>>()?;
        if seeds.is_empty() {
            return Err((ErrorKind::InvalidClientConfig, "no cluster seed node").into());
        }
        let router = Self(Arc::new(Inner {
            seeds,
            config,
            slots: RwLock::new(Arc::default()),
            nodes: Mutex::new(HashMap::new()),
            scripts: RwLock::new(HashMap::new()),
            refreshing: AtomicBool::new(false),
            last_refresh: Mutex::new(None),
            patience,
            health: Health::default(),
        }));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(refresh_periodically(Arc::downgrade(&router.0)));
        }
        Ok(router)
    }

    /// Registers the router's metrics: redirections by kind, slot map refreshes and age.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "store_redirects",
            "Redis Cluster redirections followed, by kind (moved, ask, tryagain)",
            self.0.health.redirects.clone(),
        );
        registry.register_collector(Box::new(SlotMapCollector(Arc::downgrade(&self.0))));
    }

    fn slot_map(&self) -> Arc<SlotMap> {
        self.0
            .slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The connection to a node (`host:port`), made lazily and kept.
    fn node(&self, addr: &str) -> RedisResult<ConnectionManager> {
        let mut nodes = self.0.nodes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(con) = nodes.get(addr) {
            return Ok(con.clone());
        }
        let (host, port) = addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_owned(), p.parse().ok()?)))
            .ok_or_else(|| RedisError::from((ErrorKind::Parse, "node address", addr.to_owned())))?;
        let seed = &self.0.seeds[0];
        let node_addr = match seed.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        let client = redis::Client::open(seed.clone().set_addr(node_addr))?;
        let con = ConnectionManager::new_lazy_with_config(client, self.0.config.clone())?;
        nodes.insert(addr.to_owned(), con.clone());
        Ok(con)
    }

    /// Reads the slot map from the first node that answers: known primaries, then seeds.
    async fn refresh(&self) -> RedisResult<()> {
        let mut last_error = None;
        let mut candidates = self.slot_map().primaries();
        for seed in &self.0.seeds {
            if let ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } =
                seed.addr()
            {
                let addr = format!("{host}:{port}");
                if !candidates.contains(&addr) {
                    candidates.push(addr);
                }
            }
        }
        for addr in candidates {
            let mut con = match self.node(&addr) {
                Ok(con) => con,
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            };
            match redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<Value>(&mut con)
                .await
            {
                Ok(value) => {
                    // A node that left the cluster answers no slots; ask the next.
                    let Some(map) = SlotMap::parse(value) else {
                        continue;
                    };
                    self.install(map);
                    return Ok(());
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            (
                ErrorKind::ClusterConnectionNotFound,
                "no cluster node answered with a slot map",
            )
                .into()
        }))
    }

    /// Takes a slot map read from the cluster, and drops the connections of nodes that serve
    /// no slots any more (a removed node, a primary demoted to replica).
    fn install(&self, map: SlotMap) {
        let health = &self.0.health;
        health.refreshes.fetch_add(1, Ordering::Relaxed);
        health.refreshed_at_ms.store(unix_ms(), Ordering::Relaxed);
        let live = map.primaries();
        let changed = {
            let mut slots = self.0.slots.write().unwrap_or_else(|p| p.into_inner());
            let changed = **slots != map;
            *slots = Arc::new(map);
            changed
        };
        if changed {
            tracing::info!(primaries = ?live, "Redis Cluster slot map changed");
        }
        self.0
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|addr, _| live.contains(addr));
    }

    /// Moves one slot to the node a MOVED answer named, at once, before the map is read again.
    fn learn(&self, slot: u16, addr: &str) {
        let mut slots = self.0.slots.write().unwrap_or_else(|p| p.into_inner());
        if slots.primary(slot) != Some(addr) {
            *slots = Arc::new(slots.with_owner(slot, addr));
        }
    }

    /// Starts a refresh of the slot map in the background, unless one is running or one
    /// ran within the last `REFRESH_GAP`.
    fn refresh_soon(&self) {
        if self.0.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let recent = self
            .0
            .last_refresh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| at.elapsed() < REFRESH_GAP);
        if recent {
            self.0.refreshing.store(false, Ordering::Release);
            return;
        }
        let router = self.clone();
        tokio::spawn(async move { router.refresh_now().await });
    }

    /// Reads the slot map now, noting when; the `refreshing` flag must be held.
    async fn refresh_now(&self) {
        if let Err(e) = self.refresh().await {
            tracing::warn!(error = %e, "could not refresh the cluster slot map");
        }
        *self
            .0
            .last_refresh
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.0.refreshing.store(false, Ordering::Release);
    }

    /// The primary for a slot, learning the slot map first if there is none yet.
    async fn primary_for(&self, slot: u16) -> RedisResult<String> {
        if self.slot_map().is_empty() {
            self.refresh().await?;
        }
        let map = self.slot_map();
        map.primary(slot).map(str::to_owned).ok_or_else(|| {
            self.refresh_soon();
            (
                ErrorKind::ClusterConnectionNotFound,
                "no primary serves the slot",
            )
                .into()
        })
    }

    /// Sends SCRIPT LOAD to every primary (`Script::invoke_async` loads a script after
    /// NOSCRIPT without naming a key, and the node that said NOSCRIPT must get it), and keeps
    /// it, so a node that later says NOSCRIPT gets it straight away.
    async fn load_everywhere(&self, cmd: &Cmd) -> RedisResult<Value> {
        if self.slot_map().is_empty() {
            self.refresh().await?;
        }
        let sends = self
            .slot_map()
            .primaries()
            .into_iter()
            .map(|addr| async move {
                let mut con = self.node(&addr)?;
                con.req_packed_command(cmd).await?.extract_error()
            });
        // A primary that is down (being failed over) must not fail the load for the others:
        // its replica gets the script on its own NOSCRIPT once it is promoted.
        let mut answers = futures_util::future::join_all(sends).await;
        let answer = match answers.iter().position(Result::is_ok) {
            Some(ok) => answers.swap_remove(ok),
            None => answers.pop().unwrap_or_else(|| {
                Err((ErrorKind::ClusterConnectionNotFound, "no primary").into())
            }),
        };
        if let Ok(Value::BulkString(digest)) = &answer {
            self.0
                .scripts
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(String::from_utf8_lossy(digest).into_owned(), cmd.clone());
        }
        answer
    }

    /// The SCRIPT LOAD of the script an EVALSHA names, if it was loaded through this router.
    fn script_load_for(&self, cmd: &Cmd) -> Option<Cmd> {
        let mut args = words(cmd);
        if !args.next()?.eq_ignore_ascii_case(b"EVALSHA") {
            return None;
        }
        let digest = String::from_utf8_lossy(args.next()?).to_ascii_lowercase();
        self.0
            .scripts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&digest)
            .cloned()
    }

    /// A command without a key (PING) goes to every primary at once, and the first answer
    /// is the answer: one shard that is down (failing over) does not make the whole cluster
    /// look down, nor wait for that shard's timeout.
    async fn to_any_primary(&self, cmd: &Cmd) -> RedisResult<Value> {
        if self.slot_map().is_empty() {
            self.refresh().await?;
        }
        let primaries = self.slot_map().primaries();
        if primaries.is_empty() {
            return Err((ErrorKind::ClusterConnectionNotFound, "no primary").into());
        }
        let sends = primaries.into_iter().map(|addr| {
            Box::pin(async move {
                let answer = self.node(&addr)?.req_packed_command(cmd).await?;
                answer.extract_error()
            })
        });
        match futures_util::future::select_ok(sends).await {
            Ok((value, _)) => Ok(value),
            Err(e) => {
                self.refresh_soon();
                Err(e)
            }
        }
    }

    /// Sends one command to a node, after ASKING when the node is the target of an ASK. The
    /// two go in one write, so no other caller's command comes between them on the shared
    /// connection.
    async fn send(&self, addr: &str, cmd: &Cmd, asking: bool) -> RedisResult<Value> {
        let mut con = self.node(addr)?;
        if !asking {
            return con.req_packed_command(cmd).await;
        }
        let mut pipe = redis::pipe();
        pipe.cmd("ASKING").add_command(cmd.clone());
        let mut answers = con.req_packed_commands(&pipe, 1, 1).await?;
        answers
            .pop()
            .ok_or_else(|| (ErrorKind::Client, "no answer after ASKING").into())
    }

    /// Sends one command to the primary of its key's slot, following redirections.
    async fn route(&self, cmd: &Cmd) -> RedisResult<Value> {
        if is_script_load(cmd) {
            return self.load_everywhere(cmd).await;
        }
        let Some(key) = key_of(cmd) else {
            return self.to_any_primary(cmd).await;
        };
        let slot = slot_of(key);
        let mut addr = self.primary_for(slot).await?;
        let mut asking = false;
        let began = Instant::now();
        let (mut redirects, mut pause) = (0, TRY_AGAIN_FIRST);
        let mut loaded = false;
        loop {
            let answer = Answer::of(self.send(&addr, cmd, asking).await);
            match answer {
                Answer::Done(answer) => return answer,
                Answer::Moved {
                    slot: moved,
                    addr: to,
                } => {
                    self.0.health.redirected("moved");
                    self.learn(moved, &to);
                    self.refresh_soon();
                    (addr, asking) = (to, false);
                    redirects += 1;
                }
                Answer::Ask { addr: to } => {
                    self.0.health.redirected("ask");
                    (addr, asking) = (to, true);
                    redirects += 1;
                }
                Answer::TryAgain => {
                    self.0.health.redirected("tryagain");
                    if began.elapsed() + pause > self.0.patience {
                        let e = RedisError::from((
                            ErrorKind::Server(ServerErrorKind::TryAgain),
                            "the slot stayed in migration",
                        ));
                        redirection_failed("waiting out a slot migration", &e);
                        return Err(e);
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(TRY_AGAIN_MOST);
                    // The migration may have finished meanwhile: start again at the owner,
                    // with the redirections it takes to get there counted afresh.
                    (addr, asking) = (self.primary_for(slot).await?, false);
                    redirects = 0;
                }
                Answer::NoScript => match self.script_load_for(cmd) {
                    Some(load) if !loaded => {
                        loaded = true;
                        self.send(&addr, &load, false).await?.extract_error()?;
                    }
                    // Not loaded here yet: `Script::invoke_async` loads it and calls again.
                    _ => {
                        return Err(RedisError::from((
                            ErrorKind::Server(ServerErrorKind::NoScript),
                            "NOSCRIPT",
                        )));
                    }
                },
                Answer::Unreachable(e) => {
                    // A node that cannot be reached, or a shard without a primary, may mean
                    // a failover or a removed node: learn the new slot map for the next calls.
                    self.refresh_soon();
                    return Err(e);
                }
            }
            if redirects > MAX_REDIRECTS {
                let e = RedisError::from((
                    ErrorKind::ClusterConnectionNotFound,
                    "too many cluster redirections",
                ));
                redirection_failed("following redirections", &e);
                self.refresh_soon();
                return Err(e);
            }
        }
    }

    /// WAIT on the primary now serving a key's slot: how many replicas acknowledged every
    /// write this router's connection to it sent, within `timeout_ms`.
    pub async fn wait_for_replicas(
        &self,
        key: &[u8],
        replicas: i64,
        timeout_ms: u64,
    ) -> RedisResult<i64> {
        let addr = self.primary_for(slot_of(key)).await?;
        redis::cmd("WAIT")
            .arg(replicas)
            .arg(timeout_ms)
            .query_async(&mut self.node(&addr)?)
            .await
    }

    /// A transaction goes whole to the primary of its first key; when its slot has moved
    /// (each queued command answered MOVED, so EXEC aborts), the slot map is read again and
    /// the whole transaction sent to the new owner.
    async fn route_transaction(
        &self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let key = pipeline.cmd_iter().find_map(key_of).ok_or_else(|| {
            RedisError::from((ErrorKind::Client, "a cluster transaction names no key"))
        })?;
        let slot = slot_of(key);
        for _ in 0..=MAX_REDIRECTS {
            let addr = self.primary_for(slot).await?;
            let mut con = self.node(&addr)?;
            // Every reply, the queued commands' included, to see their MOVED.
            let replies = con.req_packed_commands(pipeline, 0, offset + count).await?;
            let moved = replies
                .iter()
                .find_map(|reply| match Answer::of(Ok(reply.clone())) {
                    Answer::Moved { slot, addr } => Some((slot, addr)),
                    _ => None,
                });
            match moved {
                Some((slot, to)) => {
                    self.0.health.redirected("moved");
                    self.learn(slot, &to);
                    self.refresh_soon();
                }
                None => return Ok(replies.into_iter().skip(offset).collect()),
            }
        }
        Err((
            ErrorKind::ClusterConnectionNotFound,
            "too many cluster redirections",
        )
            .into())
    }
}

/// Reads the slot map every `REFRESH_EVERY` while the router is in use; ends with it.
async fn refresh_periodically(inner: Weak<Inner>) {
    let mut ticks = tokio::time::interval(REFRESH_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let router = ClusterRouter(inner);
        // Not before the first call, and not while another refresh runs.
        if router.slot_map().is_empty() || router.0.refreshing.swap(true, Ordering::AcqRel) {
            continue;
        }
        router.refresh_now().await;
    }
}

/// A command's words: its name, then its arguments.
fn words(cmd: &Cmd) -> impl Iterator<Item = &[u8]> {
    cmd.args_iter().filter_map(|arg| match arg {
        redis::Arg::Simple(bytes) => Some(bytes),
        _ => None,
    })
}

fn is_script_load(cmd: &Cmd) -> bool {
    let mut args = words(cmd);
    args.next()
        .is_some_and(|a| a.eq_ignore_ascii_case(b"SCRIPT"))
        && args.next().is_some_and(|a| a.eq_ignore_ascii_case(b"LOAD"))
}

/// The key a command routes by: the first key of EVAL and EVALSHA, else its first argument;
/// None for commands without a key (PING, TIME, MULTI, EXEC).
fn key_of(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = words(cmd);
    let name = args.next()?;
    if name.eq_ignore_ascii_case(b"EVAL") || name.eq_ignore_ascii_case(b"EVALSHA") {
        let _script = args.next()?;
        let keys = args.next()?;
        return (keys != b"0").then(|| args.next()).flatten();
    }
    const KEYLESS: [&[u8]; 5] = [b"PING", b"TIME", b"MULTI", b"EXEC", b"DISCARD"];
    if KEYLESS.iter().any(|k| name.eq_ignore_ascii_case(k)) {
        return None;
    }
    args.next()
}

impl ConnectionLike for ClusterRouter {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(self.route(cmd))
    }

    /// A plain pipeline's commands are routed each on its own (they may name keys of
    /// different slots, and each follows its own redirections), all at once, and answered in
    /// order; a transaction goes whole to one primary.
    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            if pipeline.is_transaction() {
                return self.route_transaction(pipeline, offset, count).await;
            }
            let answers =
                futures_util::future::join_all(pipeline.cmd_iter().map(|cmd| self.route(cmd)))
                    .await;
            answers
                .into_iter()
                .skip(offset)
                .take(count)
                // An error answer stays in its place, as a connection gives it.
                .map(|answer| match answer {
                    Ok(value) => Ok(value),
                    Err(e) if matches!(e.kind(), ErrorKind::Server(_)) => Ok(error_value(e)),
                    Err(e) => Err(e),
                })
                .collect()
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// A server error as the value a connection gives for it inside a pipeline's answers.
fn error_value(e: RedisError) -> Value {
    let text = format!(
        "-{}\r\n",
        e.detail().map_or_else(
            || e.code().unwrap_or("ERR").to_owned(),
            |d| format!("{} {d}", e.code().unwrap_or("ERR")),
        )
    );
    redis::parse_redis_value(text.as_bytes()).unwrap_or(Value::Nil)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node's answer as the redis crate's own parser reads it off the wire.
    fn wire(bytes: &[u8]) -> Value {
        redis::parse_redis_value(bytes).expect("the crate parses it")
    }

    #[test]
    fn slots_follow_the_hash_tag_as_redis_computes_them() {
        // Values from CLUSTER KEYSLOT on Redis 7.
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{foo}.bar"), 12182);
        assert_eq!(slot_of(b"sd:{2a}:a:web:x"), slot_of(b"{2a}"));
        assert_eq!(
            slot_of(b"{}x"),
            slot_of(b"{}x"),
            "an empty tag hashes the whole key"
        );
        assert_ne!(slot_of(b"{}x"), slot_of(b""));
    }

    #[test]
    fn scripts_route_by_their_first_key_and_plain_commands_by_their_first_argument() {
        let mut eval = redis::cmd("EVALSHA");
        eval.arg("abc")
            .arg(2)
            .arg("sd:{01}:c")
            .arg("sd:{01}:a")
            .arg("x");
        assert_eq!(key_of(&eval), Some(&b"sd:{01}:c"[..]));
        let mut get = redis::cmd("GET");
        get.arg("sd:{0f}:i:3c");
        assert_eq!(key_of(&get), Some(&b"sd:{0f}:i:3c"[..]));
        assert_eq!(key_of(&redis::cmd("PING")), None);
        assert_eq!(key_of(&redis::cmd("MULTI")), None);
        let mut keyless = redis::cmd("EVAL");
        keyless.arg("return 1").arg(0);
        assert_eq!(key_of(&keyless), None);
    }

    #[test]
    fn a_moved_answer_comes_from_a_connection_as_a_value_and_is_followed() {
        // What a multiplexed connection hands back: the error as a value, not an Err.
        let answer = wire(b"-MOVED 3999 127.0.0.1:6381\r\n");
        assert!(matches!(answer, Value::ServerError(_)), "{answer:?}");
        let moved = Answer::Moved {
            slot: 3999,
            addr: "127.0.0.1:6381".into(),
        };
        assert_eq!(Answer::of(Ok(answer.clone())), moved);
        // The same answer once `query_async` has made it an error.
        let as_error = answer.extract_error().unwrap_err();
        assert_eq!(Answer::of(Err(as_error)), moved);
    }

    #[test]
    fn an_ask_answer_is_followed_without_naming_a_new_owner() {
        let answer = wire(b"-ASK 12182 127.0.0.1:7002\r\n");
        let ask = Answer::Ask {
            addr: "127.0.0.1:7002".into(),
        };
        assert_eq!(Answer::of(Ok(answer.clone())), ask);
        assert_eq!(Answer::of(Err(answer.extract_error().unwrap_err())), ask);
    }

    #[test]
    fn tryagain_and_a_script_meeting_a_migrated_key_are_waited_out() {
        let tryagain = wire(b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n");
        assert_eq!(Answer::of(Ok(tryagain)), Answer::TryAgain);
        // Redis 7's answer when a script's command meets a key already migrated away.
        let script = wire(
            b"-ERR Script attempted to access a non local key in a cluster node script: \
              abc, on @user_script:12.\r\n",
        );
        assert_eq!(Answer::of(Ok(script)), Answer::TryAgain);
    }

    #[test]
    fn noscript_and_unreachable_shards_are_told_apart_from_final_errors() {
        let noscript = wire(b"-NOSCRIPT No matching script. Please use EVAL.\r\n");
        assert_eq!(Answer::of(Ok(noscript)), Answer::NoScript);
        let down = wire(b"-CLUSTERDOWN The cluster is down\r\n");
        assert!(matches!(Answer::of(Ok(down)), Answer::Unreachable(_)));
        let refused: RedisError =
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
        assert!(matches!(Answer::of(Err(refused)), Answer::Unreachable(_)));
        // A script's own error is the caller's answer, not a reason to retry.
        let failed = wire(b"-ERR user_script:1: bad argument\r\n");
        assert!(matches!(Answer::of(Ok(failed)), Answer::Done(Err(_))));
        assert_eq!(
            Answer::of(Ok(Value::Int(1))),
            Answer::Done(Ok(Value::Int(1)))
        );
    }

    #[test]
    fn a_pipeline_error_keeps_its_code_and_detail() {
        let e = wire(b"-NOSCRIPT No matching script.\r\n")
            .extract_error()
            .unwrap_err();
        let value = error_value(e);
        assert_eq!(Answer::of(Ok(value)), Answer::NoScript);
    }

    fn slots_answer(ranges: &[(i64, i64, i64)]) -> Value {
        Value::Array(
            ranges
                .iter()
                .map(|&(first, last, port)| {
                    Value::Array(vec![
                        Value::Int(first),
                        Value::Int(last),
                        Value::Array(vec![
                            Value::BulkString(b"127.0.0.1".to_vec()),
                            Value::Int(port),
                            Value::BulkString(b"id".to_vec()),
                        ]),
                    ])
                })
                .collect(),
        )
    }

    #[test]
    fn the_slot_map_reads_cluster_slots_and_learns_a_moved_slot_at_once() {
        let map = SlotMap::parse(slots_answer(&[(0, 5460, 7000), (5461, 16383, 7001)])).unwrap();
        assert_eq!(map.primary(0), Some("127.0.0.1:7000"));
        assert_eq!(map.primary(5461), Some("127.0.0.1:7001"));
        assert_eq!(map.primaries(), ["127.0.0.1:7000", "127.0.0.1:7001"]);
        let moved = map.with_owner(5461, "127.0.0.1:7002");
        assert_eq!(moved.primary(5461), Some("127.0.0.1:7002"));
        assert_eq!(moved.primary(5462), Some("127.0.0.1:7001"));
        assert_eq!(moved.primaries().len(), 3);
        // A node emptied of slots is no primary any more.
        let emptied = map.with_owner(0, "127.0.0.1:7001");
        let emptied = (1..=5460).fold(emptied, |m, s| m.with_owner(s, "127.0.0.1:7001"));
        assert_eq!(emptied.primaries(), ["127.0.0.1:7001"]);
        // A node reset out of the cluster answers no slots.
        assert_eq!(SlotMap::parse(Value::Array(vec![])), None);
        assert_eq!(SlotMap::parse(slots_answer(&[(0, 16384, 7000)])), None);
    }
}
