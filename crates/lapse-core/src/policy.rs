//! A rules change, judged before it is made (SPEC §10): which kinds it touches, how each rule
//! changes, and what it does to each session's deadlines — earlier, later, unchanged, or due
//! at once. The engine streams sessions through a [`Preview`]; nothing here reads a database.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Kind;
use crate::explain::{self, RuleExplanation};
use crate::ids::SessionId;
use crate::rules::{self, Rule, Trigger};
use crate::session::Session;
use crate::time::{Span, Timestamp};

/// Sessions listed per rule in `fire_now`; the counts cover them all.
pub const FIRE_NOW_LISTED: usize = 100;

/// A kind whose policy differs between the rules in force and the candidate.
#[derive(Clone, Debug)]
pub struct Touched {
    /// Its name.
    pub name: String,
    /// The kind as in force (`None`: the candidate adds it).
    pub current: Option<Kind>,
    /// The kind as the candidate has it (`None`: the candidate removes it).
    pub new: Option<Kind>,
}

impl Touched {
    /// Whether any rule of either side counts from a session's end: then ended sessions are
    /// judged too, not only open ones.
    pub fn judges_ended(&self) -> bool {
        [&self.current, &self.new]
            .into_iter()
            .flatten()
            .flat_map(|k| &k.rules)
            .any(|r| r.on == Trigger::Ended)
    }
}

/// The kinds whose policy differs, in name order. A kind is touched when any of its settings
/// or rules differ (presence and grace included: they move deadlines too).
pub fn touched(current: &BTreeMap<String, Kind>, new: &BTreeMap<String, Kind>) -> Vec<Touched> {
    let same = |a: &Kind, b: &Kind| {
        serde_json::to_value(a).ok() == serde_json::to_value(b).ok() && a.idle_grace == b.idle_grace
    };
    let names: std::collections::BTreeSet<&String> = current.keys().chain(new.keys()).collect();
    names
        .into_iter()
        .filter_map(|name| {
            let (c, n) = (current.get(name), new.get(name));
            match (c, n) {
                (Some(c), Some(n)) if same(c, n) => None,
                _ => Some(Touched {
                    name: name.clone(),
                    current: c.cloned(),
                    new: n.cloned(),
                }),
            }
        })
        .collect()
}

/// How one rule changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Only the candidate has it.
    Added,
    /// Only the rules in force have it.
    Removed,
    /// Both have it, differently.
    Changed,
    /// Both have it alike (its kind changed elsewhere).
    Unchanged,
}

/// A rule's deadline for one session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Due {
    /// The rule.
    pub rule: String,
    /// Its deadline.
    pub at: Timestamp,
}

/// A session the candidate would fire at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FireNow {
    /// The session.
    pub session: SessionId,
    /// Its earliest deadline under the rules in force, if any.
    pub current: Option<Due>,
    /// The deadline that is due under the candidate.
    pub new: Due,
}

/// Sessions by how one rule's deadline for them moves. A rule that starts (or stops) applying
/// to a session moves its deadline from (or to) never: earlier (or later).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Deadline moves earlier.
    pub earlier: u64,
    /// Deadline moves later.
    pub later: u64,
    /// Deadline stays.
    pub unchanged: u64,
    /// Due at once under the candidate, not due under the rules in force.
    pub fire_now: u64,
}

/// One rule's row of the preview.
#[derive(Clone, Debug, Serialize)]
pub struct RulePreview {
    /// The kind.
    pub kind: String,
    /// The rule.
    pub rule: String,
    /// How the rule changes.
    pub change: Change,
    /// What it does to sessions.
    pub sessions: Tally,
    /// The first [`FIRE_NOW_LISTED`] sessions it fires at once.
    pub fire_now: Vec<FireNow>,
}

/// A session under both policies, for `?session=`.
#[derive(Clone, Debug, Serialize)]
pub struct BothExplained {
    /// Under the rules in force.
    pub current: Vec<RuleExplanation>,
    /// Under the candidate.
    pub new: Vec<RuleExplanation>,
}

/// What a candidate does to live sessions.
#[derive(Clone, Debug, Serialize)]
pub struct Preview {
    /// The instant judged.
    pub now: Timestamp,
    /// Sessions due at once under the candidate and not under the rules in force.
    pub fire_now_total: u64,
    /// One row per rule of each touched kind.
    pub changes: Vec<RulePreview>,
    /// One session under both policies, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explain: Option<BothExplained>,
    /// The policy of the side of a touched kind that does not have it: no rules.
    #[serde(skip)]
    no_rules: Kind,
}

/// The rule that fires first for `s` at `now`, if one is ready: the earliest deadline, once
/// past it (idle rules: past it and their grace), as the sweep decides.
pub fn ready<'k>(kind: &'k Kind, s: &Session, now: Timestamp) -> Option<(&'k Rule, Timestamp)> {
    let (rule, at) = rules::earliest(kind, s)?;
    let grace = if rule.on == Trigger::Idle {
        kind.idle_grace
    } else {
        Span::ZERO
    };
    (at + grace <= now).then_some((rule, at))
}

impl Preview {
    /// An empty preview at `now` of the `touched` kinds, one row per rule of either side.
    pub fn new(now: Timestamp, touched: &[Touched]) -> Preview {
        let mut changes = Vec::new();
        for t in touched {
            let cur = t.current.as_ref().map_or(&[][..], |k| &k.rules[..]);
            let new = t.new.as_ref().map_or(&[][..], |k| &k.rules[..]);
            let row = |rule: &str, change| RulePreview {
                kind: t.name.clone(),
                rule: rule.to_string(),
                change,
                sessions: Tally::default(),
                fire_now: Vec::new(),
            };
            for r in new {
                let change = match cur.iter().find(|c| c.name == r.name) {
                    None => Change::Added,
                    Some(c) if c == r => Change::Unchanged,
                    Some(_) => Change::Changed,
                };
                changes.push(row(&r.name, change));
            }
            for r in cur.iter().filter(|c| !new.iter().any(|n| n.name == c.name)) {
                changes.push(row(&r.name, Change::Removed));
            }
        }
        Preview {
            now,
            fire_now_total: 0,
            changes,
            explain: None,
            no_rules: Kind::ruleless(""),
        }
    }

    /// Counts one session of the touched kind `t` (as stored, before any rule applies).
    pub fn observe(&mut self, t: &Touched, s: &Session) {
        let cur = t.current.as_ref().unwrap_or(&self.no_rules);
        let new = t.new.as_ref().unwrap_or(&self.no_rules);
        for row in self.changes.iter_mut().filter(|r| r.kind == t.name) {
            let deadline = |k: &Kind| k.rules.iter().find(|r| r.name == row.rule)?.deadline(k, s);
            match (deadline(cur), deadline(new)) {
                (None, None) => {}
                (Some(_), None) => row.sessions.later += 1,
                (None, Some(_)) => row.sessions.earlier += 1,
                (Some(c), Some(n)) if n < c => row.sessions.earlier += 1,
                (Some(c), Some(n)) if n > c => row.sessions.later += 1,
                (Some(_), Some(_)) => row.sessions.unchanged += 1,
            }
        }
        if ready(cur, s, self.now).is_some() {
            return;
        }
        let Some((rule, at)) = ready(new, s, self.now) else {
            return;
        };
        self.fire_now_total += 1;
        let Some(row) = self
            .changes
            .iter_mut()
            .find(|r| r.kind == t.name && r.rule == rule.name)
        else {
            return;
        };
        row.sessions.fire_now += 1;
        if row.fire_now.len() < FIRE_NOW_LISTED {
            row.fire_now.push(FireNow {
                session: s.id.clone(),
                current: rules::earliest(cur, s).map(|(r, at)| Due {
                    rule: r.name.clone(),
                    at,
                }),
                new: Due {
                    rule: rule.name.clone(),
                    at,
                },
            });
        }
    }

    /// Adds `s` explained under both policies (`current`, `new`: its kind on each side).
    pub fn explain(&mut self, current: Option<&Kind>, new: Option<&Kind>, s: &Session) {
        let none = Kind::ruleless(&s.kind);
        self.explain = Some(BothExplained {
            current: explain::explain(current.unwrap_or(&none), s, self.now),
            new: explain::explain(new.unwrap_or(&none), s, self.now),
        });
    }
}

/// The rule diff a `config.reloaded` event carries: per touched kind, the rules added,
/// removed and changed (with both versions).
pub fn diff(touched: &[Touched]) -> serde_json::Value {
    let mut kinds = serde_json::Map::new();
    for t in touched {
        let preview = Preview::new(Timestamp::from_millis(0), std::slice::from_ref(t));
        let named = |change: Change| -> Vec<&str> {
            preview
                .changes
                .iter()
                .filter(|r| r.change == change)
                .map(|r| r.rule.as_str())
                .collect()
        };
        let find = |k: &Option<Kind>, name: &str| {
            k.as_ref()
                .and_then(|k| k.rules.iter().find(|r| r.name == name).cloned())
        };
        let changed: Vec<serde_json::Value> = named(Change::Changed)
            .into_iter()
            .map(|name| {
                serde_json::json!({
                    "rule": name,
                    "before": find(&t.current, name),
                    "after": find(&t.new, name),
                })
            })
            .collect();
        let status = match (&t.current, &t.new) {
            (None, _) => "added",
            (_, None) => "removed",
            _ => "changed",
        };
        kinds.insert(
            t.name.clone(),
            serde_json::json!({
                "kind": status,
                "added": named(Change::Added),
                "removed": named(Change::Removed),
                "changed": changed,
            }),
        );
    }
    serde_json::Value::Object(kinds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::ids::UserId;
    use crate::session::Status;

    fn kinds(coding_idle: &str) -> BTreeMap<String, Kind> {
        let text = format!(
            "[kinds.coding]\n[[kinds.coding.rules]]\nname = \"expire-idle\"\non = \"idle\"\n\
             after = \"{coding_idle}\"\ndo = \"expire\"\n\
             [kinds.reading]\n[[kinds.reading.rules]]\nname = \"delete-idle\"\non = \"idle\"\n\
             after = \"1h\"\ndo = \"delete\"\n"
        );
        Config::parse(&text, "test.toml").unwrap().kinds
    }

    /// An active coding room, silent for `idle_days`.
    fn room(id: &str, idle_days: i64, now: Timestamp) -> Session {
        let kinds = kinds("7d");
        let input = crate::lifecycle::NewSession {
            title: None,
            metadata: None,
            host: UserId::parse("u1").unwrap(),
            parent: None,
            scheduled_start: None,
            scheduled_end: None,
        };
        let by = crate::lifecycle::By::system();
        let mut fx = crate::lifecycle::Effects::default();
        let at = now - Span::from_secs(idle_days * 86_400);
        let id = SessionId::parse(id).unwrap();
        let mut s =
            crate::lifecycle::create(&kinds["coding"], id, input, None, at, &by, &mut fx).unwrap();
        s.status = Status::Active;
        s.started_at = Some(at);
        s
    }

    #[test]
    fn only_kinds_that_differ_are_touched() {
        let t = touched(&kinds("7d"), &kinds("3d"));
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].name, "coding");
        assert!(touched(&kinds("7d"), &kinds("7d")).is_empty());
    }

    #[test]
    fn shortening_idle_fires_the_rooms_idle_longer_than_the_new_limit() {
        let now = Timestamp::from_millis(1_800_000_000_000);
        let t = touched(&kinds("7d"), &kinds("3d"));
        let mut p = Preview::new(now, &t);
        for (id, days) in [("a", 1), ("b", 4), ("c", 5), ("d", 8)] {
            p.observe(&t[0], &room(id, days, now));
        }
        let row = &p.changes[0];
        assert_eq!(row.change, Change::Changed);
        // d was due already (8 days idle under 7): not the change's doing.
        assert_eq!(p.fire_now_total, 2);
        assert_eq!(row.sessions.earlier, 4);
        let ids: Vec<&str> = row.fire_now.iter().map(|f| f.session.as_str()).collect();
        assert_eq!(ids, ["b", "c"]);
        let b = &row.fire_now[0];
        assert_eq!(b.new.at, now - Span::from_secs(86_400));
        assert_eq!(
            b.current.as_ref().map(|c| c.at),
            Some(now + Span::from_secs(3 * 86_400))
        );
    }

    #[test]
    fn a_removed_rule_moves_deadlines_to_never_and_fires_nothing() {
        let now = Timestamp::from_millis(1_800_000_000_000);
        let mut new = kinds("7d");
        new.get_mut("coding").unwrap().rules.clear();
        let t = touched(&kinds("7d"), &new);
        let mut p = Preview::new(now, &t);
        p.observe(&t[0], &room("a", 1, now));
        assert_eq!(p.changes[0].change, Change::Removed);
        assert_eq!(p.changes[0].sessions.later, 1);
        assert_eq!(p.fire_now_total, 0);
        let d = diff(&t);
        assert_eq!(d["coding"]["removed"][0], "expire-idle");
    }
}
