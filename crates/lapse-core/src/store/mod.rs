//! The port the engine needs from a database. Implementations live in `lapse-store`; the
//! trait speaks of sessions, events and notifications, never of SQL.
//!
//! Consistency rests on two promises every implementation keeps:
//! - [`Store::commit`] writes everything in a [`Commit`] in one transaction, or nothing;
//! - every session write is compare-and-set on the row's `version`, so two writers that read
//!   the same version cannot both win (the loser gets [`StoreError::Conflict`]).

mod commit;
mod outbox;
mod queries;

use async_trait::async_trait;

pub use commit::{
    Beat, BeatsWritten, Commit, EventRecord, HostLimit, Moved, NotificationRecord, Rearm,
    RearmOnly, RulesInForce, SessionWrite, beats_written,
};
pub use outbox::{Attempt, Delivery, DeliveryStatus, DisabledEndpoint, PruneBefore, Pruned};
pub use queries::{DueRow, EventQuery, HealthCounts, SessionQuery, StatusCount, StoredResponse};

use crate::event::{Event, Notification};
use crate::ids::{SessionId, UserId};
use crate::session::Session;
use crate::time::{Span, Timestamp};

/// What can go wrong in a store.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// A compare-and-set lost: the row changed since it was read.
    #[error("the session changed concurrently")]
    Conflict,
    /// An insert found the id taken.
    #[error("a session with this id already exists")]
    Duplicate,
    /// A [`HostLimit`] was reached inside the transaction.
    #[error("the host has as many open sessions of the kind as allowed")]
    LimitReached,
    /// The database cannot be reached or cannot write for now (connection refused or lost,
    /// server shutting down, disk full, file read-only): nothing was changed, and the same
    /// call may succeed later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// No connection was free in time: the database is saturated, or out of reach (which
    /// other calls then tell). Nothing was changed; the same call may succeed later.
    #[error("database busy: no connection free in time")]
    Busy,
    /// Other rules came into force since the change was decided (another instance reloaded):
    /// nothing was written; decide again under the rules now in force.
    #[error("the rules in force changed")]
    PolicyChanged,
    /// The database rolled the transaction back to break a deadlock (or a serialization
    /// failure) with another client: nothing was written. Like a lost compare-and-set, the
    /// change is decided again from a fresh read.
    #[error("the database rolled the change back to break a deadlock")]
    RolledBack,
    /// The database failed.
    #[error("database error: {0}")]
    Backend(String),
}

impl StoreError {
    /// Whether the database could not be used just now, out of reach or saturated
    /// ([`StoreError::Unavailable`], [`StoreError::Busy`]): the same call may succeed later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Busy)
    }

    /// Whether nothing was written because another writer got in the way
    /// ([`StoreError::Conflict`], [`StoreError::RolledBack`]): the change is decided again
    /// from a fresh read.
    pub fn decide_again(&self) -> bool {
        matches!(self, StoreError::Conflict | StoreError::RolledBack)
    }
}

/// Storage for sessions, events and notifications.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates or upgrades the schema.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// One session with its participants.
    async fn load(&self, id: &SessionId) -> Result<Option<Session>, StoreError>;

    /// A session's stored version (`None` if there is no such session): one index probe, so
    /// a copy of the session held in memory can be checked for freshness.
    async fn version(&self, id: &SessionId) -> Result<Option<i64>, StoreError>;

    /// Sessions by id, with their participants, in any order; ids not found are left out.
    async fn load_many(&self, ids: &[SessionId]) -> Result<Vec<Session>, StoreError>;

    /// Writes a change atomically; see the module docs.
    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        match self.commit_many(std::slice::from_ref(&commit)).await?.pop() {
            Some(outcome) => outcome,
            None => Ok(()),
        }
    }

    /// Writes independent changes in one transaction (a sweep's batch). Each is checked as in
    /// [`Store::commit`]; one that loses its compare-and-set (or meets a host limit, or a taken
    /// id) is rolled back alone and its error returned in its place, and the others commit
    /// together. The outer error means the database failed and nothing was written.
    async fn commit_many(
        &self,
        commits: &[Commit],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError>;

    /// Inserts many new sessions with their participants in bulk, without events or host
    /// limits (restores, benchmarks). Ids already taken are skipped; returns how many went in.
    /// Imported sessions count against no host limit until rules giving their kind one are
    /// next put in force ([`Store::publish_rules`]).
    async fn import(&self, sessions: &[Session]) -> Result<u64, StoreError>;

    /// Sessions matching `query`, ordered by id.
    async fn list(&self, query: &SessionQuery) -> Result<Vec<Session>, StoreError>;

    /// The open sessions whose parent is one of `parents`, ordered by id.
    async fn open_children(&self, parents: &[SessionId]) -> Result<Vec<Session>, StoreError>;

    /// Sessions whose stored deadline is at or before `now`, ordered by (deadline, id) and
    /// strictly after `cursor` in that order. Reads only due rows (an index on the deadline).
    ///
    /// With `claim`, where several instances share the database, the rows returned are leased
    /// to this caller for a while (skipping rows another sweeper holds), so concurrent sweeps
    /// take disjoint batches; a write to the row ends the lease, and so does [`Store::release`]
    /// (a sweep that failed). Exactly-once never rests on the lease: every write is
    /// compare-and-set.
    async fn due(
        &self,
        now: Timestamp,
        kind: Option<&str>,
        cursor: Option<&DueRow>,
        limit: u32,
        claim: bool,
    ) -> Result<Vec<DueRow>, StoreError>;

    /// Gives back this caller's leases on `ids`: rows it claimed with `due` and will not write
    /// after all (its sweep failed), so they are due to every sweeper at once rather than when
    /// the lease runs out. Leases others hold are left alone; a row written since holds none.
    async fn release(&self, ids: &[SessionId]) -> Result<(), StoreError>;

    /// How many sessions have a stored deadline at or before `now` (of `kind`, if given):
    /// what a sweep has ahead of it. Reads only due rows.
    async fn count_due(&self, now: Timestamp, kind: Option<&str>) -> Result<u64, StoreError>;

    /// Moves sessions' stored wake-ups without touching anything else (lazy re-arm, and a
    /// reload's new deadlines), all in one statement; `only` says which rows are written.
    /// With `rules_version`, refused with [`StoreError::PolicyChanged`] (nothing written)
    /// unless that is still the version in force: wake-ups worked out under rules another
    /// instance has since replaced are not written. Returns how many moved.
    async fn rearm(
        &self,
        rows: &[Rearm],
        rules_version: Option<i64>,
        only: RearmOnly,
    ) -> Result<u64, StoreError>;

    /// Records that every stored deadline has been worked out under the rules of `version`
    /// (nothing if other rules are in force by now).
    async fn mark_rearmed(&self, version: i64) -> Result<(), StoreError>;

    /// The rules in force, if any instance has put some in force yet.
    async fn rules_in_force(&self) -> Result<Option<RulesInForce>, StoreError>;

    /// Puts `kinds` in force as the version after `expected` (0: none yet), with `event`
    /// (its `config.reloaded`) in the same transaction, waiting for commits decided under the
    /// old version to finish. [`StoreError::PolicyChanged`] if `expected` is no longer the
    /// version in force (another instance got there first).
    ///
    /// `limited` names the kinds with a host limit under these rules: from this commit on,
    /// every open session of theirs counts against it, those created while their kind had
    /// none included. (A create checks a limit only when its kind has one, and then marks
    /// its session as counted; the count reads only marked sessions.)
    async fn publish_rules(
        &self,
        expected: i64,
        kinds: &str,
        limited: &[String],
        at: Timestamp,
        event: Option<EventRecord>,
    ) -> Result<i64, StoreError>;

    /// The earliest stored deadline of any session.
    async fn next_deadline(&self) -> Result<Option<Timestamp>, StoreError>;

    /// Writes coalesced heartbeats: for each beat of a joined participant of an open session,
    /// the participant's `last_seen_at` and the session's `last_activity_at` move forward
    /// (never back); each session moved is marked used and its version goes up by one. The
    /// stored deadline is left alone. Returns the sessions moved with their new versions, so
    /// a holder of the previous version can follow without reading the row again.
    async fn flush_heartbeats(&self, beats: &[Beat]) -> Result<Vec<Moved>, StoreError>;

    /// Writes heartbeats before they are answered, in one transaction: `read` (beats of rooms
    /// read first) as [`Store::flush_heartbeats`] does, and each of `unread` (beats of rooms
    /// not read first) only where its room as stored lets it stand without a read, that is
    /// where a read would have found nothing to decide before taking it:
    /// - the session is open and has no parent (whose end could have closed it unseen);
    /// - nothing is due by the beat: its stored wake-up is none or after the beat's `at` (a
    ///   stored wake-up is never later than the truth, presence lapses included);
    /// - every stored wake-up was worked out under the rules in force (no reload is still
    ///   storing them);
    /// - the user is a joined participant.
    ///
    /// Returns the sessions moved and, for each of `unread`, whether it was written (with its
    /// room's activity as stored before: a room beaten lately is worth holding in memory).
    async fn write_heartbeats(
        &self,
        read: &[Beat],
        unread: &[Beat],
    ) -> Result<BeatsWritten, StoreError>;

    /// Whether a `session.deleted` or `session.purged` event exists for `id`.
    async fn was_deleted(&self, id: &SessionId) -> Result<bool, StoreError>;

    /// The `seq` of the newest event (0 when there is none).
    async fn last_event_seq(&self) -> Result<i64, StoreError>;

    /// A page of events.
    async fn events(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError>;

    /// A user's inbox, newest first.
    async fn notifications(
        &self,
        user: &UserId,
        unread_only: bool,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError>;

    /// Marks one notification read (once); `None` if it is not the user's.
    async fn mark_read(
        &self,
        user: &UserId,
        id: &str,
        at: Timestamp,
    ) -> Result<Option<Notification>, StoreError>;

    /// Session counts by kind and status.
    async fn counts(&self) -> Result<Vec<StatusCount>, StoreError>;

    /// Calls `seen` for every change any instance commits (a stored deadline, new events),
    /// until the connection fails. Returns at once where there is nothing to watch (an
    /// embedded database has one instance, and that instance already knows).
    async fn watch(&self, seen: ChangeCallback) -> Result<(), StoreError>;

    /// Deliveries to `endpoint` due at `now` with their events, oldest first; with `lease`,
    /// only those no live caller holds a lease on (this one included: its attempts under
    /// way), each then leased to this caller for that long, unless it records them or ends
    /// first. An endpoint at a time, so that one endpoint's backlog never hides another's
    /// due deliveries.
    async fn due_deliveries(
        &self,
        endpoint: &str,
        now: Timestamp,
        limit: u32,
        lease: Option<Span>,
    ) -> Result<Vec<(Delivery, Event)>, StoreError>;

    /// Records attempts, each by its delivery's id (and ends their leases); each row stands
    /// alone. An attempt that would leave its delivery pending ends it dead instead when its
    /// endpoint has been disabled meanwhile: nothing is retried to a disabled endpoint.
    async fn record_attempts(&self, attempts: &[(String, Attempt)]) -> Result<(), StoreError>;

    /// Stops delivering to `url` (it answered 410 Gone): its pending deliveries die and no new
    /// ones are queued. The deliveries `attempted` are left pending: their attempts are about
    /// to be recorded with the answers that ended them.
    async fn disable_endpoint(
        &self,
        url: &str,
        at: Timestamp,
        reason: &str,
        attempted: &[String],
    ) -> Result<(), StoreError>;

    /// The endpoints delivering has stopped for, with when and why (a handful of rows).
    async fn disabled_endpoints(&self) -> Result<Vec<DisabledEndpoint>, StoreError>;

    /// Deliveries, newest first, optionally of one status.
    async fn deliveries(
        &self,
        status: Option<DeliveryStatus>,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// Makes a delivery due again at `now`, unless its endpoint is disabled (it is then left
    /// as it is); `None` if there is no such delivery.
    async fn retry_delivery(
        &self,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<Delivery>, StoreError>;

    /// The endpoints pending deliveries go to (read once at start, to end those to endpoints
    /// no longer configured).
    async fn pending_endpoints(&self) -> Result<Vec<String>, StoreError>;

    /// When the first pending delivery to `endpoint` due after `after` is due.
    async fn next_delivery_at(
        &self,
        endpoint: &str,
        after: Timestamp,
    ) -> Result<Option<Timestamp>, StoreError>;

    /// Deletes, up to `limit` of each, the finished deliveries of each status, the
    /// notifications and the idempotency keys made before their cut in `before`, and of the
    /// `limit` events numbered after `after` (the oldest first), those applied before theirs
    /// that no pending delivery still needs. Each is found through an index: a call reads at
    /// most `limit` events, however long the history. A kept event holds back none after it:
    /// the next call begins after [`Pruned::events_after`].
    async fn prune(
        &self,
        before: &PruneBefore,
        after: i64,
        limit: u32,
    ) -> Result<Pruned, StoreError>;

    /// The response first given to `actor`'s request with `key`, if it was given at or after
    /// `since`.
    async fn idempotent_response(
        &self,
        actor: &str,
        key: &str,
        since: Timestamp,
    ) -> Result<Option<StoredResponse>, StoreError>;

    /// Keeps a response for `actor`'s `key` (the first one stays if two race).
    async fn save_idempotent_response(
        &self,
        actor: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<(), StoreError>;

    /// Rewrites one tiny row: whether the database takes writes (after an outage, when
    /// nothing else is writing).
    async fn write_check(&self, at: Timestamp) -> Result<(), StoreError>;

    /// The figures of a health report.
    async fn health_counts(
        &self,
        overdue_before: Timestamp,
        stale_before: Timestamp,
    ) -> Result<HealthCounts, StoreError>;

    /// Whether several lapse instances may share this database: due rows are then leased to
    /// the sweeper that claims them, and changes are announced to the others.
    fn is_shared(&self) -> bool;

    /// Whether this store writes one transaction at a time (one writer connection): the
    /// engine then writes requests' changes many to a transaction (group commit) rather than
    /// queueing them for the writer one by one.
    fn writes_one_at_a_time(&self) -> bool {
        false
    }
}

/// A change announced by some instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A session's wake-up time was stored.
    Deadline(Timestamp),
    /// Events were appended.
    Events,
    /// Other rules came into force.
    Rules,
}

/// What [`Store::watch`] calls.
pub type ChangeCallback = Box<dyn Fn(Change) + Send + Sync>;
