//! Why each rule of a kind does or does not apply to a session, in words an operator can act
//! on. `GET /v1/sessions/{id}/explain` and `lapse explain` print this.

use serde::Serialize;

use crate::config::Kind;
use crate::rules::{Rule, Trigger};
use crate::session::{Session, Status};
use crate::time::Timestamp;

/// One rule, judged against one session at one instant.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RuleExplanation {
    /// The rule's name.
    pub rule: String,
    /// Its trigger.
    pub on: Trigger,
    /// Its action.
    #[serde(rename = "do")]
    pub action: String,
    /// Whether its trigger holds and its action can act now.
    pub applies: bool,
    /// When it fires, if it applies.
    pub deadline: Option<Timestamp>,
    /// Whether `now` has reached the deadline.
    pub due: bool,
    /// The reason, in words.
    pub why: String,
}

/// Judges every rule of `kind` against `s` at `now`, in config order.
pub fn explain(kind: &Kind, s: &Session, now: Timestamp) -> Vec<RuleExplanation> {
    kind.rules.iter().map(|r| one(kind, r, s, now)).collect()
}

fn one(kind: &Kind, rule: &Rule, s: &Session, now: Timestamp) -> RuleExplanation {
    let deadline = rule.deadline(kind, s);
    let why = match deadline {
        Some(at) => {
            let anchor = anchor_text(rule.on, s);
            let when = if at <= now {
                format!("due since {at}")
            } else {
                format!("fires at {at}, in {}", at.since(now))
            };
            format!("{anchor} + {} → {when}", rule.after)
        }
        None if !rule.action.valid_from(s.status) => format!(
            "`{}` cannot act on a {} session",
            rule.action.as_str(),
            s.status.as_str()
        ),
        None => condition_unmet(kind, rule.on, s),
    };
    RuleExplanation {
        rule: rule.name.clone(),
        on: rule.on,
        action: rule.action.as_str().to_string(),
        applies: deadline.is_some(),
        deadline,
        due: deadline.is_some_and(|at| at <= now),
        why,
    }
}

fn anchor_text(on: Trigger, s: &Session) -> String {
    let show = |t: Option<Timestamp>| t.map_or("?".to_string(), |t| t.to_string());
    match on {
        Trigger::Unused => format!("pending and never used since created_at {}", s.created_at),
        Trigger::Pending => format!("pending since created_at {}", s.created_at),
        Trigger::StartMissed => format!("not started; scheduled_start {}", show(s.scheduled_start)),
        Trigger::ScheduledEnd => format!("active on time; scheduled_end {}", show(s.scheduled_end)),
        Trigger::ActiveFor => format!("active since started_at {}", show(s.started_at)),
        Trigger::Idle => format!("silent since last_activity_at {}", s.last_activity_at),
        Trigger::ParentEnded => format!("parent ended at {}", show(s.parent_ended_at)),
        Trigger::Orphaned => format!("no open parent; created_at {}", s.created_at),
        Trigger::Ended => format!("ended at {}", show(s.ended_at)),
    }
}

fn condition_unmet(kind: &Kind, on: Trigger, s: &Session) -> String {
    let status = s.status.as_str();
    match on {
        Trigger::Unused if s.used => "the session has been used".into(),
        Trigger::Unused | Trigger::Pending => {
            format!("needs a pending session; this one is {status}")
        }
        Trigger::StartMissed if s.scheduled_start.is_none() => "no scheduled_start".into(),
        Trigger::StartMissed => format!("needs a pending session; this one is {status}"),
        Trigger::ScheduledEnd if s.delayed => {
            "a delayed session stays active until ended by hand".into()
        }
        Trigger::ScheduledEnd if s.scheduled_end.is_none() => "no scheduled_end".into(),
        Trigger::ScheduledEnd | Trigger::ActiveFor => {
            format!("needs an active session; this one is {status}")
        }
        Trigger::Idle => format!("needs an open session; this one is {status}"),
        Trigger::ParentEnded if s.parent.is_none() => "the session has no parent".into(),
        Trigger::ParentEnded if s.status.is_open() => "the parent is still open".into(),
        Trigger::Orphaned if kind.parent_kind.is_none() => "the kind has no parent_kind".into(),
        Trigger::Orphaned if s.status.is_open() => "the parent is still open".into(),
        Trigger::ParentEnded | Trigger::Orphaned => {
            format!("needs an open session; this one is {status}")
        }
        Trigger::Ended if s.status == Status::Pending || s.status == Status::Active => {
            format!("needs an ended session; this one is {status}")
        }
        Trigger::Ended => "no end time".into(),
    }
}
