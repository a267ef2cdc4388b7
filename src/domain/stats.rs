//! Release-health stats (CONTRACT section 8), kept incrementally in hour buckets.
//!
//! Both stores keep counters in one hash per day (Redis: per day and client bucket), with
//! fields `HOUR \t NAMESPACE \t RELEASE \t ENVIRONMENT \t KIND`, where HOUR is the hour the
//! session started in (hours since the epoch) and KIND is one of:
//! - `started`, and a final status (`exited`, `errored`, `abnormal`, `crashed`): counters;
//! - `dK`: finalized sessions whose duration fell in quarter-octave bucket K;
//! - `uUSER` and `xUSER`: user_id seen, and seen with a crashed session (set to 1). USER is
//!   the first 16 hex digits of the SHA-1 of the user_id (what Redis scripts can compute), so
//!   a user costs a few bytes however long the id; 64 bits keep distinct users distinct.
//!
//! RELEASE and ENVIRONMENT are written as the ordinal of the name in its day's hash ('' for
//! none), so a counter costs a few bytes whatever the names' lengths. A day admits at most so
//! many distinct names of each per namespace (per bucket on Redis): the names admitted are
//! fields `\tNAMESPACE\tr\tNAME` (`e` for environments) whose value is the ordinal, with their
//! number in `\tNAMESPACE\tr`. A session with a name past the cap counts under ordinal 0,
//! [`OTHER`], from start to finalization. Those fields open with a tab, which no counter
//! field does.
//!
//! Everything about a session counts in the hour it started, so within any window
//! `sessions = active + exited + errored + abnormal + crashed`. Attribute values hold no
//! control characters, so the tab cannot occur inside a part.

use std::collections::{HashMap, HashSet};

use super::{SessionState, Status};

pub const HOUR_MS: i64 = 3_600_000;

/// One change to the stats hash of the day a session started in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatChange {
    /// Adds to a counter.
    Add { day: i64, field: String, by: i64 },
    /// Sets a membership field (users) to 1.
    Mark { day: i64, field: String },
}

fn hour_of(session: &SessionState) -> i64 {
    session.started_at.div_euclid(HOUR_MS)
}

/// The day whose hash counts a session: the day it started.
pub fn start_day(session: &SessionState) -> i64 {
    day_of_hour(hour_of(session))
}

/// What a session whose release or environment came past its day's cap counts under.
pub const OTHER: &str = "other";

/// The ordinal a name past its day's cap is written as.
pub const OTHER_ORDINAL: &str = "0";

/// The fields of a day's hash that admit a name of a dimension (`r`elease or
/// `e`nvironment): the name's own, holding its ordinal, and the dimension's count of names.
pub fn name_fields(namespace: &str, dimension: char, name: &str) -> (String, String) {
    (
        format!("\t{namespace}\t{dimension}\t{name}"),
        format!("\t{namespace}\t{dimension}"),
    )
}

/// A session's release and environment as its day's counter fields write them: ordinals
/// ('' for none, [`OTHER_ORDINAL`] past the cap).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counted {
    pub release: String,
    pub environment: String,
}

pub fn day_of_hour(hour: i64) -> i64 {
    hour.div_euclid(24)
}

/// Where a session counts: its namespace, and its names as its day writes them.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub namespace: &'a str,
    pub names: &'a Counted,
}

fn field(at: Place<'_>, session: &SessionState, kind: &str) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{kind}",
        hour_of(session),
        at.namespace,
        at.names.release,
        at.names.environment
    )
}

fn add(at: Place<'_>, session: &SessionState, kind: &str, by: i64) -> StatChange {
    StatChange::Add {
        day: start_day(session),
        field: field(at, session, kind),
        by,
    }
}

fn mark(at: Place<'_>, session: &SessionState, kind: &str) -> StatChange {
    StatChange::Mark {
        day: start_day(session),
        field: field(at, session, kind),
    }
}

/// The user fields a session's user contributes: seen, and crashed when the session is.
pub fn user_marks(at: Place<'_>, session: &SessionState) -> Vec<StatChange> {
    let Some(user) = session.attributes.user_id.as_deref() else {
        return Vec::new();
    };
    let user = user_digest(user);
    let mut marks = vec![mark(at, session, &format!("u{user}"))];
    if session.status == Status::Crashed {
        marks.push(mark(at, session, &format!("x{user}")));
    }
    marks
}

/// How a user is written in stats fields.
fn user_digest(user: &str) -> String {
    use sha1::Digest;
    hex::encode(&sha1::Sha1::digest(user.as_bytes())[..8])
}

/// A session started: counted once, with its user if it has one.
pub fn on_started(at: Place<'_>, session: &SessionState) -> Vec<StatChange> {
    let mut changes = vec![add(at, session, "started", 1)];
    changes.extend(user_marks(at, session));
    changes
}

/// A session was finalized with its final status.
pub fn on_finalized(at: Place<'_>, session: &SessionState) -> Vec<StatChange> {
    let duration = session.last_activity_at - session.started_at;
    let mut changes = vec![
        add(at, session, session.status.as_str(), 1),
        add(at, session, &format!("d{}", duration_bucket(duration)), 1),
    ];
    changes.extend(user_marks(at, session));
    changes
}

/// A finalized session's status moved from `before` to its current one.
pub fn on_amended(at: Place<'_>, before: Status, session: &SessionState) -> Vec<StatChange> {
    let mut changes = Vec::new();
    if before != session.status {
        changes.push(add(at, session, before.as_str(), -1));
        changes.push(add(at, session, session.status.as_str(), 1));
    }
    changes.extend(user_marks(at, session));
    changes
}

/// Quarter-octave bucket of a duration: 0 for under 1 ms, else `1 + 4e + s` where
/// `2^e <= ms < 2^(e+1)` and `s` is the quarter of that octave. Integer arithmetic only, so
/// the Redis script computes the same bucket.
pub fn duration_bucket(ms: i64) -> u32 {
    if ms < 1 {
        return 0;
    }
    let e = 63 - ms.leading_zeros();
    let quarter = ((ms as i128 * 4) >> e) as u32 - 4;
    1 + 4 * e + quarter
}

/// The middle of a duration bucket, the value percentiles report (within 12.5% of the truth).
pub fn bucket_middle(bucket: u32) -> i64 {
    if bucket == 0 {
        return 0;
    }
    let e = (bucket - 1) / 4;
    let quarter = i64::from((bucket - 1) % 4);
    let octave = 1i64 << e;
    // Lower edge octave*(4+q)/4, upper octave*(5+q)/4; their mean is octave*(9+2q)/8.
    (octave * (9 + 2 * quarter)) / 8
}

/// What `GET /v1/stats` asks: one namespace, optionally one release and environment, and
/// the whole hours `[from_hour, to_hour)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsQuery {
    pub namespace: String,
    pub release: Option<String>,
    pub environment: Option<String>,
    pub from_hour: i64,
    pub to_hour: i64,
}

impl StatsQuery {
    /// The days whose hashes hold the window.
    pub fn days(&self) -> std::ops::RangeInclusive<i64> {
        day_of_hour(self.from_hour)..=day_of_hour(self.to_hour - 1)
    }
}

/// Duration percentiles of finalized sessions, in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Percentiles {
    pub p50: Option<i64>,
    pub p90: Option<i64>,
    pub p99: Option<i64>,
}

/// The answer of `GET /v1/stats`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StatsSummary {
    pub sessions: i64,
    pub active: i64,
    pub exited: i64,
    pub errored: i64,
    pub crashed: i64,
    pub abnormal: i64,
    pub crash_free_sessions: Option<f64>,
    pub users: i64,
    pub crash_free_users: Option<f64>,
    pub duration_ms: Percentiles,
}

/// Adds up the fields of the window's day hashes (each hash's fields apart, since ordinals
/// name releases and environments within their hash) that match the query.
pub fn aggregate<'a, H>(query: &StatsQuery, hashes: impl IntoIterator<Item = H>) -> StatsSummary
where
    H: IntoIterator<Item = (&'a str, i64)>,
{
    let (mut sessions, mut exited, mut errored, mut crashed, mut abnormal) = (0, 0, 0, 0, 0);
    let mut users: HashSet<&str> = HashSet::new();
    let mut crashed_users: HashSet<&str> = HashSet::new();
    let mut durations: Vec<(u32, i64)> = Vec::new();
    for hash in hashes {
        let fields: Vec<(&str, i64)> = hash.into_iter().collect();
        let names = admitted_names(&fields);
        let name_of = |ns: &str, dimension: char, ordinal: &'a str| -> Option<&'a str> {
            match ordinal {
                "" => Some(""),
                OTHER_ORDINAL => Some(OTHER),
                _ => names.get(&(ns, dimension, ordinal.parse().ok()?)).copied(),
            }
        };
        for (name, value) in fields {
            let mut parts = name.splitn(5, '\t');
            let (Some(hour), Some(ns), Some(release), Some(env), Some(kind)) = (
                parts.next().and_then(|h| h.parse::<i64>().ok()),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
            ) else {
                continue;
            };
            let in_window =
                (query.from_hour..query.to_hour).contains(&hour) && ns == query.namespace;
            let (Some(release), Some(env)) = (name_of(ns, 'r', release), name_of(ns, 'e', env))
            else {
                continue;
            };
            let matches = in_window
                && query.release.as_deref().is_none_or(|r| r == release)
                && query.environment.as_deref().is_none_or(|e| e == env);
            if !matches {
                continue;
            }
            match kind {
                "started" => sessions += value,
                "exited" => exited += value,
                "errored" => errored += value,
                "crashed" => crashed += value,
                "abnormal" => abnormal += value,
                _ => match kind.split_at(1) {
                    ("u", user) => {
                        users.insert(user);
                    }
                    ("x", user) => {
                        crashed_users.insert(user);
                    }
                    ("d", bucket) => {
                        if let Ok(bucket) = bucket.parse() {
                            durations.push((bucket, value));
                        }
                    }
                    _ => {}
                },
            }
        }
    }
    let ratio_free = |bad: usize, all: usize| (all > 0).then(|| 1.0 - bad as f64 / all as f64);
    StatsSummary {
        sessions,
        active: sessions - exited - errored - crashed - abnormal,
        exited,
        errored,
        crashed,
        abnormal,
        crash_free_sessions: ratio_free(crashed.max(0) as usize, sessions.max(0) as usize),
        users: users.len() as i64,
        crash_free_users: ratio_free(crashed_users.len(), users.len()),
        duration_ms: percentiles(durations),
    }
}

/// The names a day's hash admitted, by namespace, dimension and ordinal.
fn admitted_names<'a>(fields: &[(&'a str, i64)]) -> HashMap<(&'a str, char, i64), &'a str> {
    fields
        .iter()
        .filter_map(|&(field, ordinal)| {
            let mut parts = field.strip_prefix('\t')?.splitn(3, '\t');
            let (ns, dimension, name) = (parts.next()?, parts.next()?, parts.next()?);
            let dimension = match dimension {
                "r" => 'r',
                "e" => 'e',
                _ => return None,
            };
            Some(((ns, dimension, ordinal), name))
        })
        .collect()
}

fn percentiles(mut buckets: Vec<(u32, i64)>) -> Percentiles {
    buckets.sort_unstable();
    let total: i64 = buckets.iter().map(|(_, n)| n).sum();
    let at = |q: f64| {
        if total <= 0 {
            return None;
        }
        // The smallest bucket holding at least q of the sessions (nearest rank).
        let rank = ((q * total as f64).ceil() as i64).max(1);
        let mut seen = 0;
        buckets.iter().find_map(|(bucket, n)| {
            seen += n;
            (seen >= rank).then(|| bucket_middle(*bucket))
        })
    };
    Percentiles {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_fall_in_quarter_octaves() {
        assert_eq!(duration_bucket(0), 0);
        assert_eq!(duration_bucket(1), 1);
        assert_eq!(duration_bucket(2), 5);
        assert_eq!(duration_bucket(3), 7);
        // 1000 ms: octave 512..1024, quarter (1000*4>>9)-4 = 3.
        assert_eq!(duration_bucket(1000), 1 + 4 * 9 + 3);
        for ms in [1, 7, 100, 999, 1000, 60_000, 1_800_000, 86_400_000] {
            let middle = bucket_middle(duration_bucket(ms));
            let error = (middle - ms).abs() as f64 / ms as f64;
            assert!(error <= 0.125, "{ms} ms -> {middle} ms");
        }
    }

    fn query() -> StatsQuery {
        StatsQuery {
            namespace: "web".into(),
            release: None,
            environment: None,
            from_hour: 10,
            to_hour: 12,
        }
    }

    #[test]
    fn aggregates_counters_users_and_rates_within_the_window() {
        // Two buckets' hashes of one day: ordinals are each hash's own.
        let first = [
            ("\tweb\tr\t1.0", 1),
            ("\tweb\tr\t1.1", 2),
            ("\tweb\tr", 2),
            ("\tweb\te\tprod", 1),
            ("10\tweb\t1\t1\tstarted", 2),
            ("11\tweb\t2\t1\tstarted", 1),
            ("10\tweb\t1\t1\texited", 1),
            ("10\tweb\t1\t1\tcrashed", 1),
            ("10\tweb\t1\t1\tuann", 1),
            ("11\tweb\t2\t1\tuann", 1),
            ("11\tweb\t2\t1\tubob", 1),
            ("11\tweb\t2\t1\txbob", 1),
            ("10\tweb\t1\t1\td5", 2),
            // Outside the window, or another namespace: ignored.
            ("12\tweb\t1\t1\tstarted", 9),
            ("10\tapp\t1\t1\tstarted", 9),
        ];
        let second = [
            ("\tweb\tr\t1.0", 1),
            ("\tweb\te\tprod", 1),
            ("10\tweb\t1\t1\tstarted", 1),
            // Past the day's cap of names: counted as other.
            ("10\tweb\t0\t1\tstarted", 4),
        ];
        let s = aggregate(
            &query(),
            [&first[..], &second[..]].map(|h| h.iter().copied()),
        );
        assert_eq!(s.sessions, 8);
        assert_eq!(s.active, 6);
        assert_eq!((s.exited, s.crashed), (1, 1));
        assert_eq!(s.crash_free_sessions, Some(0.875));
        assert_eq!(s.users, 2);
        assert_eq!(s.crash_free_users, Some(0.5));
        assert_eq!(s.duration_ms.p50, Some(bucket_middle(5)));
        let of_release = |release: &str| {
            let query = StatsQuery {
                release: Some(release.into()),
                ..query()
            };
            aggregate(&query, [&first[..], &second[..]].map(|h| h.iter().copied())).sessions
        };
        assert_eq!(
            (of_release("1.0"), of_release("1.1"), of_release(OTHER)),
            (3, 1, 4)
        );
    }

    #[test]
    fn an_empty_window_has_no_rates() {
        let s = aggregate(&query(), std::iter::empty::<[(&str, i64); 0]>());
        assert_eq!(s.sessions, 0);
        assert_eq!(s.crash_free_sessions, None);
        assert_eq!(s.duration_ms.p50, None);
    }
}
