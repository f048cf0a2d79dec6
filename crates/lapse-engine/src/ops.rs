//! Session operations. Each loads the session, applies its due rules first (so nobody acts on
//! a lapsed state), checks the caller's rights, makes the change, and commits it with its
//! effects; a compare-and-set conflict (a sweep or another request got there first) retries
//! from a fresh read, so the loser sees the winner's state.

use lapse_core::event::{Event, Notification};
use lapse_core::explain::{self, RuleExplanation};
use lapse_core::lifecycle::{self, Effects, NewSession, OpError, ParentInfo, Patch, Via};
use lapse_core::store::{EventQuery, HostLimit, SessionQuery, StatusCount};
use lapse_core::{Kind, Participant, Role, Session, SessionId, StoreError, Timestamp, UserId};

use crate::{Caller, Engine, EngineError};

/// How often a change is retried after losing a compare-and-set.
const ATTEMPTS: usize = 8;

/// A create request.
#[derive(Clone, Debug)]
pub struct CreateRequest {
    /// A client-chosen id, or `None` for a generated UUIDv7.
    pub id: Option<SessionId>,
    /// The kind's name.
    pub kind: String,
    /// Title.
    pub title: Option<String>,
    /// App data.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// The host; defaults to the calling user.
    pub host: Option<UserId>,
    /// Parent session.
    pub parent: Option<SessionId>,
    /// Planned start.
    pub scheduled_start: Option<Timestamp>,
    /// Planned end.
    pub scheduled_end: Option<Timestamp>,
}

/// The outcome of `/end`.
#[derive(Clone, Debug)]
pub struct Ended {
    /// The completed session.
    pub session: Session,
}

/// A session's explanation.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Explanation {
    /// The session as it is now.
    pub session: Session,
    /// The instant judged.
    pub now: Timestamp,
    /// Every rule of its kind.
    pub rules: Vec<RuleExplanation>,
}

/// A batch heartbeat that was refused, with why.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RejectedBeat {
    /// Its position in the batch.
    pub index: usize,
    /// The session.
    pub session: String,
    /// The user.
    pub user: String,
    /// Error code, as in problem responses.
    pub code: &'static str,
    /// Why.
    pub detail: String,
}

fn not_found(id: &SessionId) -> EngineError {
    EngineError::NotFound(format!("session `{id}` not found"))
}

fn validation(field: &'static str, message: impl Into<String>) -> EngineError {
    EngineError::Op(OpError::Validation {
        field,
        message: message.into(),
    })
}

impl Engine {
    /// Applies the due rules of a freshly loaded `s` at `now`, after overlaying the
    /// heartbeats this instance holds for it, so no rule is decided on a stale row.
    pub(crate) fn apply_due(&self, s: &mut Session, now: Timestamp) -> Effects {
        self.beats.overlay(s);
        let mut fx = Effects::default();
        lifecycle::apply_due(self.kind_of(&s.kind), s, now, &mut fx);
        fx
    }

    /// Loads `id` and applies its due rules at `now`, committing what they did. Returns the
    /// session as it stands (`None` if it is gone) and its version as read.
    async fn settle(&self, id: &SessionId) -> Result<Option<Session>, EngineError> {
        for _ in 0..ATTEMPTS {
            let now = self.now();
            let Some(mut s) = self.store.load(id).await? else {
                return Ok(None);
            };
            let fx = self.apply_due(&mut s, now);
            if fx.is_empty() {
                s.observe(self.kind_of(&s.kind), now);
                return Ok(Some(s));
            }
            let (commit, _) = self.build_commit(&mut s, &fx, now, false, None).await?;
            match self.apply_commit(commit).await {
                Ok(()) if fx.deleted_at.is_some() => return Ok(None),
                Ok(()) => {
                    s.version += 1;
                    return Ok(Some(s));
                }
                Err(EngineError::Store(StoreError::Conflict)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(EngineError::Conflict(format!(
            "session `{id}` is changing too fast; try again"
        )))
    }

    /// Runs `op` on the settled session `id` and commits the result. `op` checks rights, then
    /// state, and changes the session; effects it records are committed with it.
    async fn mutate<T>(
        &self,
        id: &SessionId,
        mut op: impl FnMut(&Kind, &mut Session, Timestamp, &mut Effects) -> Result<T, EngineError>,
    ) -> Result<(T, Session), EngineError> {
        for _ in 0..ATTEMPTS {
            let Some(before) = self.settle(id).await? else {
                return Err(not_found(id));
            };
            let now = self.now();
            let kind = self.kind_of(&before.kind);
            let mut s = before.clone();
            let mut fx = Effects::default();
            let value = op(kind, &mut s, now, &mut fx)?;
            s.observe(kind, now);
            if fx.is_empty() && s == before {
                return Ok((value, s));
            }
            let (commit, _) = self.build_commit(&mut s, &fx, now, false, None).await?;
            match self.apply_commit(commit).await {
                Ok(()) => {
                    s.version += 1;
                    return Ok((value, s));
                }
                Err(EngineError::Store(StoreError::Conflict)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(EngineError::Conflict(format!(
            "session `{id}` is changing too fast; try again"
        )))
    }

    /// `POST /v1/sessions`
    pub async fn create(
        &self,
        caller: &Caller,
        req: CreateRequest,
    ) -> Result<Session, EngineError> {
        caller.require_sessions()?;
        let kind = self.config.kind(&req.kind).ok_or_else(|| {
            let known: Vec<_> = self.config.kinds.keys().map(String::as_str).collect();
            validation(
                "kind",
                format!(
                    "unknown kind `{}` (configured: {})",
                    req.kind,
                    known.join(", ")
                ),
            )
        })?;
        let host = match (req.host.clone(), caller.user()) {
            (Some(h), Some(u)) if &h != u && !caller.is_system() => {
                return Err(EngineError::NotSelf(format!(
                    "you may only create sessions you host, not for `{h}`"
                )));
            }
            (Some(h), _) => h,
            (None, Some(u)) => u.clone(),
            (None, None) => return Err(validation("host", "required when acting as the system")),
        };
        let parent = match &req.parent {
            None => None,
            Some(pid) => {
                let p = self.settle(pid).await?.ok_or_else(|| {
                    validation("parent", format!("session `{pid}` does not exist"))
                })?;
                Some(ParentInfo {
                    kind: p.kind.clone(),
                    ended_at: if p.status.is_open() { None } else { p.ended_at },
                })
            }
        };

        let id = match &req.id {
            Some(id) => id.clone(),
            None => SessionId::parse(&uuid::Uuid::now_v7().to_string())
                .map_err(|e| EngineError::Conflict(e.to_string()))?,
        };
        let input = NewSession {
            title: req.title,
            metadata: req.metadata,
            host: host.clone(),
            parent: req.parent,
            scheduled_start: req.scheduled_start,
            scheduled_end: req.scheduled_end,
        };
        for _ in 0..ATTEMPTS {
            if let Some(max) = kind.max_open_per_host {
                self.check_open_per_host(kind, &host, max).await?;
            }
            let now = self.now();
            let mut fx = Effects::default();
            let by = caller.by();
            let mut s = lifecycle::create(
                kind,
                id.clone(),
                input.clone(),
                parent.clone(),
                now,
                &by,
                &mut fx,
            )?;
            lifecycle::apply_due(kind, &mut s, now, &mut fx);
            let (mut commit, _) = self
                .build_commit(&mut s, &fx, now, true, Some(Vec::new()))
                .await?;
            // The store re-counts inside the transaction, so concurrent creates (on any
            // instance) cannot both pass the check above.
            commit.host_limit = kind.max_open_per_host.map(|max| HostLimit {
                kind: kind.name.clone(),
                host: host.clone(),
                max,
            });
            match self.apply_commit(commit).await {
                Ok(()) => {}
                Err(EngineError::Store(StoreError::Duplicate)) => {
                    return Err(EngineError::Conflict(format!(
                        "session `{id}` already exists"
                    )));
                }
                // Someone else's create got in first: check again, which explains the 409.
                Err(EngineError::Store(StoreError::LimitReached)) => continue,
                Err(e) => return Err(e),
            }
            if fx.deleted_at.is_some() {
                return Err(not_found(&id));
            }
            s.version = 1;
            return Ok(s);
        }
        Err(EngineError::Conflict(format!(
            "`{host}` is creating sessions too fast; try again"
        )))
    }

    /// Applies due rules to the host's open sessions of `kind`, then refuses if `max` are
    /// still open (seed 004: a stale waiting session must never block a new one).
    async fn check_open_per_host(
        &self,
        kind: &Kind,
        host: &UserId,
        max: u32,
    ) -> Result<(), EngineError> {
        let open = self
            .store
            .list(&SessionQuery {
                kind: Some(kind.name.clone()),
                host: Some(host.clone()),
                open_only: true,
                limit: max.saturating_add(64),
                ..SessionQuery::default()
            })
            .await?;
        let mut still_open = Vec::new();
        for s in open {
            if let Some(s) = self.settle(&s.id).await?
                && s.status.is_open()
            {
                still_open.push(s);
            }
        }
        if still_open.len() >= max as usize
            && let Some(first) = still_open.first()
        {
            return Err(EngineError::HostHasOpenSession {
                detail: format!(
                    "`{host}` already has {} open `{}` session(s) (at most {max}); `{}` is {}",
                    still_open.len(),
                    kind.name,
                    first.id,
                    first.status.as_str()
                ),
                blocking: (first.id.clone(), first.status),
            });
        }
        Ok(())
    }

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

    /// `POST /v1/sessions/{id}/participants`
    pub async fn join(
        &self,
        caller: &Caller,
        id: &SessionId,
        user: &UserId,
        role: Option<Role>,
        via: Via,
    ) -> Result<Participant, EngineError> {
        caller.require_self(user)?;
        let by = caller.by();
        let result = self
            .mutate(id, |kind, s, now, fx| {
                caller.require_sessions()?;
                Ok(lifecycle::join(kind, s, user, role, via, now, &by, fx)?)
            })
            .await;
        match result {
            Ok((p, _)) => Ok(p),
            // The invite link is what the user holds: a deleted session's invite has expired.
            Err(EngineError::NotFound(_))
                if via == Via::Invite && self.store.was_deleted(id).await? =>
            {
                Err(OpError::InviteExpired(
                    "This invitation link has expired: the session no longer exists.".into(),
                )
                .into())
            }
            Err(e) => Err(e),
        }
    }

    /// `DELETE /v1/sessions/{id}/participants/{user}`: the user themselves, or the host.
    pub async fn leave(
        &self,
        caller: &Caller,
        id: &SessionId,
        user: &UserId,
    ) -> Result<(), EngineError> {
        caller.require_sessions()?;
        let by = caller.by();
        self.mutate(id, |_, s, now, fx| {
            if caller.require_self(user).is_err() {
                caller.require_host(s)?;
            }
            Ok(lifecycle::leave(s, user, now, &by, fx)?)
        })
        .await?;
        Ok(())
    }

    /// `POST /v1/sessions/{id}/heartbeat`: checked against the settled session, then folded
    /// into memory; written with the next batch.
    pub async fn heartbeat(
        &self,
        caller: &Caller,
        id: &SessionId,
        user: &UserId,
    ) -> Result<(), EngineError> {
        caller.require_self(user)?;
        let s = self.settle(id).await?.ok_or_else(|| not_found(id))?;
        lifecycle::check_heartbeat(&s, user)?;
        self.beats.record(id, user, self.now());
        Ok(())
    }

    /// `POST /v1/heartbeats`: each beat on its own; refusals are reported, not fatal.
    pub async fn heartbeats(
        &self,
        caller: &Caller,
        beats: &[(String, String)],
    ) -> Result<(usize, Vec<RejectedBeat>), EngineError> {
        caller.require_sessions()?;
        let mut accepted = 0;
        let mut rejected = Vec::new();
        for (index, (session, user)) in beats.iter().enumerate() {
            let outcome = match (SessionId::parse(session), UserId::parse(user)) {
                (Ok(sid), Ok(uid)) => self.heartbeat(caller, &sid, &uid).await,
                (Err(e), _) | (_, Err(e)) => Err(validation("beats", e.to_string())),
            };
            match outcome {
                Ok(()) => accepted += 1,
                Err(EngineError::Store(e)) => return Err(EngineError::Store(e)),
                Err(e) => rejected.push(RejectedBeat {
                    index,
                    session: session.clone(),
                    user: user.clone(),
                    code: error_code(&e),
                    detail: e.to_string(),
                }),
            }
        }
        Ok((accepted, rejected))
    }

    /// `POST /v1/sessions/{id}/activity`
    pub async fn activity(
        &self,
        caller: &Caller,
        id: &SessionId,
        user: Option<&UserId>,
        name: &str,
        count: i64,
    ) -> Result<(), EngineError> {
        caller.require_sessions()?;
        if let Some(u) = user {
            caller.require_self(u)?;
        }
        // A user acting as themselves counts as themselves even without naming it.
        let user = user.or(caller.user());
        self.mutate(id, |_, s, now, _| {
            if !caller.is_system() && user.is_none_or(|u| !s.is_joined(u) && u != &s.host) {
                return Err(EngineError::Forbidden(format!(
                    "only a joined user may record activity in `{}`",
                    s.id
                )));
            }
            Ok(lifecycle::activity(s, user, name, count, now)?)
        })
        .await?;
        Ok(())
    }

    /// `GET /v1/sessions/{id}/explain`
    pub async fn explain(
        &self,
        caller: &Caller,
        id: &SessionId,
    ) -> Result<Explanation, EngineError> {
        let session = self.get(caller, id).await?;
        let now = self.now();
        let rules = explain::explain(self.kind_of(&session.kind), &session, now);
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

/// The problem `code` an error maps to (shared with the HTTP layer's mapping).
pub fn error_code(e: &EngineError) -> &'static str {
    match e {
        EngineError::NotFound(_) => "not_found",
        EngineError::Forbidden(_) => "forbidden",
        EngineError::NotHost(_) => "not_host",
        EngineError::NotSelf(_) => "not_self",
        EngineError::Op(OpError::InvalidTransition(_)) => "invalid_transition",
        EngineError::Op(OpError::InviteExpired(_)) => "invite_expired",
        EngineError::Op(OpError::SessionFull(_)) => "session_full",
        EngineError::Op(OpError::Validation { .. }) | EngineError::Clock(_) => "validation_failed",
        EngineError::Op(OpError::NotParticipant(_)) => "not_found",
        EngineError::HostHasOpenSession { .. } => "host_has_open_session",
        EngineError::Conflict(_) => "conflict",
        EngineError::Store(_) => "internal",
    }
}
