//! Recently used sessions, held in memory exactly as stored, so the hot paths need not read a
//! whole session (a lecture hall's thousand participants) from the database again.
//!
//! Two uses, two strengths of promise:
//! - **Reads for a change** (join, leave, start, end, ...) take a cached copy only after one
//!   index probe shows the stored version is still the cached one; every write is
//!   compare-and-set on that version anyway, so a stale copy can cost a retry, never a wrong
//!   commit.
//! - **Heartbeats** are answered from a copy that is *current* (open, user joined, nothing
//!   due). Every change to a session writes an event, and the event feed reads every event in
//!   commit order, so a copy no event has touched since it was checked is still as stored as
//!   of the feed's last read. A copy is current when no event of it has been read since it
//!   was checked (or written by this instance), and either that check or the feed's last
//!   complete read is less than [`FRESH_FOR`] old. Either way another instance (or
//!   `lapse sweep`) may have ended the session less than [`FRESH_FOR`] ago without this
//!   instance knowing; the beat is then accepted here, and dropped when flushed, because a
//!   flush moves only joined participants of open sessions.
//!
//! Bounded: past [`CAPACITY`] sessions, the oldest half is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use lapse_core::store::{Beat, Commit, Moved, SessionWrite};
use lapse_core::{Session, SessionId, Timestamp, UserId};

/// How long a checked copy answers heartbeats without another look at the database.
pub const FRESH_FOR: Duration = Duration::from_secs(5);
/// Most sessions held.
pub const CAPACITY: usize = 50_000;

/// How long the feed remembers which sessions its events touched. A check that took longer
/// than this (start to finish) vouches for nothing.
const TOUCHED_FOR: Duration = Duration::from_secs(2 * FRESH_FOR.as_secs());

struct Entry {
    session: Arc<Session>,
    /// Its joined participants and when each was last seen as stored, so a heartbeat in a
    /// big room looks at one of them, not all.
    joined: Arc<Joined>,
    checked: Instant,
    /// No event of this session has been read by the feed since the copy was checked (and
    /// the check began after any the feed had read).
    vouched: bool,
    used: u64,
}

/// A held copy, as [`SessionCache::get`] hands it out.
pub struct Held {
    /// The session as stored.
    pub session: Arc<Session>,
    /// Its joined participants and when each was last seen, as stored.
    pub joined: Arc<Joined>,
    /// Whether it may answer a heartbeat: no event of it read since it was checked, and that
    /// check or the feed's last complete read less than [`FRESH_FOR`] ago (see the module
    /// docs).
    pub current: bool,
}

#[derive(Default)]
struct Inner {
    map: HashMap<SessionId, Entry>,
    /// Use counter, for dropping the least recently used.
    clock: u64,
    /// Sessions the feed read events of, and when that read began (the latest), for the
    /// last [`TOUCHED_FOR`].
    touched: HashMap<SessionId, Instant>,
    touched_pruned: Option<Instant>,
    /// When the feed's last complete read began: every event committed before then has been
    /// read. `None` while no feed runs, or since it started over.
    fed: Option<Instant>,
}

/// Whether a copy checked by a database read that began at `since` may be vouched for by the
/// feed: no event of it read since then (`touched`, the feed's record).
fn vouches(touched: &HashMap<SessionId, Instant>, id: &SessionId, since: Instant) -> bool {
    since.elapsed() < TOUCHED_FOR && touched.get(id).is_none_or(|at| *at < since)
}

/// A room's joined participants, each with their `last_seen_at`.
pub type Joined = HashMap<UserId, Timestamp>;

fn joined(s: &Session) -> Arc<Joined> {
    Arc::new(
        s.participants
            .iter()
            .filter(|p| p.state == lapse_core::ParticipantState::Joined)
            .map(|p| (p.user.clone(), p.last_seen_at))
            .collect(),
    )
}

/// The cache; see the module docs.
#[derive(Default)]
pub struct SessionCache {
    inner: Mutex<Inner>,
}

impl SessionCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Entries are replaced whole; a panic elsewhere cannot leave one half-written.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached copy of `id`.
    pub fn get(&self, id: &SessionId) -> Option<Held> {
        let mut guard = self.lock();
        let Inner {
            map, clock, fed, ..
        } = &mut *guard;
        *clock += 1;
        let e = map.get_mut(id)?;
        e.used = *clock;
        let fed_lately = || fed.is_some_and(|at| at.elapsed() < FRESH_FOR);
        Some(Held {
            session: e.session.clone(),
            joined: e.joined.clone(),
            current: e.vouched && (e.checked.elapsed() < FRESH_FOR || fed_lately()),
        })
    }

    /// Holds `s`, exactly as stored at `s.version`, as read by a database read that began at
    /// `since`.
    pub fn put(&self, s: Session, since: Instant) {
        let mut guard = self.lock();
        let Inner {
            map,
            clock,
            touched,
            ..
        } = &mut *guard;
        let vouched = vouches(touched, &s.id, since);
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
            vouched,
            used: *clock,
        };
        map.insert(entry.session.id.clone(), entry);
    }

    /// Marks the copy of `id` as checked by a database read that began at `since`.
    pub fn checked(&self, id: &SessionId, since: Instant) {
        let mut guard = self.lock();
        let Inner { map, touched, .. } = &mut *guard;
        if let Some(e) = map.get_mut(id) {
            e.checked = Instant::now();
            e.vouched = vouches(touched, id, since);
        }
    }

    /// Forgets `id`.
    pub fn remove(&self, id: &SessionId) {
        self.lock().map.remove(id);
    }

    /// The event feed read events of `sessions` in a read that began at `read_at`: their
    /// copies are no longer current until checked again.
    pub fn touched<'a>(&self, sessions: impl IntoIterator<Item = &'a SessionId>, read_at: Instant) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if inner
            .touched_pruned
            .is_none_or(|at| at.elapsed() >= TOUCHED_FOR)
        {
            inner.touched.retain(|_, at| at.elapsed() < TOUCHED_FOR);
            inner.touched_pruned = Some(Instant::now());
        }
        for id in sessions {
            if let Some(e) = inner.map.get_mut(id) {
                e.vouched = false;
            }
            let at = inner.touched.entry(id.clone()).or_insert(read_at);
            *at = (*at).max(read_at);
        }
    }

    /// The event feed finished a read that began at `read_at`, having read every event
    /// committed before then.
    pub fn fed(&self, read_at: Instant) {
        let mut guard = self.lock();
        guard.fed = Some(guard.fed.map_or(read_at, |at| at.max(read_at)));
    }

    /// The event feed starts over from the table's end, skipping what was committed before:
    /// no copy held now is vouched for until it is checked again.
    pub fn feed_restarted(&self) {
        let mut guard = self.lock();
        guard.fed = None;
        for e in guard.map.values_mut() {
            e.vouched = false;
        }
    }

    /// Follows a commit that was written, by a transaction that began at `since`: held
    /// sessions it updated take their new state and version, deleted ones go. Sessions not
    /// held are not added (a sweep touches many).
    pub fn follow(&self, commit: &Commit, since: Instant) {
        for write in &commit.sessions {
            match write {
                SessionWrite::Update { session, changed } => {
                    let mut guard = self.lock();
                    let Inner {
                        map,
                        clock,
                        touched,
                        ..
                    } = &mut *guard;
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
                                match s.participant(user) {
                                    Some(p) if p.state == lapse_core::ParticipantState::Joined => {
                                        set.insert(user.clone(), p.last_seen_at)
                                    }
                                    _ => set.remove(user),
                                };
                            }
                        }
                        _ => e.joined = joined(&s),
                    }
                    e.session = Arc::new(s);
                    e.checked = Instant::now();
                    e.vouched = vouches(touched, &session.id, since);
                    e.used = *clock;
                }
                SessionWrite::Insert(s) => {
                    let mut s = s.clone();
                    s.version = 1;
                    self.put(s, since);
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
            if let Some(e) = guard.map.get_mut(&r.id)
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
    /// the row. The flush's transaction began at `since`.
    ///
    /// A copy at an older version missed another write. Every change writes an event, so
    /// while the event feed vouches for the copy (it read no event of the session since the
    /// copy was checked, and it read lately) that write was another instance's flush: a room
    /// beaten through both instances, which is every room behind a load balancer. Such a copy
    /// takes the beats and keeps answering heartbeats; it keeps its version, behind the stored
    /// one, so whatever would change the session reads it again first. Without the feed's
    /// word the copy is dropped (read again when next needed).
    pub fn flushed(&self, beats: &[Beat], moved: &[Moved], since: Instant) {
        let mut by_session: HashMap<&SessionId, Vec<&Beat>> = HashMap::new();
        for b in beats {
            by_session.entry(&b.session).or_default().push(b);
        }
        let now = Instant::now();
        let mut guard = self.lock();
        let Inner {
            map, touched, fed, ..
        } = &mut *guard;
        let fed_lately = fed.is_some_and(|at| at.elapsed() < FRESH_FOR);
        for m in moved {
            let Some(e) = map.get_mut(&m.id) else {
                continue;
            };
            let caught_up = e.session.version + 1 == m.version;
            let vouched_for = fed_lately && e.vouched;
            if !(caught_up || vouched_for) {
                map.remove(&m.id);
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
            if !seen.is_empty() {
                let joined = Arc::make_mut(&mut e.joined);
                for (user, at) in &seen {
                    if let Some(last) = joined.get_mut(*user) {
                        *last = (*last).max(*at);
                    }
                }
            }
            s.used = true;
            if caught_up {
                s.version = m.version;
                e.checked = now;
                e.vouched = vouches(touched, &m.id, since);
            }
        }
    }

    /// How many sessions are held.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests;
