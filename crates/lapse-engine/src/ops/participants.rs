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
    /// does not cover it, written before it is answered; or, where this instance holds no
    /// copy of the room, written first where the room as stored lets it stand, and read
    /// only where it does not (see [`Engine::take_beat`]).
    pub async fn heartbeat(
        &self,
        caller: &Caller,
        id: &SessionId,
        user: &UserId,
    ) -> Result<(), EngineError> {
        match self.take_beat(caller, id, user).await? {
            Taken::Kept => Ok(()),
            taken => match self.answer_beats(vec![(0, taken)]).await?.pop() {
                Some((_, refused)) => Err(refused),
                None => Ok(()),
            },
        }
    }

    /// `POST /v1/heartbeats`: each beat on its own; refusals are reported, not fatal. The
    /// beats to be written before the answer go in one transaction (and those of rooms that
    /// did not let them stand unread, read then, in one more).
    pub async fn heartbeats(
        &self,
        caller: &Caller,
        beats: &[(String, String)],
    ) -> Result<(usize, Vec<RejectedBeat>), EngineError> {
        caller.require_sessions()?;
        let mut refused = Vec::new();
        let mut taken = Vec::new();
        for (index, (session, user)) in beats.iter().enumerate() {
            let outcome = match (SessionId::parse(session), UserId::parse(user)) {
                (Ok(sid), Ok(uid)) => self.take_beat(caller, &sid, &uid).await,
                (Err(e), _) | (_, Err(e)) => Err(validation("beats", e.to_string())),
            };
            match outcome {
                Ok(t) => taken.push((index, t)),
                Err(EngineError::Store(e)) => return Err(EngineError::Store(e)),
                Err(e) => refused.push((index, e)),
            }
        }
        refused.extend(self.answer_beats(taken).await?);
        refused.sort_unstable_by_key(|(index, _)| *index);
        let rejected: Vec<RejectedBeat> = refused
            .into_iter()
            .map(|(index, e)| RejectedBeat {
                index,
                session: beats[index].0.clone(),
                user: beats[index].1.clone(),
                code: error_code(&e),
                detail: e.to_string(),
            })
            .collect();
        Ok((beats.len() - rejected.len(), rejected))
    }

    /// Takes a heartbeat of `user` in `id`. In the common case it is folded into memory,
    /// checked against the room this instance holds, current (open, joined, nothing due). A
    /// beat that may not wait in memory ([`Engine::may_wait`]) is handed back to be written
    /// before it is answered.
    ///
    /// Where this instance holds no copy of the room (a client beating every 15–30 s finds
    /// its room long gone from memory), the beat is handed back unread: written first where
    /// the room as stored lets it stand without a read, in the transaction that checks it
    /// ([`lapse_core::Store::write_heartbeats`]), and read and taken again only where it
    /// does not ([`Engine::answer_beats`]).
    async fn take_beat(
        &self,
        caller: &Caller,
        id: &SessionId,
        user: &UserId,
    ) -> Result<Taken, EngineError> {
        caller.require_self(user)?;
        let now = self.now();
        let beat = || Beat {
            session: id.clone(),
            user: user.clone(),
            at: now,
        };
        let Some(held) = self.sessions.get(id) else {
            return Ok(Taken::Unread(beat()));
        };
        // The common case from memory: open, joined, nothing due (see `cache`).
        if held.current && self.takes_beat(&held, user, now) {
            if !self.may_wait(&held, user, now) {
                return Ok(Taken::Write(beat()));
            }
            self.beats.record(id, user, now, held.session.wake_at);
            return Ok(Taken::Kept);
        }
        Ok(match self.take_read_beat(id, user, Some(held)).await? {
            Some(beat) => Taken::Write(beat),
            None => Taken::Kept,
        })
    }

    /// Whether `held` takes a beat of `user` at `now` as it is: open, the user joined, and
    /// nothing due. The stored wake-up may have passed only because heartbeats moved the
    /// truth (lazy re-arm); the rules themselves, on the copy with this instance's beats,
    /// tell.
    fn takes_beat(&self, held: &Held, user: &UserId, now: Timestamp) -> bool {
        let s = &held.session;
        // A session that follows a parent still open as far as it knows may have lapsed
        // with its parent's end: that takes a read of the parent (see `settle`).
        let parent_unknown =
            s.parent.is_some() && s.parent_ended_at.is_none() && self.follows_parent(&s.kind);
        s.status.is_open()
            && !parent_unknown
            && held.joined.contains_key(user)
            && (s.wake_at.is_none_or(|at| at > now) || {
                let mut probe = (**s).clone();
                self.apply_due(&mut probe, now).is_empty()
            })
    }

    /// Takes a heartbeat of `user` in `id` against the settled session: folded into memory
    /// (`None`), or handed back to be written before it is answered. `held` is this
    /// instance's copy, if any: where the database is out of reach, a room it shows open,
    /// with the user in it and nothing due, takes the beat into memory as it would anyway.
    async fn take_read_beat(
        &self,
        id: &SessionId,
        user: &UserId,
        held: Option<Held>,
    ) -> Result<Option<Beat>, EngineError> {
        let s = match self.settle(id).await {
            Ok(s) => s.ok_or_else(|| not_found(id))?,
            // Written once the database is back. Bounded: past it, the 503 stands.
            Err(e) if e.is_unavailable() => {
                let now = self.now();
                if let Some(h) = &held
                    && self.takes_beat(h, user, now)
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
            return Ok(Some(Beat {
                session: id.clone(),
                user: user.clone(),
                at: now,
            }));
        }
        self.beats.record(id, user, now, s.wake_at);
        Ok(None)
    }

    /// Writes, before they are answered, the beats that taking them left to write
    /// ([`Taken`], each with its place in the request), in one transaction. The unread ones
    /// their rooms did not let stand are then read and taken again, and those of them to be
    /// written go in one more. Returns the beats refused on that read, by place.
    ///
    /// A room whose activity as stored was at most [`crate::cache::FRESH_FOR`] before an
    /// unread beat is beaten often: it is read into memory once the beat is written, so that
    /// the beats that follow are answered from there ([`beaten_lately`]).
    async fn answer_beats(
        &self,
        taken: Vec<(usize, Taken)>,
    ) -> Result<Vec<(usize, EngineError)>, EngineError> {
        let (mut read, mut unread) = (Vec::new(), Vec::new());
        for (index, t) in taken {
            match t {
                Taken::Kept => {}
                Taken::Write(beat) => read.push(beat),
                Taken::Unread(beat) => unread.push((index, beat)),
            }
        }
        if read.is_empty() && unread.is_empty() {
            return Ok(Vec::new());
        }
        let beats = unread.iter().map(|(_, b)| b.clone()).collect();
        let stood = self.beats_through(read, beats).await?;
        let mut refused = Vec::new();
        let mut again = Vec::new();
        for ((index, beat), stood) in unread.into_iter().zip(stood) {
            match stood {
                Some(activity) if beaten_lately(activity, beat.at) => {
                    // Only so that the next beat finds the room here: a failure leaves it
                    // to be written unread again.
                    let _ = self.load_session(&beat.session).await;
                }
                Some(_) => {}
                None => match self.take_read_beat(&beat.session, &beat.user, None).await {
                    Ok(write) => again.extend(write),
                    Err(EngineError::Store(e)) => return Err(EngineError::Store(e)),
                    Err(e) => refused.push((index, e)),
                },
            }
        }
        if !again.is_empty() {
            self.beats_through(again, Vec::new()).await?;
        }
        Ok(refused)
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

    /// Writes beats before they are answered ([`Engine::write_through`]); for each of
    /// `unread`, its room's stored activity before, where it was written. If the database is
    /// out of reach, the `read` beats wait in memory for it, as any beat then does, up to the
    /// bound, and the unread ones are not written (a read then answers them, as it can).
    async fn beats_through(
        &self,
        read: Vec<Beat>,
        unread: Vec<Beat>,
    ) -> Result<Vec<Option<Timestamp>>, EngineError> {
        let n = unread.len();
        match self.write_through(read, unread).await {
            Ok(stood) => Ok(stood),
            Err(e) if e.is_unavailable() && self.beats.len() <= MAX_PENDING => Ok(vec![None; n]),
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

/// Whether a room whose activity as stored was `activity` when a beat came at `at` is beaten
/// often enough to hold in memory: within [`crate::cache::FRESH_FOR`], as long as a copy
/// read now answers heartbeats without another look. A client beating every 15–30 s alone in
/// its room is not; its beats are written unread, each a write and no read.
fn beaten_lately(activity: Timestamp, at: Timestamp) -> bool {
    let fresh = i64::try_from(crate::cache::FRESH_FOR.as_millis()).unwrap_or(i64::MAX);
    at <= activity + lapse_core::Span::from_millis(fresh)
}

/// What taking a heartbeat left to do before it is answered.
enum Taken {
    /// Folded into memory, written with the next flush.
    Kept,
    /// To be written first, checked against its room as read.
    Write(Beat),
    /// A beat of a room this instance holds no copy of: written first where its room as
    /// stored lets it stand, else read and taken again.
    Unread(Beat),
}
