//! What people do to a session: create it, start, end, cancel or reopen it, change it,
//! delete it. What they do in it (join, leave, beat) is `presence`'s.

use std::collections::BTreeMap;

use serde_json::json;

use super::due::{finish, remove};
use super::{
    By, Effects, NewSession, OpError, ParentInfo, check_metadata, check_schedule, check_title,
    invalid,
};
use crate::config::Kind;
use crate::event::EventType;
use crate::ids::SessionId;
use crate::session::{Participant, ParticipantState, Role, Session, Status};
use crate::time::Timestamp;

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
        return Err(OpError::Conflict(format!(
            "parent: a `{}` session belongs to a `{wanted}`, not a `{}`",
            kind.name, info.kind
        )));
    }
    let host = Participant::joined(input.host.clone(), Role::Host, now);
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
        participants: vec![host].into(),
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
