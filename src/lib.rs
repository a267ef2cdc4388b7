//! sessiond: the single authority for activity-session identifiers.

pub mod config;
pub mod domain;
pub mod http;
pub mod limits;
pub mod startup;
pub mod store;
pub mod telemetry;
