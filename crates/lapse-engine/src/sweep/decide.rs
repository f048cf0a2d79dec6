//! One session's turn in a sweep: its due rules applied against the pass's overlay (a
//! transition for the batch's transaction, or a re-arm), the children its end closes, and,
//! for a session set aside from its batch, the same alone from a fresh read.

use std::collections::{HashMap, VecDeque};

use lapse_core::lifecycle::{Applied, Effects};
use lapse_core::store::{Rearm, RearmOnly, SessionWrite};
use lapse_core::{Session, SessionId, StoreError, Timestamp};

use super::{Decided, Lane, Pass, SWEEP_ATTEMPTS, SweepError};
use crate::{Engine, EngineError};

impl Engine {
    /// The open children of every session its due rules close, in one read, keyed by parent.
    pub(super) async fn children_of_closing(
        &self,
        due: &HashMap<SessionId, (Session, Effects)>,
    ) -> Result<HashMap<SessionId, Vec<Session>>, EngineError> {
        let closing: Vec<SessionId> = due
            .iter()
            .filter(|(_, (_, fx))| fx.closed_at.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        // Every closing session gets an entry, so none asks the store again alone.
        let mut by_parent: HashMap<SessionId, Vec<Session>> =
            closing.iter().map(|id| (id.clone(), Vec::new())).collect();
        for child in self.store.open_children(&closing).await? {
            if let Some(parent) = child.parent.clone() {
                by_parent.entry(parent).or_default().push(child);
            }
        }
        Ok(by_parent)
    }

    /// Applies `s`'s due rules at `now`: a transition ready to commit (with the ids of the
    /// children it made due), a re-arm noted in the pass, or nothing. The pass's overlay takes
    /// the new state, so what is decided next in the batch builds on it.
    pub(super) async fn decide(
        &self,
        pass: &mut Pass,
        stored: Session,
        applied: Option<(Session, Effects)>,
        children: Option<Vec<Session>>,
        now: Timestamp,
    ) -> Result<Option<(Decided, Vec<SessionId>)>, EngineError> {
        let (mut s, mut fx) = match applied {
            Some(done) => done,
            None => {
                let mut s = stored.clone();
                let fx = self.apply_due(&mut s, now);
                (s, fx)
            }
        };
        if fx.is_empty() {
            // Lazy re-arm: the row was due by its stored deadline, but activity has moved
            // since; store the true one so the index stops offering it.
            s.observe(&self.kind_of(&s.kind), now);
            if !pass.dry && s.wake_at != stored.wake_at {
                // Written with the rest of the batch, in one statement.
                pass.rearms.push(Rearm {
                    id: s.id.clone(),
                    version: s.version,
                    wake_at: s.wake_at,
                    rule: s.next_due.map(|d| d.rule),
                });
            }
            return Ok(None);
        }
        let children = match (fx.closed_at, children) {
            (None, _) => None,
            (Some(_), kids) => {
                let mut kids = match kids {
                    Some(kids) => kids,
                    None => self.open_children(&s).await?,
                };
                // Read before this batch's earlier decisions: theirs is the current state.
                overlay_children(pass, &mut kids);
                Some(kids)
            }
        };
        let (commit, due_children) = self
            .build_commit(
                &mut s,
                Some(&stored),
                &mut fx,
                now,
                children,
                pass.rules_version,
            )
            .await?;
        for w in &commit.sessions {
            match w {
                // Only a child can come up again in this batch (its parent's cascade, or a
                // later page of a dry run): a session without a parent is decided once.
                SessionWrite::Update { session: c, .. } | SessionWrite::Insert(c)
                    if c.parent.is_some() =>
                {
                    let mut c = c.clone();
                    c.version += 1;
                    pass.overlay.insert(c.id.clone(), Some(c));
                }
                SessionWrite::Update { .. } | SessionWrite::Insert(_) => {}
                SessionWrite::Delete { id, .. } => {
                    pass.overlay.insert(id.clone(), None);
                }
            }
        }
        let decided = Decided {
            id: s.id.clone(),
            commit,
            applied: fx.applied,
        };
        Ok(Some((
            decided,
            due_children.into_iter().map(|c| c.id).collect(),
        )))
    }

    /// Sweeps one session by itself, from a fresh read, with its cascade: for a session whose
    /// write lost in a batch. Retries a lost compare-and-set a few times; a session that still
    /// fails stays due and is reported. An outage ends it (and the sweep) at once.
    pub(super) async fn sweep_alone(
        &self,
        id: &SessionId,
        now: Timestamp,
        report: &mut Lane,
    ) -> Result<(), EngineError> {
        let mut queue = VecDeque::from([id.clone()]);
        while let Some(id) = queue.pop_front() {
            let mut last_error = None;
            for _ in 0..SWEEP_ATTEMPTS {
                match self.sweep_one(&id, now).await {
                    Ok((applied, cascade)) => {
                        report.applied.extend(applied);
                        queue.extend(cascade);
                        last_error = None;
                        break;
                    }
                    Err(EngineError::Store(e)) if e.decide_again() => {
                        last_error = Some("lost a concurrent update three times".to_string());
                    }
                    Err(e) if e.is_unavailable() => return Err(e),
                    Err(e) => {
                        last_error = Some(e.to_string());
                        break;
                    }
                }
            }
            if let Some(error) = last_error {
                tracing::warn!(session = %id, %error, "sweep could not apply a due rule; it stays due");
                report.errors.push(SweepError {
                    session: id.to_string(),
                    error,
                });
            }
        }
        Ok(())
    }

    /// One session's due rules, decided and committed on their own.
    pub(super) async fn sweep_one(
        &self,
        id: &SessionId,
        now: Timestamp,
    ) -> Result<(Vec<Applied>, Vec<SessionId>), EngineError> {
        let rules_version = self.rules_version();
        let Some(s) = self.store.load(id).await? else {
            return Ok((Vec::new(), Vec::new()));
        };
        let mut pass = Pass {
            rules_version,
            ..Pass::default()
        };
        let Some((d, cascade)) = self.decide(&mut pass, s, None, None, now).await? else {
            self.rearm(&pass.rearms, rules_version).await?;
            return Ok((Vec::new(), Vec::new()));
        };
        self.apply_commit(d.commit).await?;
        Ok((d.applied, cascade))
    }

    /// Stores the wake-ups of sessions found due early (lazy re-arm), worked out under the
    /// rules of `rules_version`: not written if other rules came into force since (the rows
    /// stay due and are judged again under the new rules).
    pub(super) async fn rearm(
        &self,
        rearms: &[Rearm],
        rules_version: Option<i64>,
    ) -> Result<(), EngineError> {
        if rearms.is_empty() {
            return Ok(());
        }
        let rearmed = match self
            .store
            .rearm(rearms, rules_version, RearmOnly::Unchanged)
            .await
        {
            Ok(n) => n,
            Err(StoreError::PolicyChanged) => {
                self.follow_rules_in_force().await?;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        self.sessions.rearmed(rearms);
        self.stats.rearmed(rearmed);
        Ok(())
    }
}

/// Replaces children the pass has already changed by their changed state, dropping those it
/// deleted or ended.
fn overlay_children(pass: &Pass, kids: &mut Vec<Session>) {
    kids.retain_mut(|c| match pass.overlay.get(&c.id) {
        Some(Some(over)) if over.status.is_open() => {
            *c = over.clone();
            true
        }
        Some(_) => false,
        None => true,
    });
}
