//! Heartbeats are the hottest path, so they are not written one by one: each is folded into
//! an in-memory map (the latest moment per participant) and the map is flushed in one batch.
//!
//! Nothing is decided on a stale row: every single-session operation overlays the pending
//! beats of its session before applying rules, and a sweep flushes before it decides.

use std::collections::HashMap;
use std::sync::Mutex;

use std::time::Duration;

use lapse_core::store::Beat;
use lapse_core::{Session, SessionId, Span, Timestamp, UserId};

/// How often pending heartbeats are written.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// How long an idle rule waits past its deadline: two flush intervals. A heartbeat accepted
/// just before the deadline has then been flushed (and committed) before anyone decides
/// without it, whether another instance holds it or this one was killed before writing it
/// (its last acknowledged second of beats is lost, and the rule still fires no earlier than
/// the idle time after the last of them).
pub const IDLE_GRACE: Span = Span::from_millis(2 * FLUSH_INTERVAL.as_millis() as i64);

/// Pending heartbeats, session → user → latest time seen.
#[derive(Default)]
pub struct Heartbeats {
    pending: Mutex<HashMap<SessionId, HashMap<UserId, Timestamp>>>,
}

impl Heartbeats {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, HashMap<UserId, Timestamp>>> {
        // The map holds plain values; a panic elsewhere cannot leave it half-updated.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `user` was seen in `session` at `at`.
    pub fn record(&self, session: &SessionId, user: &UserId, at: Timestamp) {
        let mut map = self.lock();
        let seen = map
            .entry(session.clone())
            .or_default()
            .entry(user.clone())
            .or_insert(at);
        *seen = (*seen).max(at);
    }

    /// Applies the pending beats of `s` to it, so decisions see them before they are flushed.
    pub fn overlay(&self, s: &mut Session) {
        let map = self.lock();
        if let Some(users) = map.get(&s.id) {
            for (user, at) in users {
                if s.is_joined(user) {
                    lapse_core::lifecycle::heartbeat(s, user, *at);
                }
            }
        }
    }

    /// Takes every pending beat, leaving the map empty.
    pub fn drain(&self) -> Vec<Beat> {
        let map = std::mem::take(&mut *self.lock());
        map.into_iter()
            .flat_map(|(session, users)| {
                users.into_iter().map(move |(user, at)| Beat {
                    session: session.clone(),
                    user,
                    at,
                })
            })
            .collect()
    }

    /// Puts back beats whose flush failed, so none is lost.
    pub fn restore(&self, beats: Vec<Beat>) {
        for b in beats {
            self.record(&b.session, &b.user, b.at);
        }
    }

    /// How many participants have a pending beat.
    pub fn len(&self) -> usize {
        self.lock().values().map(HashMap::len).sum()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
