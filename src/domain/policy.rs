//! A namespace's session policy: the inputs of the decision (CONTRACT section 3).

/// How the idle clock runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The idle clock runs from the last activity (web, Android).
    Inactivity,
    /// The idle clock runs only while the app is in the background (iOS).
    Background,
}

/// What a different user_id does to a session that already has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUserChange {
    Keep,
    Restart,
}

/// The decision inputs of one namespace. Durations are in milliseconds; the configuration
/// guarantees `idle_timeout_ms > 0` and that `Background` mode has a `max_duration_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub idle_timeout_ms: i64,
    pub max_duration_ms: Option<i64>,
    pub mode: Mode,
    pub on_user_change: OnUserChange,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            idle_timeout_ms: 30 * 60 * 1000,
            max_duration_ms: None,
            mode: Mode::Inactivity,
            on_user_change: OnUserChange::Keep,
        }
    }
}
