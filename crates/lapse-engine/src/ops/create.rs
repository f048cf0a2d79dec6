//! Creating a session: input checked once, the parent settled, the host's limit enforced.

use lapse_core::lifecycle::{self, Effects, NewSession, ParentInfo};
use lapse_core::store::{HostLimit, SessionQuery};
use lapse_core::{Kind, Session, SessionId, StoreError, UserId};

use super::{ATTEMPTS, CreateRequest, not_found, validation};
use crate::{Caller, Engine, EngineError};

impl Engine {
    /// `POST /v1/sessions`
    pub async fn create(
        &self,
        caller: &Caller,
        req: CreateRequest,
    ) -> Result<Session, EngineError> {
        caller.require_sessions()?;
        let config = self.config();
        let kind = config.kind(&req.kind).ok_or_else(|| {
            let known: Vec<_> = config.kinds.keys().map(String::as_str).collect();
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
                // SPEC §5's order: what the request names must exist (404) before the rules
                // about it (409) are weighed.
                let p = self.settle(pid).await?.ok_or_else(|| {
                    EngineError::NotFound(format!("parent session `{pid}` not found"))
                })?;
                Some(ParentInfo {
                    kind: p.kind.clone(),
                    ended_at: if p.status.is_open() { None } else { p.ended_at },
                })
            }
        };

        let id = match &req.id {
            Some(id) if id.as_str().starts_with("lapse:") => {
                return Err(validation(
                    "id",
                    "ids beginning with `lapse:` are reserved for lapse's own events",
                ));
            }
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
            let rules_version = self.rules_version();
            // The kind as in force now (the rules may have been reloaded since the check).
            let kind = self.kind_of(&kind.name);
            if kind.name != req.kind {
                return Err(validation(
                    "kind",
                    format!("kind `{}` was just removed", req.kind),
                ));
            }
            let kind = &*kind;
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
                .build_commit(&mut s, None, &mut fx, now, Some(Vec::new()), rules_version)
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
                // Other rules came into force, or a deadlock with another writer rolled it
                // back: decide again.
                Err(EngineError::Store(e)) if e.decide_again() => continue,
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
                host_limited: true,
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
}
