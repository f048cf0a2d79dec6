//! Everything that comes due for a session, in time order: rule firings, the warnings some
//! rules give before they fire, and participants whose presence lapses. The evaluator works
//! through this agenda; the stores index its earliest entry, so the sweeper wakes for each.

use crate::config::Kind;
use crate::ids::UserId;
use crate::rules::{self, Rule, Trigger};
use crate::session::{ParticipantState, Session};
use crate::time::Timestamp;

/// One entry.
#[derive(Clone, Debug, PartialEq)]
pub enum Item<'k> {
    /// A participant went `presence_timeout` without being seen.
    Offline {
        /// Who.
        user: UserId,
    },
    /// A rule with `warn_before` is about to fire.
    Warn {
        /// The rule.
        rule: &'k Rule,
        /// Its deadline.
        deadline: Timestamp,
    },
    /// A rule fires.
    Fire {
        /// The rule.
        rule: &'k Rule,
        /// Its deadline.
        deadline: Timestamp,
    },
}

/// An entry with its times.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry<'k> {
    /// What comes due.
    pub item: Item<'k>,
    /// The time its effects are stamped with.
    pub at: Timestamp,
    /// The earliest moment it may be applied (later than `at` only for idle rules in grace).
    pub ready_at: Timestamp,
}

/// The participant whose presence lapses first, and when (the first to join, on a tie).
/// One walk of the room, nothing copied: a big room pays a comparison per participant.
fn first_offline<'s>(kind: &Kind, s: &'s Session) -> Option<(&'s UserId, Timestamp)> {
    s.participants
        .iter()
        .filter(|p| p.state == ParticipantState::Joined && p.offline_for != Some(p.last_seen_at))
        .map(|p| (&p.user, p.last_seen_at + kind.presence_timeout))
        .min_by_key(|(_, at)| *at)
}

/// The rules' entries as of `now`: warnings, then the earliest firing. A warning whose
/// rule's deadline has already come is moot and left out: nobody is told a session is ending
/// once it has.
fn rule_entries<'k>(kind: &'k Kind, s: &Session, now: Timestamp) -> Vec<Entry<'k>> {
    let mut out = Vec::new();
    for rule in &kind.rules {
        let (Some(warn), Some(deadline)) = (rule.warn_before, rule.deadline(kind, s)) else {
            continue;
        };
        if deadline > now && s.warnings.get(&rule.name) != Some(&deadline) {
            let at = deadline - warn;
            out.push(Entry {
                item: Item::Warn { rule, deadline },
                at,
                ready_at: at,
            });
        }
    }
    if let Some((rule, deadline)) = rules::earliest(kind, s) {
        let grace = if rule.on == Trigger::Idle {
            kind.idle_grace
        } else {
            crate::time::Span::ZERO
        };
        out.push(Entry {
            item: Item::Fire { rule, deadline },
            at: deadline,
            ready_at: deadline + grace,
        });
    }
    out
}

/// The next entry, ready or not: the earliest stamp (ties: presence, then warnings, then
/// rules).
fn next<'k>(kind: &'k Kind, s: &Session, now: Timestamp) -> Option<Entry<'k>> {
    // Of the presence lapses only the first can be next; it goes ahead of any rule entry
    // stamped at the same moment.
    let offline = first_offline(kind, s).map(|(user, at)| Entry {
        item: Item::Offline { user: user.clone() },
        at,
        ready_at: at,
    });
    offline
        .into_iter()
        .chain(rule_entries(kind, s, now))
        .min_by_key(|e| {
            let order = match e.item {
                Item::Offline { .. } => 0,
                Item::Warn { .. } => 1,
                Item::Fire { .. } => 2,
            };
            (e.at, order)
        })
}

/// The entry to apply at `now`: the next one, once it is ready. The agenda is applied in the
/// order of its stamps: while an idle rule is in its grace, nothing stamped after it is
/// applied either, so outcomes never depend on when a sweep ran (a warning or a presence
/// lapse that comes a second after a session expired is not told first because a sweep came
/// in between).
pub fn next_ready<'k>(kind: &'k Kind, s: &Session, now: Timestamp) -> Option<Entry<'k>> {
    next(kind, s, now).filter(|e| e.ready_at <= now)
}

/// When the sweeper should next look at the session: when its next entry is ready.
pub fn wake_at(kind: &Kind, s: &Session, now: Timestamp) -> Option<Timestamp> {
    next(kind, s, now).map(|e| e.ready_at)
}
