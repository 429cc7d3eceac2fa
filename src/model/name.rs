//! Validated names that become path components: session ids and slot names.
//!
//! A session id arrives from a hook payload, a flag or an environment variable; it is checked here before any
//! use, so that it can never become a path outside its directory or a pattern.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::bad_input;

/// `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`, with no `..`.
pub(crate) fn is_valid(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !text.contains("..")
}

fn check(what: &str, text: &str) -> anyhow::Result<String> {
    if is_valid(text) {
        Ok(text.to_owned())
    } else {
        let shown: String = text.chars().take(40).collect();
        let ellipsis = if text.chars().count() > 40 { "…" } else { "" };
        Err(bad_input(format!(
            "invalid {what} {shown:?}{ellipsis}: expected 1-128 characters from [A-Za-z0-9._-], starting with a letter or digit, without \"..\""
        )))
    }
}

/// An agent session id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(String);

impl SessionId {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        check("session id", text).map(SessionId)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of a broker slot within a workspace (`default` unless given).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct SlotName(String);

impl SlotName {
    pub(crate) fn parse(text: &str) -> anyhow::Result<Self> {
        check("broker name", text).map(SlotName)
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for SlotName {
    fn default() -> Self {
        SlotName("default".to_owned())
    }
}

impl fmt::Display for SlotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_real_ids() {
        for id in [
            "06252552-1ad7-454b-b79c-2a700b021481",
            "s1",
            "a.b_c-d",
            &"x".repeat(128),
        ] {
            assert!(is_valid(id), "{id}");
        }
    }

    #[test]
    fn refuses_paths_and_patterns() {
        for id in [
            "",
            "../x",
            "..",
            "a..b",
            "a b",
            ".hidden",
            "-flag",
            "a/b",
            "a*",
            &"x".repeat(129),
            "é",
        ] {
            assert!(!is_valid(id), "{id}");
            assert!(SessionId::parse(id).is_err());
        }
    }

    #[test]
    fn error_names_the_input_on_one_line() {
        let err = SessionId::parse("../x").unwrap_err().to_string();
        assert!(err.contains("\"../x\"") && !err.contains('\n'), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn valid_ids_are_single_path_components(id in "\\PC{0,140}") {
            if is_valid(&id) {
                let path = std::path::Path::new("/state/sessions").join(&id);
                proptest::prop_assert_eq!(path.parent(), Some(std::path::Path::new("/state/sessions")));
            }
        }
    }
}
