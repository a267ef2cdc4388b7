//! A model test of CONTRACT sections 3 to 5 and 8: a small pure model of the session
//! authority on a virtual clock, and proptest driving random sequences of calls, clients,
//! namespaces (with different policies), clock advances and sweeps through the in-memory
//! store, a real redis-server and a real Redis Cluster, every call alone and in batches,
//! checking every answer and, at the end, the lifecycle events against the model.
//!
//! Every store runs on a clock the test moves: the Redis store, given one, sends its time with
//! every script call in place of the Redis server's. Time moves in whole units and every
//! policy duration is a whole number of units, so calls land exactly on idle deadlines and max
//! durations, and an idle deadline can fall in the same instant as the max duration.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sessiond::domain::{
    Attributes, ClientHash, ClientHasher, ClientKey, Clock, EndStatus, EventKind, IdSource,
    ManualClock, Mode, Namespace, OnUserChange, Op, OsRandom, Policy, Report, ReportId, Retention,
    SessionId, Status, SystemClock,
};
use sessiond::http::views::SessionRecord;
use sessiond::store::redis::Target;
use sessiond::store::{
    Command, Durability, MemoryStore, Outcome, Policies, RedisOptions, RedisStore, SessionStore,
};

use crate::{redis_cluster, redis_server};

// ---------------------------------------------------------------- the generated calls

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ns {
    /// Inactivity mode, no maximum, a new user_id is ignored.
    Web,
    /// Background mode with a maximum duration, a new user_id restarts.
    App,
}

/// Which session an `end` or `report` names.
#[derive(Debug, Clone, Copy)]
enum Named {
    None,
    Current,
    /// The client's k-th earlier session (modulo how many it has).
    Earlier(usize),
    Unknown,
}

#[derive(Debug, Clone)]
enum Call {
    Current {
        create: bool,
    },
    Tick,
    Foreground,
    Background,
    End {
        status: EndStatus,
        named: Named,
    },
    Report {
        errors: u64,
        crashed: bool,
        named: Named,
        /// Its `report_id`, from a small pool so that retries happen, and a session can be
        /// sent more distinct ones than it remembers.
        id: Option<u8>,
    },
}

#[derive(Debug, Clone)]
enum Step {
    Call {
        ns: Ns,
        client: usize,
        call: Call,
        release: Option<&'static str>,
        user: Option<&'static str>,
    },
    /// The clock moves on this many units.
    Advance(u8),
    /// The store's clock steps back this many units (never before the run's start), as a
    /// Redis clock may after a failover: decisions stay on the latest time each session saw.
    Back(u8),
    /// The sweeper runs once.
    Sweep,
}

fn named() -> impl Strategy<Value = Named> {
    prop_oneof![
        3 => Just(Named::None),
        2 => Just(Named::Current),
        2 => (0usize..4).prop_map(Named::Earlier),
        1 => Just(Named::Unknown),
    ]
}

fn call() -> impl Strategy<Value = Call> {
    let end_status = prop_oneof![
        Just(EndStatus::Exited),
        Just(EndStatus::Crashed),
        Just(EndStatus::Abnormal)
    ];
    prop_oneof![
        3 => any::<bool>().prop_map(|create| Call::Current { create }),
        5 => Just(Call::Tick),
        2 => Just(Call::Foreground),
        2 => Just(Call::Background),
        2 => (end_status, named()).prop_map(|(status, named)| Call::End { status, named }),
        2 => (0u64..3, any::<bool>(), named(), proptest::option::of(0u8..10))
            .prop_filter("a report carries something", |(e, c, _, _)| *e > 0 || *c)
            .prop_map(|(errors, crashed, named, id)| Call::Report { errors, crashed, named, id }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let ns = prop_oneof![Just(Ns::Web), Just(Ns::App)];
    let release = prop_oneof![Just(None), Just(Some("1.0")), Just(Some("2.0"))];
    let user = prop_oneof![2 => Just(None), 1 => Just(Some("u-1")), 1 => Just(Some("u-2"))];
    prop_oneof![
        12 => (ns, 0usize..2, call(), release, user).prop_map(|(ns, client, call, release, user)| {
            Step::Call { ns, client, call, release, user }
        }),
        3 => (1u8..=4).prop_map(Step::Advance),
        1 => (1u8..=2).prop_map(Step::Back),
        1 => Just(Step::Sweep),
    ]
}

// ---------------------------------------------------------------- the model

/// Time unit of the model.
const UNIT_MS: i64 = 300;

fn policy(ns: Ns) -> Policy {
    match ns {
        Ns::Web => Policy {
            idle_timeout_ms: 2 * UNIT_MS,
            max_duration_ms: None,
            mode: Mode::Inactivity,
            on_user_change: OnUserChange::Keep,
        },
        Ns::App => Policy {
            idle_timeout_ms: UNIT_MS,
            max_duration_ms: Some(6 * UNIT_MS),
            mode: Mode::Background,
            on_user_change: OnUserChange::Restart,
        },
    }
}

fn ns_name(ns: Ns) -> &'static str {
    match ns {
        Ns::Web => "web",
        Ns::App => "app",
    }
}

/// Why a session started, written as answers write their `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum Why {
    NewClient,
    IdleTimeout,
    MaxDuration,
    Ended,
    UserChange,
}

/// One session as the contract describes it; `sym` numbers sessions in issue order.
#[derive(Debug, Clone)]
struct MSession {
    sym: usize,
    index: u64,
    prev: Option<usize>,
    started: i64,
    last: i64,
    background_since: Option<i64>,
    ended: Option<i64>,
    /// Health while live (ok, errored, crashed), the final status once finalized.
    status: Status,
    errors: u64,
    finalized: bool,
    why: Why,
    release: Option<&'static str>,
    user: Option<&'static str>,
    /// The report ids it remembers, oldest first (CONTRACT 8: the last 8).
    reports: Vec<u8>,
}

fn rank(s: Status) -> u8 {
    match s {
        Status::Ok | Status::Exited => 0,
        Status::Errored => 1,
        Status::Abnormal => 2,
        Status::Crashed => 3,
    }
}

/// Statuses move one way: the worse wins, and on a tie the later (ok then exited).
fn worse(a: Status, b: Status) -> Status {
    if rank(b) >= rank(a) { b } else { a }
}

impl MSession {
    /// When it stops being live and why (section 3): ended, idle (from the last activity, or
    /// in background mode from when it went to the background), or max duration.
    fn deadline(&self, p: &Policy) -> Option<(i64, Why)> {
        if let Some(at) = self.ended {
            return Some((at, Why::Ended));
        }
        let idle_from = match p.mode {
            Mode::Inactivity => Some(self.last),
            Mode::Background => self.background_since,
        };
        let idle = idle_from.map(|t| (t + p.idle_timeout_ms, Why::IdleTimeout));
        let max = p
            .max_duration_ms
            .map(|m| (self.started + m, Why::MaxDuration));
        match (idle, max) {
            (Some(i), Some(m)) => Some(if m.0 < i.0 { m } else { i }),
            (i, m) => i.or(m),
        }
    }

    /// The clock a decision on it uses: the store's, never before its last activity or its
    /// end.
    fn now(&self, store_now: i64) -> i64 {
        store_now.max(self.last).max(self.ended.unwrap_or(0))
    }

    fn over(&self, p: &Policy, now: i64) -> bool {
        self.deadline(p).is_some_and(|(at, _)| now >= at)
    }

    /// Finalizes it (once): the final status is its health, no better than `exited`.
    fn finalize(&mut self, events: &mut Vec<(usize, EventKind, Status)>) {
        if !self.finalized {
            self.finalized = true;
            self.status = worse(self.status, Status::Exited);
            events.push((self.sym, EventKind::Ended, self.status));
        }
    }

    /// Applies a report unless it remembers the report's id; returns whether its errors or
    /// status changed.
    fn report(&mut self, errors: u64, crashed: bool, id: Option<u8>) -> bool {
        if let Some(id) = id {
            if self.reports.contains(&id) {
                return false;
            }
            if self.reports.len() == 8 {
                self.reports.remove(0);
            }
            self.reports.push(id);
        }
        let before = (self.errors, self.status);
        self.errors += errors;
        let shown = if crashed {
            Status::Crashed
        } else {
            Status::Errored
        };
        self.status = worse(self.status, shown);
        before != (self.errors, self.status)
    }

    /// What an answer shows at `now`: a session that is over, finalized, with when it ended.
    fn view(&self, p: &Policy, now: i64) -> View {
        let mut shown = self.clone();
        if self.over(p, now) {
            shown.ended = Some(self.deadline(p).map_or(now, |(at, _)| at));
            if !shown.finalized {
                shown.status = worse(shown.status, Status::Exited);
            }
            shown.background_since = None;
        }
        View {
            sym: shown.sym,
            index: shown.index,
            prev: shown.prev,
            started: shown.started,
            last: shown.last,
            expires: shown.deadline(p).map_or(shown.last, |(at, _)| at),
            ended: shown.ended,
            why: shown.why,
            status: shown.status,
            errors: shown.errors,
            release: shown.release,
            user: shown.user,
        }
    }
}

/// What a user sees of a session in an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct View {
    sym: usize,
    index: u64,
    prev: Option<usize>,
    started: i64,
    last: i64,
    expires: i64,
    ended: Option<i64>,
    why: Why,
    status: Status,
    errors: u64,
    release: Option<&'static str>,
    user: Option<&'static str>,
}

#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Session { view: View, created: bool },
    NoLiveSession,
    UnknownSession,
}

#[derive(Default)]
struct ClientModel {
    current: Option<MSession>,
    /// Earlier sessions, finalized, still retained (retention is longer than any test).
    earlier: Vec<MSession>,
}

#[derive(Default)]
struct Model {
    /// The store's clock.
    now: i64,
    /// The latest time the clock reached, which every decision and event is on or before.
    latest: i64,
    clients: HashMap<(&'static str, usize), ClientModel>,
    next_sym: usize,
    events: Vec<(usize, EventKind, Status)>,
}

/// What the model resolved a `Named` to: a session symbol, or one never issued.
#[derive(Debug, Clone, Copy)]
enum Resolved {
    Sym(usize),
    Unknown,
}

impl Model {
    fn resolve(&self, ns: Ns, client: usize, named: Named) -> Option<Resolved> {
        let c = self.clients.get(&(ns_name(ns), client));
        match named {
            Named::None => None,
            Named::Unknown => Some(Resolved::Unknown),
            Named::Current => Some(
                c.and_then(|c| c.current.as_ref())
                    .map_or(Resolved::Unknown, |s| Resolved::Sym(s.sym)),
            ),
            Named::Earlier(k) => Some(match c {
                Some(c) if !c.earlier.is_empty() => {
                    Resolved::Sym(c.earlier[k % c.earlier.len()].sym)
                }
                _ => Resolved::Unknown,
            }),
        }
    }

    /// Starts the client's next session at `now`; `call` is the call that starts it.
    fn start(
        &mut self,
        key: (&'static str, usize),
        call: &Call,
        why: Why,
        (release, user): (Option<&'static str>, Option<&'static str>),
        now: i64,
    ) -> Answer {
        let p = policy(if key.0 == "web" { Ns::Web } else { Ns::App });
        // In background mode, a session a background call starts is in the background.
        let background_since =
            (matches!(call, Call::Background) && p.mode == Mode::Background).then_some(now);
        let sym = self.next_sym;
        self.next_sym += 1;
        let c = self.clients.entry(key).or_default();
        let (index, prev) = match c.current.take() {
            Some(mut old) => {
                if old.ended.is_none() {
                    old.ended = Some(
                        old.deadline(&p)
                            .filter(|(at, _)| now >= *at)
                            .map_or(now, |(at, _)| at),
                    );
                }
                old.background_since = None;
                old.finalize(&mut self.events);
                let r = (old.index + 1, Some(old.sym));
                c.earlier.push(old);
                r
            }
            None => (1, None),
        };
        let s = MSession {
            sym,
            index,
            prev,
            started: now,
            last: now,
            background_since,
            ended: None,
            status: Status::Ok,
            errors: 0,
            finalized: false,
            why,
            release,
            user,
            reports: Vec::new(),
        };
        self.events.push((sym, EventKind::Started, Status::Ok));
        let view = s.view(&p, now);
        c.current = Some(s);
        Answer::Session {
            view,
            created: true,
        }
    }

    fn call(
        &mut self,
        ns: Ns,
        client: usize,
        call: &Call,
        named: Option<Resolved>,
        release: Option<&'static str>,
        user: Option<&'static str>,
    ) -> Answer {
        let p = policy(ns);
        let key = (ns_name(ns), client);
        let may_start = matches!(
            call,
            Call::Current { create: true } | Call::Tick | Call::Foreground | Call::Background
        );
        let attributes = (release, user);
        let Some(current) = self.clients.get(&key).and_then(|c| c.current.clone()) else {
            return if may_start {
                self.start(key, call, Why::NewClient, attributes, self.now)
            } else {
                Answer::NoLiveSession
            };
        };
        let now = current.now(self.now);
        // A call naming a session other than the current one: end answers it as it is, a
        // report amends it; an id the client never had is unknown.
        if let Some(target) = named {
            let other = match target {
                Resolved::Sym(sym) if sym == current.sym => None,
                Resolved::Sym(sym) => Some(sym),
                Resolved::Unknown => return Answer::UnknownSession,
            };
            if let Some(sym) = other {
                let c = self.clients.get_mut(&key).unwrap();
                let Some(s) = c.earlier.iter_mut().find(|s| s.sym == sym) else {
                    return Answer::UnknownSession;
                };
                if let Call::Report {
                    errors,
                    crashed,
                    id,
                    ..
                } = call
                    && s.report(*errors, *crashed, *id)
                {
                    self.events.push((s.sym, EventKind::Amended, s.status));
                }
                return Answer::Session {
                    view: s.view(&p, now),
                    created: false,
                };
            }
        }
        let c = self.clients.get_mut(&key).unwrap();
        let s = c.current.as_mut().unwrap();
        if s.over(&p, now) {
            let why = s.deadline(&p).map(|(_, why)| why).unwrap();
            return match call {
                Call::End { .. } => Answer::Session {
                    view: s.view(&p, now),
                    created: false,
                },
                Call::Report {
                    errors,
                    crashed,
                    id,
                    ..
                } => {
                    let changed = s.report(*errors, *crashed, *id);
                    if s.finalized {
                        if changed {
                            self.events.push((s.sym, EventKind::Amended, s.status));
                        }
                    } else {
                        s.finalize(&mut self.events);
                    }
                    Answer::Session {
                        view: s.view(&p, now),
                        created: false,
                    }
                }
                _ if may_start => self.start(key, call, why, attributes, now),
                _ => Answer::NoLiveSession,
            };
        }
        match call {
            Call::End { status, .. } => {
                s.ended = Some(now);
                s.status = worse(
                    s.status,
                    match status {
                        EndStatus::Exited => Status::Exited,
                        EndStatus::Crashed => Status::Crashed,
                        EndStatus::Abnormal => Status::Abnormal,
                    },
                );
                s.finalized = true;
                s.background_since = None;
                self.events.push((s.sym, EventKind::Ended, s.status));
                return Answer::Session {
                    view: s.view(&p, now),
                    created: false,
                };
            }
            Call::Report {
                errors,
                crashed,
                id,
                ..
            } => {
                s.report(*errors, *crashed, *id);
                return Answer::Session {
                    view: s.view(&p, now),
                    created: false,
                };
            }
            _ => {}
        }
        let changed_user = matches!((user, s.user), (Some(new), Some(old)) if new != old);
        if changed_user && p.on_user_change == OnUserChange::Restart && may_start {
            return self.start(key, call, Why::UserChange, attributes, now);
        }
        if !matches!(call, Call::Current { .. }) {
            s.last = now;
        }
        match call {
            Call::Foreground => s.background_since = None,
            Call::Background if p.mode == Mode::Background => {
                s.background_since = s.background_since.or(Some(now));
            }
            _ => {}
        }
        if s.user.is_none() {
            s.user = user;
        }
        Answer::Session {
            view: s.view(&p, now),
            created: false,
        }
    }

    /// The sweeper finalizes every session that idled out.
    fn sweep(&mut self) {
        let now = self.now;
        for ((ns, _), c) in self.clients.iter_mut() {
            let p = policy(if *ns == "web" { Ns::Web } else { Ns::App });
            if let Some(s) = c.current.as_mut()
                && s.over(&p, s.now(now))
            {
                s.finalize(&mut self.events);
            }
        }
    }
}

// ---------------------------------------------------------------- running a sequence

/// How a run sends its calls: one by one, or each run of calls between two clock moves or
/// sweeps as one batch (split where a call names a session the batch has not answered yet).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Calls {
    Single,
    Batch,
}

/// Symbols of the model mapped to the store's session ids, both ways.
#[derive(Default)]
struct Ids {
    by_sym: HashMap<usize, SessionId>,
    by_id: HashMap<SessionId, usize>,
}

impl Ids {
    fn link(&mut self, sym: usize, id: &SessionId) -> Result<(), String> {
        match (self.by_sym.get(&sym), self.by_id.get(id)) {
            (None, None) => {
                self.by_sym.insert(sym, id.clone());
                self.by_id.insert(id.clone(), sym);
                Ok(())
            }
            (Some(known), _) if known == id => Ok(()),
            _ => Err(format!(
                "session #{sym} answered as {id}, which the model knows otherwise"
            )),
        }
    }
}

/// How a reason or status is written in JSON.
fn json_name(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap()
}

fn ms(rfc3339: &str) -> i64 {
    let t = humantime::parse_rfc3339(rfc3339).expect("an RFC 3339 time");
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

struct Run {
    store: Arc<dyn SessionStore>,
    /// The store's clock; the model's time 0 is where it started.
    clock: Arc<ManualClock>,
    base: i64,
    calls: Calls,
    hasher: ClientHasher,
    ids: Ids,
    /// The answers to the calls so far, in order, as the model gave them and the store agreed.
    answers: Vec<Answer>,
}

/// A call sent and the model's answer to it, compared once the store has answered.
struct Sent {
    step: usize,
    command: Command,
    expected: Answer,
    finalized: Option<Status>,
    ns: Ns,
}

impl Run {
    fn client(&self, ns: Ns, n: usize, salt: &str) -> ClientHash {
        let key = format!("model-{salt}-{}-{n}", ns_name(ns));
        self.hasher.hash(&ClientKey::parse(&key, 1).unwrap())
    }

    fn same_time(&self, what: &str, store: i64, model: i64) -> Result<(), String> {
        let expected = self.base + model;
        if store != expected {
            return Err(format!("{what}: store {store}, model {expected}"));
        }
        Ok(())
    }

    fn compare(
        &mut self,
        step: usize,
        (expected, finalized): (&Answer, Option<Status>),
        got: Outcome,
        ns: Ns,
    ) -> Result<(), String> {
        let at = format!("step {step}");
        match (expected, got) {
            (Answer::NoLiveSession, Outcome::NoLiveSession)
            | (Answer::UnknownSession, Outcome::UnknownSession) => Ok(()),
            (
                Answer::Session { view, created },
                Outcome::Session {
                    session,
                    created: got_created,
                    now,
                    finalized: got_finalized,
                    ..
                },
            ) => {
                let s = session.clone();
                let namespace = Namespace::parse(ns_name(ns)).unwrap();
                // What the caller sees: the answer as JSON.
                let record =
                    serde_json::to_value(SessionRecord::at(namespace, session, &policy(ns), now))
                        .unwrap();
                let text = |field: &str| record[field].as_str().map(str::to_owned);
                let attribute = |name: &str| record["attributes"][name].as_str().map(str::to_owned);
                self.ids
                    .link(view.sym, &s.id)
                    .map_err(|e| format!("{at}: {e}"))?;
                if let Some(prev) = view.prev {
                    let want = self.ids.by_sym.get(&prev).map(ToString::to_string);
                    if text("previous_session_id") != want {
                        return Err(format!(
                            "{at}: previous {:?}, model {want:?}",
                            record["previous_session_id"]
                        ));
                    }
                } else if !record["previous_session_id"].is_null() {
                    return Err(format!("{at}: a previous session where the model has none"));
                }
                let checks = [
                    ("created", format!("{got_created}"), format!("{created}")),
                    (
                        "the session it finalized",
                        format!("{got_finalized:?}"),
                        format!("{finalized:?}"),
                    ),
                    ("index", record["index"].to_string(), view.index.to_string()),
                    ("reason", record["reason"].to_string(), json_name(&view.why)),
                    (
                        "status",
                        record["status"].to_string(),
                        json_name(&view.status),
                    ),
                    (
                        "errors",
                        record["errors"].to_string(),
                        view.errors.to_string(),
                    ),
                    (
                        "release",
                        format!("{:?}", attribute("release")),
                        format!("{:?}", view.release),
                    ),
                    (
                        "user_id",
                        format!("{:?}", attribute("user_id")),
                        format!("{:?}", view.user),
                    ),
                    (
                        "ended",
                        format!("{}", !record["ended_at"].is_null()),
                        format!("{}", view.ended.is_some()),
                    ),
                ];
                for (field, got, want) in checks {
                    if got != want {
                        return Err(format!("{at}: {field} is {got}, the model says {want}"));
                    }
                }
                // Whether it ended is compared above; when it did, so is when.
                let times = [
                    ("started_at", text("started_at"), Some(view.started)),
                    (
                        "last_activity_at",
                        text("last_activity_at"),
                        Some(view.last),
                    ),
                    ("expires_at", text("expires_at"), Some(view.expires)),
                    ("ended_at", text("ended_at"), view.ended),
                ];
                for (field, got, want) in times {
                    if let (Some(got), Some(want)) = (got, want) {
                        self.same_time(field, ms(&got), want)
                            .map_err(|e| format!("{at}: {e}"))?;
                    }
                }
                Ok(())
            }
            (want, got) => Err(format!(
                "{at}: the store answered {got:?}, the model {want:?}"
            )),
        }
    }

    /// Sends the calls held for a batch, and compares the answers.
    async fn send(&mut self, sent: &mut Vec<Sent>) -> Result<(), String> {
        if sent.is_empty() {
            return Ok(());
        }
        let commands: Vec<Command> = sent.iter().map(|s| s.command.clone()).collect();
        let answers = self.store.execute_batch(&commands).await;
        for (s, got) in sent.drain(..).zip(answers) {
            let got = got.map_err(|e| format!("step {}: {e}", s.step))?;
            self.compare(s.step, (&s.expected, s.finalized), got, s.ns)?;
            self.answers.push(s.expected);
        }
        Ok(())
    }
}

fn policies() -> Policies {
    [Ns::Web, Ns::App]
        .into_iter()
        .map(|ns| (ns_name(ns).to_owned(), policy(ns)))
        .collect()
}

/// Runs one sequence through a store and the model; the first disagreement is the error.
async fn check(run: &mut Run, steps: &[Step], salt: &str) -> Result<(), String> {
    let mut model = Model::default();
    let mut held = Vec::new();
    for (n, step) in steps.iter().enumerate() {
        if !matches!(step, Step::Call { .. }) {
            run.send(&mut held).await?;
        }
        match step {
            Step::Advance(units) => {
                model.now += i64::from(*units) * UNIT_MS;
                model.latest = model.latest.max(model.now);
                run.clock.advance(i64::from(*units) * UNIT_MS);
            }
            Step::Back(units) => {
                let back = (i64::from(*units) * UNIT_MS).min(model.now);
                model.now -= back;
                run.clock.advance(-back);
            }
            Step::Sweep => {
                model.sweep();
                let policies = policies();
                loop {
                    let swept = run
                        .store
                        .sweep(&policies)
                        .await
                        .map_err(|e| e.to_string())?;
                    if !swept.more {
                        break;
                    }
                }
            }
            Step::Call {
                ns,
                client,
                call,
                release,
                user,
            } => {
                let named = match call {
                    Call::End { named, .. } | Call::Report { named, .. } => {
                        model.resolve(*ns, *client, *named)
                    }
                    _ => None,
                };
                // A session the batch held so far has not answered yet has no id to name.
                if let Some(Resolved::Sym(sym)) = named
                    && !run.ids.by_sym.contains_key(&sym)
                {
                    run.send(&mut held).await?;
                }
                let named_id = |target: Option<Resolved>| match target {
                    None => None,
                    Some(Resolved::Sym(sym)) => Some(run.ids.by_sym[&sym].clone()),
                    Some(Resolved::Unknown) => {
                        Some(SessionId::parse("0123456789abcdef0123").unwrap())
                    }
                };
                let op = match call {
                    Call::Current { create } => Op::Current { create: *create },
                    Call::Tick => Op::Tick,
                    Call::Foreground => Op::Foreground,
                    Call::Background => Op::Background,
                    Call::End { status, .. } => Op::End {
                        status: *status,
                        session_id: named_id(named),
                    },
                    Call::Report {
                        errors,
                        crashed,
                        id,
                        ..
                    } => Op::Report {
                        report: Report::new(
                            *errors,
                            *crashed,
                            id.map(|n| ReportId::parse(&format!("model-report-{n:04}")).unwrap()),
                        )
                        .unwrap(),
                        session_id: named_id(named),
                    },
                };
                let command = Command {
                    namespace: Namespace::parse(ns_name(*ns)).unwrap(),
                    client: run.client(*ns, *client, salt),
                    policy: policy(*ns),
                    op,
                    attributes: Attributes::parse(
                        release.map(Into::into),
                        None,
                        None,
                        user.map(Into::into),
                    )
                    .unwrap(),
                };
                let events_before = model.events.len();
                let expected = model.call(*ns, *client, call, named, *release, *user);
                // The session this call finalized, as its `ended` event says.
                let finalized = model.events[events_before..]
                    .iter()
                    .find(|e| e.1 == EventKind::Ended)
                    .map(|e| e.2);
                let sent = Sent {
                    step: n,
                    command,
                    expected,
                    finalized,
                    ns: *ns,
                };
                match run.calls {
                    Calls::Batch => held.push(sent),
                    Calls::Single => {
                        let got = run
                            .store
                            .execute(&sent.command)
                            .await
                            .map_err(|e| e.to_string())?;
                        run.compare(n, (&sent.expected, sent.finalized), got, sent.ns)?;
                        run.answers.push(sent.expected);
                    }
                }
            }
        }
    }
    run.send(&mut held).await?;
    // Section 8: every session started once, finalized at most once, amended as the model says.
    // Redis gives an event only once every node's clock has passed its millisecond (so no
    // later event can land behind a cursor already given out): let the clock pass the latest
    // event's, which is later than the clock when it stepped back.
    run.clock.advance(model.latest - model.now + 1);
    let mut got: Vec<(usize, EventKind, Status)> = Vec::new();
    let mut after = None;
    loop {
        let page = run
            .store
            .events(after, 1000)
            .await
            .map_err(|e| e.to_string())?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for e in page {
            let Some(sym) = run.ids.by_id.get(&e.session.id) else {
                return Err(format!(
                    "an event for {}, a session no answer showed",
                    e.session.id
                ));
            };
            got.push((*sym, e.kind, e.session.status));
        }
    }
    let key = |e: &(usize, EventKind, Status)| (e.0, e.1.as_str(), e.2.as_str());
    let mut want = model.events.clone();
    got.sort_by_key(key);
    want.sort_by_key(key);
    if got != want {
        return Err(format!("events differ:\n store {got:?}\n model {want:?}"));
    }
    Ok(())
}

fn retention() -> Retention {
    Retention {
        client: Duration::from_secs(3600),
        session: Duration::from_secs(3600),
        ..Retention::default()
    }
}

fn hasher() -> ClientHasher {
    ClientHasher::new(&"model-test-secret-0123456789".into())
}

/// Where every run's clock starts.
const START_MS: i64 = 1_795_000_000_000;

fn memory_run(calls: Calls) -> Run {
    let clock = Arc::new(ManualClock::starting_at(START_MS));
    let store = MemoryStore::new(
        clock.clone() as Arc<dyn Clock>,
        Arc::new(OsRandom),
        retention(),
    );
    Run {
        store: Arc::new(store),
        clock,
        base: START_MS,
        calls,
        hasher: hasher(),
        ids: Ids::default(),
        answers: Vec::new(),
    }
}

fn sequences(max_len: usize) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step(), 1..max_len)
}

/// Shrunk failing cases the property tests found, kept as regressions on both stores.
fn regressions() -> Vec<Vec<Step>> {
    let call = |ns, client, call| Step::Call {
        ns,
        client,
        call,
        release: None,
        user: None,
    };
    vec![
        // A session that went to the background and idled out there was left for the
        // sweeper to find only at its max duration.
        vec![
            call(Ns::App, 1, Call::Current { create: true }),
            call(Ns::App, 1, Call::Background),
            Step::Advance(2),
            Step::Sweep,
        ],
        // The store's clock stepped back to before a session's end: the ended session was
        // taken for live again, its activity moved, and no new session started.
        vec![
            call(Ns::Web, 0, Call::Current { create: true }),
            Step::Advance(1),
            call(
                Ns::Web,
                0,
                Call::End {
                    status: EndStatus::Exited,
                    named: Named::None,
                },
            ),
            Step::Back(1),
            call(Ns::Web, 0, Call::Tick),
        ],
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_regressions_agree_with_the_model_on_both_stores() {
    let server = redis_server::shared();
    let url = server.url();
    for (n, steps) in regressions().iter().enumerate() {
        for calls in [Calls::Single, Calls::Batch] {
            let mut memory = memory_run(calls);
            let found = check(&mut memory, steps, "regression").await;
            assert!(
                found.is_ok(),
                "regression {n} in memory: {}",
                found.unwrap_err()
            );
            let prefix = format!(
                "model{}-regression-{n}",
                &OsRandom.client_key().as_str()[..8]
            );
            let mut redis = redis_run(Target::Single(&url), &prefix, calls);
            let found = check(&mut redis, steps, &prefix).await;
            assert!(
                found.is_ok(),
                "regression {n} on Redis: {}",
                found.unwrap_err()
            );
        }
    }
}

/// A run on the Redis store (one server or a cluster) under its own key prefix, on a clock
/// the run moves: the store sends its time with every script call, in place of the Redis
/// server's. It starts at the real time, since Redis still expires keys by its own clock,
/// and the run's clock only moves ahead of it.
fn redis_run(target: Target<'_>, prefix: &str, calls: Calls) -> Run {
    let start = SystemClock.now_ms();
    let clock = Arc::new(ManualClock::starting_at(start));
    let options = RedisOptions {
        prefix: prefix.to_owned(),
        timeout: Duration::from_secs(5),
        retention: retention(),
        threads: 1,
        durability: Durability::Async,
        clock: Some(clock.clone()),
    };
    let store =
        RedisStore::connect(target, &options, Arc::new(OsRandom)).expect("the Redis URL is valid");
    Run {
        store: Arc::new(store),
        clock,
        base: start,
        calls,
        hasher: hasher(),
        ids: Ids::default(),
        answers: Vec::new(),
    }
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        // Failing cases are saved beside this file and tried first on the next run.
        source_file: Some(file!()),
        ..Config::default()
    }
}

#[test]
fn the_in_memory_store_agrees_with_the_model() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for calls in [Calls::Single, Calls::Batch] {
        let mut runner = TestRunner::new(config(2048));
        runner
            .run(&sequences(40), |steps| {
                let mut run = memory_run(calls);
                let result = runtime.block_on(check(&mut run, &steps, "m"));
                prop_assert!(result.is_ok(), "{}", result.unwrap_err());
                Ok(())
            })
            .unwrap();
    }
}

/// Runs `cases` random sequences through a Redis store (a server or a cluster, by `urls`)
/// and, each after it, through the in-memory store, sending the calls as `calls` says.
fn redis_agrees(urls: &[String], calls: Calls, cases: u32) {
    let _alone = crate::helpers::ALONE.blocking_lock();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(config(cases));
    let case = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&sequences(40), |steps| {
            let case = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let prefix = format!("model{}-{case}", &OsRandom.client_key().as_str()[..8]);
            let result = runtime.block_on(async {
                let target = match urls {
                    [url] => Target::Single(url),
                    seeds => Target::Cluster(seeds),
                };
                let mut redis = redis_run(target, &prefix, calls);
                check(&mut redis, &steps, &prefix)
                    .await
                    .map_err(|e| format!("Redis: {e}"))?;
                let mut memory = memory_run(calls);
                check(&mut memory, &steps, &prefix)
                    .await
                    .map_err(|e| format!("memory: {e}"))
            });
            prop_assert!(result.is_ok(), "{}", result.unwrap_err());
            Ok(())
        })
        .unwrap();
}

#[test]
fn the_redis_store_agrees_with_the_model_call_by_call() {
    redis_agrees(&[redis_server::shared().url()], Calls::Single, 2048);
}

#[test]
fn the_redis_store_agrees_with_the_model_in_batches() {
    redis_agrees(&[redis_server::shared().url()], Calls::Batch, 2048);
}

#[test]
fn the_redis_cluster_agrees_with_the_model_call_by_call_and_in_batches() {
    let cluster = redis_cluster::shared();
    redis_agrees(&cluster.urls(), Calls::Single, 2048);
    redis_agrees(&cluster.urls(), Calls::Batch, 2048);
}

// ---------------------------------------------------------------- the decision table

/// What a row of decision.rs's table decides for the last call of its steps.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Decides {
    NoLiveSession,
    UnknownSession,
    /// A new session starts, for this reason.
    Starts(Why),
    /// The session answered is the one the client had (or the one the call named).
    Keeps {
        ended: bool,
    },
}

/// Every row of the decision table (src/domain/decision.rs), as the steps that reach it and
/// what its last call decides.
fn decision_table() -> Vec<(&'static str, Vec<Step>, Decides)> {
    let on = |ns, call| Step::Call {
        ns,
        client: 0,
        call,
        release: None,
        user: None,
    };
    let as_user = |ns, call, user| Step::Call {
        ns,
        client: 0,
        call,
        release: None,
        user: Some(user),
    };
    let web = |call| on(Ns::Web, call);
    let app = |call| on(Ns::App, call);
    let end = |named| Call::End {
        status: EndStatus::Exited,
        named,
    };
    let report = |named| Call::Report {
        errors: 1,
        crashed: false,
        named,
        id: None,
    };
    let peek = Call::Current { create: false };
    let current = Call::Current { create: true };
    use Decides::*;
    vec![
        (
            "none, current(create=false)",
            vec![web(peek.clone())],
            NoLiveSession,
        ),
        ("none, end", vec![web(end(Named::None))], NoLiveSession),
        (
            "none, report",
            vec![web(report(Named::None))],
            NoLiveSession,
        ),
        ("none, tick", vec![web(Call::Tick)], Starts(Why::NewClient)),
        (
            "none, current",
            vec![web(current.clone())],
            Starts(Why::NewClient),
        ),
        (
            "none, foreground",
            vec![app(Call::Foreground)],
            Starts(Why::NewClient),
        ),
        (
            "none, background",
            vec![app(Call::Background)],
            Starts(Why::NewClient),
        ),
        (
            "another id, end",
            vec![
                web(Call::Tick),
                web(end(Named::None)),
                web(Call::Tick),
                web(end(Named::Earlier(0))),
            ],
            Keeps { ended: true },
        ),
        (
            "another id, report",
            vec![
                web(Call::Tick),
                web(end(Named::None)),
                web(Call::Tick),
                web(report(Named::Earlier(0))),
            ],
            Keeps { ended: true },
        ),
        (
            "an unknown id, end",
            vec![web(Call::Tick), web(end(Named::Unknown))],
            UnknownSession,
        ),
        (
            "over, report (finalized now)",
            vec![
                web(Call::Tick),
                Step::Advance(2),
                web(report(Named::Current)),
            ],
            Keeps { ended: true },
        ),
        (
            "over, report (already finalized)",
            vec![
                web(Call::Tick),
                Step::Advance(2),
                Step::Sweep,
                web(report(Named::Current)),
            ],
            Keeps { ended: true },
        ),
        (
            "live, report",
            vec![web(Call::Tick), web(report(Named::None))],
            Keeps { ended: false },
        ),
        (
            "ended, current(create=false)",
            vec![web(Call::Tick), web(end(Named::None)), web(peek.clone())],
            NoLiveSession,
        ),
        (
            "expired, current(create=false)",
            vec![web(Call::Tick), Step::Advance(2), web(peek.clone())],
            NoLiveSession,
        ),
        (
            "ended, end",
            vec![
                web(Call::Tick),
                web(end(Named::None)),
                web(end(Named::None)),
            ],
            Keeps { ended: true },
        ),
        (
            "expired, end",
            vec![web(Call::Tick), Step::Advance(2), web(end(Named::None))],
            Keeps { ended: true },
        ),
        (
            "ended, tick",
            vec![web(Call::Tick), web(end(Named::None)), web(Call::Tick)],
            Starts(Why::Ended),
        ),
        (
            "idle exactly to the deadline, current",
            vec![web(Call::Tick), Step::Advance(2), web(current.clone())],
            Starts(Why::IdleTimeout),
        ),
        (
            "started in the background, idle there to the deadline, foreground",
            vec![
                app(Call::Background),
                Step::Advance(1),
                app(Call::Foreground),
            ],
            Starts(Why::IdleTimeout),
        ),
        (
            "idle in the background to the deadline, foreground",
            vec![
                app(Call::Tick),
                app(Call::Background),
                Step::Advance(1),
                app(Call::Foreground),
            ],
            Starts(Why::IdleTimeout),
        ),
        (
            "at the max duration, tick",
            vec![
                app(Call::Tick),
                Step::Advance(3),
                app(Call::Tick),
                Step::Advance(3),
                app(Call::Tick),
            ],
            Starts(Why::MaxDuration),
        ),
        (
            "idle deadline tied with the max duration, background",
            vec![
                app(Call::Tick),
                Step::Advance(4),
                Step::Advance(1),
                app(Call::Background),
                Step::Advance(1),
                app(Call::Background),
            ],
            Starts(Why::IdleTimeout),
        ),
        (
            "live, end",
            vec![web(Call::Tick), web(end(Named::Current))],
            Keeps { ended: true },
        ),
        (
            "live, current(create=false) binds the user",
            vec![web(Call::Tick), as_user(Ns::Web, peek.clone(), "u-1")],
            Keeps { ended: false },
        ),
        (
            "live, user changed, keep",
            vec![
                as_user(Ns::Web, Call::Tick, "u-1"),
                as_user(Ns::Web, Call::Tick, "u-2"),
            ],
            Keeps { ended: false },
        ),
        (
            "live, user changed, restart",
            vec![
                as_user(Ns::App, Call::Tick, "u-1"),
                as_user(Ns::App, Call::Tick, "u-2"),
            ],
            Starts(Why::UserChange),
        ),
        (
            "live, current",
            vec![web(Call::Tick), Step::Advance(1), web(current)],
            Keeps { ended: false },
        ),
        (
            "live, tick",
            vec![web(Call::Tick), Step::Advance(1), web(Call::Tick)],
            Keeps { ended: false },
        ),
        (
            "live, foreground",
            vec![app(Call::Background), app(Call::Foreground)],
            Keeps { ended: false },
        ),
        (
            "live, background",
            vec![app(Call::Tick), app(Call::Background)],
            Keeps { ended: false },
        ),
    ]
}

/// What the model answered the last call of a row.
fn decided(answers: &[Answer]) -> Decides {
    match answers.last().expect("a row ends with a call") {
        Answer::NoLiveSession => Decides::NoLiveSession,
        Answer::UnknownSession => Decides::UnknownSession,
        Answer::Session {
            view,
            created: true,
        } => Decides::Starts(view.why),
        Answer::Session {
            view,
            created: false,
        } => Decides::Keeps {
            ended: view.ended.is_some(),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_of_the_decision_table_on_every_store() {
    let _alone = crate::helpers::ALONE.lock().await;
    let (server, cluster) =
        tokio::task::spawn_blocking(|| (redis_server::shared(), redis_cluster::shared()))
            .await
            .unwrap();
    let (url, seeds) = (server.url(), cluster.urls());
    for (row, steps, decides) in decision_table() {
        for calls in [Calls::Single, Calls::Batch] {
            let prefix = format!("table{}", &OsRandom.client_key().as_str()[..8]);
            let runs = [
                ("memory", memory_run(calls)),
                ("Redis", redis_run(Target::Single(&url), &prefix, calls)),
                (
                    "the cluster",
                    redis_run(Target::Cluster(&seeds), &prefix, calls),
                ),
            ];
            for (store, mut run) in runs {
                let found = check(&mut run, &steps, &prefix).await;
                assert!(found.is_ok(), "{row} on {store}: {}", found.unwrap_err());
                assert_eq!(decided(&run.answers), decides, "{row} on {store}");
            }
        }
    }
}
