//! The decision scripts' arguments and replies: one packed format for every call, whether it
//! goes alone, in a batch, or to the hot script, and the readers of what the scripts answer.
//!
//! A decision call's ARGV (read by calls.lua, and by tick.lua for its one call):
//! - `ARGV[1]` what the calls share: client retention, session retention, the pointer slack,
//!   stats retention and about how many events a bucket's stream keeps, six bytes each,
//!   big-endian (struct `>I6I6I6I6I6`);
//! - `ARGV[2]` the calls' policies, 14 bytes each (`>I6I6BB`): idle timeout, max duration (0
//!   for none), mode (1 inactivity, 0 background), on user change (1 restart, 0 keep);
//! - then per call its spec: one byte for the op (its name's first byte, `OPS`), one for its
//!   policy's number (from 0), `+` when eleven more arguments follow (else `.`), then the
//!   client's field (`NS:HASH`). The eleven are user id, create (`1` or `0`), end status, the
//!   named session id, release, environment, platform, report errors, report crashed (`1` or
//!   `0`), the report id's digest and the candidate session id; absent ones are `''`. Without
//!   them every one is at its default, as a plain tick has them (calls.lua's `DEFAULTS`).
//!
//! The sweep takes the same first two arguments, for every namespace's policy.

use redis::Value;
use serde::Deserialize;
use serde::de::IntoDeserializer;

use super::super::{Command, StoreError};
use super::keys::record_location;
use super::record;
use crate::domain::{
    Attributes, EndStatus, Event, EventId, EventKind, Mode, OnUserChange, Op, Policy,
    RecentReports, Retention, SessionId, SessionState, Status,
};

/// The calls' names; a call's spec opens with its name's first byte (calls.lua's `OPS`,
/// generated from this by `lua_ops`).
const OPS: [&str; 6] = [
    "current",
    "tick",
    "foreground",
    "background",
    "end",
    "report",
];

fn op_name(op: &Op) -> &'static str {
    OPS[match op {
        Op::Current { .. } => 0,
        Op::Tick => 1,
        Op::Foreground => 2,
        Op::Background => 3,
        Op::End { .. } => 4,
        Op::Report { .. } => 5,
    }]
}

/// calls.lua's OPS: each call's first byte to its name; and the two bytes the hot script
/// takes (`OP_CURRENT`, `OP_TICK`), which it compares without a table.
pub(super) fn lua_ops() -> String {
    let entries: Vec<String> = OPS
        .iter()
        .map(|name| format!("[{}] = '{name}'", name.as_bytes()[0]))
        .collect();
    format!("local OPS = {{{}}}\n", entries.join(", "))
}

/// The hot script's op bytes (tick.lua).
pub(super) fn lua_hot_ops() -> String {
    format!(
        "local OP_CURRENT, OP_TICK = {}, {}\n",
        OPS[0].as_bytes()[0],
        OPS[1].as_bytes()[0]
    )
}

/// Six bytes hold 8,900 years of milliseconds; the configuration stays far below.
fn push_ms(out: &mut Vec<u8>, ms: i64) {
    out.extend_from_slice(&ms.clamp(0, (1 << 48) - 1).to_be_bytes()[2..]);
}

/// `ARGV[1]`: what every call of a store shares.
pub(super) fn shared(retention: &Retention, pointer_slack_ms: i64, events_max: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(30);
    for ms in [
        retention.client_ms(),
        retention.session_ms(),
        pointer_slack_ms,
        retention.stats_ms(),
        i64::try_from(events_max).unwrap_or(i64::MAX),
    ] {
        push_ms(&mut out, ms);
    }
    out
}

/// `ARGV[2]`: the policies, in the order the calls number them.
pub(super) fn policies<'a>(policies: impl IntoIterator<Item = &'a Policy>) -> Vec<u8> {
    let mut out = Vec::new();
    for policy in policies {
        push_ms(&mut out, policy.idle_timeout_ms);
        push_ms(&mut out, policy.max_duration_ms.unwrap_or(0));
        out.push(u8::from(policy.mode == Mode::Inactivity));
        out.push(u8::from(policy.on_user_change == OnUserChange::Restart));
    }
    out
}

/// How many calls one script decides at most, so a call's policy number fits its byte.
pub(super) const MAX_CALLS: usize = 256;

/// Adds calls (each with the session id reserved for it, if any) to a decision script's call,
/// after its shared argument: each call's records hash as a key, the policies, then each
/// call's spec and own arguments.
pub(super) fn add_calls(
    invocation: &mut redis::ScriptInvocation<'_>,
    prefix: &str,
    calls: &[(&Command, Option<&SessionId>)],
) {
    assert!(
        calls.len() <= MAX_CALLS,
        "a script decides at most MAX_CALLS calls"
    );
    let mut distinct: Vec<&Policy> = Vec::new();
    let numbers: Vec<u8> = calls
        .iter()
        .map(|(cmd, _)| {
            let known = distinct.iter().position(|p| **p == cmd.policy);
            let number = known.unwrap_or_else(|| {
                distinct.push(&cmd.policy);
                distinct.len() - 1
            });
            number as u8
        })
        .collect();
    invocation.arg(policies(distinct));
    for ((cmd, candidate), number) in calls.iter().zip(numbers) {
        let attributes = &cmd.attributes;
        let create = match cmd.op {
            Op::Current { create } => create,
            Op::End { .. } | Op::Report { .. } => false,
            Op::Tick | Op::Foreground | Op::Background => true,
        };
        let defaults = create && candidate.is_none() && *attributes == Attributes::default();
        let (records, member) = record_location(prefix, &cmd.namespace, &cmd.client);
        invocation.key(records);
        let mut spec = Vec::with_capacity(3 + member.len());
        spec.extend_from_slice(&[
            op_name(&cmd.op).as_bytes()[0],
            number,
            if defaults { b'.' } else { b'+' },
        ]);
        spec.extend_from_slice(member.as_bytes());
        invocation.arg(spec);
        if defaults {
            continue;
        }
        let report = match &cmd.op {
            Op::Report { report, .. } => Some(report),
            _ => None,
        };
        let end_status = match cmd.op {
            Op::End { status, .. } => end_status_name(status),
            _ => "",
        };
        invocation
            .arg(attributes.user_id.as_deref().unwrap_or_default())
            .arg(if create { "1" } else { "0" })
            .arg(end_status)
            .arg(cmd.op.names().map_or("", SessionId::as_str))
            .arg(attributes.release.as_deref().unwrap_or_default())
            .arg(attributes.environment.as_deref().unwrap_or_default())
            .arg(attributes.platform.as_deref().unwrap_or_default())
            .arg(report.map_or(0, |r| r.errors()))
            .arg(if report.is_some_and(|r| r.crashed()) {
                "1"
            } else {
                "0"
            })
            .arg(
                report
                    .and_then(|r| r.id())
                    .map_or(&[][..], |id| &id.as_bytes()[..]),
            )
            .arg(candidate.map_or("", |id| id.as_str()));
    }
}

fn end_status_name(status: EndStatus) -> &'static str {
    match status {
        EndStatus::Exited => "exited",
        EndStatus::Crashed => "crashed",
        EndStatus::Abnormal => "abnormal",
    }
}

/// A script's answer before it is read into an [`Outcome`].
pub(super) enum Reply {
    Session {
        record: Vec<u8>,
        now: i64,
        extend_pointer_to: i64,
        /// The final status of the session the call finalized, if any.
        finalized: Option<Status>,
        /// The session the call started counts as `other` in stats.
        counted_as_other: bool,
    },
    NeedId,
    /// A batch call held back behind an earlier call of its client that needs an id.
    Skipped,
    /// The hot script (tick.lua) left the call to the full one.
    Slow,
    /// The hot script found no record of the client: a call that may start a session
    /// reserves an id before the full call.
    NoRecord,
    NoLive,
    Unknown,
}

fn parse_full_reply(value: Value) -> Result<Reply, StoreError> {
    let (kind, now, record, pointer, finalized, other): (
        String,
        i64,
        Vec<u8>,
        i64,
        String,
        String,
    ) = redis::from_redis_value(value)
        .map_err(|e| StoreError::Corrupt(format!("script reply: {e}")))?;
    Ok(match kind.as_str() {
        "s" => Reply::Session {
            record,
            now,
            extend_pointer_to: pointer,
            finalized: match finalized.as_str() {
                "" => None,
                status => Some(Status::deserialize(status.into_deserializer()).map_err(
                    |e: serde::de::value::Error| StoreError::Corrupt(format!("final status: {e}")),
                )?),
            },
            counted_as_other: other == "1",
        },
        "need" => Reply::NeedId,
        "skip" => Reply::Skipped,
        "slow" => Reply::Slow,
        "none" => Reply::NoRecord,
        "nolive" => Reply::NoLive,
        "unknown" => Reply::Unknown,
        other => return Err(StoreError::Corrupt(format!("script reply kind {other}"))),
    })
}

/// Reads tick.lua's reply: `{now, record}`, or `none` or `slow`.
pub(super) fn parse_hot_reply(value: Value) -> Result<Reply, StoreError> {
    match value {
        Value::Array(parts) => match <[Value; 2]>::try_from(parts) {
            Ok([Value::Int(now), Value::BulkString(record)]) => Ok(Reply::Session {
                record,
                now,
                extend_pointer_to: 0,
                finalized: None,
                counted_as_other: false,
            }),
            _ => Err(StoreError::Corrupt(
                "hot script reply: not {now, record}".into(),
            )),
        },
        Value::BulkString(kind) if kind == b"none" => Ok(Reply::NoRecord),
        Value::BulkString(kind) if kind == b"slow" => Ok(Reply::Slow),
        other => Err(StoreError::Corrupt(format!("hot script reply: {other:?}"))),
    }
}

/// Reads the decision script's reply (calls.lua): its clock, then per call a
/// session record the hot path decided on that clock, or a full reply.
pub(super) fn parse_replies(value: Value) -> Result<Vec<Result<Reply, StoreError>>, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("decision script reply: {what}"));
    let Value::Array(values) = value else {
        return Err(corrupt("not an array"));
    };
    let mut values = values.into_iter();
    let Some(Value::Int(now)) = values.next() else {
        return Err(corrupt("no clock"));
    };
    Ok(values
        .map(|value| match value {
            Value::BulkString(record) => Ok(Reply::Session {
                record,
                now,
                extend_pointer_to: 0,
                finalized: None,
                counted_as_other: false,
            }),
            other => parse_full_reply(other),
        })
        .collect())
}

pub(super) fn parse_session(raw: &[u8]) -> Result<SessionState, StoreError> {
    record::parse(raw).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Reads one stream entry written by `lib.lua`'s `event`.
pub(super) fn parse_event(shard: u16, id: &str, fields: Vec<String>) -> Result<Event, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("event {id}: {what}"));
    let (ms, seq) = id
        .split_once('-')
        .and_then(|(ms, seq)| Some((ms.parse().ok()?, seq.parse().ok()?)))
        .ok_or_else(|| corrupt("id"))?;
    let mut map = std::collections::HashMap::new();
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        map.insert(name, value);
    }
    let text = |name: &str| map.get(name).cloned();
    let number = |name: &str| -> Result<Option<i64>, StoreError> {
        map.get(name)
            .map(|v| v.parse().map_err(|_| corrupt(name)))
            .transpose()
    };
    let word = |name: &str| {
        map.get(name)
            .map(String::as_str)
            .ok_or_else(|| corrupt(name))
    };
    fn named<'de, T: Deserialize<'de>>(raw: &'de str) -> Option<T> {
        T::deserialize(IntoDeserializer::<serde::de::value::Error>::into_deserializer(raw)).ok()
    }
    let required = |name: &str| number(name)?.ok_or_else(|| corrupt(name));
    let kind: EventKind = named(word("type")?).ok_or_else(|| corrupt("type"))?;
    let session = SessionState {
        id: SessionId::parse(word("session_id")?).map_err(|_| corrupt("session_id"))?,
        index: u64::try_from(required("index")?).map_err(|_| corrupt("index"))?,
        previous: text("previous_session_id").and_then(|p| SessionId::parse(&p).ok()),
        started_at: required("started_at")?,
        last_activity_at: required("last_activity_at")?,
        background_since: None,
        ended_at: None,
        status: named(word("status")?).ok_or_else(|| corrupt("status"))?,
        errors: u64::try_from(required("errors")?).map_err(|_| corrupt("errors"))?,
        finalized: kind != EventKind::Started,
        reason: named(word("reason")?).ok_or_else(|| corrupt("reason"))?,
        attributes: Attributes {
            release: text("release"),
            environment: text("environment"),
            platform: text("platform"),
            user_id: text("user_id"),
        },
        reports: RecentReports::default(),
    };
    Ok(Event {
        id: EventId { ms, seq, shard },
        kind,
        namespace: word("namespace")?.to_owned(),
        ended_at: number("ended_at")?,
        session,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_call_is_told_by_its_first_byte() {
        let firsts: HashSet<u8> = OPS.iter().map(|name| name.as_bytes()[0]).collect();
        assert_eq!(firsts.len(), OPS.len());
        assert_eq!(
            lua_ops(),
            "local OPS = {[99] = 'current', [116] = 'tick', [102] = 'foreground', \
             [98] = 'background', [101] = 'end', [114] = 'report'}\n"
        );
        assert_eq!(lua_hot_ops(), "local OP_CURRENT, OP_TICK = 99, 116\n");
    }

    /// The layouts calls.lua unpacks with `>I6I6I6I6I6` and `>I6I6BB`.
    #[test]
    fn numbers_are_packed_in_six_bytes_each() {
        let retention = Retention {
            client: Duration::from_millis(0x0102_0304_0506),
            session: Duration::from_millis(86_400_000),
            ..Retention::default()
        };
        let shared = shared(&retention, 7, 9);
        assert_eq!(shared.len(), 30);
        assert_eq!(shared[..6], [1, 2, 3, 4, 5, 6]);
        assert_eq!(shared[6..12], 86_400_000u64.to_be_bytes()[2..]);
        assert_eq!(shared[12..18], 7u64.to_be_bytes()[2..]);
        assert_eq!(shared[24..], 9u64.to_be_bytes()[2..]);
        let web = Policy {
            idle_timeout_ms: 1_800_000,
            max_duration_ms: None,
            mode: Mode::Inactivity,
            on_user_change: OnUserChange::Keep,
        };
        let app = Policy {
            max_duration_ms: Some(5),
            mode: Mode::Background,
            on_user_change: OnUserChange::Restart,
            ..web
        };
        let packed = policies([&web, &app]);
        assert_eq!(packed.len(), 28);
        assert_eq!(packed[..6], 1_800_000u64.to_be_bytes()[2..]);
        assert_eq!(
            (&packed[6..12], packed[12], packed[13]),
            (&[0u8; 6][..], 1, 0)
        );
        assert_eq!(
            (packed[14 + 11], packed[14 + 12], packed[14 + 13]),
            (5, 0, 1)
        );
    }
}
