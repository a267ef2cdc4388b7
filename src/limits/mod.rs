//! Abuse limits: rate limits per client and per source address, and a cap on the new clients
//! one address may create per minute, so a public deployment survives hostile callers.
//!
//! With `scope = "store"` the client and address rates hold across every instance sharing the
//! store: calls are counted over sliding windows (`shared_window`), decided locally on what the
//! store last said of the other instances, and shared in the background ([`Limiter::share`]),
//! never on a call's own path.

use std::collections::HashSet;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_utils::CachePadded;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use ipnet::IpNet;
use parking_lot::Mutex;

use crate::domain::ClientHash;
use crate::store::SessionStore;

mod shared;

pub use shared::WINDOW;
use shared::{Counted, SharedCounters};

/// A sustained rate with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// One call's allowance comes back after this long.
    pub period: Duration,
    pub burst: NonZeroU32,
}

impl Rate {
    /// A rate of calls per second (above zero, and finite), with a burst.
    pub fn per_second(per_second: f64, burst: NonZeroU32) -> Option<Self> {
        let period = Duration::try_from_secs_f64(1.0 / per_second).ok()?;
        (!period.is_zero()).then_some(Self { period, burst })
    }

    /// The calls a shared window allows: the rate over the window, and at least the burst.
    fn per_window(self, window: Duration) -> u64 {
        let per_window = window.as_nanos() / self.period.as_nanos().max(1);
        (per_window as u64).max(u64::from(self.burst.get()))
    }

    fn quota(self) -> Quota {
        Quota::with_period(self.period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(self.burst)
    }
}

/// Where the client and address rates are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// Each instance counts on its own: N instances grant N times the rates.
    #[default]
    Instance,
    /// The instances sharing the store count together.
    Store,
}

/// The configured limits; `None` turns one off.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitSettings {
    pub scope: Scope,
    /// The sliding window shared limits are counted over.
    pub shared_window: Duration,
    /// Calls per client key.
    pub client: Option<Rate>,
    /// Calls per source address (a batch counts each of its operations).
    pub address: Option<Rate>,
    /// Clients one address may create per minute.
    pub new_clients_per_minute: Option<NonZeroU32>,
    /// Proxies whose address header is believed; from anyone else the socket's address counts.
    pub trusted_proxies: Vec<IpNet>,
    /// The header a trusted proxy writes the caller's address into (lower case).
    pub address_header: String,
}

impl LimitSettings {
    /// Every limit off, for load tests from one address.
    pub fn off() -> Self {
        Self {
            scope: Scope::Instance,
            shared_window: WINDOW,
            client: None,
            address: None,
            new_clients_per_minute: None,
            trusted_proxies: Vec::new(),
            address_header: "x-forwarded-for".into(),
        }
    }
}

/// Which limit refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Client,
    Address,
    NewClients,
}

impl LimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Address => "address",
            Self::NewClients => "new_clients",
        }
    }
}

/// A refused call, and when the caller may try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub kind: LimitKind,
    pub retry_after: Duration,
}

impl Limited {
    /// Whole seconds for `Retry-After`, rounded up and at least one.
    pub fn retry_after_seconds(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }
}

/// Clients seen from one address in the current minute, so that once the address has
/// created its share of new clients, the clients it already brought keep working.
#[derive(Default)]
struct AddressMinute {
    new_clients: u32,
    /// Calls admitted for clients that may be new, not settled yet: they count against the
    /// cap until the store has said whether they created their client.
    reserved: u32,
    seen: HashSet<u128, foldhash::fast::RandomState>,
}

/// One shard's table of the current minute: the addresses that hash to it.
#[derive(Default)]
struct Minute {
    /// Minutes since the Unix epoch, on the service's clock.
    number: i64,
    addresses: std::collections::HashMap<IpAddr, AddressMinute, foldhash::fast::RandomState>,
}

/// Enforces [`LimitSettings`]. Shared by every worker.
pub struct Limiter {
    client: Option<(DefaultKeyedRateLimiter<u128>, Rate)>,
    address: Option<(DefaultKeyedRateLimiter<IpAddr>, Rate)>,
    new_clients_cap: Option<NonZeroU32>,
    /// The new-client tables, in shards by address, each on a cache line of its own, so that
    /// calls from different addresses seldom wait on one lock.
    minutes: [CachePadded<Mutex<Minute>>; MINUTE_SHARDS],
    /// With `scope = "store"`, the client and address rates instead: the counters they are
    /// decided on, and each one's calls per window.
    shared: Option<Shared>,
}

struct Shared {
    counters: SharedCounters,
    client: Option<u64>,
    address: Option<u64>,
}

/// A call's place under its address's new-client cap, taken at admission. Settle it with
/// what the store did; dropped unsettled (the call failed, or was abandoned), the place is
/// given back.
pub struct NewClientPlace {
    limiter: Arc<Limiter>,
    address: IpAddr,
    client: u128,
    minute: i64,
    /// Set once settled, so the drop does not settle it again.
    settled: bool,
}

impl std::fmt::Debug for NewClientPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewClientPlace")
            .field("address", &self.address)
            .field("minute", &self.minute)
            .finish_non_exhaustive()
    }
}

impl NewClientPlace {
    /// Keeps the place if the call created its client, else gives it back.
    pub fn settle(mut self, created: bool) {
        self.limiter.settle(&self, created);
        self.settled = true;
    }
}

impl Drop for NewClientPlace {
    fn drop(&mut self) {
        if !self.settled {
            self.limiter.settle(self, false);
        }
    }
}

/// Empties a new-client table once its minute has passed.
fn turn(minute: &mut Minute, now_ms: i64) {
    let number = now_ms.div_euclid(60_000);
    if minute.number != number {
        minute.number = number;
        minute.addresses = Default::default();
    }
}

/// A client hash as a number: the limiters key on it without copying the hash's text.
fn key(client: &ClientHash) -> u128 {
    // A ClientHash is 32 hex digits by construction.
    u128::from_str_radix(client.as_str(), 16).unwrap_or_default()
}

/// How many shards the new-client tables are kept in.
const MINUTE_SHARDS: usize = 16;

/// Seen clients kept per address and minute, in multiples of the new-client cap: enough for
/// a busy shared address, bounded for a hostile one.
const SEEN_PER_CAP: u32 = 16;

impl Limiter {
    pub fn new(settings: &LimitSettings) -> Self {
        let local = settings.scope == Scope::Instance;
        Self {
            client: settings
                .client
                .filter(|_| local)
                .map(|r| (DefaultKeyedRateLimiter::keyed(r.quota()), r)),
            address: settings
                .address
                .filter(|_| local)
                .map(|r| (DefaultKeyedRateLimiter::keyed(r.quota()), r)),
            new_clients_cap: settings.new_clients_per_minute,
            minutes: Default::default(),
            shared: (!local).then(|| Shared {
                counters: SharedCounters::new(settings.shared_window),
                client: settings
                    .client
                    .map(|r| r.per_window(settings.shared_window)),
                address: settings
                    .address
                    .map(|r| r.per_window(settings.shared_window)),
            }),
        }
    }

    /// Shares this instance's counts of the current window with the store, and takes in
    /// the other instances'; a no-op without shared limits. `instance` names this instance.
    pub async fn share(&self, store: &dyn SessionStore, instance: &str, now_ms: i64) {
        let Some(shared) = &self.shared else { return };
        let outgoing = shared.counters.outgoing(now_ms);
        let window_ms = shared.counters.window_ms();
        let answer = store
            .share_limits(instance, window_ms, &outgoing.counts())
            .await;
        let answer = match answer {
            Ok(Some(answer)) => Ok(answer),
            Ok(None) => Err(()),
            Err(e) => {
                tracing::debug!(error = %e, "could not share the limits' counts; they go next time");
                Err(())
            }
        };
        shared.counters.shared(outgoing, answer);
    }

    /// Takes `calls` from the address's allowance (a batch larger than the burst takes all of it).
    pub fn check_address(
        &self,
        address: Option<IpAddr>,
        calls: usize,
        now_ms: i64,
    ) -> Result<(), Limited> {
        if let (Some(shared), Some(address)) = (&self.shared, address) {
            let Some(limit) = shared.address else {
                return Ok(());
            };
            let calls = (calls as u64).clamp(1, limit);
            return shared
                .counters
                .admit(Counted::Address(address), calls, limit, now_ms)
                .map_err(|retry_after| Limited {
                    kind: LimitKind::Address,
                    retry_after,
                });
        }
        let (Some((limiter, rate)), Some(address)) = (&self.address, address) else {
            return Ok(());
        };
        let calls = u32::try_from(calls)
            .unwrap_or(u32::MAX)
            .min(rate.burst.get());
        let calls = NonZeroU32::new(calls).unwrap_or(NonZeroU32::MIN);
        match limiter.check_key_n(&address, calls) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(Limited {
                kind: LimitKind::Address,
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            }),
            // Cannot happen: calls is at most the burst. Refuse for a second rather than panic.
            Err(_) => Err(Limited {
                kind: LimitKind::Address,
                retry_after: Duration::from_secs(1),
            }),
        }
    }

    /// Takes one call from the client's allowance, and admits the client against its address's
    /// new-client cap. A client that may be new (`minted` ones are) takes a place under the
    /// cap at once, atomically with the check, so concurrent calls and a batch's operations
    /// can never admit more new clients than the cap; the place is kept or given back when
    /// the returned [`NewClientPlace`] is settled or dropped.
    pub fn check_call(
        self: &Arc<Self>,
        address: Option<IpAddr>,
        client: &ClientHash,
        minted: bool,
        now_ms: i64,
    ) -> Result<Option<NewClientPlace>, Limited> {
        if let Some(Shared {
            counters,
            client: Some(limit),
            ..
        }) = &self.shared
        {
            counters
                .admit(Counted::Client(key(client)), 1, *limit, now_ms)
                .map_err(|retry_after| Limited {
                    kind: LimitKind::Client,
                    retry_after,
                })?;
        }
        if let Some((limiter, _)) = &self.client
            && let Err(not_until) = limiter.check_key(&key(client))
        {
            return Err(Limited {
                kind: LimitKind::Client,
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            });
        }
        let (Some(cap), Some(address)) = (self.new_clients_cap, address) else {
            return Ok(None);
        };
        let client = key(client);
        let minute_number = now_ms.div_euclid(60_000);
        let mut minute = self.minute_at(&address, now_ms);
        let entry = minute.addresses.entry(address).or_default();
        if !minted && entry.seen.contains(&client) {
            return Ok(None);
        }
        if entry.new_clients + entry.reserved < cap.get() {
            entry.reserved += 1;
            return Ok(Some(NewClientPlace {
                limiter: self.clone(),
                address,
                client,
                minute: minute_number,
                settled: false,
            }));
        }
        Err(Limited {
            kind: LimitKind::NewClients,
            retry_after: Duration::from_millis((60_000 - now_ms.rem_euclid(60_000)) as u64),
        })
    }

    /// Ends a place's reservation: counted as a new client if the call created one, and the
    /// client remembered as one this address brought (unless the table is full).
    fn settle(&self, place: &NewClientPlace, created: bool) {
        let mut minute = self.shard_of(&place.address).lock();
        if minute.number != place.minute {
            return;
        }
        let seen_max = self
            .new_clients_cap
            .map_or(0, |cap| (cap.get() * SEEN_PER_CAP) as usize);
        if let Some(entry) = minute.addresses.get_mut(&place.address) {
            entry.reserved = entry.reserved.saturating_sub(1);
            if created {
                entry.new_clients = entry.new_clients.saturating_add(1);
            }
            if created || entry.seen.len() < seen_max {
                entry.seen.insert(place.client);
            }
        }
    }

    fn shard_of(&self, address: &IpAddr) -> &Mutex<Minute> {
        use std::hash::BuildHasher;
        let hash = foldhash::fast::FixedState::default().hash_one(address);
        &self.minutes[hash as usize % MINUTE_SHARDS]
    }

    /// The current minute's table of the address's shard, emptied when the minute has turned.
    fn minute_at(&self, address: &IpAddr, now_ms: i64) -> parking_lot::MutexGuard<'_, Minute> {
        let mut minute = self.shard_of(address).lock();
        turn(&mut minute, now_ms);
        minute
    }

    /// Forgets rate-limit state that has fully recovered, so memory follows the callers of
    /// the last moments, not every caller ever seen.
    pub fn tidy(&self, now_ms: i64) {
        // A shard no call reached since the minute turned still holds the last one's table.
        for shard in &self.minutes {
            turn(&mut shard.lock(), now_ms);
        }
        if let Some(shared) = &self.shared {
            shared.counters.tidy(now_ms);
        }
        if let Some((limiter, _)) = &self.client {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some((limiter, _)) = &self.address {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ClientHasher, ClientKey};

    fn rate(per_second: f64, burst: u32) -> Option<Rate> {
        Rate::per_second(per_second, NonZeroU32::new(burst).unwrap())
    }

    fn client(name: &str) -> ClientHash {
        ClientHasher::new(&"limits-test-secret-0123".into())
            .hash(&ClientKey::parse(name, 1).unwrap())
    }

    const HOME: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7)));
    const OTHER: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 8)));

    #[test]
    fn a_client_over_its_burst_waits_and_others_do_not() {
        let limiter = Arc::new(Limiter::new(&LimitSettings {
            client: rate(1.0, 3),
            ..LimitSettings::off()
        }));
        for _ in 0..3 {
            limiter.check_call(HOME, &client("a"), false, 0).unwrap();
        }
        let refused = limiter
            .check_call(HOME, &client("a"), false, 0)
            .unwrap_err();
        assert_eq!(refused.kind, LimitKind::Client);
        assert!(
            refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_secs(1)
        );
        limiter.check_call(HOME, &client("b"), false, 0).unwrap();
    }

    #[test]
    fn an_address_pays_for_each_operation_of_a_batch() {
        let limiter = Arc::new(Limiter::new(&LimitSettings {
            address: rate(1.0, 10),
            ..LimitSettings::off()
        }));
        limiter.check_address(HOME, 8, 0).unwrap();
        assert_eq!(
            limiter.check_address(HOME, 3, 0).unwrap_err().kind,
            LimitKind::Address
        );
        limiter.check_address(OTHER, 1000, 0).unwrap();
        limiter.check_address(None, 1, 0).unwrap();
    }

    #[test]
    fn each_address_keeps_its_own_cap_across_the_shards_and_tidy_forgets_past_minutes() {
        let limiter = Arc::new(Limiter::new(&LimitSettings {
            new_clients_per_minute: NonZeroU32::new(1),
            ..LimitSettings::off()
        }));
        let now = 120_000;
        // Enough addresses to reach every shard.
        let addresses: Vec<IpAddr> = (0..200u8).map(|n| IpAddr::from([10, 0, 0, n])).collect();
        for (n, address) in addresses.iter().enumerate() {
            let place = limiter
                .check_call(Some(*address), &client(&format!("first-{n}")), false, now)
                .unwrap();
            place.expect("its first client may be new").settle(true);
            let refused = limiter
                .check_call(Some(*address), &client(&format!("second-{n}")), false, now)
                .unwrap_err();
            assert_eq!(refused.kind, LimitKind::NewClients, "address {address}");
        }
        let tables = |limiter: &Limiter| -> usize {
            limiter
                .minutes
                .iter()
                .map(|m| m.lock().addresses.len())
                .sum()
        };
        assert_eq!(tables(&limiter), addresses.len());
        assert!(
            limiter
                .minutes
                .iter()
                .all(|m| !m.lock().addresses.is_empty())
        );
        limiter.tidy(now + 60_000);
        assert_eq!(tables(&limiter), 0, "a past minute's tables are let go");
    }

    #[test]
    fn an_address_over_its_new_clients_keeps_its_known_clients_until_the_minute_turns() {
        let limiter = Arc::new(Limiter::new(&LimitSettings {
            new_clients_per_minute: NonZeroU32::new(2),
            ..LimitSettings::off()
        }));
        let now = 120_000;
        for name in ["a", "b"] {
            let place = limiter.check_call(HOME, &client(name), false, now).unwrap();
            place.expect("a client not seen may be new").settle(true);
        }
        let refused = limiter
            .check_call(HOME, &client("c"), false, now + 1_000)
            .unwrap_err();
        assert_eq!(refused.kind, LimitKind::NewClients);
        assert_eq!(refused.retry_after, Duration::from_secs(59));
        assert!(
            limiter.check_call(HOME, &client("x"), true, now).is_err(),
            "a minted client is new"
        );
        limiter
            .check_call(HOME, &client("a"), false, now + 2_000)
            .unwrap();
        limiter.check_call(OTHER, &client("c"), false, now).unwrap();
        limiter
            .check_call(HOME, &client("c"), false, now + 60_000)
            .unwrap();
    }

    #[test]
    fn places_under_the_cap_are_taken_at_admission_and_given_back_unless_a_client_was_created() {
        let limiter = Arc::new(Limiter::new(&LimitSettings {
            new_clients_per_minute: NonZeroU32::new(2),
            ..LimitSettings::off()
        }));
        let now = 180_000;
        // Two calls in flight hold both places: a third is refused before either is settled.
        let first = limiter.check_call(HOME, &client("p"), true, now).unwrap();
        let second = limiter.check_call(HOME, &client("q"), false, now).unwrap();
        let refused = limiter
            .check_call(HOME, &client("r"), false, now)
            .unwrap_err();
        assert_eq!(refused.kind, LimitKind::NewClients);
        // The second client existed already: its place comes back, and it is known now.
        second.unwrap().settle(false);
        limiter.check_call(HOME, &client("q"), false, now).unwrap();
        let third = limiter.check_call(HOME, &client("r"), false, now).unwrap();
        // A call that fails or is abandoned gives its place back too.
        drop(third);
        first.unwrap().settle(true);
        let last = limiter.check_call(HOME, &client("s"), false, now).unwrap();
        last.unwrap().settle(true);
        assert!(limiter.check_call(HOME, &client("t"), false, now).is_err());
    }
}
