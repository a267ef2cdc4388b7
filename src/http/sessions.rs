//! The session calls: current, tick, foreground, background, end, report, and batch.

use std::fmt::Write;
use std::net::IpAddr;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::body::{JsonBody, decode_operation, truncate};
use super::problem::{ApiError, Problem};
use super::source::source_address;
use super::views::{self, SessionBody, SessionRecord};
use super::{AppState, cors};
use crate::config::OnStoreError;
use crate::domain::decision::provisional;
use crate::domain::namespace::DEFAULT_NAMESPACE;
use crate::domain::{
    Attributes, ClientHash, ClientKey, EndStatus, Namespace, Op, Reason, Report, ReportId,
    SessionId,
};
use crate::limits::NewClientPlace;
use crate::store::{Command, Outcome, StoreError};

/// The calls that decide a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpName {
    Current,
    Tick,
    Foreground,
    Background,
    End,
    Report,
}

/// The body of a call, and of one batch operation (which also names its `op`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallBody {
    pub op: Option<OpName>,
    namespace: Option<String>,
    client: Option<String>,
    attributes: Option<AttributesBody>,
    create: Option<bool>,
    status: Option<EndStatus>,
    session_id: Option<String>,
    #[serde(default, deserialize_with = "whole_number")]
    errors: Option<u64>,
    crashed: Option<bool>,
    report_id: Option<String>,
}

/// A count, also written as a whole float (`3.0`), which JSON Schema's `integer` admits.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct Count;
    impl serde::de::Visitor<'_> for Count {
        type Value = Option<u64>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a whole number of errors")
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
            Ok(Some(n))
        }

        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
            u64::try_from(n)
                .map(Some)
                .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(n), &self))
        }

        fn visit_f64<E: serde::de::Error>(self, f: f64) -> Result<Self::Value, E> {
            // Exact below 2^53; a report's own limit is far below.
            if f.fract() == 0.0 && (0.0..9.0e15).contains(&f) {
                Ok(Some(f as u64))
            } else {
                Err(E::invalid_value(serde::de::Unexpected::Float(f), &self))
            }
        }
    }
    d.deserialize_any(Count)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttributesBody {
    release: Option<String>,
    environment: Option<String>,
    platform: Option<String>,
    user_id: Option<String>,
}

/// A call validated against the configuration, ready for the store.
struct ParsedCall {
    command: Command,
    minted: Option<ClientKey>,
    on_store_error: OnStoreError,
    /// A report by session id alone, with the admin token: the caller is not the session's
    /// owner, so it is not charged to the owner and sees none of its attributes.
    by_admin: bool,
    /// The call's place under its address's new-client cap, when its client may be new.
    place: Option<NewClientPlace>,
}

/// A call whose fields are all valid; its namespace and client are resolved next.
pub struct ValidCall {
    op: Op,
    attributes: Attributes,
    client: Option<ClientKey>,
    namespace: Option<String>,
}

/// Validates every field of a call, without the store. `prefix` names the place of the body
/// within the request (a batch operation's index).
pub fn validate_call(
    op: OpName,
    body: CallBody,
    min_client_length: usize,
    prefix: &str,
) -> Result<ValidCall, ApiError> {
    let field = |name: &str| format!("{prefix}{name}");
    let only = |present: bool, name: &str, calls: &str| {
        if present {
            Err(ApiError::invalid(
                field(name),
                format!("applies only to {calls}"),
            ))
        } else {
            Ok(())
        }
    };
    if op != OpName::Current {
        only(body.create.is_some(), "create", "current")?;
    }
    if op != OpName::End {
        only(body.status.is_some(), "status", "end")?;
    }
    if !matches!(op, OpName::End | OpName::Report) {
        only(body.session_id.is_some(), "session_id", "end and report")?;
    }
    if op == OpName::Report {
        only(
            body.attributes.is_some(),
            "attributes",
            "the session calls, not report",
        )?;
    } else {
        only(body.errors.is_some(), "errors", "report")?;
        only(body.crashed.is_some(), "crashed", "report")?;
        only(body.report_id.is_some(), "report_id", "report")?;
    }
    let session_id = body
        .session_id
        .map(|raw| SessionId::parse(&raw).map_err(|e| ApiError::invalid(field("session_id"), e)))
        .transpose()?;
    let attrs = body.attributes.unwrap_or_default();
    let attributes = Attributes::parse(
        attrs.release,
        attrs.environment,
        attrs.platform,
        attrs.user_id,
    )
    .map_err(|(name, e)| ApiError::invalid(field(&format!("attributes.{name}")), e))?;
    let client = body
        .client
        .map(|raw| {
            ClientKey::parse(&raw, min_client_length)
                .map_err(|e| ApiError::invalid(field("client"), e))
        })
        .transpose()?;
    let op = match op {
        OpName::Current => Op::Current {
            create: body.create.unwrap_or(true),
        },
        OpName::Tick => Op::Tick,
        OpName::Foreground => Op::Foreground,
        OpName::Background => Op::Background,
        OpName::End => Op::End {
            status: body.status.unwrap_or(EndStatus::Exited),
            session_id,
        },
        OpName::Report => {
            let errors = body.errors.unwrap_or(0);
            if errors > Report::MAX_ERRORS {
                return Err(ApiError::invalid(
                    field("errors"),
                    format!("is at most {} in one report", Report::MAX_ERRORS),
                ));
            }
            let id = body
                .report_id
                .map(|raw| {
                    ReportId::parse(&raw).map_err(|e| ApiError::invalid(field("report_id"), e))
                })
                .transpose()?;
            let report = Report::new(errors, body.crashed.unwrap_or(false), id)
                .map_err(|e| ApiError::invalid(field("errors"), e))?;
            if client.is_none() && session_id.is_none() {
                return Err(ApiError::invalid(
                    field("client"),
                    "a report names a client or a session_id",
                ));
            }
            Op::Report { report, session_id }
        }
    };
    Ok(ValidCall {
        op,
        attributes,
        client,
        namespace: body.namespace,
    })
}

impl AppState {
    /// Validates a call (every field, the namespace and the caller's origin) and resolves
    /// its client. A report that names a session but no client, with the admin token, is
    /// resolved to the session's owner in the store.
    async fn parse_call(
        &self,
        req: &HttpRequest,
        op: OpName,
        body: CallBody,
        prefix: &str,
    ) -> Result<ParsedCall, ApiError> {
        let ValidCall {
            op,
            attributes,
            client,
            namespace,
        } = validate_call(op, body, self.settings.min_client_length, prefix)?;
        let by_admin = client.is_none() && matches!(op, Op::Report { .. });
        let (namespace, client, minted) = match (client, &op) {
            (Some(key), _) => (namespace, self.hasher.hash(&key), None),
            (
                None,
                Op::Report {
                    session_id: Some(id),
                    ..
                },
            ) => {
                // Only the owner's key or the admin token may report on a session: anyone
                // else learns nothing, not even whether the id exists.
                if !super::admin::is_admin(req, self) {
                    return Err(ApiError::SessionNotFound(id.to_string()));
                }
                let (owner_namespace, hash) = self.owner(id).await?;
                if namespace
                    .as_deref()
                    .is_some_and(|n| n != owner_namespace.as_str())
                {
                    return Err(ApiError::SessionNotFound(id.to_string()));
                }
                (Some(owner_namespace.to_string()), hash, None)
            }
            (None, _) => {
                let key = self.ids.client_key();
                (namespace, self.hasher.hash(&key), Some(key))
            }
        };
        let raw_ns = namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        let (namespace, settings) = self
            .settings
            .namespaces
            .get_key_value(raw_ns)
            .ok_or_else(|| ApiError::UnknownNamespace(truncate(raw_ns, 64)))?;
        cors::check(req, settings)?;
        if let Some(name) = attributes.over_budget(settings.attribute_max_bytes) {
            return Err(ApiError::invalid(
                format!("{prefix}attributes.{name}"),
                format!(
                    "is longer than {} bytes of UTF-8 (the namespace's attribute_max_bytes)",
                    settings.attribute_max_bytes
                ),
            ));
        }
        Ok(ParsedCall {
            command: Command {
                namespace: namespace.clone(),
                client,
                policy: settings.policy,
                op,
                attributes,
            },
            minted,
            on_store_error: settings.on_store_error,
            by_admin,
            place: None,
        })
    }

    /// The namespace and client of a retained session id.
    async fn owner(&self, id: &SessionId) -> Result<(Namespace, ClientHash), ApiError> {
        let owner = self.store.owner(id).await;
        owner?.ok_or_else(|| ApiError::SessionNotFound(id.to_string()))
    }

    /// The provisional session (`domain::decision::provisional`) answered while the store is
    /// unreachable, marked so.
    fn provisional(&self, call: ParsedCall) -> SessionBody {
        let command = call.command;
        let now = self.clock.now_ms();
        let session = provisional(
            &self.hasher,
            &command.namespace,
            &command.client,
            &command.policy,
            command.attributes,
            now,
        );
        self.metrics.count_provisional(command.namespace.as_str());
        SessionBody {
            record: SessionRecord::at(command.namespace, session, &command.policy, now),
            created: true,
            client: call.minted,
            provisional: true,
        }
    }

    /// Admits a validated call past the client's rate limit and its address's new-client cap,
    /// taking its place under the cap.
    fn admit(&self, source: Option<IpAddr>, call: &mut ParsedCall) -> Result<(), ApiError> {
        // The owner's allowance is the owner's: an admin's report does not spend it.
        if call.by_admin {
            return Ok(());
        }
        let minted = call.minted.is_some();
        call.place = self
            .limiter
            .check_call(source, &call.command.client, minted, self.clock.now_ms())
            .map_err(|limited| self.refuse(limited))?;
        Ok(())
    }

    /// Turns a store's answer into the response body.
    fn answer(
        &self,
        call: ParsedCall,
        outcome: Result<Outcome, StoreError>,
    ) -> Result<SessionBody, ApiError> {
        if let Err(StoreError::Unavailable(_)) = &outcome
            && call.on_store_error == OnStoreError::Provisional
            && call.command.op.may_start()
        {
            return Ok(self.provisional(call));
        }
        match outcome? {
            Outcome::Session {
                mut session,
                created,
                now,
                finalized,
                counted_as_other,
            } => {
                if call.by_admin {
                    session.attributes = Attributes::default();
                }
                let namespace = call.command.namespace.as_str();
                if let Some(status) = finalized {
                    self.metrics.count_finalized(status, 1);
                }
                if created {
                    self.metrics.count_created(namespace, session.reason);
                }
                if counted_as_other {
                    self.metrics.count_stats_other(namespace);
                }
                if let Some(place) = call.place {
                    place.settle(created && session.reason == Reason::NewClient);
                }
                Ok(SessionBody {
                    record: SessionRecord::at(
                        call.command.namespace,
                        session,
                        &call.command.policy,
                        now,
                    ),
                    created,
                    client: call.minted,
                    provisional: false,
                })
            }
            Outcome::NoLiveSession => Err(ApiError::NoLiveSession),
            Outcome::UnknownSession => Err(ApiError::SessionNotFound(
                call.command
                    .op
                    .names()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            )),
        }
    }
}

/// `POST /v1/sessions/{op}`.
pub async fn call(
    op: OpName,
    req: HttpRequest,
    state: web::Data<AppState>,
    JsonBody(body): JsonBody<CallBody>,
) -> Result<HttpResponse, ApiError> {
    if body.op.is_some() {
        return Err(ApiError::invalid(
            "op",
            "names the call only in batch operations",
        ));
    }
    let source = source_address(&req, &state.settings.limits);
    (state.limiter.check_address(source, 1, state.clock.now_ms()))
        .map_err(|limited| state.refuse(limited))?;
    let mut parsed = state.parse_call(&req, op, body, "").await?;
    state.admit(source, &mut parsed)?;
    let outcome = state.store.execute(&parsed.command).await;
    let body = state.answer(parsed, outcome)?;
    views::json(&body, 512)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// Each operation's JSON text, decoded on its own so that one bad operation fails alone.
    pub operations: Vec<Box<RawValue>>,
}

/// Each batch result is a session or a problem.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum BatchResult {
    Session(Box<SessionBody>),
    Problem(Problem),
}

#[derive(Debug, Serialize)]
struct BatchResponse {
    results: Vec<BatchResult>,
}

/// `POST /v1/sessions/batch`: many calls for many clients, answered in order.
pub async fn batch(
    req: HttpRequest,
    state: web::Data<AppState>,
    JsonBody(body): JsonBody<BatchBody>,
) -> Result<HttpResponse, ApiError> {
    let max = state.settings.max_batch;
    if body.operations.len() > max {
        return Err(ApiError::invalid(
            "operations",
            format!("holds at most {max} operations"),
        ));
    }
    let source = source_address(&req, &state.settings.limits);
    (state
        .limiter
        .check_address(source, body.operations.len(), state.clock.now_ms()))
    .map_err(|limited| state.refuse(limited))?;
    let count = body.operations.len();
    let mut parsed: Vec<Result<ParsedCall, ApiError>> = Vec::with_capacity(count);
    // One buffer for every operation's place (`operations[3].`), written over each time.
    let mut prefix = String::new();
    for (i, value) in body.operations.iter().enumerate() {
        prefix.clear();
        let _ = write!(prefix, "operations[{i}].");
        let place = &prefix[..prefix.len() - 1];
        let call = match decode_operation::<CallBody>(value, place) {
            Ok(body) => match body.op {
                Some(op) => match state.parse_call(&req, op, body, &prefix).await {
                    Ok(mut call) => state.admit(source, &mut call).map(|()| call),
                    Err(e) => Err(e),
                },
                None => Err(ApiError::invalid(
                    format!("{prefix}op"),
                    "is required in a batch operation",
                )),
            },
            Err(e) => Err(e),
        };
        parsed.push(call);
    }
    // The commands move to the store call and back into their calls for the answers.
    let mut commands = Vec::with_capacity(count);
    let rest: Vec<_> = parsed
        .into_iter()
        .map(|p| {
            p.map(|call| {
                commands.push(call.command);
                (call.minted, call.on_store_error, call.by_admin, call.place)
            })
        })
        .collect();
    let mut outcomes = state.store.execute_batch(&commands).await.into_iter();
    let mut commands = commands.into_iter();
    let short =
        || StoreError::Failed("the store answered fewer operations than it was given".into());
    let results = rest
        .into_iter()
        .map(|p| {
            let answered = p.and_then(|(minted, on_store_error, by_admin, place)| {
                // Each call that parsed left its command, in order.
                let command = commands.next().ok_or_else(short)?;
                let outcome = outcomes.next().unwrap_or_else(|| Err(short()));
                let call = ParsedCall {
                    command,
                    minted,
                    on_store_error,
                    by_admin,
                    place,
                };
                state.answer(call, outcome)
            });
            match answered {
                Ok(session) => BatchResult::Session(Box::new(session)),
                Err(e) => BatchResult::Problem(e.problem()),
            }
        })
        .collect();
    views::json(&BatchResponse { results }, 512 * count)
}
