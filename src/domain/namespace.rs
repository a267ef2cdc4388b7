//! Namespace names: product surfaces with their own policy, defined in the configuration.

use std::borrow::Borrow;
use std::fmt;

use smol_str::SmolStr;

/// The namespace a request uses when it names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A validated namespace name: 1 to 64 characters of `a-z 0-9 _ -`.
///
/// The name becomes part of store keys, so it must never contain the `{`, `}` or `:`
/// characters that structure them.
///
/// Every call clones its namespace a few times. A name of up to 23 bytes is kept inline and
/// copied; a shared one (`Arc<str>`) was a reference count that every worker wrote.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(SmolStr);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a namespace name is 1 to 64 characters of a-z, 0-9, '_' and '-'")]
pub struct InvalidNamespace;

impl Namespace {
    pub fn parse(raw: &str) -> Result<Self, InvalidNamespace> {
        let valid = (1..=64).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if valid {
            Ok(Self(SmolStr::new(raw)))
        } else {
            Err(InvalidNamespace)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lets the configuration's namespace table be searched by a request's raw name without
/// building a `Namespace` first: only valid names are in it.
impl Borrow<str> for Namespace {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_lowercase_names_with_digits_dash_and_underscore() {
        assert_eq!(Namespace::parse("web-2_x").unwrap().as_str(), "web-2_x");
    }

    #[test]
    fn rejects_empty_uppercase_key_syntax_and_overlong_names() {
        for bad in ["", "Web", "a:b", "a{b}", &"a".repeat(65)] {
            assert_eq!(Namespace::parse(bad), Err(InvalidNamespace), "{bad}");
        }
    }
}
