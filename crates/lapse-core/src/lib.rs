//! The pure heart of lapse: what a session is, what a kind's rules say, and what happens when
//! they come due. Nothing here reads a clock, opens a socket or touches a database: time comes
//! in as a parameter and storage is reached through the [`Store`] port.
//!
//! A map of the modules, in reading order:
//! - [`time`]: millisecond timestamps and humantime durations, parsed once.
//! - [`ids`]: session and user ids, validated at the edge.
//! - [`session`]: a session, its participants and summary.
//! - [`config`]: the TOML file, its validation, and the built-in kinds of the seed systems.
//! - [`rules`]: triggers, actions and their deadlines.
//! - [`agenda`]: what comes due next (rules, warnings, presence lapses), in time order.
//! - [`lifecycle`]: every state change (manual or by a rule) and the events it causes.
//! - [`explain`]: why each rule of a kind does or does not apply to a session.
//! - [`policy`]: a rules change judged against sessions before it is made.
//! - [`event`]: events (the outbox) and end-of-session notifications.
//! - [`store`]: the `Store` trait the engine needs from a database.
//! - [`intercept`]: a `Store` with a hook around every call (outage watch, fault injection).

pub mod agenda;
pub mod config;
pub mod event;
pub mod explain;
pub mod ids;
pub mod intercept;
pub mod lifecycle;
pub mod policy;
pub mod rules;
pub mod session;
pub mod store;
pub mod time;

pub use config::{Config, Kind};
pub use event::{Event, EventType, NewEvent, NewNotification, Notification};
pub use ids::{SessionId, UserId};
pub use session::{Participant, ParticipantState, Participants, Role, Session, Status, Summary};
pub use store::{Store, StoreError};
pub use time::{Span, Timestamp};
