//! Joining, leaving, heartbeats and activity.

use lapse_core::lifecycle::{self, OpError, Via};
use lapse_core::{Participant, Role, SessionId, UserId};

use super::{RejectedBeat, error_code, not_found, validation};
use crate::{Caller, Engine, EngineError};

impl Engine {
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
        let now = self.now();
        // The common case from memory: open, joined, nothing due (see `cache`). The stored
        // wake-up may have passed only because heartbeats moved the truth (lazy re-arm); the
        // rules themselves, on the copy with this instance's beats, tell.
        let held = self.sessions.get(id);
        let takes_beat = |h: &crate::cache::Held| {
            let s = &h.session;
            // A session that follows a parent still open as far as it knows may have lapsed
            // with its parent's end: that takes a read of the parent (see `settle`).
            let parent_unknown =
                s.parent.is_some() && s.parent_ended_at.is_none() && self.follows_parent(&s.kind);
            s.status.is_open()
                && !parent_unknown
                && h.joined.contains(user)
                && (s.wake_at.is_none_or(|at| at > now) || {
                    let mut probe = (**s).clone();
                    self.apply_due(&mut probe, now).is_empty()
                })
        };
        if let Some(h) = &held
            && h.current
            && takes_beat(h)
        {
            self.beats.record(id, user, now, h.session.wake_at);
            return Ok(());
        }
        let s = match self.settle(id).await {
            Ok(s) => s.ok_or_else(|| not_found(id))?,
            // The database is out of reach: a session this instance knows to be open, with
            // the user in it and nothing due, takes the beat into memory as it would anyway;
            // it is written once the database is back. Bounded: past it, the 503 stands.
            Err(e) if e.is_unavailable() => {
                if let Some(h) = &held
                    && takes_beat(h)
                    && self.beats.len() < crate::heartbeats::MAX_PENDING
                {
                    self.beats.record(id, user, now, h.session.wake_at);
                    return Ok(());
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        lifecycle::check_heartbeat(&s, user)?;
        self.beats.record(id, user, self.now(), s.wake_at);
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
}
