//! A store wrapper that measures every call: its duration by call, its failures by kind, and
//! whether the store answered last time. Every caller of the store goes through it.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::{
    Command, Found, LimitCount, Outcome, Policies, SessionStore, SharedLimits, StoreError, Swept,
};
use crate::domain::stats::{StatsQuery, StatsSummary};
use crate::domain::{ClientHash, Event, EventId, Namespace, SessionId};
use crate::telemetry::{DurationHistogram, Metrics};

pub struct Metered {
    inner: Arc<dyn SessionStore>,
    metrics: Arc<Metrics>,
    /// `execute`'s series, looked up once: every session call observes it.
    execute_duration: DurationHistogram,
}

impl Metered {
    pub fn new(inner: Arc<dyn SessionStore>, metrics: Arc<Metrics>) -> Self {
        let execute_duration = metrics.store_call_duration("execute");
        Self {
            inner,
            metrics,
            execute_duration,
        }
    }

    fn record<T>(
        &self,
        duration: &DurationHistogram,
        started: Instant,
        result: &Result<T, StoreError>,
    ) {
        duration.observe(started.elapsed());
        match result {
            // Read first: a write on every call would bounce the gauge between the workers' cores.
            Ok(_) if self.metrics.store_up.get() != 1 => {
                self.metrics.store_up.set(1);
            }
            Ok(_) => {}
            Err(e) => self.metrics.count_store_error(e.kind()),
        }
    }

    async fn timed<T>(
        &self,
        duration: &DurationHistogram,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = work.await;
        self.record(duration, started, &result);
        result
    }

    /// The series of a call made less often than `execute`.
    fn duration_of(&self, call: &'static str) -> DurationHistogram {
        self.metrics.store_call_duration(call)
    }
}

#[async_trait]
impl SessionStore for Metered {
    async fn execute(&self, command: &Command) -> Result<Outcome, StoreError> {
        self.timed(&self.execute_duration, self.inner.execute(command))
            .await
    }

    async fn execute_batch(&self, commands: &[Command]) -> Vec<Result<Outcome, StoreError>> {
        let started = Instant::now();
        let results = self.inner.execute_batch(commands).await;
        // One observation per batch; its first failure (if any) says how the store fared.
        let first_error = results.iter().find(|r| r.is_err()).cloned();
        let fared = first_error.unwrap_or(Ok(Outcome::NoLiveSession));
        self.record(&self.duration_of("execute_batch"), started, &fared);
        results
    }

    async fn find(&self, id: &SessionId) -> Result<Option<Found>, StoreError> {
        self.timed(&self.duration_of("find"), self.inner.find(id))
            .await
    }

    async fn owner(&self, id: &SessionId) -> Result<Option<(Namespace, ClientHash)>, StoreError> {
        self.timed(&self.duration_of("owner"), self.inner.owner(id))
            .await
    }

    async fn sweep(&self, policies: &Policies) -> Result<Swept, StoreError> {
        self.timed(&self.duration_of("sweep"), self.inner.sweep(policies))
            .await
    }

    async fn events(&self, after: Option<EventId>, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.timed(&self.duration_of("events"), self.inner.events(after, limit))
            .await
    }

    async fn stats(&self, query: &StatsQuery) -> Result<StatsSummary, StoreError> {
        self.timed(&self.duration_of("stats"), self.inner.stats(query))
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.timed(&self.duration_of("ping"), self.inner.ping())
            .await
    }

    async fn share_limits(
        &self,
        instance: &str,
        window_ms: i64,
        counts: &[LimitCount],
    ) -> Result<Option<SharedLimits>, StoreError> {
        let call = self.inner.share_limits(instance, window_ms, counts);
        self.timed(&self.duration_of("share_limits"), call).await
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.inner.register_metrics(registry);
    }
}
