//! Telemetry: structured logs through tracing, and the Prometheus metrics the service exports.

mod histogram;

pub use histogram::DurationHistogram;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix_web::http::header::HeaderValue;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

use crate::domain::{Reason, Status};
use crate::store::SessionStore;

/// How the logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global log subscriber; `SESSIOND_LOG` (or `RUST_LOG`) filters, default `info`.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("SESSIOND_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    // A second install (tests build several apps) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

tokio::task_local! {
    /// The id of the request being served, for log lines written while serving it.
    static REQUEST_ID: HeaderValue;
}

/// Serves `work` as the request with this id: log lines written meanwhile can name it. The
/// id comes back with the output, for the response to echo.
/// (A task-local, not a tracing span: a span per request cost several percent of a call.)
pub async fn serve_as<F: Future>(id: HeaderValue, work: F) -> (F::Output, Option<HeaderValue>) {
    let mut scoped = pin!(REQUEST_ID.scope(id, work));
    let output = scoped.as_mut().await;
    (output, scoped.take_value())
}

/// Lets a few lines of one kind through per window and counts the rest, so a stream of the
/// same failure (an outage, a cluster that keeps redirecting) is a handful of lines a window,
/// each saying how many were held back before it, not a line per call.
pub struct LogThrottle {
    window: Duration,
    burst: u32,
    /// The window's start, lines let through in it, lines held back since the last one.
    state: std::sync::Mutex<(Option<std::time::Instant>, u32, u64)>,
}

impl LogThrottle {
    pub const fn new(window: Duration, burst: u32) -> Self {
        Self {
            window,
            burst,
            state: std::sync::Mutex::new((None, 0, 0)),
        }
    }

    /// Whether a line may be written now; if so, how many were held back before it.
    pub fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (start, used, held) = &mut *state;
        if start.is_none_or(|at| at.elapsed() >= self.window) {
            *start = Some(std::time::Instant::now());
            *used = 0;
        }
        if *used >= self.burst {
            *held += 1;
            return None;
        }
        *used += 1;
        Some(std::mem::take(held))
    }
}

/// The id of the request being served, if any; log lines within a request carry it.
pub fn request_id() -> Option<String> {
    REQUEST_ID
        .try_with(|id| String::from_utf8_lossy(id.as_bytes()).into_owned())
        .ok()
}

/// A new request id: this process's random prefix and a counter, as 24 hex characters; unique
/// among the process's requests, and across instances but by a 2^-32 chance per pair.
pub fn new_request_id() -> HeaderValue {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    /// Each thread counts through a block of its own, so the workers do not all write one
    /// counter's cache line on every request.
    static NEXT_BLOCK: AtomicU64 = AtomicU64::new(0);
    const BLOCK: u64 = 1 << 16;
    thread_local! {
        static RANGE: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }
    let prefix = *PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 4];
        // Without the OS's randomness the prefix is 0: ids stay unique within the process.
        let _ = getrandom::fill(&mut bytes);
        u32::from_le_bytes(bytes)
    });
    let n = RANGE.with(|range| {
        let (mut next, mut end) = range.get();
        if next == end {
            next = NEXT_BLOCK.fetch_add(BLOCK, Ordering::Relaxed);
            end = next + BLOCK;
        }
        range.set((next + 1, end));
        next
    });
    let mut text = [0u8; 24];
    let _ = hex::encode_to_slice(prefix.to_be_bytes(), &mut text[..8]);
    let _ = hex::encode_to_slice(n.to_be_bytes(), &mut text[8..]);
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    pub route: &'static str,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CreatedLabels {
    pub namespace: String,
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabels {
    pub namespace: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreErrorLabels {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreCallLabels {
    pub call: &'static str,
}

/// One worker's handles on the request duration series, by labels. Looking a series up in
/// the family takes its lock, whose cache line every worker writes; the handles are the
/// family's own series, so the exposition is unchanged.
pub struct RequestSeries {
    family: Family<RequestLabels, DurationHistogram>,
    known: RefCell<HashMap<RequestLabels, DurationHistogram, foldhash::fast::RandomState>>,
}

impl RequestSeries {
    pub fn observe(&self, labels: RequestLabels, elapsed: Duration) {
        let mut known = self.known.borrow_mut();
        let series = known
            .entry(labels)
            .or_insert_with_key(|labels| self.family.get_or_create(labels).clone());
        series.observe(elapsed);
    }
}

/// The service's metrics, registered once per application.
pub struct Metrics {
    registry: Registry,
    pub request_duration: Family<RequestLabels, DurationHistogram>,
    pub sessions_created: Family<CreatedLabels, Counter>,
    pub provisional_sessions: Family<NamespaceLabels, Counter>,
    pub stats_other_sessions: Family<NamespaceLabels, Counter>,
    pub store_errors: Family<StoreErrorLabels, Counter>,
    pub store_call_duration: Family<StoreCallLabels, DurationHistogram>,
    pub store_up: Gauge,
    pub swept_sessions: Counter,
    pub sessions_finalized: Family<FinalizedLabels, Counter>,
    pub rate_limited: Family<LimitLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FinalizedLabels {
    pub status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: &'static str,
}

impl Metrics {
    pub fn new(store: &dyn SessionStore) -> Self {
        let store_kind = store.kind();
        let mut registry = Registry::with_prefix("sessiond");
        store.register_metrics(&mut registry);
        let request_duration = Family::<RequestLabels, DurationHistogram>::default();
        registry.register_with_unit(
            "http_request_duration",
            "HTTP request duration by route and status",
            prometheus_client::registry::Unit::Seconds,
            request_duration.clone(),
        );
        let sessions_created = Family::<CreatedLabels, Counter>::default();
        registry.register(
            "sessions_created",
            "Sessions started, by namespace and reason",
            sessions_created.clone(),
        );
        let provisional_sessions = Family::<NamespaceLabels, Counter>::default();
        registry.register(
            "provisional_sessions",
            "Provisional sessions answered while the store was unreachable",
            provisional_sessions.clone(),
        );
        let stats_other_sessions = Family::<NamespaceLabels, Counter>::default();
        registry.register(
            "stats_other_sessions",
            "Sessions started that stats count under the release or environment `other`, since their day had as many distinct ones as stats_max_releases or stats_max_environments allow",
            stats_other_sessions.clone(),
        );
        let store_errors = Family::<StoreErrorLabels, Counter>::default();
        registry.register(
            "store_errors",
            "Store calls that failed, by kind",
            store_errors.clone(),
        );
        let store_call_duration = Family::<StoreCallLabels, DurationHistogram>::default();
        registry.register_with_unit(
            "store_call_duration",
            "Store call duration by call (execute, execute_batch, find, owner, sweep, events, stats, ping, share_limits)",
            prometheus_client::registry::Unit::Seconds,
            store_call_duration.clone(),
        );
        // 0 until the store has answered once.
        let store_up = Gauge::default();
        registry.register(
            "store_up",
            format!("Whether the {store_kind} store answered its last call (1) or not (0)"),
            store_up.clone(),
        );
        let swept_sessions = Counter::default();
        registry.register(
            "swept_sessions",
            "Sessions this instance's sweeper finalized after they idled out",
            swept_sessions.clone(),
        );
        let sessions_finalized = Family::<FinalizedLabels, Counter>::default();
        registry.register(
            "sessions_finalized",
            "Sessions finalized (rotated, ended, reported after they were over, or swept), by final status",
            sessions_finalized.clone(),
        );
        let rate_limited = Family::<LimitLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Calls refused with 429, by the limit that refused them (client, address, new_clients)",
            rate_limited.clone(),
        );
        Self {
            registry,
            swept_sessions,
            sessions_finalized,
            rate_limited,
            request_duration,
            sessions_created,
            provisional_sessions,
            stats_other_sessions,
            store_errors,
            store_call_duration,
            store_up,
        }
    }

    /// A worker's own handles on the request duration series.
    pub fn request_series(&self) -> RequestSeries {
        RequestSeries {
            family: self.request_duration.clone(),
            known: RefCell::default(),
        }
    }

    /// The duration series of one store call (it shares its buckets with the family).
    pub fn store_call_duration(&self, call: &'static str) -> DurationHistogram {
        self.store_call_duration
            .get_or_create(&StoreCallLabels { call })
            .clone()
    }

    /// Counts a failed store call by its kind (`StoreError::kind`); an unavailable store is
    /// down until it answers.
    pub fn count_store_error(&self, kind: &'static str) {
        if kind == "unavailable" {
            self.store_up.set(0);
        }
        self.store_errors
            .get_or_create(&StoreErrorLabels { kind })
            .inc();
    }

    pub fn count_provisional(&self, namespace: &str) {
        self.provisional_sessions
            .get_or_create(&NamespaceLabels {
                namespace: namespace.to_owned(),
            })
            .inc();
    }

    /// Counts sessions finalized with a final status. By status only: the sweeper finalizes
    /// across namespaces and counts per sweep.
    pub fn count_finalized(&self, status: Status, n: u64) {
        if n > 0 {
            self.sessions_finalized
                .get_or_create(&FinalizedLabels {
                    status: status.as_str(),
                })
                .inc_by(n);
        }
    }

    pub fn count_stats_other(&self, namespace: &str) {
        self.stats_other_sessions
            .get_or_create(&NamespaceLabels {
                namespace: namespace.to_owned(),
            })
            .inc();
    }

    pub fn count_created(&self, namespace: &str, reason: Reason) {
        self.sessions_created
            .get_or_create(&CreatedLabels {
                namespace: namespace.to_owned(),
                reason: reason.as_str().to_owned(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition, which Prometheus scrapes.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_throttle_lets_a_burst_through_per_window_and_counts_the_rest() {
        let throttle = LogThrottle::new(Duration::from_secs(3600), 2);
        assert_eq!(throttle.allow(), Some(0));
        assert_eq!(throttle.allow(), Some(0));
        assert_eq!(throttle.allow(), None);
        assert_eq!(throttle.allow(), None);
        // A window that is over at once: every line goes through, the held back counted on.
        let unthrottled = LogThrottle::new(Duration::ZERO, 1);
        assert_eq!(unthrottled.allow(), Some(0));
        assert_eq!(unthrottled.allow(), Some(0));
    }
}
