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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::ids::SessionId;
    use crate::lifecycle::{self, By, Effects, NewSession};
    use crate::time::Span;

    /// Idle for 10 minutes expires; active for 11 warns 59 s before it completes, so the
    /// warning comes a second after an idle session expired. Presence lapses come later.
    const KIND: &str = r#"
[kinds.room]
presence_timeout = "1h"
[[kinds.room.rules]]
name = "expire-idle"
on = "idle"
after = "10m"
do = "expire"
[[kinds.room.rules]]
name = "end-long"
on = "active_for"
after = "11m"
do = "complete"
warn_before = "59s"
"#;

    fn started_room(kind: &Kind, t0: Timestamp) -> Session {
        let input = NewSession {
            title: None,
            metadata: None,
            host: UserId::parse("host").unwrap(),
            parent: None,
            scheduled_start: None,
            scheduled_end: None,
        };
        let by = By::system();
        let mut fx = Effects::default();
        let id = SessionId::parse("room").unwrap();
        let mut s = lifecycle::create(kind, id, input, None, t0, &by, &mut fx).unwrap();
        lifecycle::start(kind, &mut s, t0, &by, &mut fx).unwrap();
        s
    }

    /// The events applying the agenda at each of `sweeps` writes.
    fn events(kind: &Kind, s: &mut Session, sweeps: &[Timestamp]) -> Vec<(String, Timestamp)> {
        let mut fx = Effects::default();
        for now in sweeps {
            lifecycle::apply_due(kind, s, *now, &mut fx);
        }
        fx.events
            .iter()
            .map(|e| (e.event_type.as_str().to_string(), e.at))
            .collect()
    }

    #[test]
    fn nothing_stamped_after_an_idle_rule_in_its_grace_goes_first() {
        let mut kind = Config::parse(KIND, "agenda.toml").unwrap().kinds["room"].clone();
        kind.idle_grace = Span::from_secs(2);
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let expired = t0 + Span::from_secs(600);
        let (in_grace, after) = (
            expired + Span::from_millis(1_500),
            expired + Span::from_secs(3),
        );

        let mut swept_in_grace = started_room(&kind, t0);
        assert_eq!(
            wake_at(&kind, &swept_in_grace, t0),
            Some(expired + kind.idle_grace),
            "the sweeper wakes when the idle rule is ready, not for the warning behind it"
        );
        let twice = events(&kind, &mut swept_in_grace, &[in_grace, after]);
        let mut swept_once = started_room(&kind, t0);
        let once = events(&kind, &mut swept_once, &[after]);

        assert_eq!(twice, once, "the same whenever the sweeps came");
        assert_eq!(once, vec![("session.expired".to_string(), expired)]);
    }
}
