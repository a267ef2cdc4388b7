//! Limits shared by the instances of one store (`scope = "store"`): calls counted over
//! sliding windows, decided locally on what the store last said of the other instances, and
//! shared with the store in the background, never on a call's own path.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::store::{LimitCount, SharedLimits};

/// The length of a shared limit's window unless configured (`limits.shared_window`). A rate
/// of R calls a second allows R x 10 calls in any 10 s (a sliding window: the previous
/// window's calls weigh by how much of it the sliding window still covers), and at least
/// its burst.
pub const WINDOW: Duration = Duration::from_secs(10);

/// What a shared limit counts the calls of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counted {
    Client(u128),
    Address(IpAddr),
}

impl Counted {
    /// The store's name of the counter, and a number that spreads counters over its buckets.
    fn count(&self, window: i64, add: u64) -> LimitCount {
        let (field, spread) = match self {
            // A client counts in its own bucket, as its session does.
            Counted::Client(hash) => (format!("c{hash:032x}"), (*hash >> 112) as u32),
            Counted::Address(ip) => {
                let digest = blake3::hash(ip.to_string().as_bytes());
                let [a, b, ..] = *digest.as_bytes();
                (format!("a{ip}"), u32::from(u16::from_be_bytes([a, b])))
            }
        };
        LimitCount {
            field,
            spread,
            window,
            add,
        }
    }
}

/// One counter's window, as this instance knows it.
#[derive(Debug, Default)]
struct Window {
    number: i64,
    /// The previous window's total.
    previous: u64,
    /// The window's total across instances, as the store last answered (ours included).
    known: u64,
    /// Calls admitted here that the store has not answered for yet.
    unsynced: u64,
    /// Of those, the ones on their way to the store.
    in_flight: u64,
    /// Calls of the previous window admitted here that had not left for the store when the
    /// window turned; they go next, so that the other instances' view of it is whole.
    late: u64,
    late_in_flight: u64,
    /// How often the previous window's total was read again since the window turned: the
    /// other instances' late calls reach the store after the turn.
    previous_reads: u8,
}

/// How many syncs after a window turns read the previous window's total again.
const PREVIOUS_READS: u8 = 3;

type Shard = Mutex<HashMap<Counted, Window, foldhash::fast::RandomState>>;

/// The counters, in shards so that workers seldom meet on a lock.
pub struct SharedCounters {
    window_ms: i64,
    shards: [Shard; 16],
    /// How many instances count (at least this one), as the store last said.
    instances: AtomicUsize,
    /// Keyed per process, so that instances draw apart.
    lot: foldhash::fast::RandomState,
    draws: std::sync::atomic::AtomicU64,
}

/// One count taken out to be shared: its counter, window, the calls, and whether they are
/// late (of the window before the counter's current one).
struct Sent {
    key: Counted,
    window: i64,
    add: u64,
    late: bool,
}

/// Counts taken out to be shared.
pub struct Outgoing(Vec<Sent>);

impl Outgoing {
    pub fn counts(&self) -> Vec<LimitCount> {
        self.0
            .iter()
            .map(|s| s.key.count(s.window, s.add))
            .collect()
    }
}

impl SharedCounters {
    pub fn new(window: Duration) -> Self {
        Self {
            window_ms: (window.as_millis() as i64).max(1),
            shards: Default::default(),
            instances: AtomicUsize::new(1),
            lot: foldhash::fast::RandomState::default(),
            draws: Default::default(),
        }
    }

    /// A number below `n`, drawn anew each time.
    fn draw(&self, n: u64) -> u64 {
        use std::hash::BuildHasher;
        let draw = self.draws.fetch_add(1, Ordering::Relaxed);
        self.lot.hash_one(draw) % n.max(1)
    }

    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }

    fn shard(&self, key: &Counted) -> &Shard {
        use std::hash::BuildHasher;
        let hash = foldhash::fast::FixedState::default().hash_one(key);
        &self.shards[(hash % 16) as usize]
    }

    /// Admits `n` calls of `key` if the sliding window leaves room for them: at most `limit`
    /// across instances, and of the room left, at most this instance's share until the store
    /// has counted them, so that instances admitting at once cannot pass the limit together.
    /// Refused: when to try again.
    pub fn admit(&self, key: Counted, n: u64, limit: u64, now_ms: i64) -> Result<(), Duration> {
        let number = now_ms.div_euclid(self.window_ms);
        let into = now_ms.rem_euclid(self.window_ms);
        let mut shard = self.shard(&key).lock();
        let window = shard.entry(key).or_default();
        if window.number != number {
            // Its calls not answered for yet count too, in flight or not; an answer still
            // on its way refines the total (`shared`).
            let (previous, late) = if window.number == number - 1 {
                (
                    window.known + window.unsynced,
                    window.unsynced - window.in_flight,
                )
            } else {
                (0, 0)
            };
            *window = Window {
                number,
                previous,
                late,
                ..Window::default()
            };
        }
        // Rounded up: rounded down, each window would admit one call more than its rate.
        let carried =
            (window.previous * (self.window_ms - into) as u64).div_ceil(self.window_ms as u64);
        let used = carried + window.known + window.unsynced;
        let instances = self.instances.load(Ordering::Relaxed).max(1) as u64;
        let room = limit.saturating_sub(carried + window.known);
        // An even share of the room; with less room than instances, a share of one by lot, so
        // that the instances admit about the room between them, not one call each.
        let share = match room / instances {
            0 if self.draw(instances) < room => 1,
            share => share,
        };
        // Unconfirmed calls, in flight or not, stay within the share: the others cannot see them.
        if used + n <= limit && window.unsynced + n <= share.max(n.min(room)) {
            window.unsynced += n;
            return Ok(());
        }
        // Room comes back as the previous window slides out, with the next window, or once
        // the store has counted this instance's share.
        Err(Duration::from_millis(
            (self.window_ms - into).clamp(1, 1000) as u64,
        ))
    }

    /// Takes the counts not yet shared (of the current window, and late ones of the one
    /// before), marking them on their way.
    pub fn outgoing(&self, now_ms: i64) -> Outgoing {
        let window = now_ms.div_euclid(self.window_ms);
        let mut sent = Vec::new();
        for shard in &self.shards {
            for (key, w) in shard.lock().iter_mut() {
                // A counter no call has touched since the window turned still sends its
                // window's calls: the others count them in their previous window.
                if w.number < window - 1 {
                    continue;
                }
                let add = w.unsynced - w.in_flight;
                if add > 0 {
                    w.in_flight += add;
                    sent.push(Sent {
                        key: *key,
                        window: w.number,
                        add,
                        late: false,
                    });
                }
                let late = w.late - w.late_in_flight;
                if late > 0 || (w.previous > 0 && w.previous_reads < PREVIOUS_READS) {
                    w.previous_reads = w.previous_reads.saturating_add(1);
                    w.late_in_flight += late;
                    sent.push(Sent {
                        key: *key,
                        window: w.number - 1,
                        add: late,
                        late: true,
                    });
                }
            }
        }
        Outgoing(sent)
    }

    /// Takes in the store's answer to `sent`: each counter's total, and the instances.
    pub fn shared(&self, sent: Outgoing, answer: Result<SharedLimits, ()>) {
        let totals = match answer {
            Ok(answer) => {
                self.instances.store(answer.instances, Ordering::Relaxed);
                answer.totals
            }
            Err(()) => Vec::new(),
        };
        for (n, sent) in sent.0.into_iter().enumerate() {
            let total = totals.get(n).copied();
            let mut shard = self.shard(&sent.key).lock();
            let Some(w) = shard.get_mut(&sent.key) else {
                continue;
            };
            // Unanswered, the calls stay unshared and go with the next round.
            if w.number == sent.window {
                w.in_flight -= sent.add;
                if let Some(total) = total {
                    w.unsynced -= sent.add;
                    w.known = w.known.max(total);
                }
            } else if w.number == sent.window + 1 {
                // Of the previous window: late calls, or calls sent just before it turned.
                if sent.late {
                    w.late_in_flight -= sent.add;
                    if total.is_some() {
                        w.late -= sent.add;
                    }
                }
                if let Some(total) = total {
                    w.previous = w.previous.max(total + w.late);
                }
            }
        }
    }

    /// Forgets counters of windows before the previous one.
    pub fn tidy(&self, now_ms: i64) {
        let window = now_ms.div_euclid(self.window_ms);
        for shard in &self.shards {
            shard.lock().retain(|_, w| w.number >= window - 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: Counted = Counted::Client(7);

    fn answered(
        counters: &SharedCounters,
        now: i64,
        totals: impl Fn(u64) -> u64,
        instances: usize,
    ) {
        let sent = counters.outgoing(now);
        let totals = sent.0.iter().map(|s| totals(s.add)).collect();
        counters.shared(sent, Ok(SharedLimits { totals, instances }));
    }

    #[test]
    fn a_window_admits_its_limit_across_instances() {
        let counters = SharedCounters::new(WINDOW);
        // Alone: the limit, then refused.
        for _ in 0..10 {
            counters.admit(KEY, 1, 10, 0).unwrap();
        }
        assert!(counters.admit(KEY, 1, 10, 0).is_err());
        // Once the store has counted them, they still fill the window.
        answered(&counters, 0, |add| add, 1);
        assert!(counters.admit(KEY, 1, 10, 1).is_err());
        // Another key has its own window.
        counters.admit(Counted::Client(8), 1, 10, 1).unwrap();
    }

    #[test]
    fn with_two_instances_each_admits_its_share_until_the_store_has_counted() {
        let counters = SharedCounters::new(WINDOW);
        counters.instances.store(2, Ordering::Relaxed);
        for _ in 0..50 {
            counters.admit(KEY, 1, 100, 0).unwrap();
        }
        assert!(
            counters.admit(KEY, 1, 100, 0).is_err(),
            "half the room, unshared"
        );
        // The store says the other instance admitted 40 meanwhile: 10 left, 5 each.
        answered(&counters, 0, |add| add + 40, 2);
        for _ in 0..5 {
            counters.admit(KEY, 1, 100, 1).unwrap();
        }
        assert!(counters.admit(KEY, 1, 100, 1).is_err());
    }

    #[test]
    fn while_the_store_does_not_answer_an_instance_admits_only_its_share() {
        let counters = SharedCounters::new(WINDOW);
        counters.instances.store(2, Ordering::Relaxed);
        for _ in 0..50 {
            counters.admit(KEY, 1, 100, 0).unwrap();
        }
        for now in [100, 200, 300] {
            let sent = counters.outgoing(now);
            counters.shared(sent, Err(()));
            assert!(
                counters.admit(KEY, 1, 100, now).is_err(),
                "still unconfirmed at {now}"
            );
        }
    }

    #[test]
    fn calls_of_a_window_are_shared_after_it_turned() {
        let counters = SharedCounters::new(WINDOW);
        counters
            .admit(KEY, 1, 10, counters.window_ms() - 1)
            .unwrap();
        let sent = counters.outgoing(counters.window_ms() + 50);
        let counts = sent.counts();
        assert_eq!(counts.len(), 1);
        assert_eq!((counts[0].window, counts[0].add), (0, 1));
    }

    #[test]
    fn the_previous_window_weighs_by_how_much_the_sliding_window_covers() {
        let counters = SharedCounters::new(WINDOW);
        for _ in 0..10 {
            counters.admit(KEY, 1, 10, 0).unwrap();
        }
        answered(&counters, 0, |add| add, 1);
        // Halfway through the next window, half of the previous one's 10 still count.
        let half = counters.window_ms() * 3 / 2;
        for _ in 0..5 {
            counters.admit(KEY, 1, 10, half).unwrap();
        }
        assert!(counters.admit(KEY, 1, 10, half).is_err());
    }
}
