//! Events and notifications. Every change appends events in the same transaction as the change
//! itself, so the events table is the outbox: whatever was committed will be told.

use serde::{Deserialize, Serialize};

use crate::ids::{SessionId, UserId};
use crate::time::Timestamp;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// A session was created.
    SessionCreated,
    /// Its title, metadata or schedule changed.
    SessionUpdated,
    /// The host started it.
    SessionStarted,
    /// The engine started it because its start time passed.
    SessionDelayed,
    /// A rule will end it soon.
    SessionEndingSoon,
    /// It completed.
    SessionCompleted,
    /// It was cancelled.
    SessionCancelled,
    /// It expired.
    SessionExpired,
    /// The host reopened it.
    SessionReopened,
    /// It was deleted; the event keeps its last state.
    SessionDeleted,
    /// It was purged by retention; the event keeps its last state.
    SessionPurged,
    /// Someone joined.
    ParticipantJoined,
    /// Someone left.
    ParticipantLeft,
    /// Someone stopped sending heartbeats.
    ParticipantOffline,
    /// New rules came into force (a reload, or an instance started with other rules).
    ConfigReloaded,
}

impl EventType {
    /// Every type, for docs and filters.
    pub const ALL: [EventType; 15] = [
        EventType::SessionCreated,
        EventType::SessionUpdated,
        EventType::SessionStarted,
        EventType::SessionDelayed,
        EventType::SessionEndingSoon,
        EventType::SessionCompleted,
        EventType::SessionCancelled,
        EventType::SessionExpired,
        EventType::SessionReopened,
        EventType::SessionDeleted,
        EventType::SessionPurged,
        EventType::ParticipantJoined,
        EventType::ParticipantLeft,
        EventType::ParticipantOffline,
        EventType::ConfigReloaded,
    ];

    /// The dotted name, e.g. `session.created`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::SessionCreated => "session.created",
            EventType::SessionUpdated => "session.updated",
            EventType::SessionStarted => "session.started",
            EventType::SessionDelayed => "session.delayed",
            EventType::SessionEndingSoon => "session.ending_soon",
            EventType::SessionCompleted => "session.completed",
            EventType::SessionCancelled => "session.cancelled",
            EventType::SessionExpired => "session.expired",
            EventType::SessionReopened => "session.reopened",
            EventType::SessionDeleted => "session.deleted",
            EventType::SessionPurged => "session.purged",
            EventType::ParticipantJoined => "participant.joined",
            EventType::ParticipantLeft => "participant.left",
            EventType::ParticipantOffline => "participant.offline",
            EventType::ConfigReloaded => "config.reloaded",
        }
    }

    /// Reads a dotted name.
    pub fn parse(text: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

impl Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        EventType::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown event type `{text}`")))
    }
}

/// An event as the lifecycle produces it, before it is numbered and stored.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    /// What happened.
    pub event_type: EventType,
    /// When it happened: for a rule, its deadline.
    pub at: Timestamp,
    /// The session it concerns.
    pub session_id: SessionId,
    /// That session's kind.
    pub kind: String,
    /// Who did it: a user id, `rule:<name>`, or `system`.
    pub actor: String,
    /// The rule that did it, if any.
    pub rule: Option<String>,
    /// Type-specific details.
    pub data: EventData,
}

/// An event's details, as the JSON text they are stored as: written once, where the event is
/// made (a transition's copy of its session goes straight to text, with no tree between), and
/// read back as text too: every reader of an event (streams, webhooks, pages of the API)
/// sends the details on as they are, so none of them builds a tree it would only write out
/// again.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventData(Box<serde_json::value::RawValue>);

impl EventData {
    /// `value` as JSON text.
    pub fn of<T: Serialize + ?Sized>(value: &T) -> EventData {
        // The model's types serialize to JSON whole (string keys only); `null` would stand in
        // for anything that did not.
        EventData(
            serde_json::value::to_raw_value(value)
                .unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned()),
        )
    }

    /// Stored text, checked to be one JSON value (a scan, no tree built).
    pub fn from_text(text: String) -> Result<EventData, serde_json::Error> {
        serde_json::value::RawValue::from_string(text).map(EventData)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }
}

impl From<serde_json::Value> for EventData {
    fn from(value: serde_json::Value) -> EventData {
        EventData::of(&value)
    }
}

impl PartialEq for EventData {
    fn eq(&self, other: &EventData) -> bool {
        self.as_str() == other.as_str()
    }
}

/// A stored event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Increases with every event.
    pub seq: i64,
    /// Stable across redeliveries (UUIDv7).
    pub id: String,
    /// What happened.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// When it happened (a rule's deadline).
    pub at: Timestamp,
    /// When lapse recorded it; `applied_at - at` is the engine's lag.
    pub applied_at: Timestamp,
    /// The session.
    pub session_id: SessionId,
    /// Its kind.
    pub kind: String,
    /// Who did it.
    pub actor: String,
    /// The rule, if a rule did it.
    pub rule: Option<String>,
    /// Details.
    pub data: EventData,
}

/// A notification as the lifecycle produces it.
#[derive(Clone, Debug, PartialEq)]
pub struct NewNotification {
    /// To whom.
    pub user: UserId,
    /// E.g. `session.ended`.
    pub notification_type: String,
    /// Headline.
    pub title: String,
    /// Body text.
    pub message: String,
    /// The session it is about.
    pub session: SessionId,
    /// Where the app shows more.
    pub link: Option<String>,
    /// When.
    pub created_at: Timestamp,
}

/// A stored notification in a user's inbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Its id.
    pub id: String,
    /// To whom.
    pub user: UserId,
    /// E.g. `session.ended`.
    #[serde(rename = "type")]
    pub notification_type: String,
    /// Headline.
    pub title: String,
    /// Body text.
    pub message: String,
    /// The session it is about.
    pub session: SessionId,
    /// Where the app shows more.
    pub link: Option<String>,
    /// When.
    pub created_at: Timestamp,
    /// When the user read it.
    pub read_at: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event as the API shows it reads back as the same event, from its text or from a
    /// tree (a client that first parsed the page), its details as they were written.
    #[test]
    fn an_event_reads_back_from_its_json_with_its_details_as_written() {
        let event = Event {
            seq: 7,
            id: "ev-1".into(),
            event_type: EventType::SessionExpired,
            at: Timestamp::from_millis(1_000),
            applied_at: Timestamp::from_millis(1_250),
            session_id: SessionId::parse("s1").unwrap(),
            kind: "study".into(),
            actor: "rule:idle".into(),
            rule: Some("idle".into()),
            data: EventData::from_text(r#"{"to":"expired","from":"active"}"#.into()).unwrap(),
        };
        let text = serde_json::to_string(&event).unwrap();
        assert!(
            text.contains(r#""data":{"to":"expired","from":"active"}"#),
            "{text}"
        );
        let from_text: Event = serde_json::from_str(&text).unwrap();
        assert_eq!(from_text, event);
        let from_tree: Event = serde_json::from_value(serde_json::to_value(&event).unwrap())
            .expect("an event reads from a parsed tree too");
        assert_eq!(from_tree.event_type, event.event_type);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(from_tree.data.as_str()).unwrap(),
            serde_json::json!({"to": "expired", "from": "active"})
        );
    }
}
