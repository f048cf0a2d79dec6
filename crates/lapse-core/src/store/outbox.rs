//! Webhook deliveries as the store keeps them: the outbox rows, their attempts, and the
//! endpoints that asked to hear no more.

use crate::time::Timestamp;

/// A webhook endpoint delivering has stopped for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DisabledEndpoint {
    /// The endpoint's URL.
    pub url: String,
    /// When it was disabled.
    pub at: Timestamp,
    /// Why (it answered 410 Gone).
    pub reason: String,
}

/// Where a webhook delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Every attempt failed, or the endpoint was disabled.
    Dead,
}

impl DeliveryStatus {
    /// Every status.
    pub const ALL: [DeliveryStatus; 3] = [
        DeliveryStatus::Pending,
        DeliveryStatus::Delivered,
        DeliveryStatus::Dead,
    ];

    /// The name used in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
        }
    }

    /// Reads a status name.
    pub fn parse(text: &str) -> Option<DeliveryStatus> {
        DeliveryStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// One event on its way to one endpoint.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Delivery {
    /// Its id.
    pub id: String,
    /// The endpoint's URL.
    pub endpoint: String,
    /// The event's `seq`.
    pub event_seq: i64,
    /// The event's id: the `webhook-id` of every attempt.
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: i64,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<Timestamp>,
    /// When the last attempt was made.
    pub last_attempt_at: Option<Timestamp>,
    /// The HTTP status of the last attempt, if one came back.
    pub last_status: Option<i64>,
    /// What went wrong last.
    pub last_error: Option<String>,
    /// When it was queued.
    pub created_at: Timestamp,
}

/// What one delivery attempt came to.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    /// When it was made.
    pub at: Timestamp,
    /// The HTTP status, if any came back.
    pub http_status: Option<u16>,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// The new status.
    pub status: DeliveryStatus,
    /// When to try again (pending only).
    pub next_attempt_at: Option<Timestamp>,
}

/// Where retention cuts: rows made before these instants go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PruneBefore {
    /// Events (applied), and finished webhook deliveries (recorded).
    pub events: Timestamp,
    /// Users' notifications.
    pub notifications: Timestamp,
    /// Idempotency keys (saved).
    pub keys: Timestamp,
}

impl PruneBefore {
    /// Where the next call's events begin, from `last`, the last event a call looked at (its
    /// number and when it was applied): past it when it was past the cut, for the newer ones
    /// may be too; `None` when it was not, or when the call found no full page.
    pub fn events_after(&self, last: Option<(i64, Timestamp)>) -> Option<i64> {
        last.filter(|(_, applied_at)| *applied_at < self.events)
            .map(|(seq, _)| seq)
    }
}

/// What one call of [`crate::store::Store::prune`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Rows deleted: events, finished deliveries, notifications and idempotency keys.
    pub rows: u64,
    /// Where the next call's events begin (its `after`): the newest event this call looked
    /// at, when every one it looked at was past the period, so that newer ones may be too.
    /// `None` once it reached an event inside the period, or the newest event.
    pub events_after: Option<i64>,
}
