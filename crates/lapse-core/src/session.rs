//! A session as lapse keeps it: its state, participants, counters and, once ended, its summary.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::Kind;
use crate::ids::{SessionId, UserId};
use crate::time::{Span, Timestamp};

/// Where a session is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Created, not started.
    Pending,
    /// Started, by hand or by `start_delayed`.
    Active,
    /// Ended normally (manual `end` or a `complete` rule).
    Completed,
    /// Called off (manual `cancel` or a `cancel` rule).
    Cancelled,
    /// Ended by an `expire` rule; its data is kept.
    Expired,
}

impl Status {
    /// All statuses, in life order.
    pub const ALL: [Status; 5] = [
        Status::Pending,
        Status::Active,
        Status::Completed,
        Status::Cancelled,
        Status::Expired,
    ];

    /// `pending` and `active` are open; the rest are ended.
    pub fn is_open(self) -> bool {
        matches!(self, Status::Pending | Status::Active)
    }

    /// The name used in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Active => "active",
            Status::Completed => "completed",
            Status::Cancelled => "cancelled",
            Status::Expired => "expired",
        }
    }

    /// Reads a status name.
    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// A participant's part in a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The owner; joined at creation.
    Host,
    /// Everyone else.
    Member,
}

impl Role {
    /// The name used in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Host => "host",
            Role::Member => "member",
        }
    }
}

/// Whether a participant is in the session now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParticipantState {
    /// In the session.
    Joined,
    /// Left, or was moved out when the session ended.
    Left,
}

impl ParticipantState {
    /// The name used in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            ParticipantState::Joined => "joined",
            ParticipantState::Left => "left",
        }
    }
}

/// One user's membership of a session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Participant {
    /// Who.
    pub user: UserId,
    /// Host or member.
    pub role: Role,
    /// Joined or left.
    pub state: ParticipantState,
    /// Joined and seen within the kind's `presence_timeout`; worked out at read time.
    pub online: bool,
    /// When they (last) joined.
    pub joined_at: Timestamp,
    /// When they left, if they did.
    pub left_at: Option<Timestamp>,
    /// Their last join, heartbeat or activity.
    pub last_seen_at: Timestamp,
    /// The `last_seen_at` whose lapse was announced with `participant.offline`, so each lapse
    /// is told once; a later heartbeat starts a new one.
    #[serde(skip)]
    pub offline_for: Option<Timestamp>,
}

/// What a session came to, written when it ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// From start to end; zero for a session that never started.
    pub duration_seconds: i64,
    /// `duration_seconds / 60`, rounded down.
    pub duration_minutes: i64,
    /// Distinct users who ever joined.
    pub participants: i64,
    /// The session's counters at the end.
    pub counters: BTreeMap<String, i64>,
    /// A user id or `rule:<name>`.
    pub ended_by: String,
    /// Why it ended.
    pub end_reason: String,
}

/// The earliest rule that can fire and when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NextDue {
    /// The rule's name.
    pub rule: String,
    /// Its deadline: what its effects are stamped with.
    pub at: Timestamp,
}

impl Participant {
    /// `user` joining as `role` at `now`: in the room, online, seen just now.
    pub fn joined(user: UserId, role: Role, now: Timestamp) -> Participant {
        Participant {
            user,
            role,
            state: ParticipantState::Joined,
            online: true,
            joined_at: now,
            left_at: None,
            last_seen_at: now,
            offline_for: None,
        }
    }
}

/// Everyone who ever joined a session, by when they (last) joined, then by user.
///
/// Shared between copies of a session and copied on the first change ([`DerefMut`]), so
/// copying a lecture hall's session (as every change does: the stored copy, the changed one,
/// the one held in memory) costs nothing per participant until one of them changes.
///
/// [`DerefMut`]: std::ops::DerefMut
#[derive(Clone, Debug, Default)]
pub struct Participants(Arc<Vec<Participant>>);

impl Participants {
    /// Whether `a` and `b` are the same list, not merely equal ones.
    pub fn same(a: &Participants, b: &Participants) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl std::ops::Deref for Participants {
    type Target = Vec<Participant>;
    fn deref(&self) -> &Vec<Participant> {
        &self.0
    }
}

impl std::ops::DerefMut for Participants {
    fn deref_mut(&mut self) -> &mut Vec<Participant> {
        Arc::make_mut(&mut self.0)
    }
}

impl From<Vec<Participant>> for Participants {
    fn from(list: Vec<Participant>) -> Participants {
        Participants(Arc::new(list))
    }
}

impl PartialEq for Participants {
    fn eq(&self, other: &Participants) -> bool {
        Participants::same(self, other) || self.0 == other.0
    }
}

impl Serialize for Participants {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Participants {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Participants, D::Error> {
        Vec::deserialize(d).map(Participants::from)
    }
}

impl<'a> IntoIterator for &'a Participants {
    type Item = &'a Participant;
    type IntoIter = std::slice::Iter<'a, Participant>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<'a> IntoIterator for &'a mut Participants {
    type Item = &'a mut Participant;
    type IntoIter = std::slice::IterMut<'a, Participant>;
    fn into_iter(self) -> Self::IntoIter {
        Arc::make_mut(&mut self.0).iter_mut()
    }
}

/// A session with everything lapse knows of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Its id.
    pub id: SessionId,
    /// Its kind's name.
    pub kind: String,
    /// A title for people.
    pub title: String,
    /// The app's own data (a JSON object, at most 16 KiB).
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The owner.
    pub host: UserId,
    /// The session this one belongs to, if any.
    pub parent: Option<SessionId>,
    /// When it is meant to start.
    pub scheduled_start: Option<Timestamp>,
    /// When it is meant to end.
    pub scheduled_end: Option<Timestamp>,
    /// Where it is in its life.
    pub status: Status,
    /// Started by the engine because its start time passed.
    pub delayed: bool,
    /// Started, or received a heartbeat or activity.
    pub used: bool,
    /// Creation time.
    pub created_at: Timestamp,
    /// Start time.
    pub started_at: Option<Timestamp>,
    /// End time.
    pub ended_at: Option<Timestamp>,
    /// Last creation, start, join, leave, heartbeat or activity.
    pub last_activity_at: Timestamp,
    /// Why it ended.
    pub end_reason: Option<String>,
    /// Who ended it: a user id or `rule:<name>`.
    pub ended_by: Option<String>,
    /// Named counts, e.g. notes and messages.
    pub counters: BTreeMap<String, i64>,
    /// Everyone who ever joined.
    pub participants: Participants,
    /// The earliest rule that can fire, or null.
    pub next_due: Option<NextDue>,
    /// Set when it ends.
    pub summary: Option<Summary>,
    /// When the sweeper should next look at it: the earliest entry of its agenda (a rule,
    /// a warning, a presence lapse). This is what stores index; heartbeats leave it alone.
    #[serde(skip)]
    pub wake_at: Option<Timestamp>,
    /// The deadline each rule last warned for (`session.ending_soon`), by rule name.
    #[serde(skip)]
    pub warnings: BTreeMap<String, Timestamp>,
    /// When its parent ended or was deleted; drives `parent_ended` and `orphaned`.
    #[serde(skip)]
    pub parent_ended_at: Option<Timestamp>,
    /// Row version for compare-and-set; bumped by every write, heartbeat flushes included.
    #[serde(skip)]
    pub version: i64,
}

impl Session {
    /// The participant entry of `user`, if they ever joined.
    pub fn participant(&self, user: &UserId) -> Option<&Participant> {
        self.participants.iter().find(|p| &p.user == user)
    }

    /// Mutable access to `user`'s participant entry.
    pub fn participant_mut(&mut self, user: &UserId) -> Option<&mut Participant> {
        self.participants.iter_mut().find(|p| &p.user == user)
    }

    /// Moves the participant at `i`, whose `joined_at` just changed, to its place in the
    /// room's order (by `joined_at`, then user: the order the stores read them in), and
    /// returns that place. A join is usually the latest, so it usually stays last.
    pub fn place(&mut self, i: usize) -> usize {
        let key = |p: &Participant| (p.joined_at, p.user.clone());
        let mine = key(&self.participants[i]);
        let to = self.participants[..i].partition_point(|p| key(p) <= mine)
            + self.participants[i + 1..].partition_point(|p| key(p) < mine);
        if to != i {
            let p = self.participants.remove(i);
            self.participants.insert(to, p);
        }
        to
    }

    /// Whether `user` is in the session now.
    pub fn is_joined(&self, user: &UserId) -> bool {
        self.participant(user)
            .is_some_and(|p| p.state == ParticipantState::Joined)
    }

    /// How many are in the session now.
    pub fn joined_count(&self) -> usize {
        self.participants
            .iter()
            .filter(|p| p.state == ParticipantState::Joined)
            .count()
    }

    /// Records that `user` was seen at `at`: moves their `last_seen_at` and the session's
    /// `last_activity_at`, never backwards.
    pub fn touch(&mut self, user: Option<&UserId>, at: Timestamp) {
        self.last_activity_at = self.last_activity_at.max(at);
        if let Some(p) = user.and_then(|u| self.participant_mut(u)) {
            p.last_seen_at = p.last_seen_at.max(at);
        }
    }

    /// Works out the derived fields for `now`: `online`, `next_due` and `wake_at`.
    pub fn observe(&mut self, kind: &Kind, now: Timestamp) {
        let timeout: Span = kind.presence_timeout;
        let online = |p: &Participant| {
            p.state == ParticipantState::Joined && now.since(p.last_seen_at) < timeout
        };
        // Only a list whose flags moved is written to (and so copied, if shared).
        if self.participants.iter().any(|p| p.online != online(p)) {
            for p in &mut self.participants {
                p.online = online(p);
            }
        }
        self.next_due = crate::rules::next_due(kind, self);
        self.wake_at = crate::agenda::wake_at(kind, self, now);
    }
}
