//! Time as values: a [`Timestamp`] is milliseconds since the Unix epoch, a [`Span`] a
//! non-negative duration parsed from humantime text (`"90s"`, `"30m"`, `"7d"`).
//!
//! Millisecond integers are what the stores keep, so a value round-trips through either
//! database unchanged and comparisons never depend on a backend's time type.

use std::fmt;
use std::ops::{Add, Sub};
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An instant, to the millisecond, in UTC (the default is the Unix epoch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The instant `ms` milliseconds after the Unix epoch.
    pub const fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn millis(self) -> i64 {
        self.0
    }

    /// Converts from chrono, dropping anything below a millisecond.
    pub fn from_datetime(at: DateTime<Utc>) -> Self {
        Timestamp(at.timestamp_millis())
    }

    /// The same instant as a chrono value.
    pub fn to_datetime(self) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(self.0)
            .single()
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// How long from `earlier` to `self`, or zero when `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Span {
        Span::from_millis(self.0.saturating_sub(earlier.0).max(0))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            &self
                .to_datetime()
                .to_rfc3339_opts(SecondsFormat::Millis, true),
        )
    }
}

/// Error for text that is not an RFC 3339 time.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not an RFC 3339 time (e.g. 2026-01-01T09:00:00Z)")]
pub struct BadTimestamp(String);

impl FromStr for Timestamp {
    type Err = BadTimestamp;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| Timestamp::from_datetime(t.with_timezone(&Utc)))
            .map_err(|_| BadTimestamp(s.to_string()))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A non-negative duration with millisecond precision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(i64);

impl Span {
    /// No time at all.
    pub const ZERO: Span = Span(0);

    /// A span of `ms` milliseconds (negative values become zero).
    pub const fn from_millis(ms: i64) -> Self {
        Span(if ms < 0 { 0 } else { ms })
    }

    /// A span of whole seconds.
    pub const fn from_secs(s: i64) -> Self {
        Span::from_millis(s.saturating_mul(1000))
    }

    /// Length in milliseconds.
    pub const fn millis(self) -> i64 {
        self.0
    }

    /// Length in whole seconds.
    pub const fn secs(self) -> i64 {
        self.0 / 1000
    }
}

impl fmt::Display for Span {
    /// Humantime text (`1h 30m`), which [`FromStr`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0s");
        }
        let d = std::time::Duration::from_millis(self.0 as u64);
        write!(f, "{}", humantime::format_duration(d))
    }
}

/// Error for text that is not a duration.
#[derive(Debug, thiserror::Error)]
#[error("`{text}` is not a duration (use e.g. \"90s\", \"30m\", \"6h\", \"7d\"): {reason}")]
pub struct BadSpan {
    text: String,
    reason: String,
}

impl FromStr for Span {
    type Err = BadSpan;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| BadSpan {
            text: s.to_string(),
            reason,
        };
        let d = humantime::parse_duration(s.trim()).map_err(|e| bad(e.to_string()))?;
        let ms = i64::try_from(d.as_millis()).map_err(|_| bad("too long".into()))?;
        // Ten thousand years is far past any session's life; beyond that a typo is likelier.
        if ms > 10_000 * 365 * 86_400_000 {
            return Err(bad("too long".into()));
        }
        Ok(Span(ms))
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Add<Span> for Timestamp {
    type Output = Timestamp;
    fn add(self, rhs: Span) -> Timestamp {
        Timestamp(self.0.saturating_add(rhs.0))
    }
}

impl Sub<Span> for Timestamp {
    type Output = Timestamp;
    fn sub(self, rhs: Span) -> Timestamp {
        Timestamp(self.0.saturating_sub(rhs.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_the_way_people_write_them() {
        assert_eq!("90s".parse::<Span>().unwrap(), Span::from_secs(90));
        assert_eq!("7d".parse::<Span>().unwrap(), Span::from_secs(7 * 86_400));
        assert_eq!("0s".parse::<Span>().unwrap(), Span::ZERO);
        assert!("soon".parse::<Span>().is_err());
        assert_eq!(Span::from_secs(5400).to_string(), "1h 30m");
    }

    #[test]
    fn timestamps_print_as_rfc3339_utc_with_milliseconds() {
        let t: Timestamp = "2026-01-01T10:00:00+01:00".parse().unwrap();
        assert_eq!(t.to_string(), "2026-01-01T09:00:00.000Z");
        assert_eq!(
            (t + Span::from_millis(1)).to_string(),
            "2026-01-01T09:00:00.001Z"
        );
    }
}
