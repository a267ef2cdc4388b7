//! The embedded store: sessions in this process's memory, with the same semantics as Redis
//! on one instance. Sessions live only as long as the process.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::{
    Command, Finalized, Found, Outcome, Policies, SessionStore, StoreError, Swept, policy_of,
};
use crate::domain::decision::{Sweep, ended_at, finalize, sweep};
use crate::domain::stats::{self, StatChange, StatsQuery, StatsSummary};
use crate::domain::transition::{Answer, Call, Effect, still_retained, transition};
use crate::domain::{
    ClientHash, Clock, Event, EventId, EventKind, IdSource, Namespace, Policy, Retention,
    SessionId, SessionState, StatsNames, Status,
};

/// A client: its namespace and its client hash, as the Redis store's field `NS:HASH` names it.
type Tag = (Namespace, ClientHash);

/// Maps keyed by client hashes and session ids: both are keyed-hash or random output, which
/// a caller cannot steer, so a fast hasher is safe here (about a tenth of a call's cost went
/// to SipHash).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Which record an expiry belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Record {
    Client(Tag),
    Archive(Tag),
}

struct Expiring<T> {
    value: T,
    expires_at: i64,
}

/// When each client's session is due for the sweeper to look at: one entry per client, set
/// when a session starts and moved by the sweeper. (The Redis store's wake index keeps one
/// entry per records hash instead, the earliest of its clients'.)
#[derive(Default)]
struct DueIndex {
    at: FastMap<Tag, i64>,
    order: BTreeSet<(i64, Tag)>,
}

impl DueIndex {
    fn set(&mut self, tag: &Tag, at: i64) {
        if let Some(old) = self.at.insert(tag.clone(), at) {
            self.order.remove(&(old, tag.clone()));
        }
        self.order.insert((at, tag.clone()));
    }

    /// Moves a client's entry earlier (or adds it), never later.
    fn set_earlier(&mut self, tag: &Tag, at: i64) {
        if self.at.get(tag).is_none_or(|old| at < *old) {
            self.set(tag, at);
        }
    }

    /// Takes up to `limit` clients due at `now`.
    fn take_due(&mut self, now: i64, limit: usize) -> Vec<Tag> {
        let mut due = Vec::new();
        while due.len() < limit {
            match self.order.first() {
                Some((at, _)) if *at <= now => {}
                _ => break,
            }
            if let Some((_, tag)) = self.order.pop_first() {
                self.at.remove(&tag);
                due.push(tag);
            }
        }
        due
    }
}

/// The lifecycle events, a bounded ring: the oldest are dropped first.
struct EventLog {
    events: VecDeque<Event>,
    capacity: usize,
    last: EventId,
}

impl EventLog {
    /// Appends an event with the next id at `now`. Ids grow even if the clock steps back,
    /// so a cursor never skips an event.
    fn push(&mut self, mut event: Event, now: i64) {
        let ms = u64::try_from(now).unwrap_or(0);
        self.last = if ms > self.last.ms {
            EventId {
                ms,
                seq: 0,
                shard: 0,
            }
        } else {
            EventId {
                seq: self.last.seq + 1,
                ..self.last
            }
        };
        event.id = self.last;
        if self.events.len() >= self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    fn after(&self, after: Option<EventId>, limit: usize) -> Vec<Event> {
        let from = after.map_or(0, |a| self.events.partition_point(|e| e.id <= a));
        self.events.iter().skip(from).take(limit).cloned().collect()
    }
}

/// Records with expiries, like Redis keys with a TTL: a client's current session, and the
/// archive of its earlier sessions still retained. `ids` indexes every retained session id,
/// which is what makes ids unique among retained sessions. Health data lives beside them:
/// the sweeper's due index, the event ring, and the stats hashes of each day.
struct Keyspace {
    clients: FastMap<Tag, Expiring<SessionState>>,
    archives: FastMap<Tag, Expiring<Vec<SessionState>>>,
    ids: FastMap<SessionId, Tag>,
    expiries: BTreeSet<(i64, Record)>,
    due: DueIndex,
    events: EventLog,
    stats: HashMap<i64, HashMap<String, i64>>,
    stats_names: StatsNames,
}

/// Sets a client record's expiry, as a Redis key's TTL is set on every save. The expiry index
/// is lazy: a later expiry leaves the old entry for `purge` to move on; only an earlier one
/// needs an entry of its own.
fn set_client_expiry(
    expiries: &mut BTreeSet<(i64, Record)>,
    tag: &Tag,
    record: &mut Expiring<SessionState>,
    expires_at: i64,
) {
    if expires_at < record.expires_at {
        expiries.insert((expires_at, Record::Client(tag.clone())));
    }
    record.expires_at = expires_at;
}

/// How many expired records one call removes at most, so no call pays for a large backlog;
/// the janitor task removes the rest.
const PURGE_PER_CALL: usize = 32;

/// How many due clients one sweep looks at, as the Redis store's per-bucket limit.
const SWEEP_LIMIT: usize = 10_000;

impl Keyspace {
    fn new(events: usize, stats_names: StatsNames) -> Self {
        Self {
            clients: FastMap::default(),
            archives: FastMap::default(),
            ids: FastMap::default(),
            expiries: BTreeSet::new(),
            due: DueIndex::default(),
            events: EventLog {
                events: VecDeque::new(),
                capacity: events.max(1),
                last: EventId::default(),
            },
            stats: HashMap::new(),
            stats_names,
        }
    }

    fn set_expiry(&mut self, record: Record, old: Option<i64>, new: i64) {
        if let Some(old) = old {
            self.expiries.remove(&(old, record.clone()));
        }
        self.expiries.insert((new, record));
    }

    /// Removes up to `limit` records whose expiry has passed; returns how many. A client's
    /// entry may be stale (its record was extended since), and is then moved to the record's
    /// current expiry instead.
    fn purge(&mut self, now: i64, limit: usize) -> usize {
        let mut removed = 0;
        let mut looked = 0;
        while removed < limit && looked < limit.saturating_mul(2) {
            let Some((at, record)) = self.expiries.first().cloned() else {
                break;
            };
            if at > now {
                break;
            }
            self.expiries.pop_first();
            looked += 1;
            if let Record::Client(tag) = &record
                && let Some(later) = self.clients.get(tag).map(|r| r.expires_at)
                && later > now
            {
                self.expiries.insert((later, record));
                continue;
            }
            self.remove(&record);
            removed += 1;
        }
        removed
    }

    fn remove(&mut self, record: &Record) {
        match record {
            Record::Client(tag) => {
                if let Some(rec) = self.clients.remove(tag) {
                    self.ids.remove(&rec.value.id);
                }
            }
            Record::Archive(tag) => {
                for s in self
                    .archives
                    .remove(tag)
                    .map(|a| a.value)
                    .unwrap_or_default()
                {
                    self.ids.remove(&s.id);
                }
            }
        }
    }

    fn current(&self, tag: &Tag, now: i64) -> Option<&SessionState> {
        self.clients
            .get(tag)
            .filter(|r| r.expires_at > now)
            .map(|r| &r.value)
    }

    fn archived_mut(
        &mut self,
        tag: &Tag,
        id: &SessionId,
        now: i64,
        session_retention: i64,
    ) -> Option<&mut SessionState> {
        let archive = self.archives.get_mut(tag).filter(|a| a.expires_at > now)?;
        archive
            .value
            .iter_mut()
            .find(|s| s.id == *id && still_retained(s, now, session_retention))
    }

    /// Stores the client's current session with the expiry the Redis store gives it.
    fn save_current(&mut self, tag: &Tag, session: SessionState, expires_at: i64) {
        if let Some(record) = self.clients.get_mut(tag) {
            if record.value.id != session.id {
                self.ids.insert(session.id.clone(), tag.clone());
            }
            record.value = session;
            set_client_expiry(&mut self.expiries, tag, record, expires_at);
            return;
        }
        self.ids.insert(session.id.clone(), tag.clone());
        self.expiries
            .insert((expires_at, Record::Client(tag.clone())));
        self.clients.insert(
            tag.clone(),
            Expiring {
                value: session,
                expires_at,
            },
        );
    }

    /// Moves a finalized session into the client's archive, dropping entries past retention.
    fn archive(&mut self, tag: &Tag, done: SessionState, now: i64, session_retention: i64) {
        let retained = |s: &SessionState| still_retained(s, now, session_retention);
        let (old_expiry, mut sessions) = match self.archives.remove(tag) {
            Some(a) => (Some(a.expires_at), a.value),
            None => (None, Vec::new()),
        };
        sessions.push(done);
        let (kept, dropped): (Vec<_>, Vec<_>) = sessions.into_iter().partition(retained);
        for s in dropped {
            self.ids.remove(&s.id);
        }
        let record = Record::Archive(tag.clone());
        match kept.iter().filter_map(|s| s.ended_at).max() {
            Some(latest) => {
                let expires_at = latest + session_retention;
                self.set_expiry(record, old_expiry, expires_at);
                self.archives.insert(
                    tag.clone(),
                    Expiring {
                        value: kept,
                        expires_at,
                    },
                );
            }
            None => {
                if let Some(old) = old_expiry {
                    self.expiries.remove(&(old, record));
                }
            }
        }
    }

    /// Counts a session in its start day's stats: the `changes` its place there gives (its
    /// names admitted to the day, or `other` past the day's caps: `domain::stats`); returns
    /// whether a name came past its cap.
    fn count(
        &mut self,
        ns: &str,
        session: &SessionState,
        changes: impl FnOnce(stats::Place<'_>) -> Vec<StatChange>,
    ) -> bool {
        let names = self.stats_names;
        let fields = self.stats.entry(stats::start_day(session)).or_default();
        let mut other = false;
        let mut admit = |dimension: char, name: &Option<String>, cap: usize| {
            let Some(name) = name.as_deref() else {
                return String::new();
            };
            let (marker, count) = stats::name_fields(ns, dimension, name);
            if let Some(ordinal) = fields.get(&marker) {
                return ordinal.to_string();
            }
            let admitted = fields.entry(count).or_default();
            if *admitted >= cap as i64 {
                other = true;
                return stats::OTHER_ORDINAL.to_owned();
            }
            *admitted += 1;
            let ordinal = *admitted;
            fields.insert(marker, ordinal);
            ordinal.to_string()
        };
        let counted = stats::Counted {
            release: admit('r', &session.attributes.release, names.releases),
            environment: admit('e', &session.attributes.environment, names.environments),
        };
        self.apply(changes(stats::Place {
            namespace: ns,
            names: &counted,
        }));
        other
    }

    fn apply(&mut self, changes: Vec<StatChange>) {
        for change in changes {
            match change {
                StatChange::Add { day, field, by } => {
                    *self.stats.entry(day).or_default().entry(field).or_default() += by;
                }
                StatChange::Mark { day, field } => {
                    self.stats.entry(day).or_default().insert(field, 1);
                }
            }
        }
    }

    /// A lifecycle event, and the stats it moves; `before` is the status an `amended` event
    /// moved from. Returns whether a `started` session counts as `other` (see `count`).
    fn record_event(
        &mut self,
        ns: &str,
        kind: EventKind,
        session: &SessionState,
        ended_at: Option<i64>,
        before: Status,
        now: i64,
    ) -> bool {
        self.events
            .push(Event::new(kind, ns, session, ended_at), now);
        let other = self.count(ns, session, |at| match kind {
            EventKind::Started => stats::on_started(at, session),
            EventKind::Ended => stats::on_finalized(at, session),
            EventKind::Amended => stats::on_amended(at, before, session),
        });
        kind == EventKind::Started && other
    }

    /// Drops the stats of days past retention.
    fn purge_stats(&mut self, now: i64, stats_retention: i64) {
        let day_ms = 24 * stats::HOUR_MS;
        self.stats
            .retain(|day, _| (day + 1) * day_ms + stats_retention > now);
    }
}

pub struct MemoryStore {
    keyspace: Mutex<Keyspace>,
    clock: Arc<dyn Clock>,
    ids: Arc<dyn IdSource>,
    retention: Retention,
}

impl MemoryStore {
    pub fn new(clock: Arc<dyn Clock>, ids: Arc<dyn IdSource>, retention: Retention) -> Self {
        Self {
            keyspace: Mutex::new(Keyspace::new(retention.events, retention.stats_names)),
            clock,
            ids,
            retention,
        }
    }

    /// parking_lot's lock spins briefly before parking, which spares the short critical
    /// sections here a futex round trip under contention; it has no poisoning, and needs
    /// none: each decision mutates only after it is made.
    fn lock(&self) -> MutexGuard<'_, Keyspace> {
        self.keyspace.lock()
    }

    /// Removes expired records; the janitor task calls this so memory follows retention.
    pub fn purge_expired(&self, limit: usize) -> usize {
        let now = self.clock.now_ms();
        let mut ks = self.lock();
        ks.purge_stats(now, self.retention.stats_ms());
        ks.purge(now, limit)
    }

    /// How many session ids are retained (live or readable by id).
    pub fn retained_sessions(&self) -> usize {
        self.lock().ids.len()
    }

    /// A fresh session id, drawn again should it be one a retained session has.
    fn fresh_id(&self, retained: &FastMap<SessionId, Tag>) -> SessionId {
        loop {
            let candidate = self.ids.session_id();
            if !retained.contains_key(&candidate) {
                return candidate;
            }
            let request_id = crate::telemetry::request_id();
            tracing::warn!(
                request_id,
                "session id collision among retained sessions; drawing again"
            );
        }
    }

    /// Decides the call's transition (`domain::transition`) on the client's records, changed
    /// in place, and carries out its effects.
    fn execute_locked(&self, ks: &mut Keyspace, cmd: &Command) -> Outcome {
        let store_now = self.clock.now_ms();
        ks.purge(store_now, PURGE_PER_CALL);
        let tag = (cmd.namespace.clone(), cmd.client.clone());
        let call = Call {
            op: &cmd.op,
            policy: &cmd.policy,
            attributes: &cmd.attributes,
            retention: &self.retention,
        };
        let t = {
            let Keyspace {
                clients,
                archives,
                ids,
                expiries,
                ..
            } = &mut *ks;
            let mut record = clients.get_mut(&tag).filter(|r| r.expires_at > store_now);
            let named = cmd.op.names().and_then(|id| {
                let archive = archives
                    .get_mut(&tag)
                    .filter(|a| a.expires_at > store_now)?;
                archive.value.iter_mut().find(|s| s.id == *id)
            });
            let current = record.as_mut().map(|r| &mut r.value);
            let t = transition(current, named, &call, || self.fresh_id(ids), store_now);
            // The records changed in place: only the current one's expiry is left to set.
            if let Some(record) = record {
                for effect in &t.effects {
                    if let Effect::Save { expires_at } = effect {
                        set_client_expiry(expiries, &tag, record, *expires_at);
                    }
                }
            }
            t
        };
        let ns = cmd.namespace.as_str();
        let mut counted_as_other = false;
        for effect in t.effects {
            match effect {
                Effect::Save { .. } | Effect::SaveNamed => {}
                Effect::Archive(done) => ks.archive(&tag, done, t.now, self.retention.session_ms()),
                Effect::Start {
                    session,
                    expires_at,
                } => ks.save_current(&tag, session, expires_at),
                Effect::Event {
                    kind,
                    session,
                    ended_at,
                    before,
                } => {
                    counted_as_other |= ks.record_event(ns, kind, &session, ended_at, before, t.now)
                }
                Effect::UserMarks(session) => {
                    ks.count(ns, &session, |at| stats::user_marks(at, &session));
                }
                Effect::Wake(at) => ks.due.set_earlier(&tag, at),
            }
        }
        match t.answer {
            Answer::Session {
                session,
                created,
                finalized,
            } => Outcome::Session {
                session,
                created,
                now: t.now,
                finalized,
                counted_as_other,
            },
            Answer::NoLiveSession => Outcome::NoLiveSession,
            Answer::UnknownSession => Outcome::UnknownSession,
        }
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn execute(&self, command: &Command) -> Result<Outcome, StoreError> {
        let mut ks = self.lock();
        Ok(self.execute_locked(&mut ks, command))
    }

    async fn execute_batch(&self, commands: &[Command]) -> Vec<Result<Outcome, StoreError>> {
        let mut ks = self.lock();
        commands
            .iter()
            .map(|c| Ok(self.execute_locked(&mut ks, c)))
            .collect()
    }

    async fn find(&self, id: &SessionId) -> Result<Option<Found>, StoreError> {
        let now = self.clock.now_ms();
        let mut ks = self.lock();
        ks.purge(now, PURGE_PER_CALL);
        let Some(tag) = ks.ids.get(id).cloned() else {
            return Ok(None);
        };
        let session = match ks.current(&tag, now).filter(|s| s.id == *id) {
            Some(s) => Some(s.clone()),
            None => ks
                .archived_mut(&tag, id, now, self.retention.session_ms())
                .map(|s| s.clone()),
        };
        Ok(session.map(|session| Found {
            namespace: tag.0,
            session,
            now,
        }))
    }

    async fn owner(&self, id: &SessionId) -> Result<Option<(Namespace, ClientHash)>, StoreError> {
        Ok(self.lock().ids.get(id).cloned())
    }

    async fn sweep(&self, policies: &Policies) -> Result<Swept, StoreError> {
        let now = self.clock.now_ms();
        let mut ks = self.lock();
        let due = ks.due.take_due(now, SWEEP_LIMIT);
        let more = due.len() == SWEEP_LIMIT;
        let mut finalized_now = Finalized::default();
        for tag in due {
            let policy: Policy = policy_of(policies, tag.0.as_str());
            let stored = ks
                .clients
                .get(&tag)
                .filter(|r| r.expires_at > now)
                .map(|r| (r.value.clone(), r.expires_at));
            match (sweep(stored.as_ref().map(|(s, _)| s), &policy, now), stored) {
                (Sweep::Recheck(at), _) => ks.due.set(&tag, at),
                (Sweep::Finalize, Some((mut s, expires_at))) => {
                    finalize(&mut s);
                    let ended = Some(ended_at(&s, &policy, now));
                    ks.record_event(tag.0.as_str(), EventKind::Ended, &s, ended, s.status, now);
                    finalized_now.count(s.status);
                    ks.save_current(&tag, s, expires_at);
                }
                (Sweep::Drop | Sweep::Finalize, _) => {}
            }
        }
        Ok(Swept {
            finalized: finalized_now,
            more,
        })
    }

    async fn events(&self, after: Option<EventId>, limit: usize) -> Result<Vec<Event>, StoreError> {
        Ok(self.lock().events.after(after, limit))
    }

    async fn stats(&self, query: &StatsQuery) -> Result<StatsSummary, StoreError> {
        let ks = self.lock();
        let days = query.days().filter_map(|day| ks.stats.get(&day));
        Ok(stats::aggregate(
            query,
            days.map(|fields| fields.iter().map(|(f, n)| (f.as_str(), *n))),
        ))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::{Attributes, ClientHash, ManualClock, Op, OsRandom, Policy};
    use crate::store::Command;

    const HOUR: i64 = 3_600_000;

    fn store(clock: Arc<ManualClock>) -> MemoryStore {
        let retention = Retention {
            client: Duration::from_secs(48 * 3600),
            session: Duration::from_secs(24 * 3600),
            ..Retention::default()
        };
        MemoryStore::new(clock, Arc::new(OsRandom), retention)
    }

    fn tick(client: &str) -> Command {
        let secret = secrecy::SecretString::from("0123456789abcdef");
        let key = crate::domain::ClientKey::parse(client, 1).unwrap();
        let client: ClientHash = crate::domain::ClientHasher::new(&secret).hash(&key);
        Command {
            namespace: Namespace::parse("default").unwrap(),
            client,
            policy: Policy::default(),
            op: Op::Tick,
            attributes: Attributes::default(),
        }
    }

    fn session(outcome: Outcome) -> SessionState {
        match outcome {
            Outcome::Session { session, .. } => session,
            other => panic!("expected a session, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn earlier_sessions_are_forgotten_after_session_retention() {
        let clock = Arc::new(ManualClock::starting_at(1_000 * HOUR));
        let store = store(clock.clone());
        let first = session(store.execute(&tick("a")).await.unwrap());
        clock.advance(HOUR);
        let second = session(store.execute(&tick("a")).await.unwrap());
        assert_eq!(second.index, 2);
        assert_eq!(store.retained_sessions(), 2);
        // The first session ended at its idle deadline; a day after that it is gone.
        clock.advance(24 * HOUR);
        store.purge_expired(usize::MAX);
        assert!(store.find(&first.id).await.unwrap().is_none());
        assert!(
            store.find(&second.id).await.unwrap().is_some(),
            "the client's current session stays"
        );
        assert_eq!(store.retained_sessions(), 1);
    }

    #[tokio::test]
    async fn a_client_is_forgotten_after_client_retention_and_starts_again_at_index_1() {
        let clock = Arc::new(ManualClock::starting_at(1_000 * HOUR));
        let store = store(clock.clone());
        let first = session(store.execute(&tick("b")).await.unwrap());
        clock.advance(47 * HOUR);
        store.purge_expired(usize::MAX);
        assert_eq!(
            store.retained_sessions(),
            1,
            "within client retention the record stays"
        );
        clock.advance(2 * HOUR);
        store.purge_expired(usize::MAX);
        assert_eq!(store.retained_sessions(), 0, "memory follows retention");
        let again = session(store.execute(&tick("b")).await.unwrap());
        assert_eq!(again.index, 1);
        assert_ne!(again.id, first.id);
        assert_eq!(again.reason, crate::domain::Reason::NewClient);
    }

    #[tokio::test]
    async fn activity_keeps_a_client_past_its_first_expiry() {
        let clock = Arc::new(ManualClock::starting_at(1_000 * HOUR));
        let store = store(clock.clone());
        let first = session(store.execute(&tick("c")).await.unwrap());
        clock.advance(20 * 60_000);
        store.execute(&tick("c")).await.unwrap();
        // Past the expiry the first call gave the record, within the one the tick gave it.
        clock.advance(48 * HOUR - 10 * 60_000);
        store.purge_expired(usize::MAX);
        assert_eq!(store.retained_sessions(), 1, "the tick extended the record");
        let later = session(store.execute(&tick("c")).await.unwrap());
        assert_eq!(
            later.index, 2,
            "the client is remembered, its session idled out"
        );
        assert_eq!(later.previous.as_ref(), Some(&first.id));
        clock.advance(49 * HOUR);
        store.purge_expired(usize::MAX);
        assert_eq!(
            store.retained_sessions(),
            0,
            "memory still follows retention"
        );
    }
}
