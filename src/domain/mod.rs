//! The domain: identifiers, namespaces, policy and the session decision, free of I/O.

pub mod attributes;
pub mod clock;
pub mod decision;
pub mod ids;
pub mod namespace;
pub mod policy;
pub mod session;

pub use attributes::Attributes;
pub use clock::{Clock, ManualClock, SystemClock};
pub use decision::{Decision, Op, Update, decide};
pub use ids::{ClientHash, ClientHasher, ClientKey, IdSource, OsRandom, SessionId};
pub use namespace::Namespace;
pub use policy::{Mode, OnUserChange, Policy};
pub use session::{EndStatus, Reason, SessionState, Status};
