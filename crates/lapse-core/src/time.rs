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

impl Timestamp {
    /// The RFC 3339 text of an instant in years 0 to 9999 (`2026-03-02T09:00:00.000Z`),
    /// written without allocating: every event and answer carries several, and a sweep writes
    /// thousands of events a second.
    fn rfc3339(self) -> Option<[u8; 24]> {
        const DAY: i64 = 86_400_000;
        let (days, ms) = (self.0.div_euclid(DAY), self.0.rem_euclid(DAY));
        // Days since 1970-01-01 to a civil date (H. Hinnant's `civil_from_days`), counted in
        // 400-year eras that start on March 1st so leap days fall at the end of a year.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        if !(0..=9999).contains(&year) {
            return None;
        }
        let mut out = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut n: i64| {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (n % 10) as u8;
                n /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month);
        put(8, 2, day);
        put(11, 2, ms / 3_600_000);
        put(14, 2, ms / 60_000 % 60);
        put(17, 2, ms / 1000 % 60);
        put(20, 3, ms % 1000);
        Some(out)
    }
}

impl Timestamp {
    /// Calls `f` with the RFC 3339 text of the instant.
    fn with_text<R>(self, f: impl FnOnce(&str) -> R) -> R {
        match self.rfc3339() {
            // Only ASCII digits and separators are written: always UTF-8.
            Some(text) => f(std::str::from_utf8(&text).unwrap_or_default()),
            None => f(&self
                .to_datetime()
                .to_rfc3339_opts(SecondsFormat::Millis, true)),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_text(|text| f.write_str(text))
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
        self.with_text(|text| s.serialize_str(text))
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

    proptest::proptest! {
        /// The text written by hand is chrono's, at every instant of years 0 to 9999 and
        /// beyond them (where chrono writes it).
        #[test]
        fn timestamps_print_as_chrono_prints_them(ms in -70_000_000_000_000i64..300_000_000_000_000) {
            let t = Timestamp::from_millis(ms);
            let chrono = t.to_datetime().to_rfc3339_opts(SecondsFormat::Millis, true);
            proptest::prop_assert_eq!(t.to_string(), chrono.clone());
            proptest::prop_assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{chrono}\""));
        }
    }

    #[test]
    fn timestamps_print_as_rfc3339_utc_with_milliseconds() {
        let t: Timestamp = "2026-01-01T10:00:00+01:00".parse().unwrap();
        assert_eq!(t.to_string(), "2026-01-01T09:00:00.000Z");
        assert_eq!(
            (t + Span::from_millis(1)).to_string(),
            "2026-01-01T09:00:00.001Z"
        );
        // Where the text written by hand hands over to chrono's, and leap days.
        for text in [
            "0000-01-01T00:00:00.000Z",
            "9999-12-31T23:59:59.999Z",
            "2024-02-29T23:59:59.999Z",
            "2000-02-29T00:00:00.000Z",
            "1969-12-31T23:59:59.999Z",
        ] {
            let t: Timestamp = text.parse().unwrap();
            assert_eq!(t.to_string(), text);
            let beyond = [
                t + Span::from_millis(1),
                Timestamp::from_millis(t.millis() - 1),
            ];
            for t in beyond {
                let chrono = t.to_datetime().to_rfc3339_opts(SecondsFormat::Millis, true);
                assert_eq!(t.to_string(), chrono);
            }
        }
    }
}
