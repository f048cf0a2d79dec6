//! One change, one transaction: the session row, its children whose deadlines moved, its
//! events and notifications go to the store as a single [`Commit`].

use lapse_core::lifecycle::{self, Effects};
use lapse_core::store::{Commit, EventRecord, NotificationRecord, SessionQuery, SessionWrite};
use lapse_core::{Session, Timestamp};

use crate::{Engine, EngineError};

/// Sessions whose stored deadline moved to at or before `now` as a side effect (children of a
/// session that ended), for the sweep to visit in the same pass.
pub(crate) type Cascade = Vec<Session>;

impl Engine {
    /// Builds the commit for `s` (read at `s.version`) after `fx`, without writing it.
    pub(crate) async fn build_commit(
        &self,
        s: &mut Session,
        fx: &Effects,
        now: Timestamp,
        insert: bool,
        children: Option<Vec<Session>>,
    ) -> Result<(Commit, Cascade), EngineError> {
        let mut commit = Commit::default();
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
            s.observe(kind, now);
            commit.sessions.push(if insert {
                SessionWrite::Insert(s.clone())
            } else {
                SessionWrite::Update(s.clone())
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
                    child.observe(self.kind_of(&child.kind), now);
                    if child.wake_at.is_some_and(|at| at <= now) {
                        cascade.push(child.clone());
                    }
                    commit.sessions.push(SessionWrite::Update(child));
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
        let mut children = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .list(&SessionQuery {
                    parent: Some(s.id.clone()),
                    open_only: true,
                    after: after.clone(),
                    limit: 500,
                    ..SessionQuery::default()
                })
                .await?;
            let full = page.len() == 500;
            after = page.last().map(|c| c.id.clone());
            children.extend(page);
            if !full {
                return Ok(children);
            }
        }
    }

    /// Writes `commit` and wakes the sweeper if a deadline moved earlier.
    pub(crate) async fn apply_commit(&self, commit: Commit) -> Result<(), EngineError> {
        let earliest = commit
            .sessions
            .iter()
            .filter_map(|w| match w {
                SessionWrite::Insert(s) | SessionWrite::Update(s) => s.wake_at,
                SessionWrite::Delete { .. } => None,
            })
            .min();
        let has_events = !commit.events.is_empty();
        self.store.commit(commit).await?;
        if let Some(at) = earliest {
            self.deadline_moved(at);
        }
        if has_events {
            self.events_appended();
        }
        Ok(())
    }
}
