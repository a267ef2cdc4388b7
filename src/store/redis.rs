//! The Redis store, on one server or a Redis Cluster: every decision is one server-side
//! script on the Redis server's clock, touching keys of one hash slot only.
//!
//! Keys (a client's keys share the `{bucket}` hash tag of its bucket, so they live in one slot):
//! - `PREFIX:{bucket}:r:XX`  hash of the current sessions of the bucket's clients whose hash
//!   starts with XX: field `NS:HASH`, a packed record (`record.rs`). A field cannot expire, so
//!   readers treat a record past client retention as gone and the sweeper removes it
//!   (lib.lua's `record_expires`);
//! - `PREFIX:{bucket}:a:NS:HASH`  hash of the client's earlier sessions still retained (id ->
//!   packed record);
//! - `PREFIX:{I}:i:J`  hash of the pointers from session ids to their clients, I and J the
//!   id's first two bytes (`pointer.lua`). Reserving a pointer is what makes ids unique among
//!   retained sessions; it lives in the id's slot, so it is written in a step of its own,
//!   before the script that starts the session.
//!
//! Health data is kept per bucket, so the same atomic script that decides a client's session
//! writes it, and a cluster spreads it with the clients:
//! - `PREFIX:{bucket}:wake`  the bucket's records hashes (by XX) by when the sweeper should
//!   look at them next (lib.lua's `schedule`): set when a session starts, moved by the
//!   sweeper;
//! - `PREFIX:{bucket}:ev`  stream of the bucket's lifecycle events, trimmed with `MAXLEN ~`;
//! - `PREFIX:{bucket}:s:DAY`  hash of stats counters of sessions started that day
//!   (`domain::stats`), expiring `stats_retention` after the day.
//!
//! `PREFIX:{bucket}:guard` is never written. Every script that writes more than one key
//! declares it, so that such a script never runs while its slot is being migrated: Redis
//! Cluster refuses a multi-key call that names a key the node does not hold while the slot
//! migrates (TRYAGAIN, or ASK and then TRYAGAIN on the target), and the router waits the
//! migration out. Without it a script could write on the source a key already moved (and fail
//! halfway), or create on the target a key still on the source (and the migration of that key
//! would then fail). A script that writes only its one declared key (the hot tick, the
//! pointers) needs no guard.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::{join_all, try_join_all};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{
    AsyncCommands, Cmd, Pipeline, RedisError, RedisFuture, RedisResult, RetryMethod, Script, Value,
};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Deserialize;
use serde::de::IntoDeserializer;

use super::cluster::ClusterRouter;
use super::record;
use super::{
    Command, Durability, Finalized, Found, LimitCount, Outcome, Policies, SessionStore,
    SharedLimits, StoreError, Swept,
};
use crate::domain::decision::untouched_lifetime;
use crate::domain::stats::{self, StatsQuery, StatsSummary};
use crate::domain::{
    Attributes, ClientHash, Clock, EndStatus, Event, EventId, EventKind, IdSource, Mode, Namespace,
    OnUserChange, Op, Policy, RecentReports, Retention, SessionId, SessionState, StatsNames,
    Status,
};
use crate::telemetry;

/// How long past its retention a session id's pointer may outlive it: the pointer is
/// extended only when a session's retention passes it, so busy sessions extend it rarely.
const POINTER_SLACK_MS: i64 = 3_600_000;

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
enum Connection {
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
    hot_script: Script,
    session_script: Script,
    batch_script: Script,
    sweep_script: Script,
    find_script: Script,
    events_script: Script,
    pointer_script: Script,
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

/// The clock every script of a store given one (tests) starts with, in place of clock.lua:
/// the call's last argument, taken off so the script sees its own arguments as usual. Events
/// are stamped with it too, so it must not go back.
const GIVEN_CLOCK: &str = "local given_now = table.remove(ARGV)
local EVENT_ID = given_now .. '-*'
given_now = tonumber(given_now)
local function clock() return given_now end
";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// A script: the shebang (so it touches declared keys only), the clock, then `body`.
fn script(clock: &str, body: &str) -> Script {
    Script::new(&format!("#!lua\n{clock}{body}"))
}

/// The body of a script of lib.lua's users: the record's constants (record.rs), prelude.lua,
/// the caps on stats names lib.lua reads, lib.lua, then `tail`.
fn with_lib(names: &StatsNames, tail: &str) -> String {
    format!(
        "{}{}local STATS_MAX_RELEASES, STATS_MAX_ENVIRONMENTS = {}, {}\n{}{tail}",
        record::lua_constants(true),
        include_str!("prelude.lua"),
        names.releases,
        names.environments,
        include_str!("lib.lua"),
    )
}

/// A script body with the hot decision (fast.lua) put in place of its `-- @fast` line.
fn with_fast(source: &str) -> String {
    source.replacen("-- @fast\n", include_str!("fast.lua"), 1)
}

/// How many calls one batch script decides at most: a script holds its Redis while it runs
/// (100 calls take about half a millisecond), so a long batch goes in several.
const CALLS_PER_SCRIPT: usize = 100;

/// About how many records one sweep looks at per bucket: it takes due records hashes, each
/// whole, until it has looked at this many (sweep.lua).
const SWEEP_LIMIT: usize = 500;

/// A script's answer before it is read into an [`Outcome`].
enum Reply {
    Session {
        record: Vec<u8>,
        now: i64,
        extend_pointer_to: i64,
        /// The final status of the session the call finalized, if any.
        finalized: Option<Status>,
        /// The session the call started counts as `other` in stats.
        counted_as_other: bool,
    },
    NeedId,
    /// A batch call held back behind an earlier call of its client that needs an id.
    Skipped,
    /// The hot script (tick.lua) left the call to the full one.
    Slow,
    /// The hot script found no record of the client: a call that may start a session
    /// reserves an id before the full call.
    NoRecord,
    NoLive,
    Unknown,
}

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
        let names = retention.stats_names;
        let clock = clock.clone();
        let clock_source = match clock {
            Some(_) => GIVEN_CLOCK,
            None => include_str!("clock.lua"),
        };
        // Bounded connection and response times, and a short reconnect backoff, so a call
        // during an outage or a failover fails within the store timeout and recovery is quick.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(200))
            .set_number_of_retries(2);
        let open = || -> RedisResult<Box<[Connection]>> {
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
                // The router keeps a connection per node and is shared.
                Target::Cluster(urls) => Box::new([Connection::Cluster(ClusterRouter::new(
                    urls,
                    config.clone(),
                    timeout,
                )?)]),
            })
        };
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
            hot_script: script(
                clock_source,
                &with_fast(&format!(
                    "{}{}{}",
                    record::lua_constants(false),
                    include_str!("prelude.lua"),
                    include_str!("tick.lua")
                )),
            ),
            session_script: script(
                clock_source,
                &with_lib(
                    &names,
                    concat!(include_str!("decide.lua"), include_str!("session.lua")),
                ),
            ),
            batch_script: script(
                clock_source,
                &with_fast(&with_lib(
                    &names,
                    &format!(
                        "{}{}{}",
                        include_str!("decide.lua"),
                        lua_ops(),
                        include_str!("batch.lua")
                    ),
                )),
            ),
            sweep_script: script(clock_source, &with_lib(&names, include_str!("sweep.lua"))),
            find_script: script(clock_source, &with_lib(&names, include_str!("find.lua"))),
            events_script: script(clock_source, include_str!("events.lua")),
            pointer_script: script(clock_source, include_str!("pointer.lua")),
            clock,
        })
    }

    /// The calling thread's connection. A lazy connection is made on its first use, so its
    /// driver task runs on the runtime of the thread that uses it.
    fn connection(&self) -> Connection {
        Self::thread_connection(&self.connections)
    }

    /// The calling thread's connection of a set.
    fn thread_connection(set: &[Connection]) -> Connection {
        thread_local! {
            static SLOT: usize = {
                static NEXT: AtomicUsize = AtomicUsize::new(0);
                NEXT.fetch_add(1, Ordering::Relaxed)
            };
        }
        let slot = SLOT.with(|slot| *slot);
        set[slot % set.len()].clone()
    }

    /// About how many events each bucket's stream keeps, so all of them keep `events`.
    fn events_per_bucket(&self) -> usize {
        self.retention.events.div_ceil(BUCKETS as usize).max(1)
    }

    /// Ends a script call's arguments: with a clock given to the store (tests), its now, which
    /// the script's GIVEN_CLOCK takes off again. Every call's last step before it is sent.
    fn given_now(&self, call: &mut redis::ScriptInvocation<'_>) {
        if let Some(clock) = &self.clock {
            call.arg(clock.now_ms());
        }
    }

    /// A call of pointer.lua on a session id's pointer, with its first time argument.
    fn pointer(&self, op: &str, id: &SessionId, ms: i64) -> redis::ScriptInvocation<'_> {
        let (key, field) = pointer_location(&self.prefix, id);
        let mut call = self.pointer_script.key(key);
        call.arg(field).arg(op).arg(ms);
        call
    }

    /// The client a session id's pointer names, and when the pointer expires.
    async fn read_pointer(&self, id: &SessionId) -> Result<Option<Pointer>, StoreError> {
        let (key, field) = pointer_location(&self.prefix, id);
        let mut con = self.connection();
        let value: Option<String> = self.bounded(con.hget(key, field)).await?;
        value
            .map(|value| {
                Pointer::parse(&value)
                    .ok_or_else(|| StoreError::Corrupt(format!("pointer of {id} holds {value:?}")))
            })
            .transpose()
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

    /// Adds one decision's keys and arguments (decide.lua) to a script call.
    fn add_call(
        &self,
        call: &mut redis::ScriptInvocation<'_>,
        cmd: &Command,
        candidate: Option<&SessionId>,
    ) {
        for key in client_keys(&self.prefix, &cmd.namespace, &cmd.client) {
            call.key(key);
        }
        let policy = &cmd.policy;
        call.arg(op_name(&cmd.op));
        let names = add_create_and_status_args(call, &cmd.op);
        call.arg(names)
            .arg(policy.idle_timeout_ms)
            .arg(max_duration_arg(policy))
            .arg(mode_name(policy))
            .arg(on_user_change_name(policy))
            .arg(self.retention.client_ms())
            .arg(self.retention.session_ms())
            .arg(POINTER_SLACK_MS)
            .arg(candidate.map_or("", SessionId::as_str));
        let attributes = &cmd.attributes;
        call.arg(attributes.release.as_deref().unwrap_or_default())
            .arg(attributes.environment.as_deref().unwrap_or_default())
            .arg(attributes.platform.as_deref().unwrap_or_default())
            .arg(attributes.user_id.as_deref().unwrap_or_default())
            .arg(self.retention.stats_ms())
            .arg(self.events_per_bucket());
        add_report_args(call, &cmd.op);
    }

    /// A batch script call (batch.lua) for some of a batch's calls: what they share once,
    /// then each call's key and own arguments.
    fn batch_invocation(
        &self,
        commands: &[Command],
        calls: &[usize],
    ) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.batch_script.prepare_invoke();
        invocation
            .arg(self.retention.client_ms())
            .arg(self.retention.session_ms())
            .arg(POINTER_SLACK_MS)
            .arg(self.retention.stats_ms())
            .arg(self.events_per_bucket());
        let mut policies: Vec<&Policy> = Vec::new();
        let numbers: Vec<usize> = calls
            .iter()
            .map(|&i| {
                let policy = &commands[i].policy;
                let known = policies.iter().position(|p| *p == policy);
                known.unwrap_or_else(|| {
                    policies.push(policy);
                    policies.len() - 1
                })
            })
            .collect();
        invocation.arg(policies.len());
        for policy in policies {
            invocation
                .arg(policy.idle_timeout_ms)
                .arg(max_duration_arg(policy))
                .arg(mode_name(policy))
                .arg(on_user_change_name(policy));
        }
        for (&i, number) in calls.iter().zip(numbers) {
            let cmd = &commands[i];
            let attributes = &cmd.attributes;
            let defaults = matches!(cmd.op, Op::Tick | Op::Current { create: true })
                && *attributes == Attributes::default();
            // At most CALLS_PER_SCRIPT policies, so the policy's byte stays below 256.
            const _: () = assert!(CALLS_PER_SCRIPT <= 200);
            let (records, member) = record_location(&self.prefix, &cmd.namespace, &cmd.client);
            let mut spec = vec![
                op_name(&cmd.op).as_bytes()[0],
                b'0' + number as u8,
                if defaults { b'.' } else { b'+' },
            ];
            spec.extend_from_slice(member.as_bytes());
            invocation.key(records).arg(spec);
            if !defaults {
                invocation.arg(attributes.user_id.as_deref().unwrap_or_default());
                let names = add_create_and_status_args(&mut invocation, &cmd.op);
                invocation
                    .arg(names)
                    .arg(attributes.release.as_deref().unwrap_or_default())
                    .arg(attributes.environment.as_deref().unwrap_or_default())
                    .arg(attributes.platform.as_deref().unwrap_or_default());
                add_report_args(&mut invocation, &cmd.op);
            }
        }
        // On a cluster every call of one script is of one bucket (`execute_batch`).
        let first = commands[calls[0]].client.as_str();
        invocation.key(guard_key(&self.prefix, bucket_of(first)));
        invocation
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

    /// Reserves a fresh session id for a client: its pointer, set only if no retained
    /// session holds the id. A collision draws again.
    async fn reserve_id(&self, cmd: &Command) -> Result<SessionId, StoreError> {
        let tag = client_tag(&cmd.namespace, &cmd.client);
        // Long enough for the session's first stretch (with a minute to spare for the time
        // until the script runs); the script extends it from there.
        let ttl_ms = untouched_lifetime(&cmd.policy)
            + self.retention.session_ms()
            + POINTER_SLACK_MS
            + 60_000;
        loop {
            let candidate = self.ids.session_id();
            let mut con = self.connection();
            let mut call = self.pointer("reserve", &candidate, ttl_ms);
            call.arg(&tag);
            self.given_now(&mut call);
            let set: i64 = self.bounded(call.invoke_async(&mut con)).await?;
            if set == 1 {
                return Ok(candidate);
            }
            let request_id = telemetry::request_id();
            tracing::warn!(
                request_id,
                "session id collision among retained sessions; drawing again"
            );
        }
    }

    /// Tries the hot script (tick.lua) for a tick or current call: two arguments, the call's
    /// numbers in binary, and nothing set up but the decision. `None` when the call is
    /// neither.
    async fn run_hot(&self, cmd: &Command) -> Option<Result<Reply, StoreError>> {
        let op = match cmd.op {
            Op::Current { .. } => b'c',
            Op::Tick => b't',
            _ => return None,
        };
        let (records, member) = record_location(&self.prefix, &cmd.namespace, &cmd.client);
        let call = hot_call(op, &cmd.policy, &self.retention, &cmd.attributes);
        let mut invocation = self.hot_script.key(records);
        invocation.arg(member).arg(call);
        self.given_now(&mut invocation);
        let mut con = self.connection();
        let value = self.bounded(invocation.invoke_async(&mut con)).await;
        Some(value.and_then(parse_hot_reply))
    }

    async fn run(&self, cmd: &Command, candidate: Option<&SessionId>) -> Result<Reply, StoreError> {
        self.run_on(&mut self.connection(), cmd, candidate).await
    }

    async fn run_on(
        &self,
        con: &mut Connection,
        cmd: &Command,
        candidate: Option<&SessionId>,
    ) -> Result<Reply, StoreError> {
        let mut invocation = self.session_script.prepare_invoke();
        self.add_call(&mut invocation, cmd, candidate);
        self.given_now(&mut invocation);
        let value: Value = self.bounded(invocation.invoke_async(con)).await?;
        parse_reply(value)
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

    async fn extend_pointer(&self, id: &SessionId, until_ms: i64) {
        let mut con = self.connection();
        let mut call = self.pointer("extend", id, until_ms);
        self.given_now(&mut call);
        if let Err(e) = self.bounded(call.invoke_async::<i64>(&mut con)).await {
            let request_id = telemetry::request_id();
            tracing::warn!(request_id, error = %e, "could not extend a session id pointer; lookups by id may end early");
        }
    }

    /// Drops the reservation of an id that lost a race to a concurrent call.
    async fn release_id(&self, id: &SessionId) {
        let mut con = self.connection();
        let (key, field) = pointer_location(&self.prefix, id);
        if let Err(e) = self.bounded(con.hdel::<_, _, ()>(key, field)).await {
            let request_id = telemetry::request_id();
            tracing::warn!(request_id, error = %e, "could not release an unused session id; it expires on its own");
        }
    }

    /// A call that may start a session: reserves an id, decides, and when the call started
    /// the session and the durability asks for it, waits until a replica has it.
    async fn execute_with_id(&self, cmd: &Command) -> Result<Outcome, StoreError> {
        let candidate = self.reserve_id(cmd).await?;
        let mut con = match &self.creations {
            Some(set) => Self::thread_connection(set),
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

    /// One group of a batch (`execute_batch`): its calls in batch scripts, then the calls
    /// left waiting for a session id.
    async fn batch_group(
        &self,
        commands: &[Command],
        group: Vec<usize>,
    ) -> Vec<(usize, Result<Outcome, StoreError>)> {
        let client = |i: usize| (&commands[i].namespace, &commands[i].client);
        let mut answers = Vec::with_capacity(group.len());
        let mut waiting = HashSet::new();
        let mut later = Vec::new();
        let mut need_id = HashSet::new();
        for chunk in group.chunks(CALLS_PER_SCRIPT) {
            let (held, now): (Vec<usize>, Vec<usize>) =
                chunk.iter().partition(|&&i| waiting.contains(&client(i)));
            later.extend(held);
            if now.is_empty() {
                continue;
            }
            let mut invocation = self.batch_invocation(commands, &now);
            self.given_now(&mut invocation);
            let mut con = self.connection();
            let replies = self
                .bounded(invocation.invoke_async(&mut con))
                .await
                .and_then(parse_batch_replies);
            let replies = match replies {
                Ok(replies) => replies,
                Err(e) => {
                    answers.extend(now.into_iter().map(|i| (i, Err(e.clone()))));
                    continue;
                }
            };
            if replies.len() != now.len() {
                let e = StoreError::Corrupt(format!(
                    "batch script answered {} of {} calls",
                    replies.len(),
                    now.len()
                ));
                answers.extend(now.into_iter().map(|i| (i, Err(e.clone()))));
                continue;
            }
            for (i, reply) in now.into_iter().zip(replies) {
                match reply {
                    Ok(Reply::NeedId) => {
                        need_id.insert(i);
                        waiting.insert(client(i));
                        later.push(i);
                    }
                    Ok(Reply::Skipped) => {
                        waiting.insert(client(i));
                        later.push(i);
                    }
                    Ok(reply) => answers.push((i, self.finish(reply, None).await)),
                    Err(e) => answers.push((i, Err(e))),
                }
            }
        }
        answers.extend(self.in_client_order(commands, later, &need_id).await);
        answers
    }

    /// Runs calls one by one per client, in the order given, different clients at once. A
    /// call in `need_id` (the batch script answered that it needs a new session id) reserves
    /// one first.
    async fn in_client_order(
        &self,
        commands: &[Command],
        calls: Vec<usize>,
        need_id: &HashSet<usize>,
    ) -> Vec<(usize, Result<Outcome, StoreError>)> {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut group_of: HashMap<(&Namespace, &ClientHash), usize> = HashMap::new();
        for i in calls {
            let cmd = &commands[i];
            let next = groups.len();
            let group = *group_of
                .entry((&cmd.namespace, &cmd.client))
                .or_insert(next);
            if group == next {
                groups.push(Vec::new());
            }
            groups[group].push(i);
        }
        let runs = groups.into_iter().map(|group| async move {
            let mut answers = Vec::with_capacity(group.len());
            for i in group {
                // A call the batch script found needing an id reserves one straight away.
                let answer = if need_id.contains(&i) {
                    self.execute_with_id(&commands[i]).await
                } else {
                    self.execute(&commands[i]).await
                };
                answers.push((i, answer));
            }
            answers
        });
        join_all(runs).await.into_iter().flatten().collect()
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
        match self.run(command, None).await? {
            Reply::NeedId => self.execute_with_id(command).await,
            reply => self.finish(reply, None).await,
        }
    }

    /// Calls go to Redis in batch scripts (batch.lua), in order, so one client's calls keep
    /// their order: on one server a script holds up to `CALLS_PER_SCRIPT` calls of any
    /// clients; on a cluster, calls are grouped by bucket, as a script's keys share a slot.
    /// Calls that need a new session id, and the later calls of their clients, run after,
    /// one client at a time in order.
    async fn execute_batch(&self, commands: &[Command]) -> Vec<Result<Outcome, StoreError>> {
        let mut groups: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, cmd) in commands.iter().enumerate() {
            let group = match self.connections[0] {
                Connection::Single(_) => 0,
                Connection::Cluster(_) => bucket_of(cmd.client.as_str()),
            };
            groups.entry(group).or_default().push(i);
        }
        let runs = groups
            .into_values()
            .map(|group| self.batch_group(commands, group));
        let mut answers: Vec<_> = join_all(runs).await.into_iter().flatten().collect();
        answers.sort_by_key(|(i, _)| *i);
        answers.into_iter().map(|(_, answer)| answer).collect()
    }

    async fn find(&self, id: &SessionId) -> Result<Option<Found>, StoreError> {
        let Some(pointer) = self.read_pointer(id).await? else {
            return Ok(None);
        };
        let mut con = self.connection();
        let mut call = self.find_script.prepare_invoke();
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
        let sweeps = (0..BUCKETS).map(|bucket| {
            let prefix = bucket_prefix(&self.prefix, bucket);
            let mut call = self.sweep_script.key(format!("{prefix}wake"));
            call.key(guard_key(&self.prefix, bucket))
                .arg(&prefix)
                .arg(SWEEP_LIMIT)
                .arg(self.retention.stats_ms())
                .arg(self.events_per_bucket())
                .arg(self.retention.client_ms())
                .arg(self.retention.session_ms());
            let others = std::iter::once(("", Policy::default()));
            for (name, policy) in others.chain(policies.iter().map(|(n, p)| (n.as_str(), *p))) {
                call.arg(name)
                    .arg(policy.idle_timeout_ms)
                    .arg(max_duration_arg(&policy))
                    .arg(mode_name(&policy));
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
                    .events_script
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

/// Clients are spread over this many buckets by their hash. A bucket is the hash tag of
/// its clients' keys, so it lives in one cluster slot, and per-bucket health data (due
/// index, events, stats) is updated atomically by the decision scripts. 256 lets a cluster
/// spread over up to 256 primaries while a sweep or an aggregate over every bucket stays
/// 256 calls sent at once. Changing it renames every key.
const BUCKETS: u32 = 256;

/// An instance that has not shared its limit counts for this long is no longer counted.
const INSTANCE_GONE_MS: i64 = 5_000;

/// The hash tag of a client's keys, e.g. `{2a}`: which cluster slot holds them.
pub fn client_hash_tag(client: &ClientHash) -> String {
    format!("{{{:02x}}}", bucket_of(client.as_str()))
}

fn bucket_of(client_hash: &str) -> u32 {
    client_hash
        .get(..4)
        .and_then(|prefix| u32::from_str_radix(prefix, 16).ok())
        .unwrap_or(0)
        % BUCKETS
}

/// The start of every key of a bucket: `PREFIX:{bucket}:`.
fn bucket_prefix(prefix: &str, bucket: u32) -> String {
    format!("{prefix}:{{{bucket:02x}}}:")
}

/// Where a client's current session is: its records hash (`PREFIX:{bucket}:r:XX`, XX the
/// first byte of the client's hash) and its field there (`NS:HASH`, as lib.lua's
/// `records_key` reads it).
fn record_location(prefix: &str, namespace: &Namespace, client: &ClientHash) -> (String, String) {
    // Joined, not formatted: every call builds these two, a batch a hundred times. With 256
    // buckets, the bucket of a hash is its second byte: hex digits 3 and 4.
    const _: () = assert!(BUCKETS == 256);
    let hash = client.as_str();
    (
        [prefix, ":{", &hash[2..4], "}:r:", &hash[..2]].concat(),
        client_tag(namespace, client),
    )
}

/// A client's keys as decide.lua takes them, all tagged with the client's bucket: its records
/// hash, its archive (`PREFIX:{bucket}:a:NS:HASH`) and the bucket's migration guard.
fn client_keys(prefix: &str, namespace: &Namespace, client: &ClientHash) -> [String; 3] {
    let (records, member) = record_location(prefix, namespace, client);
    let bucket = bucket_of(client.as_str());
    let archive = format!("{}a:{member}", bucket_prefix(prefix, bucket));
    [records, archive, guard_key(prefix, bucket)]
}

/// The bucket's migration guard (see the module's comment): named by every script that
/// writes more than one key, never written.
fn guard_key(prefix: &str, bucket: u32) -> String {
    format!("{}guard", bucket_prefix(prefix, bucket))
}

/// The calls' names, as decide.lua reads them; a batch call's spec opens with its name's
/// first byte (batch.lua's OPS, generated from this by `lua_ops`).
const OPS: [&str; 6] = [
    "current",
    "tick",
    "foreground",
    "background",
    "end",
    "report",
];

fn op_name(op: &Op) -> &'static str {
    OPS[match op {
        Op::Current { .. } => 0,
        Op::Tick => 1,
        Op::Foreground => 2,
        Op::Background => 3,
        Op::End { .. } => 4,
        Op::Report { .. } => 5,
    }]
}

/// batch.lua's OPS: each call's first byte to its name.
fn lua_ops() -> String {
    let entries: Vec<String> = OPS
        .iter()
        .map(|name| format!("[{}] = '{name}'", name.as_bytes()[0]))
        .collect();
    format!("local OPS = {{{}}}\n", entries.join(", "))
}

/// Adds a call's create flag and end status (decide.lua); returns the session id it names.
fn add_create_and_status_args<'a>(call: &mut redis::ScriptInvocation<'_>, op: &'a Op) -> &'a str {
    let create = match op {
        Op::Current { create } => *create,
        Op::End { .. } | Op::Report { .. } => false,
        Op::Tick | Op::Foreground | Op::Background => true,
    };
    let status = match op {
        Op::End { status, .. } => end_status_name(*status),
        _ => "",
    };
    call.arg(if create { "1" } else { "0" }).arg(status);
    op.names().map_or("", SessionId::as_str)
}

/// Adds a report's errors, crash flag and id's digest (0, 0 and '' for other calls).
fn add_report_args(call: &mut redis::ScriptInvocation<'_>, op: &Op) {
    let report = match op {
        Op::Report { report, .. } => Some(report),
        _ => None,
    };
    call.arg(report.map_or(0, |r| r.errors()))
        .arg(if report.is_some_and(|r| r.crashed()) {
            "1"
        } else {
            "0"
        })
        .arg(
            report
                .and_then(|r| r.id())
                .map_or(&[][..], |id| &id.as_bytes()[..]),
        );
}

fn on_user_change_name(policy: &Policy) -> &'static str {
    match policy.on_user_change {
        OnUserChange::Keep => "keep",
        OnUserChange::Restart => "restart",
    }
}

/// tick.lua's packed call: the op byte, the policy and retention as 6-byte big-endian numbers
/// (struct format `>c1I6I6BI6I6`), then the user id given.
fn hot_call(op: u8, policy: &Policy, retention: &Retention, attributes: &Attributes) -> Vec<u8> {
    // Six bytes hold 8,900 years of milliseconds; the configuration stays far below.
    fn push_ms(call: &mut Vec<u8>, ms: i64) {
        call.extend_from_slice(&ms.clamp(0, (1 << 48) - 1).to_be_bytes()[2..]);
    }
    let user = attributes.user_id.as_deref().unwrap_or_default();
    let mut call = Vec::with_capacity(26 + user.len());
    call.push(op);
    push_ms(&mut call, policy.idle_timeout_ms);
    push_ms(&mut call, policy.max_duration_ms.unwrap_or(0));
    call.push(u8::from(policy.mode == Mode::Inactivity));
    push_ms(&mut call, retention.client_ms());
    push_ms(&mut call, retention.session_ms());
    call.extend_from_slice(user.as_bytes());
    call
}

fn max_duration_arg(policy: &Policy) -> String {
    policy
        .max_duration_ms
        .map(|m| m.to_string())
        .unwrap_or_default()
}

fn mode_name(policy: &Policy) -> &'static str {
    match policy.mode {
        Mode::Inactivity => "inactivity",
        Mode::Background => "background",
    }
}

/// Reads one stream entry written by `lib.lua`'s `event`.
fn parse_event(shard: u16, id: &str, fields: Vec<String>) -> Result<Event, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("event {id}: {what}"));
    let (ms, seq) = id
        .split_once('-')
        .and_then(|(ms, seq)| Some((ms.parse().ok()?, seq.parse().ok()?)))
        .ok_or_else(|| corrupt("id"))?;
    let mut map = std::collections::HashMap::new();
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        map.insert(name, value);
    }
    let text = |name: &str| map.get(name).cloned();
    let number = |name: &str| -> Result<Option<i64>, StoreError> {
        map.get(name)
            .map(|v| v.parse().map_err(|_| corrupt(name)))
            .transpose()
    };
    let word = |name: &str| {
        map.get(name)
            .map(String::as_str)
            .ok_or_else(|| corrupt(name))
    };
    fn named<'de, T: Deserialize<'de>>(raw: &'de str) -> Option<T> {
        T::deserialize(IntoDeserializer::<serde::de::value::Error>::into_deserializer(raw)).ok()
    }
    let required = |name: &str| number(name)?.ok_or_else(|| corrupt(name));
    let kind: EventKind = named(word("type")?).ok_or_else(|| corrupt("type"))?;
    let session = SessionState {
        id: SessionId::parse(word("session_id")?).map_err(|_| corrupt("session_id"))?,
        index: u64::try_from(required("index")?).map_err(|_| corrupt("index"))?,
        previous: text("previous_session_id").and_then(|p| SessionId::parse(&p).ok()),
        started_at: required("started_at")?,
        last_activity_at: required("last_activity_at")?,
        background_since: None,
        ended_at: None,
        status: named(word("status")?).ok_or_else(|| corrupt("status"))?,
        errors: u64::try_from(required("errors")?).map_err(|_| corrupt("errors"))?,
        finalized: kind != EventKind::Started,
        reason: named(word("reason")?).ok_or_else(|| corrupt("reason"))?,
        attributes: Attributes {
            release: text("release"),
            environment: text("environment"),
            platform: text("platform"),
            user_id: text("user_id"),
        },
        reports: RecentReports::default(),
    };
    Ok(Event {
        id: EventId { ms, seq, shard },
        kind,
        namespace: word("namespace")?.to_owned(),
        ended_at: number("ended_at")?,
        session,
    })
}

/// Where a session id's pointer is: its hash (`PREFIX:{I}:i:J`, tagged with the id's first
/// byte, so pointers spread over the buckets' slots) and its field there (the rest of the id).
fn pointer_location<'a>(prefix: &str, id: &'a SessionId) -> (String, &'a str) {
    let id = id.as_str();
    (
        format!("{prefix}:{{{}}}:i:{}", &id[..2], &id[2..4]),
        &id[4..],
    )
}

/// A session id's pointer, as pointer.lua keeps it: `EXPIRES_AT_MS:NS:HASH`.
struct Pointer {
    expires_at_ms: i64,
    namespace: Namespace,
    client: ClientHash,
}

impl Pointer {
    fn parse(value: &str) -> Option<Self> {
        let (expires, owner) = value.split_once(':')?;
        let (namespace, hash) = owner.split_once(':')?;
        Some(Self {
            expires_at_ms: expires.parse().ok()?,
            namespace: Namespace::parse(namespace).ok()?,
            client: ClientHash::parse_stored(hash)?,
        })
    }
}

/// What a session id's pointer names: the namespace and hash of its client.
fn client_tag(namespace: &Namespace, client: &ClientHash) -> String {
    [namespace.as_str(), ":", client.as_str()].concat()
}

fn end_status_name(status: EndStatus) -> &'static str {
    match status {
        EndStatus::Exited => "exited",
        EndStatus::Crashed => "crashed",
        EndStatus::Abnormal => "abnormal",
    }
}

/// Transient failures (connection, timeout, failover) make the store unavailable; anything
/// else is a fault of ours or of the data.
fn classify(e: RedisError) -> StoreError {
    match e.retry_method() {
        RetryMethod::NoRetry => StoreError::Failed(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

fn parse_reply(value: Value) -> Result<Reply, StoreError> {
    let (kind, now, record, pointer, finalized, other): (
        String,
        i64,
        Vec<u8>,
        i64,
        String,
        String,
    ) = redis::from_redis_value(value)
        .map_err(|e| StoreError::Corrupt(format!("script reply: {e}")))?;
    Ok(match kind.as_str() {
        "s" => Reply::Session {
            record,
            now,
            extend_pointer_to: pointer,
            finalized: match finalized.as_str() {
                "" => None,
                status => Some(Status::deserialize(status.into_deserializer()).map_err(
                    |e: serde::de::value::Error| StoreError::Corrupt(format!("final status: {e}")),
                )?),
            },
            counted_as_other: other == "1",
        },
        "need" => Reply::NeedId,
        "skip" => Reply::Skipped,
        "slow" => Reply::Slow,
        "none" => Reply::NoRecord,
        "nolive" => Reply::NoLive,
        "unknown" => Reply::Unknown,
        other => return Err(StoreError::Corrupt(format!("script reply kind {other}"))),
    })
}

/// Reads tick.lua's reply: `{now, record}`, or `none` or `slow`.
fn parse_hot_reply(value: Value) -> Result<Reply, StoreError> {
    match value {
        Value::Array(parts) => match <[Value; 2]>::try_from(parts) {
            Ok([Value::Int(now), Value::BulkString(record)]) => Ok(Reply::Session {
                record,
                now,
                extend_pointer_to: 0,
                finalized: None,
                counted_as_other: false,
            }),
            _ => Err(StoreError::Corrupt(
                "hot script reply: not {now, record}".into(),
            )),
        },
        Value::BulkString(kind) if kind == b"none" => Ok(Reply::NoRecord),
        Value::BulkString(kind) if kind == b"slow" => Ok(Reply::Slow),
        other => Err(StoreError::Corrupt(format!("hot script reply: {other:?}"))),
    }
}

/// Reads batch.lua's reply: its clock, then per call a session record the hot path
/// decided on that clock, or a full reply.
fn parse_batch_replies(value: Value) -> Result<Vec<Result<Reply, StoreError>>, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("batch script reply: {what}"));
    let Value::Array(values) = value else {
        return Err(corrupt("not an array"));
    };
    let mut values = values.into_iter();
    let Some(Value::Int(now)) = values.next() else {
        return Err(corrupt("no clock"));
    };
    Ok(values
        .map(|value| match value {
            Value::BulkString(record) => Ok(Reply::Session {
                record,
                now,
                extend_pointer_to: 0,
                finalized: None,
                counted_as_other: false,
            }),
            other => parse_reply(other),
        })
        .collect())
}

fn parse_session(raw: &[u8]) -> Result<SessionState, StoreError> {
    record::parse(raw).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash tag of a key, as Redis Cluster reads it.
    fn tag(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = open + key[open..].find('}').unwrap();
        &key[open + 1..close]
    }

    #[test]
    fn a_clients_keys_share_the_tag_of_its_bucket() {
        let client = ClientHash::parse_stored("3f2a0000000000000000000000000000").unwrap();
        let web = Namespace::parse("web").unwrap();
        let [records, archive, guard] = client_keys("sd", &web, &client);
        assert_eq!(records, "sd:{2a}:r:3f");
        assert_eq!(archive, "sd:{2a}:a:web:3f2a0000000000000000000000000000");
        assert_eq!(tag(&records), tag(&archive));
        assert_eq!(guard, "sd:{2a}:guard");
        assert_eq!(
            record_location("sd", &web, &client).1,
            "web:3f2a0000000000000000000000000000"
        );
    }

    #[test]
    fn a_batch_tells_every_call_by_its_first_byte() {
        let firsts: HashSet<u8> = OPS.iter().map(|name| name.as_bytes()[0]).collect();
        assert_eq!(firsts.len(), OPS.len());
        assert_eq!(
            lua_ops(),
            "local OPS = {[99] = 'current', [116] = 'tick', [102] = 'foreground', \
             [98] = 'background', [101] = 'end', [114] = 'report'}\n"
        );
    }

    /// The layout tick.lua unpacks with `>c1I6I6BI6I6`, then the user id.
    #[test]
    fn the_hot_call_packs_its_numbers_in_six_bytes_each() {
        let policy = Policy {
            idle_timeout_ms: 1_800_000,
            max_duration_ms: None,
            mode: Mode::Inactivity,
            ..Policy::default()
        };
        let retention = Retention {
            client: Duration::from_millis(0x0102_0304_0506),
            session: Duration::from_millis(86_400_000),
            ..Retention::default()
        };
        let user = Attributes {
            user_id: Some("u-1".into()),
            ..Attributes::default()
        };
        let call = hot_call(b't', &policy, &retention, &user);
        assert_eq!(call[0], b't');
        assert_eq!(call[1..7], 1_800_000u64.to_be_bytes()[2..]);
        assert_eq!(call[7..13], [0; 6], "no maximum is 0");
        assert_eq!(call[13], 1, "inactivity mode");
        assert_eq!(call[14..20], [1, 2, 3, 4, 5, 6]);
        assert_eq!(call[20..26], 86_400_000u64.to_be_bytes()[2..]);
        assert_eq!(&call[26..], b"u-1");
        let background = Policy {
            max_duration_ms: Some(5),
            mode: Mode::Background,
            ..policy
        };
        let call = hot_call(b'c', &background, &retention, &Attributes::default());
        assert_eq!((call[0], call[12], call[13], call.len()), (b'c', 5, 0, 26));
    }

    #[test]
    fn buckets_cover_the_whole_range() {
        assert_eq!(bucket_of("0000"), 0);
        assert_eq!(bucket_of("00ff"), 255);
        assert_eq!(bucket_of("0100"), 0);
        assert_eq!(bucket_of("ffff"), 255);
    }
}
