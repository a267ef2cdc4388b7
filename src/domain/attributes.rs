//! Session attributes: release, environment and platform frozen at start, user_id bound once.

use serde::{Deserialize, Serialize};

/// The attributes a call may carry. Built only through [`Attributes::parse`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attributes {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidAttribute {
    #[error("is empty")]
    Empty,
    #[error("is longer than {} characters", Attributes::MAX_LEN)]
    TooLong,
    #[error("contains a control character")]
    ControlCharacter,
}

impl Attributes {
    /// In characters, as JSON Schema's maxLength counts them (at most 1 KiB of UTF-8).
    pub const MAX_LEN: usize = 256;

    /// Validates one attribute value; the caller names the field in its error.
    pub fn check(value: &str) -> Result<(), InvalidAttribute> {
        if value.is_empty() {
            Err(InvalidAttribute::Empty)
        } else if value.len() > Self::MAX_LEN && value.chars().count() > Self::MAX_LEN {
            Err(InvalidAttribute::TooLong)
        } else if value.chars().any(char::is_control) {
            Err(InvalidAttribute::ControlCharacter)
        } else {
            Ok(())
        }
    }

    /// The first value longer than `max_bytes` of UTF-8 (a namespace's budget), by name.
    pub fn over_budget(&self, max_bytes: usize) -> Option<&'static str> {
        [
            ("release", &self.release),
            ("environment", &self.environment),
            ("platform", &self.platform),
            ("user_id", &self.user_id),
        ]
        .into_iter()
        .find(|(_, value)| value.as_ref().is_some_and(|v| v.len() > max_bytes))
        .map(|(name, _)| name)
    }

    /// Builds attributes, naming the first invalid field.
    pub fn parse(
        release: Option<String>,
        environment: Option<String>,
        platform: Option<String>,
        user_id: Option<String>,
    ) -> Result<Self, (&'static str, InvalidAttribute)> {
        for (name, value) in [
            ("release", &release),
            ("environment", &environment),
            ("platform", &platform),
            ("user_id", &user_id),
        ] {
            if let Some(v) = value {
                Self::check(v).map_err(|e| (name, e))?;
            }
        }
        Ok(Self {
            release,
            environment,
            platform,
            user_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_first_invalid_field() {
        let err = Attributes::parse(Some("1.0".into()), None, Some("".into()), None).unwrap_err();
        assert_eq!(err, ("platform", InvalidAttribute::Empty));
        let err = Attributes::parse(None, None, None, Some("a\nb".into())).unwrap_err();
        assert_eq!(err, ("user_id", InvalidAttribute::ControlCharacter));
        let err = Attributes::parse(Some("x".repeat(257)), None, None, None).unwrap_err();
        assert_eq!(err, ("release", InvalidAttribute::TooLong));
        // Characters count, as in the API description, not bytes.
        Attributes::parse(Some("é".repeat(256)), None, None, None).unwrap();
        let err = Attributes::parse(Some("é".repeat(257)), None, None, None).unwrap_err();
        assert_eq!(err, ("release", InvalidAttribute::TooLong));
    }

    #[test]
    fn a_budget_counts_bytes_of_utf8() {
        let attrs = Attributes::parse(None, Some("é".repeat(64)), None, Some("u".into())).unwrap();
        assert_eq!(attrs.over_budget(128), None);
        assert_eq!(attrs.over_budget(127), Some("environment"));
    }

    #[test]
    fn accepts_unicode_values() {
        let attrs = Attributes::parse(None, Some("produção".into()), None, None).unwrap();
        assert_eq!(attrs.environment.as_deref(), Some("produção"));
    }
}
