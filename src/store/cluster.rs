//! Redis Cluster routing: one reconnecting connection per primary, and each command sent to
//! the primary of its key's slot, following MOVED and ASK and refreshing the slot map when
//! the topology changes.
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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo, Pipeline, RedisError,
    RedisFuture, RedisResult, ServerErrorKind, Value,
};

const SLOTS: u16 = 16384;

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
    crc16::State::<crc16::XMODEM>::calculate(tagged) % SLOTS
}

/// Which primary serves which slots: `(first, last, "host:port")`, as CLUSTER SLOTS says.
#[derive(Debug, Default)]
struct SlotMap(Vec<(u16, u16, String)>);

impl SlotMap {
    fn primary(&self, slot: u16) -> Option<&str> {
        self.0
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, addr)| addr.as_str())
    }

    fn primaries(&self) -> Vec<String> {
        let mut all: Vec<String> = self.0.iter().map(|(_, _, a)| a.clone()).collect();
        all.sort();
        all.dedup();
        all
    }

    fn parse(value: Value) -> Option<Self> {
        let Value::Array(ranges) = value else {
            return None;
        };
        let mut map = Vec::new();
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
            map.push((
                u16::try_from(*first).ok()?,
                u16::try_from(*last).ok()?,
                format!("{host}:{port}"),
            ));
        }
        (!map.is_empty()).then_some(Self(map))
    }
}

struct Inner {
    /// The seed nodes; their first one lends its credentials and TLS mode to every node.
    seeds: Vec<ConnectionInfo>,
    config: ConnectionManagerConfig,
    slots: RwLock<Arc<SlotMap>>,
    nodes: Mutex<HashMap<String, ConnectionManager>>,
    refreshing: AtomicBool,
    last_refresh: Mutex<Option<Instant>>,
}

/// A connection to a whole Redis Cluster, cheap to clone.
#[derive(Clone)]
pub struct ClusterRouter(Arc<Inner>);

/// Refreshes of the slot map are at least this far apart, however many calls fail.
const REFRESH_GAP: Duration = Duration::from_millis(100);

/// MOVED and ASK redirections one call follows at most.
const MAX_REDIRECTS: usize = 3;

impl ClusterRouter {
    /// Prepares the router; it connects and learns the slot map on first use.
    pub fn new(seeds: &[String], config: ConnectionManagerConfig) -> RedisResult<Self> {
        let seeds = seeds
            .iter()
            .map(|s| s.as_str().into_connection_info())
            .collect::<RedisResult<Vec<_>>>()?;
        if seeds.is_empty() {
            return Err((ErrorKind::InvalidClientConfig, "no cluster seed node").into());
        }
        Ok(Self(Arc::new(Inner {
            seeds,
            config,
            slots: RwLock::new(Arc::default()),
            nodes: Mutex::new(HashMap::new()),
            refreshing: AtomicBool::new(false),
            last_refresh: Mutex::new(None),
        })))
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
        let known = self.slot_map().primaries();
        let seeds = self.0.seeds.iter().filter_map(|s| match s.addr() {
            ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                Some(format!("{host}:{port}"))
            }
            ConnectionAddr::Unix(_) => None,
            _ => None,
        });
        let mut candidates = known;
        candidates.extend(seeds);
        candidates.dedup();
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
                    if let Some(map) = SlotMap::parse(value) {
                        let live = map.primaries();
                        *self.0.slots.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(map);
                        // Connections to nodes that serve no slots any more are dropped.
                        self.0
                            .nodes
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .retain(|addr, _| live.contains(addr));
                        return Ok(());
                    }
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            (
                ErrorKind::ClusterConnectionNotFound,
                "no cluster node answered",
            )
                .into()
        }))
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
        tokio::spawn(async move {
            if let Err(e) = router.refresh().await {
                tracing::warn!(error = %e, "could not refresh the cluster slot map");
            }
            *router
                .0
                .last_refresh
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            router.0.refreshing.store(false, Ordering::Release);
        });
    }

    /// The primary for a slot, learning the slot map first if there is none yet.
    async fn primary_for(&self, slot: u16) -> RedisResult<String> {
        if self.slot_map().0.is_empty() {
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

    /// Sends a command to every primary (SCRIPT LOAD: `Script::invoke_async` loads a script
    /// after NOSCRIPT without naming a key, and the node that said NOSCRIPT must get it).
    async fn to_every_primary(&self, cmd: &Cmd) -> RedisResult<Value> {
        if self.slot_map().0.is_empty() {
            self.refresh().await?;
        }
        let sends = self
            .slot_map()
            .primaries()
            .into_iter()
            .map(|addr| async move {
                let mut con = self.node(&addr)?;
                con.req_packed_command(cmd).await
            });
        // A primary that is down (being failed over) must not fail the load for the others:
        // its replica gets the script on its own NOSCRIPT once it is promoted.
        let mut answers = futures_util::future::join_all(sends).await;
        match answers.iter().position(Result::is_ok) {
            Some(ok) => answers.swap_remove(ok),
            None => answers.pop().unwrap_or_else(|| {
                Err((ErrorKind::ClusterConnectionNotFound, "no primary").into())
            }),
        }
    }

    /// A command without a key (PING) goes to the first primary that answers, so one
    /// failing shard does not make the whole cluster look down.
    async fn to_any_primary(&self, cmd: &Cmd) -> RedisResult<Value> {
        if self.slot_map().0.is_empty() {
            self.refresh().await?;
        }
        let mut last_error = None;
        for addr in self.slot_map().primaries() {
            match self.node(&addr)?.req_packed_command(cmd).await {
                Ok(value) => return Ok(value),
                Err(e) => {
                    self.refresh_soon();
                    last_error = Some(e);
                }
            }
        }
        Err(last_error
            .unwrap_or_else(|| (ErrorKind::ClusterConnectionNotFound, "no primary").into()))
    }

    /// Sends one command to the primary of its key's slot, following redirections.
    async fn route(&self, cmd: &Cmd) -> RedisResult<Value> {
        if is_script_load(cmd) {
            return self.to_every_primary(cmd).await;
        }
        let Some(key) = key_of(cmd) else {
            return self.to_any_primary(cmd).await;
        };
        let mut addr = self.primary_for(slot_of(key)).await?;
        let mut asking = false;
        for _ in 0..=MAX_REDIRECTS {
            let mut con = self.node(&addr)?;
            let answer = if asking {
                let mut pipe = redis::pipe();
                pipe.cmd("ASKING").ignore().add_command(cmd.clone());
                pipe.query_async::<Vec<Value>>(&mut con)
                    .await
                    .map(|mut v| v.pop().unwrap_or(Value::Nil))
            } else {
                con.req_packed_command(cmd).await
            };
            match answer {
                Err(e) if matches!(e.kind(), ErrorKind::Server(ServerErrorKind::Moved)) => {
                    self.refresh_soon();
                    addr = redirect(&e)?;
                    asking = false;
                }
                Err(e) if matches!(e.kind(), ErrorKind::Server(ServerErrorKind::Ask)) => {
                    addr = redirect(&e)?;
                    asking = true;
                }
                Err(e) => {
                    // A node that cannot be reached, or a shard without a primary, may mean
                    // a failover: learn the new slot map for the next calls.
                    if e.is_io_error()
                        || e.is_timeout()
                        || e.is_connection_dropped()
                        || e.is_connection_refusal()
                        || matches!(
                            e.kind(),
                            ErrorKind::Server(
                                ServerErrorKind::ClusterDown | ServerErrorKind::TryAgain
                            )
                        )
                    {
                        self.refresh_soon();
                    }
                    return Err(e);
                }
                ok => return ok,
            }
        }
        Err((ErrorKind::Client, "too many cluster redirections").into())
    }
}

fn redirect(e: &RedisError) -> RedisResult<String> {
    e.redirect_node()
        .map(|(addr, _)| addr.to_owned())
        .ok_or_else(|| (ErrorKind::Parse, "a redirection without a node").into())
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
/// None for commands without a key (PING, TIME).
fn key_of(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = words(cmd);
    let name = args.next()?;
    if name.eq_ignore_ascii_case(b"EVAL") || name.eq_ignore_ascii_case(b"EVALSHA") {
        let _script = args.next()?;
        let keys = args.next()?;
        return (keys != b"0").then(|| args.next()).flatten();
    }
    if name.eq_ignore_ascii_case(b"PING") || name.eq_ignore_ascii_case(b"TIME") {
        return None;
    }
    args.next()
}

impl ConnectionLike for ClusterRouter {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(self.route(cmd))
    }

    /// Pipelines are sent whole to the primary of their first command's key: the store only
    /// pipelines commands of one slot.
    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let key = pipeline.cmd_iter().find_map(key_of).ok_or_else(|| {
                RedisError::from((ErrorKind::Client, "a cluster pipeline names no key"))
            })?;
            let addr = self.primary_for(slot_of(key)).await?;
            let mut con = self.node(&addr)?;
            con.req_packed_commands(pipeline, offset, count).await
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_hash_tag_as_redis_computes_them() {
        // Values from CLUSTER KEYSLOT on Redis 7.
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{foo}.bar"), 12182);
        assert_eq!(slot_of(b"sd:{2a}:c:web:x"), slot_of(b"{2a}"));
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
        get.arg("sd:id:{0f}");
        assert_eq!(key_of(&get), Some(&b"sd:id:{0f}"[..]));
        assert_eq!(key_of(&redis::cmd("PING")), None);
        let mut keyless = redis::cmd("EVAL");
        keyless.arg("return 1").arg(0);
        assert_eq!(key_of(&keyless), None);
    }
}
