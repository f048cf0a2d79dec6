//! Session operations. Each loads the session, applies its due rules first (so nobody acts on
//! a lapsed state), checks the caller's rights, makes the change, and commits it with its
//! effects; a compare-and-set conflict (a sweep or another request got there first) retries
//! from a fresh read, so the loser sees the winner's state.
//!
//! - [`create`](Engine::create) lives in `create.rs`, with the one-open-session-per-host check;
//! - `sessions.rs`: read, list, update, delete, start, end, cancel, reopen;
//! - `participants.rs`: join, leave, heartbeats, activity;
//! - `reads.rs`: explain, timelines, the event log, inboxes, counts.

mod create;
mod participants;
mod reads;
mod sessions;

use lapse_core::explain::RuleExplanation;
use lapse_core::lifecycle::{self, Effects, OpError};
use lapse_core::{Kind, Session, SessionId, Timestamp, UserId};

use crate::{Engine, EngineError};

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
        lifecycle::apply_due(&self.kind_of(&s.kind), s, now, &mut fx);
        fx
    }

    /// The session as stored: the cached copy if the store still holds its version (one
    /// index probe), else a full read, which is then cached.
    pub(crate) async fn load_session(
        &self,
        id: &SessionId,
    ) -> Result<Option<Session>, EngineError> {
        let since = tokio::time::Instant::now();
        if let Some(crate::cache::Held {
            session: cached, ..
        }) = self.sessions.get(id)
        {
            match self.store.version(id).await? {
                Some(v) if v == cached.version => {
                    self.sessions.checked(id, since);
                    return Ok(Some((*cached).clone()));
                }
                None => {
                    self.sessions.remove(id);
                    return Ok(None);
                }
                Some(_) => {}
            }
        }
        let since = tokio::time::Instant::now();
        let loaded = self.store.load(id).await?;
        match &loaded {
            Some(s) => self.sessions.put(s.clone(), since),
            None => self.sessions.remove(id),
        }
        Ok(loaded)
    }

    /// Loads `id` and applies its due rules at `now`, committing what they did. Returns the
    /// session as it stands (`None` if it is gone) and its version as read.
    ///
    /// A session whose rules follow its parent settles the parent first: a parent whose own
    /// rules ended it closes for its children at that deadline, whether or not a sweep has
    /// got to it yet, and the child's rules then count from there.
    async fn settle(&self, id: &SessionId) -> Result<Option<Session>, EngineError> {
        let mut parent_settled = false;
        for _ in 0..ATTEMPTS {
            let now = self.now();
            let Some(mut s) = self.load_session(id).await? else {
                return Ok(None);
            };
            if !parent_settled
                && s.status.is_open()
                && s.parent_ended_at.is_none()
                && let Some(parent) = s.parent.clone()
                && self.follows_parent(&s.kind)
            {
                parent_settled = true;
                match Box::pin(self.settle(&parent)).await? {
                    Some(p) if p.status.is_open() => {}
                    // Its end (or deletion) moved this session's row: read it again.
                    _ => continue,
                }
            }
            let stored = s.clone();
            let rules_version = self.rules_version();
            let mut fx = self.apply_due(&mut s, now);
            if fx.is_empty() {
                s.observe(&self.kind_of(&s.kind), now);
                // The wake-up as stored while it stands: what a change of it keeps.
                s.wake_at = crate::write::lazy_wake(&stored, &s, now);
                return Ok(Some(s));
            }
            let (commit, _) = self
                .build_commit(&mut s, Some(&stored), &mut fx, now, None, rules_version)
                .await?;
            match self.apply_commit(commit).await {
                Ok(()) if fx.deleted_at.is_some() => return Ok(None),
                Ok(()) => {
                    s.version += 1;
                    return Ok(Some(s));
                }
                Err(EngineError::Store(e)) if e.decide_again() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(EngineError::Conflict(format!(
            "session `{id}` is changing too fast; try again"
        )))
    }

    /// Whether sessions of `kind` have rules that count from their parent's end.
    pub(crate) fn follows_parent(&self, kind: &str) -> bool {
        self.kind_of(kind).rules.iter().any(|r| {
            matches!(
                r.on,
                lapse_core::rules::Trigger::ParentEnded | lapse_core::rules::Trigger::Orphaned
            )
        })
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
            let rules_version = self.rules_version();
            let kind = self.kind_of(&before.kind);
            let mut s = before.clone();
            let mut fx = Effects::default();
            let value = op(&kind, &mut s, now, &mut fx)?;
            s.observe(&kind, now);
            s.wake_at = crate::write::lazy_wake(&before, &s, now);
            if fx.is_empty() && s == before {
                return Ok((value, s));
            }
            let (commit, _) = self
                .build_commit(&mut s, Some(&before), &mut fx, now, None, rules_version)
                .await?;
            match self.apply_commit(commit).await {
                Ok(()) => {
                    s.version += 1;
                    return Ok((value, s));
                }
                Err(EngineError::Store(e)) if e.decide_again() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(EngineError::Conflict(format!(
            "session `{id}` is changing too fast; try again"
        )))
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
        EngineError::Conflict(_) | EngineError::Op(OpError::Conflict(_)) => "conflict",
        EngineError::Store(e) if e.is_unavailable() => "database_unavailable",
        EngineError::Store(_) => "internal",
    }
}
