//! Recently used sessions, held in memory exactly as stored, so the hot paths need not read a
//! whole session (a lecture hall's thousand participants) from the database again.
//!
//! Two uses, two strengths of promise:
//! - **Reads for a change** (join, leave, start, end, ...) take a cached copy only after one
//!   index probe shows the stored version is still the cached one; every write is
//!   compare-and-set on that version anyway, so a stale copy can cost a retry, never a wrong
//!   commit.
//! - **Heartbeats** are answered from a copy checked against the database within the last
//!   [`FRESH_FOR`] (or written by this instance since): open, user joined, nothing due. Another
//!   instance (or `lapse sweep`) may have ended the session in that window; the beat is then
//!   accepted here, and dropped when flushed, because a flush moves only joined participants
//!   of open sessions.
//!
//! Bounded: past [`CAPACITY`] sessions, the oldest half is dropped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapse_core::store::{Beat, Commit, Moved, SessionWrite};
use lapse_core::{Session, SessionId, Timestamp, UserId};

/// How long a checked copy answers heartbeats without another look at the database.
pub const FRESH_FOR: Duration = Duration::from_secs(5);
/// Most sessions held.
pub const CAPACITY: usize = 50_000;

struct Entry {
    session: Arc<Session>,
    /// Its joined participants, so a heartbeat in a big room checks one of them, not all.
    joined: Arc<HashSet<UserId>>,
    checked: Instant,
    used: u64,
}

/// A held copy, as [`SessionCache::get`] hands it out.
pub struct Held {
    /// The session as stored.
    pub session: Arc<Session>,
    /// Its joined participants.
    pub joined: Arc<HashSet<UserId>>,
    /// When it was last known to match the store.
    pub checked: Instant,
}

fn joined(s: &Session) -> Arc<HashSet<UserId>> {
    Arc::new(
        s.participants
            .iter()
            .filter(|p| p.state == lapse_core::ParticipantState::Joined)
            .map(|p| p.user.clone())
            .collect(),
    )
}

/// The cache; see the module docs.
#[derive(Default)]
pub struct SessionCache {
    entries: Mutex<(HashMap<SessionId, Entry>, u64)>,
}

impl SessionCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<SessionId, Entry>, u64)> {
        // Entries are replaced whole; a panic elsewhere cannot leave one half-written.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached copy of `id`.
    pub fn get(&self, id: &SessionId) -> Option<Held> {
        let mut guard = self.lock();
        let (map, clock) = &mut *guard;
        *clock += 1;
        let e = map.get_mut(id)?;
        e.used = *clock;
        Some(Held {
            session: e.session.clone(),
            joined: e.joined.clone(),
            checked: e.checked,
        })
    }

    /// Holds `s`, exactly as stored at `s.version`, as checked now.
    pub fn put(&self, s: Session) {
        let mut guard = self.lock();
        let (map, clock) = &mut *guard;
        *clock += 1;
        if map.len() >= CAPACITY && !map.contains_key(&s.id) {
            // Drop the least recently used half: O(n) once per CAPACITY/2 insertions.
            let mut uses: Vec<u64> = map.values().map(|e| e.used).collect();
            let (_, median, _) = uses.select_nth_unstable(map.len() / 2);
            let median = *median;
            map.retain(|_, e| e.used > median);
        }
        let entry = Entry {
            joined: joined(&s),
            session: Arc::new(s),
            checked: Instant::now(),
            used: *clock,
        };
        map.insert(entry.session.id.clone(), entry);
    }

    /// Marks the copy of `id` as checked now.
    pub fn checked(&self, id: &SessionId) {
        if let Some(e) = self.lock().0.get_mut(id) {
            e.checked = Instant::now();
        }
    }

    /// Forgets `id`.
    pub fn remove(&self, id: &SessionId) {
        self.lock().0.remove(id);
    }

    /// Follows a commit that was written: held sessions it updated take their new state and
    /// version, deleted ones go. Sessions not held are not added (a sweep touches many).
    pub fn follow(&self, commit: &Commit) {
        for write in &commit.sessions {
            match write {
                SessionWrite::Update { session, changed } => {
                    let mut guard = self.lock();
                    let (map, clock) = &mut *guard;
                    *clock += 1;
                    let Some(e) = map.get_mut(&session.id) else {
                        continue;
                    };
                    let mut s = session.clone();
                    s.version += 1;
                    match changed {
                        // The held copy is the one the change was made from, and the change
                        // names the few participants it moved: only they are looked at.
                        Some(users) if e.session.version == session.version && users.len() <= 8 => {
                            let set = Arc::make_mut(&mut e.joined);
                            for user in users {
                                if s.is_joined(user) {
                                    set.insert(user.clone());
                                } else {
                                    set.remove(user);
                                }
                            }
                        }
                        _ => e.joined = joined(&s),
                    }
                    e.session = Arc::new(s);
                    e.checked = Instant::now();
                    e.used = *clock;
                }
                SessionWrite::Insert(s) => {
                    let mut s = s.clone();
                    s.version = 1;
                    self.put(s);
                }
                SessionWrite::Delete { id, .. } => self.remove(id),
            }
        }
    }

    /// Follows lazy re-arms that were written: a held copy at the version a re-arm was
    /// decided on takes its new wake-up (a re-arm leaves the version as it is).
    pub fn rearmed(&self, rows: &[lapse_core::store::Rearm]) {
        let mut guard = self.lock();
        for r in rows {
            if let Some(e) = guard.0.get_mut(&r.id)
                && e.session.version == r.version
            {
                let s = Arc::make_mut(&mut e.session);
                s.wake_at = r.wake_at;
                s.next_due = match (&r.rule, r.wake_at) {
                    (Some(rule), Some(at)) => Some(lapse_core::session::NextDue {
                        rule: rule.clone(),
                        at,
                    }),
                    _ => None,
                };
            }
        }
    }

    /// Follows a heartbeat flush that was written: a held copy at the version just before the
    /// flush's takes its beats (as the store applied them: joined participants' `last_seen_at`
    /// and the session's activity move forward, the session is marked used) and the new
    /// version, and counts as checked now, for the flush has just shown nothing else changed
    /// the row. A copy at any other version is dropped (read again when next needed).
    pub fn flushed(&self, beats: &[Beat], moved: &[Moved]) {
        let mut by_session: HashMap<&SessionId, Vec<&Beat>> = HashMap::new();
        for b in beats {
            by_session.entry(&b.session).or_default().push(b);
        }
        let now = Instant::now();
        let mut guard = self.lock();
        for m in moved {
            let Some(e) = guard.0.get_mut(&m.id) else {
                continue;
            };
            if e.session.version + 1 != m.version {
                guard.0.remove(&m.id);
                continue;
            }
            let s = Arc::make_mut(&mut e.session);
            let beats = by_session.get(&m.id).map_or(&[][..], Vec::as_slice);
            // Beats of one session are few next to its room, so a room is walked once.
            let mut seen: HashMap<&UserId, Timestamp> = HashMap::with_capacity(beats.len());
            for b in beats {
                let at = seen.entry(&b.user).or_insert(b.at);
                *at = (*at).max(b.at);
            }
            for p in &mut s.participants {
                if p.state == lapse_core::ParticipantState::Joined
                    && let Some(at) = seen.get(&p.user)
                {
                    p.last_seen_at = p.last_seen_at.max(*at);
                    s.last_activity_at = s.last_activity_at.max(*at);
                }
            }
            s.used = true;
            s.version = m.version;
            e.checked = now;
        }
    }

    /// How many sessions are held.
    pub fn len(&self) -> usize {
        self.lock().0.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
