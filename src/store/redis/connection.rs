//! The connection to Redis: one server through reconnecting managers, one per calling
//! thread, or a Redis Cluster through the router (`cluster.rs`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, RetryMethod, Value};

use super::super::StoreError;
use super::cluster::ClusterRouter;

/// Where the store's Redis is.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// One server (`redis://`, `rediss://`, `redis+unix://`).
    Single(&'a str),
    /// The seed nodes of a Redis Cluster; the rest of the topology is discovered.
    Cluster(&'a [String]),
}

/// The connection to Redis: one server through a reconnecting manager, or a cluster through
/// the router (`cluster.rs`), which follows MOVED and ASK and picks up topology changes
/// itself. Both multiplex concurrent calls on their connections, so calls sent together
/// travel together; that is how calls for many buckets go in one round trip on a cluster
/// too, where a pipeline may hold one slot's keys only.
#[derive(Clone)]
pub(super) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterRouter),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// Opens `threads` connections to one server, or the router of a cluster (which keeps a
/// connection per node and is shared). Each is made lazily, on its first use.
pub(super) fn open(
    target: Target<'_>,
    timeout: Duration,
    threads: usize,
) -> RedisResult<Box<[Connection]>> {
    // Bounded connection and response times, and a short reconnect backoff, so a call
    // during an outage or a failover fails within the store timeout and recovery is quick.
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_min_delay(Duration::from_millis(20))
        .set_max_delay(Duration::from_millis(200))
        .set_number_of_retries(2);
    Ok(match target {
        Target::Single(url) => {
            let client = redis::Client::open(url)?;
            (0..threads.max(1))
                .map(|_| {
                    ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                        .map(Connection::Single)
                })
                .collect::<RedisResult<_>>()?
        }
        Target::Cluster(urls) => Box::new([Connection::Cluster(ClusterRouter::new(
            urls, config, timeout,
        )?)]),
    })
}

/// The calling thread's connection of a set. A lazy connection is made on its first use,
/// so its driver task runs on the runtime of the thread that uses it.
pub(super) fn of_this_thread(set: &[Connection]) -> Connection {
    thread_local! {
        static SLOT: usize = {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            NEXT.fetch_add(1, Ordering::Relaxed)
        };
    }
    let slot = SLOT.with(|slot| *slot);
    set[slot % set.len()].clone()
}

/// Transient failures (connection, timeout, failover) make the store unavailable; anything
/// else is a fault of ours or of the data.
pub(super) fn classify(e: RedisError) -> StoreError {
    match e.retry_method() {
        RetryMethod::NoRetry => StoreError::Failed(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}
