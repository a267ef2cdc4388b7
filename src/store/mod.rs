//! Session stores: one trait, implemented in memory (embedded) and on Redis or Redis Cluster
//! (production).

pub mod memory;
pub mod metered;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;

use std::collections::BTreeMap;

use crate::domain::stats::{StatsQuery, StatsSummary};
use crate::domain::{
    Attributes, ClientHash, Event, EventId, Namespace, Op, Policy, SessionId, SessionState, Status,
};

pub use self::memory::MemoryStore;
pub use self::redis::{RedisOptions, RedisStore};

/// When a new session is answered (CONTRACT 5.8): Redis replicates asynchronously, so a
/// session answered before a replica has it is lost if its primary crashes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// As soon as the primary has it.
    Async,
    /// Once a replica acknowledged it (`WAIT 1 timeout`). A wait that times out is counted,
    /// and answered anyway, unless `strict`: then the call answers 503.
    Replicated { timeout: Duration, strict: bool },
}

/// One call for one client, validated and ready to decide.
#[derive(Debug, Clone)]
pub struct Command {
    pub namespace: Namespace,
    pub client: ClientHash,
    pub policy: Policy,
    pub op: Op,
    pub attributes: Attributes,
}

/// What a store answers to a [`Command`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "nearly every answer is a session; boxing it would allocate on every call"
)]
pub enum Outcome {
    /// The session the call resolved to; `now` is the store's clock at the decision.
    /// `finalized` is the final status of the session the call finalized (the one it
    /// replaced, ended, or reported on after it was over), if it finalized one.
    Session {
        session: SessionState,
        created: bool,
        now: i64,
        finalized: Option<Status>,
        /// The session it created counts as `other` in stats: its release or environment
        /// came past its day's cap (`Retention::stats_names`).
        counted_as_other: bool,
    },
    /// The call must not create and there is no live session.
    NoLiveSession,
    /// `end` named a session this client does not have (or no longer retains).
    UnknownSession,
}

/// A session found by id, with the store's clock at the lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub namespace: Namespace,
    pub session: SessionState,
    pub now: i64,
}

/// The policy of every configured namespace, for the sweeper; a namespace no longer
/// configured is swept with the default policy.
pub type Policies = BTreeMap<String, Policy>;

pub fn policy_of(policies: &Policies, namespace: &str) -> Policy {
    policies.get(namespace).copied().unwrap_or_default()
}

/// Sessions finalized, counted by final status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Finalized {
    pub exited: u64,
    pub errored: u64,
    pub abnormal: u64,
    pub crashed: u64,
}

impl Finalized {
    pub fn count(&mut self, status: Status) {
        match status {
            // A final status is never ok; count it as the exit it would become.
            Status::Exited | Status::Ok => self.exited += 1,
            Status::Errored => self.errored += 1,
            Status::Abnormal => self.abnormal += 1,
            Status::Crashed => self.crashed += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.exited + self.errored + self.abnormal + self.crashed
    }

    pub fn by_status(&self) -> [(Status, u64); 4] {
        [
            (Status::Exited, self.exited),
            (Status::Errored, self.errored),
            (Status::Abnormal, self.abnormal),
            (Status::Crashed, self.crashed),
        ]
    }
}

impl std::ops::AddAssign for Finalized {
    fn add_assign(&mut self, other: Self) {
        self.exited += other.exited;
        self.errored += other.errored;
        self.abnormal += other.abnormal;
        self.crashed += other.crashed;
    }
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Sessions this sweep finalized.
    pub finalized: Finalized,
    /// Whether entries were left for the next sweep (the per-sweep limit was reached).
    pub more: bool,
}

/// One shared abuse-limit counter's increment (`limits.scope = "store"`): the counter's name,
/// a number that spreads counters over the store's buckets, its window, and the calls to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitCount {
    pub field: String,
    pub spread: u32,
    /// The window's number (milliseconds since the epoch over the window's length).
    pub window: i64,
    pub add: u64,
}

/// What the store answers to shared counts: each counter's total across instances, in the
/// order given, and how many instances counted lately (this one included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedLimits {
    pub totals: Vec<u64>,
    pub instances: usize,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer in time or could not be reached.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The store answered with data this version cannot read.
    #[error("the store returned unreadable data: {0}")]
    Corrupt(String),
    /// The store refused the call for a reason that retrying will not fix.
    #[error("the store call failed: {0}")]
    Failed(String),
}

impl StoreError {
    /// What went wrong, as the metrics label it: unavailable, corrupt or failed.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Corrupt(_) => "corrupt",
            StoreError::Failed(_) => "failed",
        }
    }
}

#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Decides one call atomically on the store's clock.
    async fn execute(&self, command: &Command) -> Result<Outcome, StoreError>;

    /// Decides many calls, answered in order; each is atomic on its own.
    async fn execute_batch(&self, commands: &[Command]) -> Vec<Result<Outcome, StoreError>>;

    /// What the store holds about one session id (retention is judged by the caller).
    async fn find(&self, id: &SessionId) -> Result<Option<Found>, StoreError>;

    /// The namespace and client a retained session id belongs to.
    async fn owner(&self, id: &SessionId) -> Result<Option<(Namespace, ClientHash)>, StoreError>;

    /// Finalizes sessions that idled out while their clients stayed away. Several instances
    /// may sweep one store at once: each session is finalized by exactly one of them.
    async fn sweep(&self, policies: &Policies) -> Result<Swept, StoreError>;

    /// Up to `limit` lifecycle events after the cursor (from the oldest kept without one),
    /// oldest first.
    async fn events(&self, after: Option<EventId>, limit: usize) -> Result<Vec<Event>, StoreError>;

    /// Release-health stats of one namespace over a window of whole hours.
    async fn stats(&self, query: &StatsQuery) -> Result<StatsSummary, StoreError>;

    /// Whether the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Adds this instance's calls to the shared abuse-limit counters (of windows of
    /// `window_ms`), and says
    /// the instance is alive. `None`: the store shares nothing (in memory, the process is
    /// every instance there is).
    async fn share_limits(
        &self,
        _instance: &str,
        _window_ms: i64,
        _counts: &[LimitCount],
    ) -> Result<Option<SharedLimits>, StoreError> {
        Ok(None)
    }

    /// A name for logs and metrics.
    fn kind(&self) -> &'static str;

    /// Registers what the store measures of itself (a cluster's redirections and slot map).
    fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}
}
