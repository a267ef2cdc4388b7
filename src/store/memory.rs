//! The embedded store: sessions in this process's memory, with the same semantics as Redis
//! on one instance. Sessions live only as long as the process.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::{Command, Found, Outcome, Retention, SessionStore, StoreError};
use crate::domain::decision::{
    apply_update, effective_now, end, finalized, record_expires_at, started,
};
use crate::domain::{
    ClientHash, Clock, Decision, IdSource, Namespace, SessionId, SessionState, decide,
};

/// A client's place in the keyspace, as the Redis store's `{namespace:hash}` tag.
type Tag = (Namespace, ClientHash);

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

/// Records with expiries, like Redis keys with a TTL: a client's current session, and the
/// archive of its earlier sessions still retained. `ids` indexes every retained session id,
/// which is what makes ids unique among retained sessions.
#[derive(Default)]
struct Keyspace {
    clients: HashMap<Tag, Expiring<SessionState>>,
    archives: HashMap<Tag, Expiring<Vec<SessionState>>>,
    ids: HashMap<SessionId, Tag>,
    expiries: BTreeSet<(i64, Record)>,
}

/// Whether an archived (ended) session is still readable by id at `now`.
fn still_retained(session: &SessionState, now: i64, session_retention: i64) -> bool {
    session
        .ended_at
        .is_some_and(|ended| ended + session_retention > now)
}

/// How many expired records one call removes at most, so no call pays for a large backlog;
/// the janitor task removes the rest.
const PURGE_PER_CALL: usize = 32;

impl Keyspace {
    fn set_expiry(&mut self, record: Record, old: Option<i64>, new: i64) {
        if let Some(old) = old {
            self.expiries.remove(&(old, record.clone()));
        }
        self.expiries.insert((new, record));
    }

    /// Removes up to `limit` records whose expiry has passed; returns how many.
    fn purge(&mut self, now: i64, limit: usize) -> usize {
        let mut removed = 0;
        while removed < limit {
            let Some((at, record)) = self.expiries.first().cloned() else {
                break;
            };
            if at > now {
                break;
            }
            self.expiries.pop_first();
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

    fn archived(
        &self,
        tag: &Tag,
        id: &SessionId,
        now: i64,
        session_retention: i64,
    ) -> Option<&SessionState> {
        let archive = self.archives.get(tag).filter(|a| a.expires_at > now)?;
        archive
            .value
            .iter()
            .find(|s| s.id == *id && still_retained(s, now, session_retention))
    }

    /// Stores the client's current session with the expiry the Redis store gives it.
    fn save_current(&mut self, tag: &Tag, session: SessionState, expires_at: i64) {
        let old = self.clients.get(tag).map(|r| r.expires_at);
        self.ids.insert(session.id.clone(), tag.clone());
        self.set_expiry(Record::Client(tag.clone()), old, expires_at);
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
            keyspace: Mutex::new(Keyspace::default()),
            clock,
            ids,
            retention,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Keyspace> {
        // A panic while holding the lock cannot leave a half-applied decision behind (each
        // decision mutates only after it is made), so a poisoned lock is still consistent.
        self.keyspace.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes expired records; the janitor task calls this so memory follows retention.
    pub fn purge_expired(&self, limit: usize) -> usize {
        let now = self.clock.now_ms();
        self.lock().purge(now, limit)
    }

    /// How many session ids are retained (live or readable by id).
    pub fn retained_sessions(&self) -> usize {
        self.lock().ids.len()
    }

    fn execute_locked(&self, ks: &mut Keyspace, cmd: &Command) -> Outcome {
        let store_now = self.clock.now_ms();
        ks.purge(store_now, PURGE_PER_CALL);
        let tag = (cmd.namespace.clone(), cmd.client.clone());
        let stored = ks.current(&tag, store_now).cloned();
        let now = effective_now(stored.as_ref(), store_now);
        let user_id = cmd.attributes.user_id.as_deref();
        let (client_ms, session_ms) = (self.retention.client_ms(), self.retention.session_ms());
        let keep_until =
            |s: &SessionState| record_expires_at(s, &cmd.policy, client_ms, session_ms);
        let answer = |session: SessionState, created: bool| Outcome::Session {
            session,
            created,
            now,
        };
        match (
            decide(stored.as_ref(), &cmd.op, user_id, &cmd.policy, now),
            stored,
        ) {
            (Decision::NoLiveSession, _) => Outcome::NoLiveSession,
            (Decision::EndOther(id), _) => match ks.archived(&tag, &id, now, session_ms) {
                Some(s) => answer(s.clone(), false),
                None => Outcome::UnknownSession,
            },
            (Decision::Keep, Some(s)) => answer(s, false),
            (Decision::Update(update), Some(mut s)) => {
                if apply_update(&mut s, update, user_id, now) {
                    ks.save_current(&tag, s.clone(), keep_until(&s));
                }
                answer(s, false)
            }
            (Decision::End(status), Some(mut s)) => {
                end(&mut s, status, now);
                ks.save_current(&tag, s.clone(), keep_until(&s));
                answer(s, false)
            }
            (Decision::Start(reason), previous) => {
                let id = loop {
                    let candidate = self.ids.session_id();
                    if !ks.ids.contains_key(&candidate) {
                        break candidate;
                    }
                    tracing::warn!("session id collision among retained sessions; drawing again");
                };
                if let Some(prev) = &previous {
                    ks.archive(&tag, finalized(prev, &cmd.policy, now), now, session_ms);
                }
                let s = started(id, previous.as_ref(), reason, cmd.attributes.clone(), now);
                ks.save_current(&tag, s.clone(), keep_until(&s));
                answer(s, true)
            }
            // The table never keeps, updates or ends a session that is not there.
            (Decision::Keep | Decision::Update(_) | Decision::End(_), None) => {
                Outcome::NoLiveSession
            }
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
        let session = ks
            .current(&tag, now)
            .filter(|s| s.id == *id)
            .or_else(|| ks.archived(&tag, id, now, self.retention.session_ms()));
        Ok(session.map(|s| Found {
            namespace: tag.0.to_string(),
            session: s.clone(),
            now,
        }))
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
}
