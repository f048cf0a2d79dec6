//! Joining, leaving, heartbeats and activity.

use lapse_core::lifecycle::{self, OpError, Via};
use lapse_core::store::Beat;
use lapse_core::{Participant, Role, SessionId, Timestamp, UserId};

use crate::cache::Held;
use crate::heartbeats::{MAX_PENDING, covered};

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
    /// into memory and written with the next batch; or, where the room's stored activity
    /// does not cover it, written before it is answered (see [`Engine::take_beat`]).
    pub async fn heartbeat(
        &self,
        caller: &Caller,
        id: &SessionId,
        user: &UserId,
    ) -> Result<(), EngineError> {
        match self.take_beat(caller, id, user).await? {
            None => Ok(()),
            Some(beat) => self.beats_through(vec![beat]).await,
        }
    }

    /// `POST /v1/heartbeats`: each beat on its own; refusals are reported, not fatal. The
    /// beats to be written before the answer go in one transaction.
    pub async fn heartbeats(
        &self,
        caller: &Caller,
        beats: &[(String, String)],
    ) -> Result<(usize, Vec<RejectedBeat>), EngineError> {
        caller.require_sessions()?;
        let mut accepted = 0;
        let mut rejected = Vec::new();
        let mut through = Vec::new();
        for (index, (session, user)) in beats.iter().enumerate() {
            let outcome = match (SessionId::parse(session), UserId::parse(user)) {
                (Ok(sid), Ok(uid)) => self.take_beat(caller, &sid, &uid).await,
                (Err(e), _) | (_, Err(e)) => Err(validation("beats", e.to_string())),
            };
            match outcome {
                Ok(beat) => {
                    accepted += 1;
                    through.extend(beat);
                }
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
        if !through.is_empty() {
            self.beats_through(through).await?;
        }
        Ok((accepted, rejected))
    }

    /// Takes a heartbeat of `user` in `id`: checked against the settled session, then folded
    /// into memory, or handed back to be written before it is answered.
    ///
    /// A beat waits in memory for the next flush only where that is safe
    /// ([`Engine::may_wait`]); the others are written before they are answered.
    async fn take_beat(
        &self,
        caller: &Caller,
        id: &SessionId,
        user: &UserId,
    ) -> Result<Option<Beat>, EngineError> {
        caller.require_self(user)?;
        let now = self.now();
        let beat = |at| Beat {
            session: id.clone(),
            user: user.clone(),
            at,
        };
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
                && h.joined.contains_key(user)
                && (s.wake_at.is_none_or(|at| at > now) || {
                    let mut probe = (**s).clone();
                    self.apply_due(&mut probe, now).is_empty()
                })
        };
        if let Some(h) = &held
            && h.current
            && takes_beat(h)
        {
            if !self.may_wait(h, user, now) {
                return Ok(Some(beat(now)));
            }
            self.beats.record(id, user, now, h.session.wake_at);
            return Ok(None);
        }
        let s = match self.settle(id).await {
            Ok(s) => s.ok_or_else(|| not_found(id))?,
            // The database is out of reach: a session this instance knows to be open, with
            // the user in it and nothing due, takes the beat into memory as it would anyway;
            // it is written once the database is back. Bounded: past it, the 503 stands.
            Err(e) if e.is_unavailable() => {
                if let Some(h) = &held
                    && takes_beat(h)
                    && self.beats.len() < MAX_PENDING
                {
                    self.beats.record(id, user, now, h.session.wake_at);
                    return Ok(None);
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        lifecycle::check_heartbeat(&s, user)?;
        let now = self.now();
        // The settled copy carries this instance's pending beats; the held one is as stored.
        let held = self.sessions.get(id);
        if !held.is_some_and(|h| self.may_wait(&h, user, now)) {
            return Ok(Some(beat(now)));
        }
        self.beats.record(id, user, now, s.wake_at);
        Ok(None)
    }

    /// Whether a beat of `user` taken at `now` may wait in memory for the next flush, by
    /// `held`, its room as stored. Two things must hold:
    /// - The room's stored activity covers the beat ([`covered`]): if this instance dies
    ///   before writing it, the idle grace still keeps an idle rule from firing early. A beat
    ///   after a long silence, or one this instance takes before it has written the room, is
    ///   written first (or instances that die one after another could each lose their
    ///   second of beats).
    /// - The user's presence, as stored, does not lapse before the flush that would write the
    ///   beat is done ([`crate::heartbeats::Heartbeats::urgent_within`]). A lapse has no
    ///   grace: another instance (or `lapse sweep`) deciding it on the stored row must find
    ///   the beat there, or it tells the user offline while they are beating.
    fn may_wait(&self, held: &Held, user: &UserId, now: Timestamp) -> bool {
        let Some(seen) = held.joined.get(user) else {
            return false;
        };
        let written_by = now + self.beats.urgent_within();
        // The room's stored wake-up comes no later than any lapse still to be told: far off,
        // it spares the look at the kind.
        let lapses_later = || {
            held.session.wake_at.is_none_or(|at| at > written_by)
                || *seen + self.kind_of(&held.session.kind).presence_timeout > written_by
        };
        covered(held.session.last_activity_at, now) && lapses_later()
    }

    /// Writes beats before they are answered ([`Engine::write_through`]). If the database is
    /// out of reach they wait in memory for it, as any beat then does, up to the bound.
    async fn beats_through(&self, beats: Vec<Beat>) -> Result<(), EngineError> {
        match self.write_through(beats).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_unavailable() && self.beats.len() <= MAX_PENDING => Ok(()),
            Err(e) => Err(e.into()),
        }
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
