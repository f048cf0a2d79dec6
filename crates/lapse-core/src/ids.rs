//! Identifiers, checked once where they enter: a [`SessionId`] is 1–128 characters of
//! `[A-Za-z0-9._:-]`; a [`UserId`] is 1–128 printable characters without spaces.
//!
//! Both are shared text: a copy costs a reference count, not an allocation, for ids are
//! copied everywhere (every copy of a session copies its participants' ids).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why an id was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct BadId(String);

/// A session's id, client-supplied or generated.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(Arc<str>);

impl SessionId {
    /// Checks `text` against `^[A-Za-z0-9._:-]{1,128}$`.
    pub fn parse(text: &str) -> Result<Self, BadId> {
        let ok = !text.is_empty()
            && text.len() <= 128
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if ok {
            Ok(SessionId(Arc::from(text)))
        } else {
            Err(BadId(format!(
                "session id `{}` must be 1-128 characters of A-Z a-z 0-9 . _ : -",
                truncate(text)
            )))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A user's id, as the app knows its users.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(Arc<str>);

impl UserId {
    /// Accepts 1–128 characters with no whitespace or control characters.
    pub fn parse(text: &str) -> Result<Self, BadId> {
        let ok = !text.is_empty()
            && text.chars().count() <= 128
            && !text.chars().any(|c| c.is_whitespace() || c.is_control());
        if ok {
            Ok(UserId(Arc::from(text)))
        } else {
            Err(BadId(format!(
                "user id `{}` must be 1-128 characters without spaces",
                truncate(text)
            )))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(40).collect()
}

macro_rules! id_traits {
    ($t:ident) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                $t::parse(&text).map_err(serde::de::Error::custom)
            }
        }
        impl std::str::FromStr for $t {
            type Err = BadId;
            fn from_str(s: &str) -> Result<Self, BadId> {
                $t::parse(s)
            }
        }
    };
}
id_traits!(SessionId);
id_traits!(UserId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_follow_the_spec_pattern() {
        assert!(SessionId::parse("room-1:a.b_c").is_ok());
        assert!(SessionId::parse("").is_err());
        assert!(SessionId::parse("has space").is_err());
        assert!(SessionId::parse(&"x".repeat(129)).is_err());
    }

    #[test]
    fn user_ids_refuse_whitespace() {
        assert!(UserId::parse("alice@example.com").is_ok());
        assert!(UserId::parse("a b").is_err());
    }
}
