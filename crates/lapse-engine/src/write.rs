//! One change, one transaction: the session row, its children whose deadlines moved, its
//! events and notifications go to the store as a single [`Commit`].

use lapse_core::lifecycle::{self, Effects};
use lapse_core::store::{Commit, EventRecord, NotificationRecord, SessionWrite};
use lapse_core::{Participant, Session, StoreError, Timestamp, UserId};

use crate::{Engine, EngineError};

/// Sessions whose stored deadline moved to at or before `now` as a side effect (children of a
/// session that ended), for the sweep to visit in the same pass.
pub(crate) type Cascade = Vec<Session>;

impl Engine {
    /// Builds the commit for `s` after `fx`, without writing it: an update of `stored` (the
    /// session as read, at `s.version`), or with `None` an insert. `rules_version` is the
    /// version of the rules in force read before the decision (see [`Engine::rules_version`]):
    /// the store refuses the commit if other rules came into force since. `fx`'s events and
    /// notifications move into the commit.
    pub(crate) async fn build_commit(
        &self,
        s: &mut Session,
        stored: Option<&Session>,
        fx: &mut Effects,
        now: Timestamp,
        children: Option<Vec<Session>>,
        rules_version: Option<i64>,
    ) -> Result<(Commit, Cascade), EngineError> {
        let insert = stored.is_none();
        let mut commit = Commit {
            rules_version,
            ..Commit::default()
        };
        let kind = self.kind_of(&s.kind);
        if fx.deleted_at.is_some() {
            if !insert {
                commit
                    .sessions
                    .push(lapse_core::store::SessionWrite::Delete {
                        id: s.id.clone(),
                        version: s.version,
                    });
            }
        } else {
            s.observe(&kind, now);
            if let Some(stored) = stored {
                s.wake_at = lazy_wake(stored, s, now);
            }
            commit.sessions.push(match stored {
                None => SessionWrite::Insert(s.clone()),
                Some(stored) => SessionWrite::Update {
                    changed: Some(changed_participants(stored, s)),
                    session: s.clone(),
                },
            });
        }

        let mut cascade = Vec::new();
        if let Some(at) = fx.closed_at {
            let children = match children {
                Some(c) => c,
                None => self.open_children(s).await?,
            };
            for mut child in children {
                if lifecycle::parent_closed(&mut child, at) {
                    child.observe(&self.kind_of(&child.kind), now);
                    if child.wake_at.is_some_and(|at| at <= now) {
                        cascade.push(child.clone());
                    }
                    // A parent's end moves the child's row, none of its participants.
                    commit.sessions.push(SessionWrite::Update {
                        session: child,
                        changed: Some(Vec::new()),
                    });
                }
            }
        }

        // The events and notifications move into the commit: what the caller keeps of `fx`
        // is what it did (`applied`, `deleted_at`, `closed_at`).
        for e in std::mem::take(&mut fx.events) {
            commit.events.push(EventRecord {
                id: uuid::Uuid::now_v7().to_string(),
                applied_at: now,
                webhooks: self.webhooks.targets(&e),
                event: e,
            });
        }
        for n in std::mem::take(&mut fx.notifications) {
            commit.notifications.push(NotificationRecord {
                id: uuid::Uuid::now_v7().to_string(),
                notification: n,
            });
        }
        Ok((commit, cascade))
    }

    /// The open sessions whose parent is `s`.
    pub(crate) async fn open_children(&self, s: &Session) -> Result<Vec<Session>, EngineError> {
        Ok(self
            .store
            .open_children(std::slice::from_ref(&s.id))
            .await?)
    }

    /// Writes independent commits in one transaction (see [`lapse_core::Store::commit_many`]),
    /// then wakes the sweeper if a written deadline is before its plan, and event streams if
    /// events went in. None (a sweep's page with every row re-armed, or none due) opens no
    /// transaction.
    pub(crate) async fn apply_commits(
        &self,
        commits: &[Commit],
    ) -> Result<Vec<Result<(), StoreError>>, EngineError> {
        if commits.is_empty() {
            return Ok(Vec::new());
        }
        let wakes: Vec<Option<Timestamp>> = commits
            .iter()
            .map(|c| c.sessions.iter().filter_map(|w| w.session()?.wake_at).min())
            .collect();
        let with_events: Vec<bool> = commits.iter().map(|c| !c.events.is_empty()).collect();
        let since = tokio::time::Instant::now();
        let mut outcomes = self.store.commit_many(commits).await?;
        if outcomes
            .iter()
            .any(|o| matches!(o, Err(StoreError::PolicyChanged)))
        {
            // Decided under rules another instance has replaced: take up the new ones, and
            // have the caller decide again, as after any lost compare-and-set.
            self.follow_rules_in_force().await?;
            for o in &mut outcomes {
                if matches!(o, Err(StoreError::PolicyChanged)) {
                    *o = Err(StoreError::Conflict);
                }
            }
        }
        let written = || outcomes.iter().enumerate().filter(|(_, o)| o.is_ok());
        for (i, _) in written() {
            self.sessions.follow(&commits[i], since);
        }
        if let Some(at) = written().filter_map(|(i, _)| wakes[i]).min() {
            self.deadline_moved(at);
        }
        if written().any(|(i, _)| with_events[i]) {
            self.events_appended();
        }
        Ok(outcomes)
    }
}

/// The wake-up to store for `after`, a change of `stored` at `now` that kept its status: the
/// stored one where the change only put the session's next look off (a join, activity or a
/// patch that moves an idle or presence deadline later), else `after`'s own. A wake-up stored
/// early is looked at and re-armed by the sweep, never applied early (the lazy re-arm that
/// heartbeats rely on); left in place, its entry in the deadline index stays where it is,
/// on a page that at a million sessions no other write of the moment touches. One already
/// past is not kept: the sweep would only come straight back to it.
pub(crate) fn lazy_wake(stored: &Session, after: &Session, now: Timestamp) -> Option<Timestamp> {
    match (stored.wake_at, after.wake_at) {
        (Some(before), Some(later))
            if now < before && before <= later && stored.status == after.status =>
        {
            Some(before)
        }
        _ => after.wake_at,
    }
}

/// The participants of `now` whose stored columns differ from `stored`'s (or are new), in
/// `now`'s order. Linear in the room, and cheap per participant: the two lists pair up by
/// position from each end (participants keep their order, and a join or rejoin moves one
/// of them), and only what lies between those runs is paired by name.
fn changed_participants(stored: &Session, now: &Session) -> Vec<UserId> {
    let same = |a: &Participant, b: &Participant| {
        (
            &a.user,
            a.role,
            a.state,
            a.joined_at,
            a.left_at,
            a.last_seen_at,
            a.offline_for,
        ) == (
            &b.user,
            b.role,
            b.state,
            b.joined_at,
            b.left_at,
            b.last_seen_at,
            b.offline_for,
        )
    };
    if lapse_core::Participants::same(&stored.participants, &now.participants) {
        return Vec::new();
    }
    let (before, after) = (&stored.participants[..], &now.participants[..]);
    let front = before
        .iter()
        .zip(after)
        .take_while(|(a, b)| a.user == b.user)
        .count();
    let back = before[front..]
        .iter()
        .rev()
        .zip(after[front..].iter().rev())
        .take_while(|(a, b)| a.user == b.user)
        .count();
    let (before_mid, after_mid) = (
        &before[front..before.len() - back],
        &after[front..after.len() - back],
    );
    let by_name: std::collections::HashMap<&UserId, &Participant> =
        before_mid.iter().map(|p| (&p.user, p)).collect();
    let paired = |run: &[Participant], was: &[Participant]| {
        run.iter()
            .zip(was)
            .filter(|(p, q)| !same(p, q))
            .map(|(p, _)| p.user.clone())
            .collect::<Vec<_>>()
    };
    let mut changed = paired(&after[..front], &before[..front]);
    changed.extend(
        after_mid
            .iter()
            .filter(|p| by_name.get(&p.user).is_none_or(|q| !same(p, q)))
            .map(|p| p.user.clone()),
    );
    changed.extend(paired(
        &after[after.len() - back..],
        &before[before.len() - back..],
    ));
    changed
}

#[cfg(test)]
mod tests {
    use lapse_core::{Config, ParticipantState, Role, Timestamp};

    use super::*;

    /// A room of `members` (m0, m1, ...) besides its host, joined in that order.
    fn room(members: usize) -> Session {
        let now: Timestamp = "2026-03-02T08:00:00Z".parse().unwrap();
        let config = Config::default();
        lapse_store::testing::synthetic_sessions(&config.kinds["study"], "r", 1, 1, members, now)
            .remove(0)
    }

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    /// What every participant compared by name says changed: the answer in any order.
    fn by_name(stored: &Session, now: &Session) -> Vec<UserId> {
        now.participants
            .iter()
            .filter(|p| !stored.participants.iter().any(|q| q == *p))
            .map(|p| p.user.clone())
            .collect()
    }

    #[test]
    fn the_participants_a_write_changed_are_found_wherever_they_moved() {
        let stored = room(6);
        let later = |s: &Session| s.participants[0].joined_at + lapse_core::Span::from_secs(1);
        let mut cases: Vec<(&str, Session)> = Vec::new();

        let mut s = stored.clone();
        let at = later(&stored);
        s.participants
            .push(Participant::joined(user("new"), Role::Member, at));
        cases.push(("a join, placed last", s));

        // Joined at the same instant as the last ones but sorting before them by name.
        let mut s = stored.clone();
        let at = s.participants.last().unwrap().joined_at;
        s.participants
            .push(Participant::joined(user("a-first"), Role::Member, at));
        let i = s.participants.len() - 1;
        s.place(i);
        cases.push(("a join, placed in the middle", s));

        let mut s = stored.clone();
        let i = 2;
        let p = &mut s.participants[i];
        p.state = ParticipantState::Joined;
        p.joined_at = later(&stored);
        s.place(i);
        cases.push(("a rejoin, moved from the middle to the end", s));

        let mut s = stored.clone();
        s.participants[3].last_seen_at = later(&stored);
        cases.push(("one seen again in place", s));

        let mut s = stored.clone();
        s.participants[0].offline_for = Some(later(&stored));
        let last = s.participants.len() - 1;
        s.participants[last].state = ParticipantState::Left;
        cases.push(("the first and the last changed", s));

        cases.push(("nothing", stored.clone()));

        for (what, now) in cases {
            let mut found = changed_participants(&stored, &now);
            let mut expected = by_name(&stored, &now);
            found.sort();
            expected.sort();
            assert_eq!(found, expected, "{what}");
            assert_eq!(
                found.is_empty(),
                what == "nothing",
                "{what}: something changed"
            );
        }
    }
}
