//! Retention (CONTRACT sections 7 and 8): how long records outlive their activity, and how
//! much health data is kept.

use std::time::Duration;

/// How long records outlive their activity (CONTRACT section 7), and how much health data
/// is kept (section 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// A client's record lives this long after its last activity.
    pub client: Duration,
    /// A session stays readable by id this long after it is over.
    pub session: Duration,
    /// A day's stats are kept this long after the day ends.
    pub stats: Duration,
    /// About this many lifecycle events are kept, the oldest dropped first.
    pub events: usize,
    /// How many distinct releases and environments a namespace's stats count per day (per
    /// bucket on Redis); sessions of any others count as `other`.
    pub stats_names: StatsNames,
}

/// The caps on distinct names in a day's stats (`domain::stats::counted_name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsNames {
    pub releases: usize,
    pub environments: usize,
}

impl Retention {
    pub fn client_ms(&self) -> i64 {
        self.client.as_millis() as i64
    }

    pub fn session_ms(&self) -> i64 {
        self.session.as_millis() as i64
    }

    pub fn stats_ms(&self) -> i64 {
        self.stats.as_millis() as i64
    }
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            client: Duration::from_secs(30 * 24 * 3600),
            session: Duration::from_secs(24 * 3600),
            stats: Duration::from_secs(90 * 24 * 3600),
            events: 100_000,
            stats_names: StatsNames {
                releases: 20,
                environments: 10,
            },
        }
    }
}
