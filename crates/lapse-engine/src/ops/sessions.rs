//! Reading, listing and changing sessions, and the host's manual actions.

use lapse_core::lifecycle::{self, Patch};
use lapse_core::store::SessionQuery;
use lapse_core::{Session, SessionId};

use super::{Ended, not_found};
use crate::{Caller, Engine, EngineError};

impl Engine {
    /// `GET /v1/sessions/{id}`
    pub async fn get(&self, caller: &Caller, id: &SessionId) -> Result<Session, EngineError> {
        caller.require_sessions()?;
        let s = self.settle(id).await?.ok_or_else(|| not_found(id))?;
        caller.require_read(&s)?;
        Ok(s)
    }

    /// `GET /v1/sessions`: a page ordered by id, and the cursor of the next page if there may
    /// be one. A user sees only sessions they take part in.
    pub async fn list(
        &self,
        caller: &Caller,
        mut query: SessionQuery,
    ) -> Result<(Vec<Session>, Option<SessionId>), EngineError> {
        caller.require_sessions()?;
        if !caller.is_system() {
            let Some(user) = caller.user() else {
                return Err(EngineError::Forbidden("cannot list sessions".into()));
            };
            match &query.participant {
                Some(p) if p != user => {
                    return Err(EngineError::NotSelf(format!(
                        "you may only list your own sessions, not `{p}`'s"
                    )));
                }
                _ => query.participant = Some(user.clone()),
            }
        }
        let page = self.store.list(&query).await?;
        // The cursor follows the stored page, not what survives the rules applied below, so a
        // page thinned by passive expiry never ends the listing early.
        let next = (page.len() == query.limit as usize)
            .then(|| page.last().map(|s| s.id.clone()))
            .flatten();
        let mut out = Vec::with_capacity(page.len());
        for s in page {
            // Passive expiry on list too: a listed session is never a lapsed one.
            if let Some(s) = self.settle(&s.id).await?
                && query.status.is_none_or(|st| st == s.status)
            {
                out.push(s);
            }
        }
        Ok((out, next))
    }

    /// `GET /v1/sessions?due_before=T`: up to `limit` open sessions with a rule due at or
    /// before `before`, earliest first, read through the deadline index: O(sessions with a
    /// stored wake-up before `before`) at most. One page: reading a session can move its
    /// stored deadline, so no cursor into that order would stay true. Operators only: admin
    /// or a service acting as the system.
    pub async fn list_due(
        &self,
        caller: &Caller,
        before: lapse_core::Timestamp,
        kind: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Session>, EngineError> {
        caller.require_backend()?;
        if !caller.is_system() {
            return Err(EngineError::Forbidden(
                "listing by deadline is for operators, not for a user".into(),
            ));
        }
        // Stored deadlines include earlier wake-ups (a participant's presence lapsing) that
        // are no rule's: read on past them, a page at a time, until `limit` sessions are
        // found or every row up to `before` has been seen. A session read moves its row
        // later, where this walk may meet it again: each is taken once.
        let mut out: Vec<Session> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut cursor = None;
        loop {
            let rows = self
                .store
                .due(before, kind, cursor.as_ref(), limit, false)
                .await?;
            let exhausted = rows.len() < limit as usize;
            cursor = rows.last().cloned();
            for row in rows {
                if out.len() == limit as usize || !seen.insert(row.id.clone()) {
                    continue;
                }
                if let Some(s) = self.settle(&row.id).await?
                    && s.next_due.as_ref().is_some_and(|d| d.at <= before)
                {
                    out.push(s);
                }
            }
            if exhausted || out.len() == limit as usize {
                break;
            }
        }
        out.sort_by(|a, b| {
            let at = |s: &Session| s.next_due.as_ref().map(|d| d.at);
            at(a).cmp(&at(b)).then_with(|| a.id.cmp(&b.id))
        });
        Ok(out)
    }

    /// `PATCH /v1/sessions/{id}`
    pub async fn update(
        &self,
        caller: &Caller,
        id: &SessionId,
        patch: Patch,
    ) -> Result<Session, EngineError> {
        let by = caller.by();
        let (_, s) = self
            .mutate(id, |kind, s, now, fx| {
                caller.require_host(s)?;
                Ok(lifecycle::update(kind, s, patch.clone(), now, &by, fx)?)
            })
            .await?;
        Ok(s)
    }

    /// `DELETE /v1/sessions/{id}` (admin).
    pub async fn delete(&self, caller: &Caller, id: &SessionId) -> Result<(), EngineError> {
        caller.require_sessions()?;
        let by = caller.by();
        self.mutate(id, |kind, s, now, fx| {
            caller.require_admin()?;
            lifecycle::delete(kind, s, now, &by, fx);
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// `POST /v1/sessions/{id}/start`
    pub async fn start(&self, caller: &Caller, id: &SessionId) -> Result<Session, EngineError> {
        let by = caller.by();
        let (_, s) = self
            .mutate(id, |kind, s, now, fx| {
                caller.require_host(s)?;
                Ok(lifecycle::start(kind, s, now, &by, fx)?)
            })
            .await?;
        Ok(s)
    }

    /// `POST /v1/sessions/{id}/end`
    pub async fn end(&self, caller: &Caller, id: &SessionId) -> Result<Ended, EngineError> {
        let by = caller.by();
        let (_, session) = self
            .mutate(id, |kind, s, now, fx| {
                caller.require_host(s)?;
                Ok(lifecycle::end(kind, s, now, &by, fx)?)
            })
            .await?;
        Ok(Ended { session })
    }

    /// `POST /v1/sessions/{id}/cancel`
    pub async fn cancel(&self, caller: &Caller, id: &SessionId) -> Result<Session, EngineError> {
        let by = caller.by();
        let (_, s) = self
            .mutate(id, |kind, s, now, fx| {
                caller.require_host(s)?;
                Ok(lifecycle::cancel(kind, s, now, &by, fx)?)
            })
            .await?;
        Ok(s)
    }

    /// `POST /v1/sessions/{id}/reopen`
    pub async fn reopen(&self, caller: &Caller, id: &SessionId) -> Result<Session, EngineError> {
        let by = caller.by();
        let (_, s) = self
            .mutate(id, |kind, s, now, fx| {
                caller.require_host(s)?;
                Ok(lifecycle::reopen(kind, s, now, &by, fx)?)
            })
            .await?;
        Ok(s)
    }
}
