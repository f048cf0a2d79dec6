//! The sessions a rules change touches, a page at a time: judged for a preview (which would
//! fire at once, which would move), and their stored deadlines worked out anew once the
//! change is in force.

use lapse_core::config::Config;
use lapse_core::policy::{self, Preview, Touched};
use lapse_core::store::{Rearm, RearmOnly, SessionQuery};
use lapse_core::{Session, SessionId, Status, StoreError, Timestamp};

use super::{PAGE, Policy, REARM_TRIES};
use crate::{Caller, Engine, EngineError};

impl Engine {
    /// `POST /v1/policy/preview`: what `candidate`'s kinds would do to the sessions in the
    /// database at `at` (default now), with `session` explained under both. Changes nothing.
    pub async fn preview(
        &self,
        caller: &Caller,
        candidate: &Config,
        at: Option<Timestamp>,
        session: Option<&SessionId>,
    ) -> Result<Preview, EngineError> {
        caller.require_admin()?;
        let now = at.unwrap_or_else(|| self.now());
        let current = self.policy();
        let new = Policy::new(candidate, current.version);
        let touched = policy::touched(&current.config.kinds, &new.config.kinds);
        let mut preview = self.judge(&touched, now).await?;
        if let Some(id) = session {
            let Some(mut s) = self.store.load(id).await? else {
                return Err(EngineError::NotFound(format!("session `{id}` not found")));
            };
            self.beats.overlay(&mut s);
            let (cur, new) = (current.kind(&s.kind), new.kind(&s.kind));
            preview.explain(Some(&cur), Some(&new), &s);
        }
        Ok(preview)
    }

    /// Streams the sessions of every `touched` kind through a preview: open ones, and ended
    /// ones where a rule counts from the end. Costs one read per [`PAGE`] of them, and
    /// holds one page at a time.
    pub(super) async fn judge(
        &self,
        touched: &[Touched],
        now: Timestamp,
    ) -> Result<Preview, EngineError> {
        let mut preview = Preview::new(now, touched);
        for t in touched {
            let mut pages = Pages::of(t);
            while let Some(page) = self.next_page(&mut pages).await? {
                for mut s in page {
                    // Judged as a sweep would judge it: with the heartbeats held here.
                    self.beats.overlay(&mut s);
                    preview.observe(t, &s);
                }
            }
        }
        Ok(preview)
    }

    /// The next page of `pages`' sessions as stored, `None` after the last.
    async fn next_page(&self, pages: &mut Pages<'_>) -> Result<Option<Vec<Session>>, EngineError> {
        while let Some(&status) = pages.statuses.first() {
            let page = self
                .store
                .list(&SessionQuery {
                    kind: Some(pages.kind.to_string()),
                    status: Some(status),
                    after: pages.after.clone(),
                    limit: PAGE,
                    ..SessionQuery::default()
                })
                .await?;
            if page.len() < PAGE as usize {
                pages.statuses.remove(0);
                pages.after = None;
            } else {
                pages.after = page.last().map(|s| s.id.clone());
            }
            if !page.is_empty() {
                return Ok(Some(page));
            }
        }
        Ok(None)
    }

    /// Stores anew the deadline of every session of every kind of `policy` (after an
    /// interrupted reload, when which kinds it touched is no longer known). Sessions of kinds
    /// no longer configured keep theirs: early at worst, and a sweep re-arms them.
    pub(super) async fn rearm_all(
        &self,
        policy: &Policy,
        version: i64,
    ) -> Result<u64, EngineError> {
        let every: Vec<Touched> = policy
            .config
            .kinds
            .values()
            .map(|k| Touched {
                name: k.name.clone(),
                current: None,
                new: Some(k.clone()),
            })
            .collect();
        self.rearm_touched(&every, version).await
    }

    /// One re-arm of stored deadlines under `version`; `None` if newer rules are in force
    /// already (their reload stores the deadlines). A statement the database gave up on (a
    /// deadlock with a heartbeat flush writing the same rows) is tried again.
    pub(super) async fn rearm_as(
        &self,
        rows: &[Rearm],
        version: i64,
        only: RearmOnly,
    ) -> Result<Option<u64>, EngineError> {
        let mut tries = 0;
        loop {
            match self.store.rearm(rows, Some(version), only).await {
                Ok(n) => return Ok(Some(n)),
                Err(StoreError::PolicyChanged) => return Ok(None),
                Err(StoreError::Backend(e)) if tries < REARM_TRIES => {
                    tries += 1;
                    tracing::warn!(error = %e, "storing deadlines under new rules failed; trying again");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Stores anew the deadline of every session of the `touched` kinds, under the rules of
    /// `version`, and records that it is done. A row that changed since its page was read
    /// gets the new deadline only where that is earlier than the stored one (see
    /// [`RearmOnly::Earlier`]).
    pub(super) async fn rearm_touched(
        &self,
        touched: &[Touched],
        version: i64,
    ) -> Result<u64, EngineError> {
        let policy = self.policy();
        let mut rearmed = 0;
        let mut earliest: Option<Timestamp> = None;
        for t in touched {
            let kind = policy.kind(&t.name);
            let mut pages = Pages::of(t);
            while let Some(mut page) = self.next_page(&mut pages).await? {
                let now = self.now();
                let rows: Vec<Rearm> = page
                    .iter_mut()
                    .filter_map(|s| {
                        let before = (s.wake_at, s.next_due.as_ref().map(|d| d.rule.clone()));
                        s.observe(&kind, now);
                        let after = (s.wake_at, s.next_due.as_ref().map(|d| d.rule.clone()));
                        (before != after).then(|| Rearm {
                            id: s.id.clone(),
                            version: s.version,
                            wake_at: s.wake_at,
                            rule: after.1,
                        })
                    })
                    .collect();
                if rows.is_empty() {
                    continue;
                }
                if let Some(at) = rows.iter().filter_map(|r| r.wake_at).min() {
                    earliest = Some(earliest.map_or(at, |e| e.min(at)));
                }
                let mut written = match self.rearm_as(&rows, version, RearmOnly::Unchanged).await? {
                    Some(n) => n,
                    None => return Ok(rearmed),
                };
                if (written as usize) < rows.len() {
                    // Rows that changed since the page was read: a commit stored its own
                    // deadline under these rules, a heartbeat flush only moved activity later.
                    // Either way a deadline worked out from the older read is never too
                    // early to store where the stored one is later: the sweep looks again.
                    written += match self.rearm_as(&rows, version, RearmOnly::Earlier).await? {
                        Some(n) => n,
                        None => return Ok(rearmed),
                    };
                }
                rearmed += written;
                self.sessions.rearmed(&rows);
            }
        }
        if let Some(at) = earliest {
            self.deadline_moved(at);
        }
        self.store.mark_rearmed(version).await?;
        Ok(rearmed)
    }
}

/// The sessions of one touched kind its rules can act on, a page at a time, by status and
/// id (the kind-status index).
struct Pages<'t> {
    kind: &'t str,
    /// Statuses still to read, the current first.
    statuses: Vec<Status>,
    /// The last id read of the current status.
    after: Option<SessionId>,
}

impl<'t> Pages<'t> {
    fn of(t: &'t Touched) -> Pages<'t> {
        let mut statuses = vec![Status::Pending, Status::Active];
        if t.judges_ended() {
            statuses.extend([Status::Completed, Status::Cancelled, Status::Expired]);
        }
        Pages {
            kind: &t.name,
            statuses,
            after: None,
        }
    }
}
