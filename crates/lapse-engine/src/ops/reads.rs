//! Views: explanations, timelines, the event log, inboxes and counts.

use lapse_core::event::{Event, Notification};
use lapse_core::explain;
use lapse_core::store::{EventQuery, StatusCount};
use lapse_core::{SessionId, UserId};

use super::Explanation;
use crate::{Caller, Engine, EngineError};

impl Engine {
    /// `GET /v1/sessions/{id}/explain`
    pub async fn explain(
        &self,
        caller: &Caller,
        id: &SessionId,
    ) -> Result<Explanation, EngineError> {
        let session = self.get(caller, id).await?;
        let now = self.now();
        let rules = explain::explain(&self.kind_of(&session.kind), &session, now);
        Ok(Explanation {
            session,
            now,
            rules,
        })
    }

    /// A session's timeline. Admins and services can still read it after deletion.
    pub async fn session_events(
        &self,
        caller: &Caller,
        id: &SessionId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Event>, EngineError> {
        match self.get(caller, id).await {
            Ok(_) => {}
            Err(EngineError::NotFound(_))
                if caller.is_system() && self.store.was_deleted(id).await? => {}
            Err(e) => return Err(e),
        }
        Ok(self
            .store
            .events(&EventQuery {
                after,
                limit,
                session: Some(id.clone()),
                ..EventQuery::default()
            })
            .await?)
    }

    /// `GET /v1/events`: the whole log for admins and services; a user may read it only for
    /// one session they can see (`?session=`), which is how a browser follows its room.
    pub async fn events(
        &self,
        caller: &Caller,
        query: &EventQuery,
    ) -> Result<Vec<Event>, EngineError> {
        self.authorize_events(caller, query).await?;
        self.events_page(query).await
    }

    /// Checks that `caller` may read the events `query` selects.
    pub async fn authorize_events(
        &self,
        caller: &Caller,
        query: &EventQuery,
    ) -> Result<(), EngineError> {
        match (caller, &query.session) {
            (Caller::Admin { .. } | Caller::Service { .. }, _) => Ok(()),
            (Caller::User(_), Some(id)) => self.get(caller, id).await.map(|_| ()),
            _ => Err(EngineError::Forbidden(
                "the event log needs an admin or service key, or a `session` you take part in"
                    .into(),
            )),
        }
    }

    /// A page of events, without access checks (for streams already authorized).
    pub async fn events_page(&self, query: &EventQuery) -> Result<Vec<Event>, EngineError> {
        Ok(self.store.events(query).await?)
    }

    /// `GET /v1/users/{user}/notifications`
    pub async fn notifications(
        &self,
        caller: &Caller,
        user: &UserId,
        unread_only: bool,
        limit: u32,
    ) -> Result<Vec<Notification>, EngineError> {
        caller.require_self(user)?;
        Ok(self.store.notifications(user, unread_only, limit).await?)
    }

    /// `POST /v1/users/{user}/notifications/{nid}/read`
    pub async fn mark_read(
        &self,
        caller: &Caller,
        user: &UserId,
        nid: &str,
    ) -> Result<Notification, EngineError> {
        caller.require_self(user)?;
        self.store
            .mark_read(user, nid, self.now())
            .await?
            .ok_or_else(|| {
                EngineError::NotFound(format!("notification `{nid}` not found for `{user}`"))
            })
    }

    /// Session counts by kind and status.
    pub async fn counts(&self, caller: &Caller) -> Result<Vec<StatusCount>, EngineError> {
        if matches!(caller, Caller::User(_)) {
            return Err(EngineError::Forbidden(
                "stats need an admin, service or cron credential".into(),
            ));
        }
        Ok(self.store.counts().await?)
    }
}
