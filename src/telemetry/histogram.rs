//! A duration histogram the workers observe without sharing a lock or a cache line.
//!
//! Every request observes one or two of these. prometheus-client's histogram takes a mutex
//! per observation, and with a worker on each core that lock's cache line moved between
//! them on every call. Here each thread adds to its own shard, and a scrape sums the shards.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_utils::CachePadded;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds of the finite buckets in nanoseconds: 100 µs doubling to about 3.3 s.
const BOUNDS_NS: [u64; 16] = {
    let mut bounds = [0; 16];
    let mut i = 0;
    while i < bounds.len() {
        bounds[i] = 100_000 << i;
        i += 1;
    }
    bounds
};

/// The finite buckets and +Inf.
const BUCKETS: usize = BOUNDS_NS.len() + 1;

/// Enough shards for the workers of a large machine; threads beyond share them, correctly.
const SHARDS: usize = 16;

#[derive(Default)]
struct Shard {
    /// Observations per bucket (not cumulative); their sum is the count.
    buckets: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

/// A histogram of durations in seconds, with the buckets 100 µs · 2^k (k = 0..15) and +Inf.
/// Clones share the series.
#[derive(Clone, Default)]
pub struct DurationHistogram {
    shards: Arc<[CachePadded<Shard>; SHARDS]>,
}

/// The shard of the calling thread, drawn round-robin when the thread first observes.
fn shard_of_this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

impl DurationHistogram {
    pub fn observe(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NS.partition_point(|&bound| bound < ns);
        let shard = &self.shards[shard_of_this_thread()];
        shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        shard.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The sum in seconds and the count per bucket, over every shard.
    fn totals(&self) -> (f64, [u64; BUCKETS]) {
        let mut counts = [0; BUCKETS];
        let mut sum_ns = 0u64;
        for shard in self.shards.iter() {
            for (total, n) in counts.iter_mut().zip(&shard.buckets) {
                *total += n.load(Ordering::Relaxed);
            }
            sum_ns = sum_ns.wrapping_add(shard.sum_ns.load(Ordering::Relaxed));
        }
        (sum_ns as f64 / 1e9, counts)
    }
}

impl fmt::Debug for DurationHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (sum, counts) = self.totals();
        f.debug_struct("DurationHistogram")
            .field("sum", &sum)
            .field("count", &counts.iter().sum::<u64>())
            .finish()
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let (sum, counts) = self.totals();
        // The count is the buckets' sum, so a scrape during observations stays consistent.
        let count = counts.iter().sum();
        let buckets: Vec<(f64, u64)> = BOUNDS_NS
            .iter()
            .map(|&ns| ns as f64 / 1e9)
            .chain([f64::INFINITY])
            .zip(counts)
            .collect();
        encoder.encode_histogram::<NoLabelSet>(
            sum,
            count,
            &buckets,
            None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
        )
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::{Registry, Unit};

    use super::*;

    fn exposition(h: &DurationHistogram) -> String {
        let mut registry = Registry::default();
        registry.register_with_unit("d", "durations", Unit::Seconds, h.clone());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("text");
        out
    }

    #[test]
    fn observations_from_every_thread_are_counted_in_their_buckets() {
        let h = DurationHistogram::default();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    h.observe(Duration::from_micros(50));
                    h.observe(Duration::from_micros(300));
                });
            }
        });
        h.observe(Duration::from_secs(10));
        let text = exposition(&h);
        assert!(text.contains("d_seconds_count 9\n"), "{text}");
        assert!(text.contains("d_seconds_sum 10.0014\n"), "{text}");
        // Cumulative: 4 within 100 µs, 8 within 400 µs, the 10 s one only in +Inf.
        assert!(
            text.contains("d_seconds_bucket{le=\"0.0001\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("d_seconds_bucket{le=\"0.0002\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("d_seconds_bucket{le=\"0.0004\"} 8\n"),
            "{text}"
        );
        assert!(
            text.contains("d_seconds_bucket{le=\"3.2768\"} 8\n"),
            "{text}"
        );
        assert!(text.contains("d_seconds_bucket{le=\"+Inf\"} 9\n"), "{text}");
    }

    #[test]
    fn a_duration_on_a_bound_falls_in_that_bucket() {
        let h = DurationHistogram::default();
        h.observe(Duration::from_micros(200));
        let text = exposition(&h);
        assert!(
            text.contains("d_seconds_bucket{le=\"0.0001\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("d_seconds_bucket{le=\"0.0002\"} 1\n"),
            "{text}"
        );
    }
}
