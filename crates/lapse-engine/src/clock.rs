//! The engine's one source of `now`: the system clock, or a manual clock that moves only
//! when told (tests and demos). Nothing below the engine reads time on its own.

use std::sync::{Arc, Mutex};

use lapse_core::{Span, Timestamp};

/// Where `now` comes from.
#[derive(Clone, Debug)]
pub enum Clock {
    /// The machine's clock.
    System,
    /// A clock that moves only through [`Clock::set`] and [`Clock::advance`].
    Manual(Arc<Mutex<Timestamp>>),
}

/// A manual-clock move that was refused.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    /// The system clock cannot be moved.
    #[error("the clock is the system clock; start lapse with LAPSE_CLOCK=manual to move it")]
    NotManual,
    /// Time only moves forward.
    #[error("the clock only moves forward: {to} is before {now}")]
    Backwards {
        /// The current time.
        now: Timestamp,
        /// The requested time.
        to: Timestamp,
    },
}

impl Clock {
    /// A manual clock starting at `start`.
    pub fn manual(start: Timestamp) -> Clock {
        Clock::Manual(Arc::new(Mutex::new(start)))
    }

    /// The system time, to the millisecond.
    pub fn system_now() -> Timestamp {
        Timestamp::from_datetime(chrono::Utc::now())
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        match self {
            Clock::System => Clock::system_now(),
            // A poisoned lock only means a panic elsewhere while holding a plain value; the
            // value itself is still a valid timestamp.
            Clock::Manual(t) => *t.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Whether this is a manual clock.
    pub fn is_manual(&self) -> bool {
        matches!(self, Clock::Manual(_))
    }

    /// Moves a manual clock to `to`.
    pub fn set(&self, to: Timestamp) -> Result<Timestamp, ClockError> {
        let Clock::Manual(t) = self else {
            return Err(ClockError::NotManual);
        };
        let mut now = t.lock().unwrap_or_else(|p| p.into_inner());
        if to < *now {
            return Err(ClockError::Backwards { now: *now, to });
        }
        *now = to;
        Ok(to)
    }

    /// Moves a manual clock forward by `by`.
    pub fn advance(&self, by: Span) -> Result<Timestamp, ClockError> {
        let Clock::Manual(t) = self else {
            return Err(ClockError::NotManual);
        };
        let mut now = t.lock().unwrap_or_else(|p| p.into_inner());
        *now = *now + by;
        Ok(*now)
    }
}
