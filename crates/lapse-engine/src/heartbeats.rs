//! Heartbeats are the hottest path, so they are not written one by one: each is folded into
//! an in-memory map (the latest moment per participant) and the map is flushed in one batch.
//! A beat waits in memory only where its room's stored activity covers it ([`covered`]: lost
//! in a crash, it brings no idle rule early) and its participant's presence does not lapse
//! before it is written (another instance deciding the lapse finds it). The others are
//! written before they are answered, gathered into one transaction at a time. A beat of a
//! room this instance holds no copy of goes in that transaction unread, written only where
//! the room as stored lets it stand (what a read would have checked, checked by the write);
//! only where it does not is the room read.
//!
//! Nothing is decided on a stale row: every single-session operation overlays the pending
//! beats of its session before applying rules, and a sweep writes the pending beats of the
//! sessions it is about to decide before it reads them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use std::time::Duration;

use lapse_core::store::Beat;
use lapse_core::{Session, SessionId, Span, StoreError, Timestamp, UserId};

/// How often pending heartbeats are written.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Most beats written in one transaction. A flush of more goes in several, so other writes
/// (a sweep's batch above all) wait for one of them at most, not for the whole flush: at a
/// million live sessions a beat dirties two pages no other beat shares, and ten thousand of
/// them hold SQLite's one writer for a good part of a second.
pub const FLUSH_CHUNK: usize = 1_000;

/// About how long one flush transaction may hold the writer: the most a sweep's batch waits
/// behind a flush. Where beats are slow to write (a million live sessions, their pages cold:
/// 100–170 µs a beat), a transaction takes fewer than [`FLUSH_CHUNK`] (see [`next_chunk`]).
pub const FLUSH_HOLD: Duration = Duration::from_millis(25);

/// Fewest beats in one flush transaction, however slow the last one was.
pub const FLUSH_CHUNK_MIN: usize = 128;

/// Most participants with a beat waiting while the database is out of reach (a few hundred
/// bytes each); past it, heartbeats the database would be needed for are refused.
pub const MAX_PENDING: usize = 100_000;

/// How long an idle rule waits past its deadline: two flush intervals. A heartbeat accepted
/// just before the deadline has then been flushed (and committed) before anyone decides
/// without it, whether another instance holds it or this one was killed before writing it
/// (its last acknowledged second of beats is lost, and the rule still fires no earlier than
/// the idle time after the last of them, since only beats within this grace of the room's
/// stored activity wait in memory: [`covered`]).
pub const IDLE_GRACE: Span = Span::from_millis(2 * FLUSH_INTERVAL.as_millis() as i64);

/// Whether a beat taken at `at` may wait in memory for the next flush, its room's activity as
/// stored being `stored`: if this instance dies before writing it, the idle grace still keeps
/// the room's idle rule from firing before the idle time after the beat. A beat further from
/// the stored activity (the first after a silence longer than the grace, or one that comes
/// while this instance has not written its room lately) is written before it is answered.
pub fn covered(stored: Timestamp, at: Timestamp) -> bool {
    at <= stored + IDLE_GRACE
}

/// How many beats the next flush transaction takes, from the last one: `beats` written in
/// `took`. As many as fit in [`FLUSH_HOLD`] at that pace, between [`FLUSH_CHUNK_MIN`] and
/// [`FLUSH_CHUNK`].
pub fn next_chunk(beats: usize, took: Duration) -> usize {
    let per_beat = took.as_nanos() / beats.max(1) as u128;
    let fit = FLUSH_HOLD.as_nanos() / per_beat.max(1);
    usize::try_from(fit)
        .unwrap_or(FLUSH_CHUNK)
        .clamp(FLUSH_CHUNK_MIN, FLUSH_CHUNK)
}

/// Pending heartbeats, session → user → latest time seen, with each session's stored wake-up.
pub struct Heartbeats {
    pending: Mutex<Pending>,
    /// Beats in the next flush transaction ([`next_chunk`] of the last); 0 before the first.
    chunk: AtomicUsize,
    /// How long the flusher's last flush took, in ms; `u64::MAX` before the first.
    last_flush_ms: AtomicU64,
    /// Beats to be written before they are answered, gathering while such a write runs.
    through: Mutex<Through>,
    /// Held while beats gathered in `through` are written: one transaction at a time.
    pub(crate) through_turn: tokio::sync::Mutex<()>,
}

/// Where the outcome of a write-through transaction is set: for each of its unread beats,
/// in the order gathered, its room's stored activity before the write, or `None` where the
/// beat was not written (see [`lapse_core::Store::write_heartbeats`]).
pub(crate) type Outcome = Arc<OnceLock<Result<Arc<[Option<Timestamp>]>, StoreError>>>;

/// Beats gathered for one write-through transaction, and its outcome once written (or not).
#[derive(Default)]
pub(crate) struct Through {
    /// Beats checked against their rooms as read.
    pub read: Vec<Beat>,
    /// Beats of rooms not read first, each written only where its room lets it stand.
    pub unread: Vec<Beat>,
    /// Set once the transaction is written, or failed.
    pub outcome: Outcome,
}

#[derive(Default)]
struct Pending {
    by_session: HashMap<SessionId, Room>,
    /// Participants with a beat in `by_session`.
    participants: usize,
    /// Rooms marked `urgent`, in the order they were: see [`Heartbeats::take_urgent`]. May
    /// name a room since taken; the room's own mark is what counts.
    urgent: Vec<SessionId>,
}

/// One session's pending beats.
struct Room {
    /// The session's stored wake-up, as its beats found it: when a sweep, of this instance or
    /// another, next looks at the row. A flush writes the rooms looked at soonest first.
    wake_at: Option<Timestamp>,
    users: HashMap<UserId, Timestamp>,
    /// Whether a beat came so close to the stored wake-up that waiting for the next flush
    /// could write it after a sweep has looked (see [`Heartbeats::urgent_within`]).
    urgent: bool,
}

/// The earlier of two wake-ups, where `None` is none.
fn earliest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Default for Heartbeats {
    fn default() -> Self {
        Heartbeats {
            pending: Mutex::default(),
            chunk: AtomicUsize::new(0),
            last_flush_ms: AtomicU64::new(u64::MAX),
            through: Mutex::default(),
            through_turn: tokio::sync::Mutex::new(()),
        }
    }
}

impl Heartbeats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // The map holds plain values; a panic elsewhere cannot leave it half-updated.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `user` was seen in `session` at `at`; `wake_at` is the session's stored
    /// wake-up (`Session::wake_at` of a copy as stored), which orders the flush.
    pub fn record(
        &self,
        session: &SessionId,
        user: &UserId,
        at: Timestamp,
        wake_at: Option<Timestamp>,
    ) {
        let near = wake_at.is_some_and(|w| w <= at + self.urgent_within());
        let mut pending = self.lock();
        let pending = &mut *pending;
        // Looked up before anything is copied: a room beats many times between flushes.
        let new = match pending.by_session.get_mut(session) {
            Some(room) => {
                room.wake_at = earliest(room.wake_at, wake_at);
                if near && !room.urgent {
                    room.urgent = true;
                    pending.urgent.push(session.clone());
                }
                match room.users.get_mut(user) {
                    Some(seen) => {
                        *seen = (*seen).max(at);
                        false
                    }
                    None => room.users.insert(user.clone(), at).is_none(),
                }
            }
            None => {
                let room = Room {
                    wake_at,
                    users: HashMap::from([(user.clone(), at)]),
                    urgent: near,
                };
                if near {
                    pending.urgent.push(session.clone());
                }
                pending.by_session.insert(session.clone(), room);
                true
            }
        };
        pending.participants += usize::from(new);
    }

    /// Applies the pending beats of `s` to it, so decisions see them before they are flushed.
    pub fn overlay(&self, s: &mut Session) {
        let pending = self.lock();
        if let Some(room) = pending.by_session.get(&s.id) {
            for (user, at) in &room.users {
                if s.is_joined(user) {
                    lapse_core::lifecycle::heartbeat(s, user, *at);
                }
            }
        }
    }

    /// Takes every pending beat, leaving the map empty: the beats of the sessions whose
    /// stored wake-up comes soonest first, those with none last. A flush writes them in this
    /// order, a transaction at a time, so where a flush runs long, the rooms a sweep looks at
    /// next (an idle rule about to be decided on the stored row, perhaps by another instance)
    /// are written in its first transaction, not its last.
    pub fn drain(&self) -> Vec<Beat> {
        let map = std::mem::take(&mut *self.lock()).by_session;
        let mut rooms: Vec<(SessionId, Room)> = map.into_iter().collect();
        rooms.sort_unstable_by_key(|(_, room)| (room.wake_at.is_none(), room.wake_at));
        rooms.into_iter().flat_map(beats_of).collect()
    }

    /// How close to its session's stored wake-up a beat is urgent: the idle grace and two
    /// flushes as long as the last. A beat further off is written in time by the flush after
    /// the one running when it came (it waits at most the longer of the interval and a flush,
    /// then its own flush). One closer could be written only after a sweep, perhaps another
    /// instance's, has decided the room without it, so a running flush takes it between two
    /// of its transactions (see [`Heartbeats::take_urgent`]).
    pub fn urgent_within(&self) -> Span {
        let flush = self.last_flush().map_or(0, |f| f.as_millis());
        let flush = i64::try_from(flush).unwrap_or(i64::MAX);
        Span::from_millis(IDLE_GRACE.millis().saturating_add(flush.saturating_mul(2)))
    }

    /// Takes the pending beats of the rooms marked urgent since the last drain or take, but
    /// not of those in `taken` (a flush takes a room's urgent beats once: those that follow
    /// wait for the next flush, the room's row being written by then). Adds the rooms taken
    /// to `taken`.
    pub fn take_urgent(&self, taken: &mut HashSet<SessionId>) -> Vec<Beat> {
        let mut pending = self.lock();
        let mut beats = Vec::new();
        for id in std::mem::take(&mut pending.urgent) {
            if taken.contains(&id) || !pending.by_session.get(&id).is_some_and(|r| r.urgent) {
                continue;
            }
            if let Some(room) = pending.by_session.remove_entry(&id) {
                pending.participants -= room.1.users.len();
                beats.extend(beats_of(room));
                taken.insert(id);
            }
        }
        beats
    }

    /// Takes the pending beats of `sessions` only, leaving the rest.
    pub fn take(&self, sessions: &[SessionId]) -> Vec<Beat> {
        let mut pending = self.lock();
        let mut taken = Vec::new();
        for id in sessions {
            if let Some(room) = pending.by_session.remove_entry(id) {
                pending.participants -= room.1.users.len();
                taken.extend(beats_of(room));
            }
        }
        taken
    }

    /// Puts back beats whose flush failed, so none is lost. They have waited longest: the
    /// next flush writes them first.
    pub fn restore(&self, beats: Vec<Beat>) {
        for b in beats {
            self.record(
                &b.session,
                &b.user,
                b.at,
                Some(Timestamp::from_millis(i64::MIN)),
            );
        }
    }

    /// How many beats the next flush transaction takes.
    pub fn chunk(&self) -> usize {
        match self.chunk.load(Ordering::Relaxed) {
            0 => FLUSH_CHUNK,
            n => n,
        }
    }

    /// Notes that a flush transaction wrote `beats` in `took`, to size the next. A
    /// transaction of fewer than [`FLUSH_CHUNK_MIN`] (a sweep writing the beats of the few
    /// sessions it decides) says little of the pace: its wait for the writer, spread over a
    /// few beats, would shrink the next flush's transactions for nothing. It leaves the size.
    pub fn written(&self, beats: usize, took: Duration) {
        if beats >= FLUSH_CHUNK_MIN {
            self.chunk.store(next_chunk(beats, took), Ordering::Relaxed);
        }
    }

    /// Notes how long a whole flush of the flusher took.
    pub fn flush_took(&self, took: Duration) {
        let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX - 1);
        self.last_flush_ms.store(ms, Ordering::Relaxed);
    }

    /// How long the flusher's last flush took, if it has flushed. Past the flush interval, a
    /// beat can be written after the idle grace, and with several instances another one
    /// could decide an idle rule without it.
    pub fn last_flush(&self) -> Option<Duration> {
        match self.last_flush_ms.load(Ordering::Relaxed) {
            u64::MAX => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Adds beats to the next write-through transaction: where its outcome will be set, and
    /// where in it the outcomes of these `unread` start.
    pub(crate) fn queue_through(&self, read: Vec<Beat>, unread: Vec<Beat>) -> (Outcome, usize) {
        // Plain values; a panic elsewhere cannot leave them half-updated.
        let mut through = self.through.lock().unwrap_or_else(|p| p.into_inner());
        let first = through.unread.len();
        through.read.extend(read);
        through.unread.extend(unread);
        (through.outcome.clone(), first)
    }

    /// Takes the beats gathered for write-through, and where their outcome goes.
    pub(crate) fn take_through(&self) -> Through {
        let mut through = self.through.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *through)
    }

    /// How many participants have a pending beat.
    pub fn len(&self) -> usize {
        self.lock().participants
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One session's pending beats as flushable rows.
fn beats_of((session, room): (SessionId, Room)) -> impl Iterator<Item = Beat> {
    room.users.into_iter().map(move |(user, at)| Beat {
        session: session.clone(),
        user,
        at,
    })
}

#[cfg(test)]
mod tests;
