//! What reads ask for and get back: filters and pages of sessions and events, due rows,
//! counts for stats and health, and a stored idempotent response.

use crate::event::EventType;
use crate::ids::{SessionId, UserId};
use crate::session::Status;
use crate::time::Timestamp;

/// Filters for listing sessions; `after` is the cursor (the last id of the previous page).
#[derive(Clone, Debug, Default)]
pub struct SessionQuery {
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this status.
    pub status: Option<Status>,
    /// Only open sessions (pending or active).
    pub open_only: bool,
    /// Only sessions that count against their host's limit: those created while their kind
    /// had one, or open when rules giving it one were put in force ([`super::Store::publish_rules`]).
    pub host_limited: bool,
    /// Only this host.
    pub host: Option<UserId>,
    /// Only sessions this user ever joined.
    pub participant: Option<UserId>,
    /// Ids after this one.
    pub after: Option<SessionId>,
    /// Page size.
    pub limit: u32,
}

/// Filters for reading events.
#[derive(Clone, Debug, Default)]
pub struct EventQuery {
    /// Events with `seq` greater than this.
    pub after: i64,
    /// Page size.
    pub limit: u32,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only these types.
    pub types: Vec<EventType>,
    /// Only this session.
    pub session: Option<SessionId>,
}

/// A due session as the sweep sees it: its id and stored deadline.
#[derive(Clone, Debug, PartialEq)]
pub struct DueRow {
    /// The session.
    pub id: SessionId,
    /// Its stored `next_due` (possibly earlier than the truth, see lazy re-arm).
    pub at: Timestamp,
}

/// Count of sessions of one kind in one status.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusCount {
    /// The kind.
    pub kind: String,
    /// The status.
    pub status: Status,
    /// How many.
    pub count: i64,
}

/// The first response to a request made with an `Idempotency-Key`.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredResponse {
    /// Hash of the method, path and body the key was first used with.
    pub request_hash: String,
    /// The HTTP status.
    pub status: u16,
    /// Its content type.
    pub content_type: String,
    /// Its body.
    pub body: String,
    /// When it was first answered.
    pub created_at: Timestamp,
}

/// The figures `/v1/health` judges by.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct HealthCounts {
    /// Sessions whose stored wake-up passed before the `overdue_before` instant.
    pub overdue: i64,
    /// Pending sessions created before the `stale_before` instant.
    pub stale_pending: i64,
    /// Webhook deliveries waiting for an attempt.
    pub deliveries_pending: i64,
    /// Webhook deliveries that gave up.
    pub deliveries_dead: i64,
}
