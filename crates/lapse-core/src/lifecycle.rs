//! Every change a session can go through, by hand or by a rule, as pure functions on a
//! [`Session`]. Each records what it caused (events, notifications, a deletion) in
//! [`Effects`], which the engine commits with the session in one transaction.
//!
//! The functions check state and business rules only (409/410); who may call them is the
//! engine's concern.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::agenda::{self, Item};
use crate::config::Kind;
use crate::event::{EventType, NewEvent, NewNotification};
use crate::ids::{SessionId, UserId};
use crate::rules::{Action, Rule};
use crate::session::{Participant, ParticipantState, Role, Session, Status, Summary};
use crate::time::{Span, Timestamp};

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
        data: serde_json::Value,
    ) {
        self.events.push(NewEvent {
            event_type: t,
            at,
            session_id: s.id.clone(),
            kind: s.kind.clone(),
            actor: by.label.clone(),
            rule: rule.map(|r| r.name.clone()),
            data,
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
        let data = json!({ "from": from, "to": s.status, "session": s });
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

/// Builds a new pending session with its host joined.
pub fn create(
    kind: &Kind,
    id: SessionId,
    input: NewSession,
    parent: Option<ParentInfo>,
    now: Timestamp,
    by: &By,
    fx: &mut Effects,
) -> Result<Session, OpError> {
    let title = input.title.unwrap_or_default();
    check_title(&title)?;
    let metadata = input.metadata.unwrap_or_default();
    check_metadata(&metadata)?;
    check_schedule(input.scheduled_start, input.scheduled_end)?;
    if let (Some(info), Some(wanted)) = (&parent, &kind.parent_kind)
        && &info.kind != wanted
    {
        return Err(validation(
            "parent",
            format!(
                "a `{}` session belongs to a `{wanted}`, not a `{}`",
                kind.name, info.kind
            ),
        ));
    }
    let host = Participant {
        user: input.host.clone(),
        role: Role::Host,
        state: ParticipantState::Joined,
        online: true,
        joined_at: now,
        left_at: None,
        last_seen_at: now,
        offline_for: None,
    };
    let mut s = Session {
        id,
        kind: kind.name.clone(),
        title,
        metadata,
        host: input.host,
        parent: input.parent,
        scheduled_start: input.scheduled_start,
        scheduled_end: input.scheduled_end,
        status: Status::Pending,
        delayed: false,
        used: false,
        created_at: now,
        started_at: None,
        ended_at: None,
        last_activity_at: now,
        end_reason: None,
        ended_by: None,
        counters: BTreeMap::new(),
        participants: vec![host],
        next_due: None,
        wake_at: None,
        warnings: BTreeMap::new(),
        summary: None,
        parent_ended_at: parent.and_then(|p| p.ended_at),
        version: 0,
    };
    fx.session_event(
        kind,
        &mut s,
        EventType::SessionCreated,
        Status::Pending,
        now,
        by,
        None,
    );
    let joined = json!({ "user": s.host, "role": Role::Host });
    fx.event(&s, EventType::ParticipantJoined, now, by, None, joined);
    Ok(s)
}

/// Works through the session's agenda up to `now`: every rule due (earliest deadline first,
/// each stamped at its deadline, re-evaluating after each transition), every warning and
/// every presence lapse, in time order, until nothing is due or the session is gone.
pub fn apply_due(kind: &Kind, s: &mut Session, now: Timestamp, fx: &mut Effects) {
    // Effects never predate what already happened to the session (a booking created after
    // its scheduled start starts when it was created, not before).
    let mut floor = s
        .created_at
        .max(s.started_at.unwrap_or(s.created_at))
        .max(s.ended_at.unwrap_or(s.created_at));
    // Each step moves the status forward, deletes, or settles one warning or one lapse, so
    // the agenda empties; the bound only guards against a future item that does not.
    let bound = 16 + kind.rules.len() + s.participants.len();
    for _ in 0..bound {
        if fx.deleted_at.is_some() {
            return;
        }
        let Some(entry) = agenda::next_ready(kind, s, now) else {
            return;
        };
        let at = entry.at.max(floor);
        match entry.item {
            Item::Fire { rule, .. } => {
                floor = at;
                apply_rule(kind, s, rule, at, fx);
            }
            Item::Warn { rule, deadline } => warn(kind, s, rule, deadline, entry.at, fx),
            Item::Offline { user } => went_offline(s, &user, entry.at, fx),
        }
    }
}

/// `session.ending_soon`: once per rule and deadline, to everyone still in the session.
fn warn(
    kind: &Kind,
    s: &mut Session,
    rule: &Rule,
    deadline: Timestamp,
    at: Timestamp,
    fx: &mut Effects,
) {
    s.warnings.insert(rule.name.clone(), deadline);
    let by = By::rule(&rule.name);
    let left = deadline.since(at);
    let data =
        json!({ "deadline": deadline, "action": rule.action.as_str(), "in_seconds": left.secs() });
    fx.event(s, EventType::SessionEndingSoon, at, &by, Some(rule), data);
    let title = format!("{} Session Ending Soon", capitalized(&kind.name));
    let name = if s.title.is_empty() {
        s.id.to_string()
    } else {
        s.title.clone()
    };
    let message = format!("\"{name}\" will end in {left} ({}).", rule.on.as_str());
    for p in s
        .participants
        .iter()
        .filter(|p| p.state == ParticipantState::Joined)
    {
        fx.notifications.push(NewNotification {
            user: p.user.clone(),
            notification_type: "session.ending_soon".into(),
            title: title.clone(),
            message: message.clone(),
            session: s.id.clone(),
            link: None,
            created_at: at,
        });
    }
}

/// `participant.offline`: once per lapse of `presence_timeout`.
fn went_offline(s: &mut Session, user: &UserId, at: Timestamp, fx: &mut Effects) {
    let Some(p) = s.participant_mut(user) else {
        return;
    };
    p.offline_for = Some(p.last_seen_at);
    p.online = false;
    let data = json!({ "user": user, "last_seen_at": p.last_seen_at });
    fx.event(
        s,
        EventType::ParticipantOffline,
        at,
        &By::system(),
        None,
        data,
    );
}

fn apply_rule(kind: &Kind, s: &mut Session, rule: &Rule, at: Timestamp, fx: &mut Effects) {
    let by = By::rule(&rule.name);
    let from = s.status;
    let reason = rule.on.as_str();
    match rule.action {
        Action::StartDelayed => {
            s.status = Status::Active;
            s.delayed = true;
            s.used = true;
            s.started_at = Some(at);
            s.touch(None, at);
            fx.session_event(
                kind,
                s,
                EventType::SessionDelayed,
                from,
                at,
                &by,
                Some(rule),
            );
        }
        Action::Complete => finish(kind, s, Status::Completed, at, &by, reason, Some(rule), fx),
        Action::Expire => finish(kind, s, Status::Expired, at, &by, reason, Some(rule), fx),
        Action::Cancel => finish(kind, s, Status::Cancelled, at, &by, reason, Some(rule), fx),
        Action::Delete => remove(kind, s, EventType::SessionDeleted, at, &by, Some(rule), fx),
        Action::Purge => remove(kind, s, EventType::SessionPurged, at, &by, Some(rule), fx),
    }
    let to = if fx.deleted_at.is_some() {
        "deleted".to_string()
    } else {
        s.status.as_str().to_string()
    };
    fx.applied.push(Applied {
        session: s.id.clone(),
        kind: s.kind.clone(),
        rule: rule.name.clone(),
        action: rule.action.as_str().to_string(),
        from,
        to,
        due_at: at,
    });
}

/// Ends an open session: summary, participants out, notifications, one event.
#[allow(clippy::too_many_arguments)]
fn finish(
    kind: &Kind,
    s: &mut Session,
    to: Status,
    at: Timestamp,
    by: &By,
    reason: &str,
    rule: Option<&Rule>,
    fx: &mut Effects,
) {
    let from = s.status;
    let ended_by = by.user.as_ref().map_or(by.label.clone(), |u| u.to_string());
    let still_joined: Vec<UserId> = s
        .participants
        .iter()
        .filter(|p| p.state == ParticipantState::Joined)
        .map(|p| p.user.clone())
        .collect();
    s.status = to;
    s.ended_at = Some(at);
    s.ended_by = Some(ended_by.clone());
    s.end_reason = Some(reason.to_string());
    for p in &mut s.participants {
        if p.state == ParticipantState::Joined {
            p.state = ParticipantState::Left;
            p.left_at = Some(at);
        }
    }
    let duration = s.started_at.map_or(Span::ZERO, |start| at.since(start));
    s.summary = Some(Summary {
        duration_seconds: duration.secs(),
        duration_minutes: duration.secs() / 60,
        participants: s.participants.len() as i64,
        counters: s.counters.clone(),
        ended_by,
        end_reason: reason.to_string(),
    });
    if kind.notify_on_end {
        let title = format!("{} Session Ended", capitalized(&kind.name));
        let name = if s.title.is_empty() {
            s.id.to_string()
        } else {
            s.title.clone()
        };
        let message = format!(
            "\"{name}\" ended after {}.",
            Span::from_secs(duration.secs())
        );
        let link = kind
            .summary_url
            .as_ref()
            .map(|u| u.replace("{id}", s.id.as_str()));
        for user in still_joined
            .into_iter()
            .filter(|u| Some(u) != by.user.as_ref())
        {
            fx.notifications.push(NewNotification {
                user,
                notification_type: "session.ended".into(),
                title: title.clone(),
                message: message.clone(),
                session: s.id.clone(),
                link: link.clone(),
                created_at: at,
            });
        }
    }
    let t = match to {
        Status::Completed => EventType::SessionCompleted,
        Status::Expired => EventType::SessionExpired,
        _ => EventType::SessionCancelled,
    };
    if from.is_open() {
        fx.closed_at.get_or_insert(at);
    }
    fx.session_event(kind, s, t, from, at, by, rule);
}

fn remove(
    kind: &Kind,
    s: &mut Session,
    t: EventType,
    at: Timestamp,
    by: &By,
    rule: Option<&Rule>,
    fx: &mut Effects,
) {
    let from = s.status;
    s.observe(kind, at);
    let data = json!({ "from": from, "to": "deleted", "session": s });
    fx.event(s, t, at, by, rule, data);
    fx.deleted_at = Some(at);
    fx.closed_at.get_or_insert(at);
}

fn capitalized(name: &str) -> String {
    let mut chars = name.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// The host starts a pending session.
pub fn start(
    kind: &Kind,
    s: &mut Session,
    now: Timestamp,
    by: &By,
    fx: &mut Effects,
) -> Result<(), OpError> {
    if s.status != Status::Pending {
        return Err(invalid(s, "start"));
    }
    s.status = Status::Active;
    s.delayed = false;
    s.used = true;
    s.started_at = Some(now);
    s.touch(by.user.as_ref(), now);
    fx.session_event(
        kind,
        s,
        EventType::SessionStarted,
        Status::Pending,
        now,
        by,
        None,
    );
    Ok(())
}

/// The host ends an active session: it completes with a summary.
pub fn end(
    kind: &Kind,
    s: &mut Session,
    now: Timestamp,
    by: &By,
    fx: &mut Effects,
) -> Result<(), OpError> {
    if s.status != Status::Active {
        return Err(invalid(s, "end"));
    }
    finish(
        kind,
        s,
        Status::Completed,
        now,
        by,
        "ended_by_host",
        None,
        fx,
    );
    Ok(())
}

/// The host calls off an open session.
pub fn cancel(
    kind: &Kind,
    s: &mut Session,
    now: Timestamp,
    by: &By,
    fx: &mut Effects,
) -> Result<(), OpError> {
    if !s.status.is_open() {
        return Err(invalid(s, "cancel"));
    }
    finish(
        kind,
        s,
        Status::Cancelled,
        now,
        by,
        "cancelled_by_host",
        None,
        fx,
    );
    Ok(())
}

/// The host takes back an end they made, within the kind's `reopen_window`.
pub fn reopen(
    kind: &Kind,
    s: &mut Session,
    now: Timestamp,
    by: &By,
    fx: &mut Effects,
) -> Result<(), OpError> {
    let Some(window) = kind.reopen_window else {
        return Err(OpError::InvalidTransition(format!(
            "sessions of kind `{}` cannot be reopened (no reopen_window)",
            kind.name
        )));
    };
    let by_host = s.ended_by.as_deref() == Some(s.host.as_str());
    let (Status::Completed, true, Some(ended_at)) = (s.status, by_host, s.ended_at) else {
        return Err(OpError::InvalidTransition(format!(
            "only a session completed by its host can be reopened; `{}` is {}",
            s.id,
            s.status.as_str()
        )));
    };
    if now.since(ended_at) > window {
        return Err(OpError::InvalidTransition(format!(
            "the reopen window of {window} after the end has passed"
        )));
    }
    for p in &mut s.participants {
        if p.left_at == Some(ended_at) {
            p.state = ParticipantState::Joined;
            p.left_at = None;
            p.last_seen_at = p.last_seen_at.max(now);
        }
    }
    s.status = Status::Active;
    s.ended_at = None;
    s.ended_by = None;
    s.end_reason = None;
    s.summary = None;
    s.touch(by.user.as_ref(), now);
    fx.session_event(
        kind,
        s,
        EventType::SessionReopened,
        Status::Completed,
        now,
        by,
        None,
    );
    Ok(())
}

/// How a user arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Directly.
    Direct,
    /// Through an invite link, which expires.
    Invite,
}

/// A user joins (or rejoins) an open session.
#[allow(clippy::too_many_arguments)]
pub fn join(
    kind: &Kind,
    s: &mut Session,
    user: &UserId,
    role: Option<Role>,
    via: Via,
    now: Timestamp,
    by: &By,
    fx: &mut Effects,
) -> Result<Participant, OpError> {
    if role == Some(Role::Host) && user != &s.host {
        return Err(validation("role", "only the session's host joins as host"));
    }
    if via == Via::Invite {
        if !s.status.is_open() {
            return Err(OpError::InviteExpired(
                "This invitation link has expired: the session has ended.".into(),
            ));
        }
        if let Some(expiry) = kind.invite_expiry
            && now.since(s.last_activity_at) > expiry
        {
            return Err(OpError::InviteExpired(format!(
                "This invitation link has expired. Sessions become inactive after {expiry} of no activity."
            )));
        }
    }
    if !s.status.is_open() {
        return Err(invalid(s, "join"));
    }
    if let Some(p) = s.participant(user)
        && p.state == ParticipantState::Joined
    {
        return Ok(p.clone());
    }
    if let Some(max) = kind.max_participants
        && s.joined_count() >= max as usize
    {
        return Err(OpError::SessionFull(format!(
            "session `{}` is full ({max} participants)",
            s.id
        )));
    }
    let role = if user == &s.host {
        Role::Host
    } else {
        Role::Member
    };
    match s.participant_mut(user) {
        Some(p) => {
            p.state = ParticipantState::Joined;
            p.joined_at = now;
            p.left_at = None;
            p.last_seen_at = now;
        }
        None => s.participants.push(Participant {
            user: user.clone(),
            role,
            state: ParticipantState::Joined,
            online: true,
            joined_at: now,
            left_at: None,
            last_seen_at: now,
            offline_for: None,
        }),
    }
    s.touch(Some(user), now);
    let data = json!({ "user": user, "role": role, "via": if via == Via::Invite { "invite" } else { "direct" } });
    fx.event(s, EventType::ParticipantJoined, now, by, None, data);
    s.observe(kind, now);
    s.participant(user)
        .cloned()
        .ok_or_else(|| OpError::NotParticipant(format!("`{user}` is not in session `{}`", s.id)))
}

/// A participant leaves.
pub fn leave(
    s: &mut Session,
    user: &UserId,
    now: Timestamp,
    by: &By,
    fx: &mut Effects,
) -> Result<(), OpError> {
    let id = s.id.clone();
    let p = s.participant_mut(user).ok_or_else(|| {
        OpError::NotParticipant(format!("`{user}` is not a participant of `{id}`"))
    })?;
    if p.state != ParticipantState::Joined {
        return Err(OpError::InvalidTransition(format!(
            "`{user}` already left `{id}`"
        )));
    }
    p.state = ParticipantState::Left;
    p.left_at = Some(now);
    p.online = false;
    let role = p.role;
    s.touch(None, now);
    fx.event(
        s,
        EventType::ParticipantLeft,
        now,
        by,
        None,
        json!({ "user": user, "role": role }),
    );
    Ok(())
}

/// Checks that `user` may send a heartbeat: the session is open and they are joined.
pub fn check_heartbeat(s: &Session, user: &UserId) -> Result<(), OpError> {
    if !s.status.is_open() {
        return Err(invalid(s, "send a heartbeat to"));
    }
    match s.participant(user) {
        None => Err(OpError::NotParticipant(format!(
            "`{user}` is not a participant of `{}`",
            s.id
        ))),
        Some(p) if p.state != ParticipantState::Joined => Err(OpError::InvalidTransition(format!(
            "`{user}` has left `{}`; join again first",
            s.id
        ))),
        Some(_) => Ok(()),
    }
}

/// Applies a heartbeat of `user` at `at` (already checked).
pub fn heartbeat(s: &mut Session, user: &UserId, at: Timestamp) {
    s.used = true;
    s.touch(Some(user), at);
}

/// Counts an activity (`notes`, `messages`, ...) and marks the session used.
pub fn activity(
    s: &mut Session,
    user: Option<&UserId>,
    name: &str,
    count: i64,
    now: Timestamp,
) -> Result<(), OpError> {
    let ok_name = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !ok_name {
        return Err(validation("type", "1-64 characters of a-z A-Z 0-9 _ - ."));
    }
    if count.abs() > MAX_ACTIVITY_COUNT {
        return Err(validation(
            "count",
            format!("at most {MAX_ACTIVITY_COUNT} at a time"),
        ));
    }
    if !s.status.is_open() {
        return Err(invalid(s, "record activity in"));
    }
    if let Some(u) = user
        && !s.is_joined(u)
    {
        return Err(OpError::InvalidTransition(format!(
            "`{u}` is not joined to `{}`",
            s.id
        )));
    }
    let entry = s.counters.entry(name.to_string()).or_insert(0);
    *entry = entry.saturating_add(count);
    s.used = true;
    s.touch(user, now);
    Ok(())
}

/// Changes to an open session; absent fields stay as they are.
#[derive(Clone, Debug, Default)]
pub struct Patch {
    /// New title.
    pub title: Option<String>,
    /// New metadata (replaces the old).
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// New planned start (`Some(None)` clears it).
    pub scheduled_start: Option<Option<Timestamp>>,
    /// New planned end (`Some(None)` clears it).
    pub scheduled_end: Option<Option<Timestamp>>,
}

/// The host updates an open session.
pub fn update(
    kind: &Kind,
    s: &mut Session,
    patch: Patch,
    now: Timestamp,
    by: &By,
    fx: &mut Effects,
) -> Result<(), OpError> {
    if let Some(t) = &patch.title {
        check_title(t)?;
    }
    if let Some(m) = &patch.metadata {
        check_metadata(m)?;
    }
    let start = patch.scheduled_start.unwrap_or(s.scheduled_start);
    let end = patch.scheduled_end.unwrap_or(s.scheduled_end);
    check_schedule(start, end)?;
    if !s.status.is_open() {
        return Err(invalid(s, "update"));
    }
    let mut changed = Vec::new();
    if let Some(t) = patch.title {
        s.title = t;
        changed.push("title");
    }
    if let Some(m) = patch.metadata {
        s.metadata = m;
        changed.push("metadata");
    }
    if patch.scheduled_start.is_some() {
        s.scheduled_start = start;
        changed.push("scheduled_start");
    }
    if patch.scheduled_end.is_some() {
        s.scheduled_end = end;
        changed.push("scheduled_end");
    }
    let status = s.status;
    s.observe(kind, now);
    let data = json!({ "changed": changed, "from": status, "to": status, "session": s });
    fx.event(s, EventType::SessionUpdated, now, by, None, data);
    Ok(())
}

/// An admin deletes a session, whatever its state.
pub fn delete(kind: &Kind, s: &mut Session, now: Timestamp, by: &By, fx: &mut Effects) {
    remove(kind, s, EventType::SessionDeleted, now, by, None, fx);
}

/// The parent of `s` ended (or was deleted) at `at`: its `parent_ended` and `orphaned`
/// deadlines move. Returns whether anything changed.
pub fn parent_closed(s: &mut Session, at: Timestamp) -> bool {
    if s.parent_ended_at.is_some() {
        return false;
    }
    s.parent_ended_at = Some(at);
    true
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
