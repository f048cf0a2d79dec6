//! Rules: a trigger (`on`), a delay (`after`) and an action (`do`). Each trigger gives a
//! deadline while its condition holds; [`next_due`] finds the earliest ([`earliest`]:
//! ties in config order), which fires once `now` reaches it.

use serde::{Deserialize, Serialize};

use crate::config::Kind;
use crate::session::{NextDue, Session, Status};
use crate::time::{Span, Timestamp};

/// What a rule waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Pending and never used: `created_at + after`.
    Unused,
    /// Pending: `created_at + after`.
    Pending,
    /// Pending with a scheduled start: `scheduled_start + after`.
    StartMissed,
    /// Active, not delayed, with a scheduled end: `scheduled_end + after`.
    ScheduledEnd,
    /// Active: `started_at + after`.
    ActiveFor,
    /// Open: `last_activity_at + after`.
    Idle,
    /// Open, with a parent that ended or was deleted: that moment `+ after`.
    ParentEnded,
    /// Open, of a kind with `parent_kind`, without an open parent: `created_at + after`.
    Orphaned,
    /// Ended: `ended_at + after`.
    Ended,
}

/// What a rule does when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// pending → active, `delayed = true`.
    StartDelayed,
    /// active → completed, with a summary.
    Complete,
    /// open → expired, data kept.
    Expire,
    /// open → cancelled.
    Cancel,
    /// Removes the session.
    Delete,
    /// Removes an ended session (retention).
    Purge,
}

impl Action {
    /// The name used in config and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::StartDelayed => "start_delayed",
            Action::Complete => "complete",
            Action::Expire => "expire",
            Action::Cancel => "cancel",
            Action::Delete => "delete",
            Action::Purge => "purge",
        }
    }

    /// Whether the action can act on a session in `status`.
    pub fn valid_from(self, status: Status) -> bool {
        match self {
            Action::StartDelayed => status == Status::Pending,
            Action::Complete => status == Status::Active,
            Action::Expire | Action::Cancel => status.is_open(),
            Action::Delete => true,
            Action::Purge => !status.is_open(),
        }
    }
}

impl Trigger {
    /// The name used in config and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Unused => "unused",
            Trigger::Pending => "pending",
            Trigger::StartMissed => "start_missed",
            Trigger::ScheduledEnd => "scheduled_end",
            Trigger::ActiveFor => "active_for",
            Trigger::Idle => "idle",
            Trigger::ParentEnded => "parent_ended",
            Trigger::Orphaned => "orphaned",
            Trigger::Ended => "ended",
        }
    }

    /// The statuses in which this trigger can hold.
    fn statuses(self) -> &'static [Status] {
        use Status::*;
        match self {
            Trigger::Unused | Trigger::Pending | Trigger::StartMissed => &[Pending],
            Trigger::ScheduledEnd | Trigger::ActiveFor => &[Active],
            Trigger::Idle | Trigger::ParentEnded | Trigger::Orphaned => &[Pending, Active],
            Trigger::Ended => &[Completed, Cancelled, Expired],
        }
    }

    /// Whether `action` can ever follow this trigger: some status in which the trigger holds
    /// must be one the action can act on.
    pub fn allows(self, action: Action) -> bool {
        self.statuses().iter().any(|s| action.valid_from(*s))
    }

    /// Explains a refusal of [`Trigger::allows`].
    pub fn why_not(self, action: Action) -> String {
        let states: Vec<_> = self.statuses().iter().map(|s| s.as_str()).collect();
        format!(
            "`{}` holds only while the session is {}, and `{}` cannot act on that",
            self.as_str(),
            states.join(" or "),
            action.as_str()
        )
    }

    /// The deadline this trigger gives `session`, or `None` while its condition does not hold.
    pub fn deadline(self, kind: &Kind, s: &Session, after: Span) -> Option<Timestamp> {
        let open = s.status.is_open();
        let anchor = match self {
            Trigger::Unused => (s.status == Status::Pending && !s.used).then_some(s.created_at),
            Trigger::Pending => (s.status == Status::Pending).then_some(s.created_at),
            Trigger::StartMissed => s.scheduled_start.filter(|_| s.status == Status::Pending),
            Trigger::ScheduledEnd => s
                .scheduled_end
                .filter(|_| s.status == Status::Active && !s.delayed),
            Trigger::ActiveFor => s.started_at.filter(|_| s.status == Status::Active),
            Trigger::Idle => open.then_some(s.last_activity_at),
            Trigger::ParentEnded => s.parent_ended_at.filter(|_| open && s.parent.is_some()),
            Trigger::Orphaned => {
                let without_open_parent = s.parent.is_none() || s.parent_ended_at.is_some();
                if open && kind.parent_kind.is_some() && without_open_parent {
                    // The deadline never comes before the parent's end: a session cannot be
                    // orphaned at a moment its parent was still open.
                    let at = s.created_at + after;
                    return Some(s.parent_ended_at.map_or(at, |p| at.max(p)));
                }
                None
            }
            Trigger::Ended => s.ended_at.filter(|_| !open),
        }?;
        Some(anchor + after)
    }
}

/// One rule of a kind.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rule {
    /// Unique within its kind.
    pub name: String,
    /// The trigger.
    pub on: Trigger,
    /// Delay after the trigger's anchor.
    pub after: Span,
    /// The action.
    #[serde(rename = "do")]
    pub action: Action,
    /// Warn this long before the deadline.
    pub warn_before: Option<Span>,
}

impl Rule {
    /// The rule's deadline for `session`, when it applies: the trigger holds and the action
    /// can act on the session's current status.
    pub fn deadline(&self, kind: &Kind, session: &Session) -> Option<Timestamp> {
        if !self.action.valid_from(session.status) {
            return None;
        }
        self.on.deadline(kind, session, self.after)
    }
}

/// The earliest deadline among the kind's rules (ties: config order).
pub fn next_due(kind: &Kind, session: &Session) -> Option<NextDue> {
    earliest(kind, session).map(|(rule, at)| NextDue {
        rule: rule.name.clone(),
        at,
    })
}

/// The rule with the earliest deadline (ties: config order), and that deadline.
pub fn earliest<'k>(kind: &'k Kind, session: &Session) -> Option<(&'k Rule, Timestamp)> {
    let mut best: Option<(&Rule, Timestamp)> = None;
    for rule in &kind.rules {
        if let Some(at) = rule.deadline(kind, session)
            && best.is_none_or(|(_, b)| at < b)
        {
            best = Some((rule, at));
        }
    }
    best
}
