//! What people do in a session: join (directly or by invite) and leave, beat, and count
//! activity.

use serde_json::json;

use super::{By, Effects, MAX_ACTIVITY_COUNT, OpError, invalid, validation};
use crate::config::Kind;
use crate::event::EventType;
use crate::ids::UserId;
use crate::session::{Participant, ParticipantState, Role, Session};
use crate::time::Timestamp;

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
        return Err(OpError::Conflict(format!(
            "`{user}` cannot join `{}` as host: `{}` hosts it",
            s.id, s.host
        )));
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
    // One walk of the room finds the user; the rest goes by position.
    let found = s.participants.iter().position(|p| &p.user == user);
    if let Some(i) = found
        && s.participants[i].state == ParticipantState::Joined
    {
        return Ok(s.participants[i].clone());
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
    let i = match found {
        Some(i) => {
            let p = &mut s.participants[i];
            p.state = ParticipantState::Joined;
            p.joined_at = now;
            p.left_at = None;
            p.last_seen_at = now;
            i
        }
        None => {
            s.participants
                .push(Participant::joined(user.clone(), role, now));
            s.participants.len() - 1
        }
    };
    let i = s.place(i);
    s.touch(None, now);
    let data = json!({ "user": user, "role": role, "via": if via == Via::Invite { "invite" } else { "direct" } });
    fx.event(s, EventType::ParticipantJoined, now, by, None, data);
    s.observe(kind, now);
    Ok(s.participants[i].clone())
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
    // A count of 0 records activity without counting anything (the console's "extend").
    if count != 0 {
        let entry = s.counters.entry(name.to_string()).or_insert(0);
        *entry = entry.saturating_add(count);
    }
    s.used = true;
    s.touch(user, now);
    Ok(())
}
