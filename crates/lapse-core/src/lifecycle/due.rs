//! What time does to a session: its agenda worked through up to `now`, each effect stamped
//! at its own moment.

use serde_json::json;

use super::{Applied, By, Effects};
use crate::agenda::{self, Item};
use crate::config::Kind;
use crate::event::{EventType, NewNotification};
use crate::ids::UserId;
use crate::rules::{Action, Rule};
use crate::session::{ParticipantState, Session, Status, Summary};
use crate::time::{Span, Timestamp};

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
pub(super) fn finish(
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

pub(super) fn remove(
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

pub(super) fn capitalized(name: &str) -> String {
    let mut chars = name.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}
