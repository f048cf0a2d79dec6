//! Every change a session can go through, by hand or by a rule, as pure functions on a
//! [`Session`]. Each records what it caused (events, notifications, a deletion) in
//! [`Effects`], which the engine commits with the session in one transaction.
//!
//! The functions check state and business rules only (409/410); who may call them is the
//! engine's concern.
//!
//! - `due`: what time does: rules firing, warnings, presence lapses (`apply_due`).
//! - `manual`: what people do to a session: create, start, end, cancel, reopen, update, delete.
//! - `presence`: what they do in it: join, leave, beat, count activity.

use serde::{Deserialize, Serialize};

mod due;
mod manual;
mod presence;

pub use due::apply_due;
pub use manual::{Patch, cancel, create, delete, end, parent_closed, reopen, start, update};
pub use presence::{Via, activity, check_heartbeat, heartbeat, join, leave};

use crate::config::Kind;
use crate::event::{EventData, EventType, NewEvent, NewNotification};
use crate::ids::{SessionId, UserId};
use crate::rules::Rule;
use crate::session::{Session, Status};
use crate::time::Timestamp;

/// Largest `metadata`, serialized.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Longest title, in characters.
pub const MAX_TITLE_CHARS: usize = 500;
/// Largest `count` of one activity.
pub const MAX_ACTIVITY_COUNT: i64 = 1_000_000;

/// Who is making a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct By {
    /// The user, when a user acts.
    pub user: Option<UserId>,
    /// What events record as the actor.
    pub label: String,
}

impl By {
    /// A user acting as themselves.
    pub fn user(user: &UserId) -> By {
        By {
            user: Some(user.clone()),
            label: user.to_string(),
        }
    }

    /// The app's backend or an operator, acting as no particular user.
    pub fn system() -> By {
        By {
            user: None,
            label: "system".into(),
        }
    }

    /// A rule.
    pub fn rule(name: &str) -> By {
        By {
            user: None,
            label: format!("rule:{name}"),
        }
    }
}

/// A state or business rule refused the change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OpError {
    /// The session is not in a state that allows it (409 `invalid_transition`).
    #[error("{0}")]
    InvalidTransition(String),
    /// The invite is no longer good (410 `invite_expired`).
    #[error("{0}")]
    InviteExpired(String),
    /// No room left (409 `session_full`).
    #[error("{0}")]
    SessionFull(String),
    /// A field is wrong (422 `validation_failed`).
    #[error("{field}: {message}")]
    Validation {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The user is not a participant (404 `not_found`).
    #[error("{0}")]
    NotParticipant(String),
    /// A well-formed request the session's own data rules out, such as joining as host when
    /// someone else hosts it (409 `conflict`).
    #[error("{0}")]
    Conflict(String),
}

fn invalid(s: &Session, what: &str) -> OpError {
    OpError::InvalidTransition(format!(
        "cannot {what} session `{}`: it is {}",
        s.id,
        s.status.as_str()
    ))
}

fn validation(field: &'static str, message: impl Into<String>) -> OpError {
    OpError::Validation {
        field,
        message: message.into(),
    }
}

/// One rule that fired, as sweeps and dry runs report it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// The session.
    pub session: SessionId,
    /// Its kind.
    pub kind: String,
    /// The rule.
    pub rule: String,
    /// Its action.
    pub action: String,
    /// Status before.
    pub from: Status,
    /// Status after, or `deleted`.
    pub to: String,
    /// The deadline the effect is stamped with.
    pub due_at: Timestamp,
}

/// What a change caused, to be committed with the session.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Effects {
    /// Events to append.
    pub events: Vec<NewEvent>,
    /// Notifications to deliver to inboxes.
    pub notifications: Vec<NewNotification>,
    /// Rules that fired.
    pub applied: Vec<Applied>,
    /// Set when the session was deleted or purged, to that moment.
    pub deleted_at: Option<Timestamp>,
    /// Set when the session went from open to ended (or gone), to that moment: its children's
    /// `parent_ended` deadlines move.
    pub closed_at: Option<Timestamp>,
}

impl Effects {
    /// Whether anything needs committing.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.notifications.is_empty() && self.deleted_at.is_none()
    }

    fn event(
        &mut self,
        s: &Session,
        t: EventType,
        at: Timestamp,
        by: &By,
        rule: Option<&Rule>,
        data: impl Into<EventData>,
    ) {
        self.events.push(NewEvent {
            event_type: t,
            at,
            session_id: s.id.clone(),
            kind: s.kind.clone(),
            actor: by.label.clone(),
            rule: rule.map(|r| r.name.clone()),
            data: data.into(),
        });
    }

    // Each argument is a distinct fact of the event; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    fn session_event(
        &mut self,
        kind: &Kind,
        s: &mut Session,
        t: EventType,
        from: Status,
        at: Timestamp,
        by: &By,
        rule: Option<&Rule>,
    ) {
        s.observe(kind, at);
        // Keys in the order a JSON object of them always had (alphabetical).
        #[derive(Serialize)]
        struct Change<'a> {
            from: Status,
            session: &'a Session,
            to: Status,
        }
        let data = EventData::of(&Change {
            from,
            session: s,
            to: s.status,
        });
        self.event(s, t, at, by, rule, data);
    }
}

/// What a client asks for when creating a session.
#[derive(Clone, Debug)]
pub struct NewSession {
    /// Its title.
    pub title: Option<String>,
    /// App data.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// The owner.
    pub host: UserId,
    /// The session it belongs to.
    pub parent: Option<SessionId>,
    /// Planned start.
    pub scheduled_start: Option<Timestamp>,
    /// Planned end.
    pub scheduled_end: Option<Timestamp>,
}

/// What the parent of a new session looks like, as the engine found it.
#[derive(Clone, Debug)]
pub struct ParentInfo {
    /// Its kind.
    pub kind: String,
    /// When it ended, if it has.
    pub ended_at: Option<Timestamp>,
}

fn check_title(title: &str) -> Result<(), OpError> {
    if title.chars().count() > MAX_TITLE_CHARS {
        return Err(validation(
            "title",
            format!("at most {MAX_TITLE_CHARS} characters"),
        ));
    }
    Ok(())
}

fn check_metadata(m: &serde_json::Map<String, serde_json::Value>) -> Result<(), OpError> {
    let size = serde_json::to_vec(m).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > MAX_METADATA_BYTES {
        return Err(validation(
            "metadata",
            format!("{size} bytes; at most 16 KiB"),
        ));
    }
    Ok(())
}

fn check_schedule(start: Option<Timestamp>, end: Option<Timestamp>) -> Result<(), OpError> {
    if let (Some(a), Some(b)) = (start, end)
        && b <= a
    {
        return Err(validation("scheduled_end", "must be after scheduled_start"));
    }
    Ok(())
}
