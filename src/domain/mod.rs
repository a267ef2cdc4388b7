//! The domain: identifiers, namespaces, policy, the session decision, health and stats,
//! free of I/O.

pub mod attributes;
pub mod clock;
pub mod decision;
pub mod health;
pub mod ids;
pub mod namespace;
pub mod policy;
pub mod retention;
pub mod session;
pub mod stats;
pub mod transition;

pub use attributes::Attributes;
pub use clock::{Clock, ManualClock, SystemClock};
pub use decision::{Decision, Op, ReportEffect, Update, decide};
pub use health::{Event, EventId, EventKind, RecentReports, Report, ReportId};
pub use ids::{ClientHash, ClientHasher, ClientKey, IdSource, OsRandom, SessionId};
pub use namespace::Namespace;
pub use policy::{Mode, OnUserChange, Policy};
pub use retention::{Retention, StatsNames};
pub use session::{EndStatus, Reason, SessionState, Status};
