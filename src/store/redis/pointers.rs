//! Session id pointers (pointer.lua): reserving a fresh id, which keeps ids unique among
//! retained sessions, extending and releasing it, and reading which client an id belongs to.

use redis::AsyncCommands;

use super::keys::{client_field, pointer_location};
use super::{POINTER_SLACK_MS, RedisStore};
use crate::domain::decision::untouched_lifetime;
use crate::domain::{ClientHash, Namespace, SessionId};
use crate::store::{Command, StoreError};
use crate::telemetry;

/// A session id's pointer, as pointer.lua keeps it: `EXPIRES_AT_MS:NS:HASH`.
pub(super) struct Pointer {
    pub expires_at_ms: i64,
    pub namespace: Namespace,
    pub client: ClientHash,
}

impl Pointer {
    fn parse(value: &str) -> Option<Self> {
        let (expires, owner) = value.split_once(':')?;
        let (namespace, hash) = owner.split_once(':')?;
        Some(Self {
            expires_at_ms: expires.parse().ok()?,
            namespace: Namespace::parse(namespace).ok()?,
            client: ClientHash::parse_stored(hash)?,
        })
    }
}

impl RedisStore {
    /// A call of pointer.lua on a session id's pointer, with its first time argument.
    fn pointer(&self, op: &str, id: &SessionId, ms: i64) -> redis::ScriptInvocation<'_> {
        let (key, field) = pointer_location(&self.prefix, id);
        let mut call = self.scripts.pointer.key(key);
        call.arg(field).arg(op).arg(ms);
        call
    }

    /// The client a session id's pointer names, and when the pointer expires.
    pub(super) async fn read_pointer(&self, id: &SessionId) -> Result<Option<Pointer>, StoreError> {
        let (key, field) = pointer_location(&self.prefix, id);
        let mut con = self.connection();
        let value: Option<String> = self.bounded(con.hget(key, field)).await?;
        value
            .map(|value| {
                Pointer::parse(&value)
                    .ok_or_else(|| StoreError::Corrupt(format!("pointer of {id} holds {value:?}")))
            })
            .transpose()
    }

    /// Reserves a fresh session id for a client: its pointer, set only if no retained
    /// session holds the id. A collision draws again.
    pub(super) async fn reserve_id(&self, cmd: &Command) -> Result<SessionId, StoreError> {
        let owner = client_field(&cmd.namespace, &cmd.client);
        // Long enough for the session's first stretch (with a minute to spare for the time
        // until the script runs); the script extends it from there.
        let ttl_ms = untouched_lifetime(&cmd.policy)
            + self.retention.session_ms()
            + POINTER_SLACK_MS
            + 60_000;
        loop {
            let candidate = self.ids.session_id();
            let mut con = self.connection();
            let mut call = self.pointer("reserve", &candidate, ttl_ms);
            call.arg(&owner);
            self.given_now(&mut call);
            let set: i64 = self.bounded(call.invoke_async(&mut con)).await?;
            if set == 1 {
                return Ok(candidate);
            }
            let request_id = telemetry::request_id();
            tracing::warn!(
                request_id,
                "session id collision among retained sessions; drawing again"
            );
        }
    }

    pub(super) async fn extend_pointer(&self, id: &SessionId, until_ms: i64) {
        let mut con = self.connection();
        let mut call = self.pointer("extend", id, until_ms);
        self.given_now(&mut call);
        if let Err(e) = self.bounded(call.invoke_async::<i64>(&mut con)).await {
            let request_id = telemetry::request_id();
            tracing::warn!(request_id, error = %e, "could not extend a session id pointer; lookups by id may end early");
        }
    }

    /// Drops the reservation of an id that lost a race to a concurrent call.
    pub(super) async fn release_id(&self, id: &SessionId) {
        let mut con = self.connection();
        let (key, field) = pointer_location(&self.prefix, id);
        if let Err(e) = self.bounded(con.hdel::<_, _, ()>(key, field)).await {
            let request_id = telemetry::request_id();
            tracing::warn!(request_id, error = %e, "could not release an unused session id; it expires on its own");
        }
    }
}
