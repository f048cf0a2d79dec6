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
    /// the store refuses the commit if other rules came into force since.
    pub(crate) async fn build_commit(
        &self,
        s: &mut Session,
        stored: Option<&Session>,
        fx: &Effects,
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

        for e in &fx.events {
            commit.events.push(EventRecord {
                id: uuid::Uuid::now_v7().to_string(),
                applied_at: now,
                event: e.clone(),
                webhooks: self.webhooks.targets(e),
            });
        }
        for n in &fx.notifications {
            commit.notifications.push(NotificationRecord {
                id: uuid::Uuid::now_v7().to_string(),
                notification: n.clone(),
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
    /// events went in.
    pub(crate) async fn apply_commits(
        &self,
        commits: &[Commit],
    ) -> Result<Vec<Result<(), StoreError>>, EngineError> {
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

/// The participants of `now` whose stored columns differ from `stored`'s (or are new). Linear
/// in the room: participants keep their order and new ones come last, so they pair up by
/// position (by name if they ever do not).
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
    let in_order = now.participants.len() >= stored.participants.len()
        && stored
            .participants
            .iter()
            .zip(&now.participants)
            .all(|(a, b)| a.user == b.user);
    if in_order {
        return now
            .participants
            .iter()
            .enumerate()
            .filter(|(i, p)| stored.participants.get(*i).is_none_or(|q| !same(p, q)))
            .map(|(_, p)| p.user.clone())
            .collect();
    }
    let before: std::collections::HashMap<&UserId, &Participant> =
        stored.participants.iter().map(|p| (&p.user, p)).collect();
    now.participants
        .iter()
        .filter(|p| before.get(&p.user).is_none_or(|q| !same(p, q)))
        .map(|p| p.user.clone())
        .collect()
}
