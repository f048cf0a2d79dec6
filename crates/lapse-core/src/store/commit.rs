//! What one transaction writes ([`super::Store::commit`]) and the other writes that move
//! stored rows: heartbeat flushes, re-arms of stored deadlines, the rules in force.

use crate::event::NewNotification;
use crate::ids::{SessionId, UserId};
use crate::session::Session;
use crate::time::Timestamp;

/// One session write inside a [`Commit`].
#[derive(Clone, Debug)]
pub enum SessionWrite {
    /// A new session (its participants too).
    Insert(Session),
    /// Replaces the row if the stored version is still `session.version` (the stored version
    /// becomes `session.version + 1`), with the participants named in `changed`, or all of
    /// them when `None`: a join writes one participant, not the whole room.
    Update {
        /// The session as it is now.
        session: Session,
        /// The participants whose rows changed.
        changed: Option<Vec<UserId>>,
    },
    /// Removes the session, participants and counters if the version still matches.
    Delete {
        /// The session.
        id: SessionId,
        /// The version it was read at.
        version: i64,
    },
}

impl SessionWrite {
    /// The session written, unless this is a delete.
    pub fn session(&self) -> Option<&Session> {
        match self {
            SessionWrite::Insert(s) | SessionWrite::Update { session: s, .. } => Some(s),
            SessionWrite::Delete { .. } => None,
        }
    }
}

/// An event ready to store; `seq` is assigned by the store.
#[derive(Clone, Debug)]
pub struct EventRecord {
    /// Stable id (UUIDv7).
    pub id: String,
    /// When lapse recorded it.
    pub applied_at: Timestamp,
    /// The event.
    pub event: crate::event::NewEvent,
    /// Webhook endpoints (URLs) to deliver it to; a delivery row is written for each, in the
    /// same transaction, unless the endpoint has been disabled.
    pub webhooks: Vec<String>,
}

/// A notification ready to store.
#[derive(Clone, Debug)]
pub struct NotificationRecord {
    /// Its id.
    pub id: String,
    /// The notification.
    pub notification: NewNotification,
}

/// "At most `max` open sessions of `kind` hosted by `host`", checked inside the transaction
/// before anything is written (and, where instances share the database, under a lock on that
/// host and kind).
#[derive(Clone, Debug)]
pub struct HostLimit {
    /// The kind.
    pub kind: String,
    /// The host.
    pub host: UserId,
    /// Most open sessions, before this commit's inserts.
    pub max: u32,
}

/// Everything one change writes, committed atomically.
#[derive(Clone, Debug, Default)]
pub struct Commit {
    /// The version of the rules in force the change was decided under: the commit is refused
    /// ([`super::StoreError::PolicyChanged`]) if another version came into force since.
    pub rules_version: Option<i64>,
    /// Refuse the whole commit if the host is at its limit.
    pub host_limit: Option<HostLimit>,
    /// Session rows.
    pub sessions: Vec<SessionWrite>,
    /// Events to append, in order.
    pub events: Vec<EventRecord>,
    /// Notifications to deliver.
    pub notifications: Vec<NotificationRecord>,
    /// Its one session update is of a row leased to the sweep that decided it (see
    /// [`super::Store::due`]): no other sweep writes that row while the lease stands, so
    /// where instances share the database, sweeps' batches of such commits are written at
    /// the same time.
    pub leased: bool,
}

/// A coalesced heartbeat: the latest moment `user` was seen in `session`.
#[derive(Clone, Debug, PartialEq)]
pub struct Beat {
    /// The session.
    pub session: SessionId,
    /// The participant.
    pub user: UserId,
    /// When they were last seen.
    pub at: Timestamp,
}

/// A session a heartbeat flush moved, and its version after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moved {
    /// The session.
    pub id: SessionId,
    /// Its version after the flush.
    pub version: i64,
}

/// What a write of heartbeats before their answer did (see
/// [`super::Store::write_heartbeats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BeatsWritten {
    /// The sessions moved, each with its version after.
    pub moved: Vec<Moved>,
    /// For each unread beat, in order: its room's `last_activity_at` as stored before the
    /// write, or `None` where the beat was not written (its room must be read to answer it).
    pub unread: Vec<Option<Timestamp>>,
}

/// The beats a write of heartbeats writes: every one of `read`, and those of `unread` that
/// stood (`stood`, one for each of `unread`, in order: see [`BeatsWritten::unread`]).
pub fn beats_written(read: &[Beat], unread: &[Beat], stood: &[Option<Timestamp>]) -> Vec<Beat> {
    let stood = unread.iter().zip(stood).filter(|(_, s)| s.is_some());
    read.iter().chain(stood.map(|(b, _)| b)).cloned().collect()
}

/// A stored wake-up to move (see [`super::Store::rearm`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Rearm {
    /// The session.
    pub id: SessionId,
    /// The version it was read at.
    pub version: i64,
    /// Its next wake-up, if any.
    pub wake_at: Option<Timestamp>,
    /// The rule of its `next_due`, if any.
    pub rule: Option<String>,
}

/// Which rows a re-arm writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RearmOnly {
    /// Rows still at the version they were read at.
    Unchanged,
    /// Rows whose stored wake-up is later than the new one, whatever changed since they were
    /// read: a wake-up stored early is only looked at again (lazy re-arm), never applied
    /// early, so moving one earlier is always safe.
    Earlier,
}

/// The rules in force, as stored (see [`super::Store::publish_rules`]).
#[derive(Clone, Debug, PartialEq)]
pub struct RulesInForce {
    /// Bumped each time other rules come into force.
    pub version: i64,
    /// The `[kinds.*]` tables, as TOML.
    pub kinds: String,
    /// When they came into force.
    pub updated_at: Timestamp,
    /// Whether every stored deadline has been worked out under them (see
    /// [`super::Store::mark_rearmed`]).
    pub rearmed: bool,
}
