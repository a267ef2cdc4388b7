//! The Redis store, on one server or a Redis Cluster: every decision is one server-side
//! script on the Redis server's clock, touching keys of one hash slot only (the key layout is
//! in `keys.rs`).
//!
//! - `connection`: to one server, or a cluster through `cluster`'s router;
//! - `keys`: which key and field hold what;
//! - `scripts`: the scripts assembled from `lua/` and the Rust definitions they share;
//! - `args`: the one packed argument format of every decision call, and the replies;
//! - `record`: the packed session record;
//! - `batch`: many calls in few scripts; `pointers`: the session id pointers;
//! - this file: the store itself.

mod args;
mod batch;
pub mod cluster;
mod connection;
mod keys;
mod pointers;
mod record;
mod scripts;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::{join_all, try_join_all};
use redis::{AsyncCommands, RedisResult, Value};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use self::args::{Reply, parse_event, parse_hot_reply, parse_replies, parse_session};
use self::connection::{Connection, classify};
use self::keys::{BUCKETS, bucket_of, bucket_prefix, client_keys, guard_key, record_location};
use self::scripts::Scripts;
use super::{
    Command, Durability, Finalized, Found, LimitCount, Outcome, Policies, SessionStore,
    SharedLimits, StoreError, Swept,
};
use crate::domain::stats::{self, StatsQuery, StatsSummary};
use crate::domain::{
    ClientHash, Clock, Event, EventId, IdSource, Namespace, Op, Policy, Retention, SessionId,
};

pub use self::connection::Target;
pub use self::keys::client_hash_tag;

/// How long past its retention a session id's pointer may outlive it: the pointer is
/// extended only when a session's retention passes it, so busy sessions extend it rarely.
const POINTER_SLACK_MS: i64 = 3_600_000;

pub struct RedisStore {
    /// One connection per thread that calls the store (actix workers and the sweeper), so a
    /// call and the connection's driver task run on the same thread: handing each reply from
    /// one shared driver to the other workers cost more than the extra connections.
    connections: Box<[Connection]>,
    /// Where new sessions are written when they must reach a replica before they are
    /// answered (`Durability::Replicated`), as many as `connections`.
    creations: Option<Box<[Connection]>>,
    durability: Durability,
    /// WAITs for a replica, by outcome (replicated, timed_out).
    replication_waits: Family<OutcomeLabels, Counter>,
    prefix: String,
    timeout: Duration,
    ids: Arc<dyn IdSource>,
    retention: Retention,
    /// The clock given to the store (tests); None reads the Redis server's.
    clock: Option<Arc<dyn Clock>>,
    /// What every decision call shares (`args::shared`), packed once.
    shared: Vec<u8>,
    scripts: Scripts,
}

/// How the store is set up, beside where its Redis is.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// The prefix of every key.
    pub prefix: String,
    /// A store call taking longer fails as unavailable.
    pub timeout: Duration,
    pub retention: Retention,
    /// How many threads call the store (each gets a connection of its own).
    pub threads: usize,
    pub durability: Durability,
    /// The store's clock. None, as in production: the Redis server's TIME. A clock given here
    /// (tests) is read for every call and sent as its last argument (`GIVEN_CLOCK`).
    pub clock: Option<Arc<dyn Clock>>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// About how many records one sweep looks at per bucket: it takes due records hashes, each
/// whole, until it has looked at this many (sweep.lua).
const SWEEP_LIMIT: usize = 500;

impl RedisStore {
    /// Prepares the store; the connection is made in the background and remade after
    /// failures, so sessiond starts and recovers without Redis being there at that moment.
    pub fn connect(
        target: Target<'_>,
        options: &RedisOptions,
        ids: Arc<dyn IdSource>,
    ) -> RedisResult<Self> {
        let RedisOptions {
            ref prefix,
            timeout,
            retention,
            threads,
            durability,
            ref clock,
        } = *options;
        let open = || connection::open(target, timeout, threads);
        let connections = open()?;
        // WAIT holds the connection it is sent on until a replica acknowledges, so new
        // sessions are written, and waited for, on connections of their own: a replica that
        // is slow or gone holds up new sessions only, never the calls of sessions that exist.
        let creations = match durability {
            Durability::Async => None,
            Durability::Replicated { .. } => Some(open()?),
        };
        Ok(Self {
            connections,
            creations,
            durability,
            replication_waits: Family::default(),
            prefix: prefix.clone(),
            timeout,
            ids,
            retention,
            shared: args::shared(&retention, POINTER_SLACK_MS, events_per_bucket(&retention)),
            scripts: Scripts::new(&retention.stats_names, clock.is_some()),
            clock: clock.clone(),
        })
    }

    /// The calling thread's connection.
    fn connection(&self) -> Connection {
        connection::of_this_thread(&self.connections)
    }

    /// Ends a script call's arguments: with a clock given to the store (tests), its now, which
    /// the script's GIVEN_CLOCK takes off again. Every call's last step before it is sent.
    fn given_now(&self, call: &mut redis::ScriptInvocation<'_>) {
        if let Some(clock) = &self.clock {
            call.arg(clock.now_ms());
        }
    }

    /// Runs a store call within the store timeout.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(classify(e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    /// Makes one call per bucket, all at once (on a cluster, each to its bucket's node),
    /// within one store timeout; every call must succeed.
    async fn per_bucket<T, F>(
        &self,
        call: impl Fn(u32, Connection) -> F,
    ) -> Result<Vec<T>, StoreError>
    where
        F: Future<Output = RedisResult<T>>,
    {
        let calls = (0..BUCKETS).map(|bucket| call(bucket, self.connection()));
        self.bounded(try_join_all(calls)).await
    }

    /// Tries the hot script (tick.lua) for a tick or current call: nothing set up but the
    /// decision. `None` when the call is neither.
    async fn run_hot(&self, cmd: &Command) -> Option<Result<Reply, StoreError>> {
        if !matches!(cmd.op, Op::Current { .. } | Op::Tick) {
            return None;
        }
        let mut invocation = self.scripts.hot.prepare_invoke();
        invocation.arg(&self.shared[..]);
        args::add_calls(&mut invocation, &self.prefix, &[(cmd, None)]);
        self.given_now(&mut invocation);
        let mut con = self.connection();
        let value = self.bounded(invocation.invoke_async(&mut con)).await;
        Some(value.and_then(parse_hot_reply))
    }

    /// A call of the decision script (calls.lua) for calls of one bucket (on one server, of
    /// any buckets), each with the session id reserved for it, if any.
    fn decision(&self, calls: &[(&Command, Option<&SessionId>)]) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.scripts.decide.prepare_invoke();
        invocation.arg(&self.shared[..]);
        args::add_calls(&mut invocation, &self.prefix, calls);
        // On a cluster every call of one script is of one bucket (`execute_batch`).
        let bucket = bucket_of(calls[0].0.client.as_str());
        invocation.key(guard_key(&self.prefix, bucket));
        self.given_now(&mut invocation);
        invocation
    }

    /// Decides one call through the decision script, on the given connection.
    async fn run_on(
        &self,
        con: &mut Connection,
        cmd: &Command,
        candidate: Option<&SessionId>,
    ) -> Result<Reply, StoreError> {
        let invocation = self.decision(&[(cmd, candidate)]);
        let value: Value = self.bounded(invocation.invoke_async(con)).await?;
        parse_replies(value)?.pop().unwrap_or_else(|| {
            Err(StoreError::Corrupt(
                "decision script answered no call".into(),
            ))
        })
    }

    /// Turns a script reply into an outcome, finishing the steps that live outside the
    /// client's slot: releasing an unused id reservation and extending a pointer.
    async fn finish(
        &self,
        reply: Reply,
        candidate: Option<SessionId>,
    ) -> Result<Outcome, StoreError> {
        let outcome = match reply {
            Reply::Session {
                record,
                now,
                extend_pointer_to,
                finalized,
                counted_as_other,
            } => {
                let session = parse_session(&record)?;
                if extend_pointer_to > 0 {
                    self.extend_pointer(&session.id, extend_pointer_to).await;
                }
                // Created only if the stored id is the one this call reserved: a re-sent
                // script that finds its own session still reports it as created.
                let created = candidate.as_ref() == Some(&session.id);
                Outcome::Session {
                    session,
                    created,
                    now,
                    finalized,
                    counted_as_other,
                }
            }
            Reply::NoLive => Outcome::NoLiveSession,
            Reply::Unknown => Outcome::UnknownSession,
            // Callers settle both before: an id is reserved, a held-back call runs alone.
            Reply::NeedId | Reply::Skipped | Reply::Slow | Reply::NoRecord => {
                return Err(StoreError::Failed(
                    "the script asked for an id again, or held back a call made alone".into(),
                ));
            }
        };
        if let Some(unused) = candidate
            .filter(|c| !matches!(&outcome, Outcome::Session { session, .. } if session.id == *c))
        {
            self.release_id(&unused).await;
        }
        Ok(outcome)
    }

    /// A call that may start a session: reserves an id, decides, and when the call started
    /// the session and the durability asks for it, waits until a replica has it.
    async fn execute_with_id(&self, cmd: &Command) -> Result<Outcome, StoreError> {
        let candidate = self.reserve_id(cmd).await?;
        let mut con = match &self.creations {
            Some(set) => connection::of_this_thread(set),
            None => self.connection(),
        };
        let reply = self.run_on(&mut con, cmd, Some(&candidate)).await?;
        let outcome = self.finish(reply, Some(candidate)).await?;
        if let (
            Outcome::Session { created: true, .. },
            Durability::Replicated { timeout, strict },
        ) = (&outcome, self.durability)
        {
            self.wait_for_replica(&mut con, cmd, timeout, strict)
                .await?;
        }
        Ok(outcome)
    }

    /// Waits until a replica of the primary that wrote a client's session acknowledged every
    /// write of the connection it went on (WAIT counts per connection), for at most `timeout`.
    async fn wait_for_replica(
        &self,
        con: &mut Connection,
        cmd: &Command,
        timeout: Duration,
        strict: bool,
    ) -> Result<(), StoreError> {
        let ms = timeout.as_millis() as u64;
        let acknowledged: i64 = match con {
            Connection::Single(c) => {
                self.bounded(redis::cmd("WAIT").arg(1).arg(ms).query_async(c))
                    .await?
            }
            Connection::Cluster(router) => {
                let (records, _) = record_location(&self.prefix, &cmd.namespace, &cmd.client);
                self.bounded(router.wait_for_replicas(records.as_bytes(), 1, ms))
                    .await?
            }
        };
        let outcome = if acknowledged >= 1 {
            "replicated"
        } else {
            "timed_out"
        };
        self.replication_waits
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        if acknowledged < 1 && strict {
            return Err(StoreError::Unavailable(format!(
                "no replica acknowledged a new session within {ms} ms"
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn execute(&self, command: &Command) -> Result<Outcome, StoreError> {
        match self.run_hot(command).await.transpose()? {
            None | Some(Reply::Slow) => {}
            // A new client's tick: its id is reserved first, which saves the full call that
            // would only answer that it needs one.
            Some(Reply::NoRecord) if !matches!(command.op, Op::Current { create: false }) => {
                return self.execute_with_id(command).await;
            }
            Some(Reply::NoRecord) => {}
            Some(reply) => return self.finish(reply, None).await,
        }
        match self.run_on(&mut self.connection(), command, None).await? {
            Reply::NeedId => self.execute_with_id(command).await,
            reply => self.finish(reply, None).await,
        }
    }

    /// Calls go to Redis in decision scripts, in order (`batch.rs`).
    async fn execute_batch(&self, commands: &[Command]) -> Vec<Result<Outcome, StoreError>> {
        self.batch(commands).await
    }

    async fn find(&self, id: &SessionId) -> Result<Option<Found>, StoreError> {
        let Some(pointer) = self.read_pointer(id).await? else {
            return Ok(None);
        };
        let mut con = self.connection();
        let mut call = self.scripts.find.prepare_invoke();
        for key in client_keys(&self.prefix, &pointer.namespace, &pointer.client) {
            call.key(key);
        }
        call.arg(id.as_str());
        self.given_now(&mut call);
        let (now, record): (i64, Vec<u8>) = self.bounded(call.invoke_async(&mut con)).await?;
        if record.is_empty() || pointer.expires_at_ms <= now {
            return Ok(None);
        }
        Ok(Some(Found {
            namespace: pointer.namespace,
            session: parse_session(&record)?,
            now,
        }))
    }

    async fn owner(&self, id: &SessionId) -> Result<Option<(Namespace, ClientHash)>, StoreError> {
        // An expired pointer still names its client: the decision then finds the session past
        // retention, and answers so.
        Ok(self
            .read_pointer(id)
            .await?
            .map(|pointer| (pointer.namespace, pointer.client)))
    }

    /// Every bucket is swept by one script call, all sent at once. A bucket that cannot be
    /// swept now (its node is failing over) does not hold up the others.
    async fn sweep(&self, policies: &Policies) -> Result<Swept, StoreError> {
        // sweep.lua's reply: finalized, looked at, then finalized by final status.
        type SweepReply = (u64, usize, u64, u64, u64, u64);
        let others = std::iter::once(("", Policy::default()));
        let named: Vec<(&str, Policy)> = others
            .chain(policies.iter().map(|(n, p)| (n.as_str(), *p)))
            .collect();
        let packed = args::policies(named.iter().map(|(_, p)| p));
        let sweeps = (0..BUCKETS).map(|bucket| {
            let prefix = bucket_prefix(&self.prefix, bucket);
            let mut call = self.scripts.sweep.key(format!("{prefix}wake"));
            call.key(guard_key(&self.prefix, bucket))
                .arg(&self.shared[..])
                .arg(&packed[..])
                .arg(SWEEP_LIMIT);
            for (name, _) in &named {
                call.arg(*name);
            }
            self.given_now(&mut call);
            let mut con = self.connection();
            async move {
                self.bounded(call.invoke_async::<SweepReply>(&mut con))
                    .await
            }
        });
        let mut swept = Swept::default();
        let mut failed = None;
        for result in join_all(sweeps).await {
            match result {
                Ok((_, looked_at, exited, errored, abnormal, crashed)) => {
                    swept.finalized += Finalized {
                        exited,
                        errored,
                        abnormal,
                        crashed,
                    };
                    swept.more |= looked_at >= SWEEP_LIMIT;
                }
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) if swept.finalized.total() == 0 && !swept.more => Err(e),
            Some(e) => {
                tracing::warn!(error = %e, "some buckets could not be swept; the next sweep tries again");
                Ok(swept)
            }
            None => Ok(swept),
        }
    }

    /// Merges the buckets' streams: each gives its first `limit` events after the cursor,
    /// and the oldest `limit` of all of them are the answer. Only events older than every
    /// node's clock at the read are given: an event added later takes at least its node's
    /// current millisecond, and must not land behind a cursor already given out.
    async fn events(&self, after: Option<EventId>, limit: usize) -> Result<Vec<Event>, StoreError> {
        type Page = (u64, Vec<(String, Vec<String>)>);
        let pages: Vec<Page> = self
            .per_bucket(|bucket, mut con| {
                let start = match after {
                    None => "-".to_owned(),
                    // Ties in time and sequence go by bucket: later buckets include the
                    // cursor's own entry id, earlier ones (and its own) start after it.
                    Some(a) if bucket > u32::from(a.shard) => format!("{}-{}", a.ms, a.seq),
                    Some(a) => format!("({}-{}", a.ms, a.seq),
                };
                let mut call = self
                    .scripts
                    .events
                    .key(format!("{}ev", bucket_prefix(&self.prefix, bucket)));
                call.arg(start).arg(limit);
                self.given_now(&mut call);
                async move { call.invoke_async(&mut con).await }
            })
            .await?;
        let settled = pages.iter().map(|(now, _)| *now).min().unwrap_or(0);
        let mut events = Vec::new();
        for (bucket, (_, page)) in pages.into_iter().enumerate() {
            for (id, fields) in page {
                let event = parse_event(bucket as u16, &id, fields)?;
                if event.id.ms < settled {
                    events.push(event);
                }
            }
        }
        events.sort_unstable_by_key(|e| e.id);
        events.truncate(limit);
        Ok(events)
    }

    async fn stats(&self, query: &StatsQuery) -> Result<StatsSummary, StoreError> {
        let days: Vec<i64> = query.days().collect();
        let hashes: Vec<Vec<Vec<(String, i64)>>> = self
            .per_bucket(|bucket, con| {
                let prefix = bucket_prefix(&self.prefix, bucket);
                let days = days.clone();
                async move {
                    try_join_all(days.iter().map(|day| {
                        let mut con = con.clone();
                        let key = format!("{prefix}s:{day}");
                        async move { con.hgetall(key).await }
                    }))
                    .await
                }
            })
            .await?;
        Ok(stats::aggregate(
            query,
            hashes
                .iter()
                .flatten()
                .map(|hash| hash.iter().map(|(field, n)| (field.as_str(), *n))),
        ))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut con = self.connection();
        self.bounded(redis::cmd("PING").query_async::<()>(&mut con))
            .await
    }

    /// One pipeline: the instance's heartbeat in `PREFIX:instances` (field the instance, value
    /// when it last counted) and the registry read back, then per counter an HINCRBY of its
    /// field in its bucket's hash of the window (`PREFIX:{bucket}:l:WINDOW`, kept for three
    /// windows). On a cluster the router sends each command to its slot's node.
    async fn share_limits(
        &self,
        instance: &str,
        window_ms: i64,
        counts: &[LimitCount],
    ) -> Result<Option<SharedLimits>, StoreError> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let registry = format!("{}:instances", self.prefix);
        let mut pipe = redis::pipe();
        pipe.hset(&registry, instance, now_ms)
            .ignore()
            .hgetall(&registry);
        for count in counts {
            let key = format!(
                "{}l:{}",
                bucket_prefix(&self.prefix, count.spread % BUCKETS),
                count.window
            );
            pipe.hincr(&key, &count.field, count.add)
                .pexpire(&key, 3 * window_ms)
                .ignore();
        }
        let mut con = self.connection();
        let mut values: Vec<Value> = self.bounded(pipe.query_async(&mut con)).await?;
        fn corrupt(e: impl std::fmt::Display) -> StoreError {
            StoreError::Corrupt(format!("shared limits: {e}"))
        }
        let mut values = values.drain(..);
        let seen: HashMap<String, i64> =
            redis::from_redis_value(values.next().unwrap_or(Value::Nil)).map_err(corrupt)?;
        let totals = values
            .map(|v| redis::from_redis_value::<u64>(v).map_err(corrupt))
            .collect::<Result<Vec<_>, _>>()?;
        // An instance that has not counted for a while is gone; its field is dropped.
        let (alive, gone): (Vec<_>, Vec<_>) = seen
            .into_iter()
            .partition(|(_, at)| now_ms - at < INSTANCE_GONE_MS);
        if !gone.is_empty() {
            let fields: Vec<String> = gone.into_iter().map(|(id, _)| id).collect();
            let _ = self.bounded(con.hdel::<_, _, ()>(&registry, fields)).await;
        }
        Ok(Some(SharedLimits {
            totals,
            instances: alive.len().max(1),
        }))
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        if let Connection::Cluster(router) = &self.connections[0] {
            router.register_metrics(registry);
        }
        if self.creations.is_some() {
            registry.register(
                "replication_waits",
                "New sessions waited for until a replica had them (durability = replicated), by outcome (replicated, timed_out)",
                self.replication_waits.clone(),
            );
        }
    }
}

/// An instance that has not shared its limit counts for this long is no longer counted.
const INSTANCE_GONE_MS: i64 = 5_000;

/// About how many events each bucket's stream keeps, so all of them keep `events`.
fn events_per_bucket(retention: &Retention) -> usize {
    retention.events.div_ceil(BUCKETS as usize).max(1)
}
