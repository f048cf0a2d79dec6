//! The port the engine needs from a database. Implementations live in `lapse-store`; the
//! trait speaks of sessions, events and notifications, never of SQL.
//!
//! Consistency rests on two promises every implementation keeps:
//! - [`Store::commit`] writes everything in a [`Commit`] in one transaction, or nothing;
//! - every session write is compare-and-set on the row's `version`, so two writers that read
//!   the same version cannot both win (the loser gets [`StoreError::Conflict`]).

use async_trait::async_trait;

use crate::event::{Event, EventType, NewNotification, Notification};
use crate::ids::{SessionId, UserId};
use crate::session::{Session, Status};
use crate::time::Timestamp;

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

/// One session write inside a [`Commit`].
#[derive(Clone, Debug)]
pub enum SessionWrite {
    /// A new session (its participants too).
    Insert(Session),
    /// Replaces the row if the stored version is still `session.version` (the stored version
    /// becomes `session.version + 1`), with the participants named in `changed`, or all of
    /// them when `None`: a join writes one participant, not the whole room.
    Update {
        /// The session as it is now.
        session: Session,
        /// The participants whose rows changed.
        changed: Option<Vec<UserId>>,
    },
    /// Removes the session, participants and counters if the version still matches.
    Delete {
        /// The session.
        id: SessionId,
        /// The version it was read at.
        version: i64,
    },
}

impl SessionWrite {
    /// The session written, unless this is a delete.
    pub fn session(&self) -> Option<&Session> {
        match self {
            SessionWrite::Insert(s) | SessionWrite::Update { session: s, .. } => Some(s),
            SessionWrite::Delete { .. } => None,
        }
    }
}

/// An event ready to store; `seq` is assigned by the store.
#[derive(Clone, Debug)]
pub struct EventRecord {
    /// Stable id (UUIDv7).
    pub id: String,
    /// When lapse recorded it.
    pub applied_at: Timestamp,
    /// The event.
    pub event: crate::event::NewEvent,
    /// Webhook endpoints (URLs) to deliver it to; a delivery row is written for each, in the
    /// same transaction, unless the endpoint has been disabled.
    pub webhooks: Vec<String>,
}

/// A webhook endpoint delivering has stopped for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DisabledEndpoint {
    /// The endpoint's URL.
    pub url: String,
    /// When it was disabled.
    pub at: Timestamp,
    /// Why (it answered 410 Gone).
    pub reason: String,
}

/// Where a webhook delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Every attempt failed, or the endpoint was disabled.
    Dead,
}

impl DeliveryStatus {
    /// Every status.
    pub const ALL: [DeliveryStatus; 3] = [
        DeliveryStatus::Pending,
        DeliveryStatus::Delivered,
        DeliveryStatus::Dead,
    ];

    /// The name used in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
        }
    }

    /// Reads a status name.
    pub fn parse(text: &str) -> Option<DeliveryStatus> {
        DeliveryStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// One event on its way to one endpoint.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Delivery {
    /// Its id.
    pub id: String,
    /// The endpoint's URL.
    pub endpoint: String,
    /// The event's `seq`.
    pub event_seq: i64,
    /// The event's id: the `webhook-id` of every attempt.
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: i64,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<Timestamp>,
    /// When the last attempt was made.
    pub last_attempt_at: Option<Timestamp>,
    /// The HTTP status of the last attempt, if one came back.
    pub last_status: Option<i64>,
    /// What went wrong last.
    pub last_error: Option<String>,
    /// When it was queued.
    pub created_at: Timestamp,
}

/// What one delivery attempt came to.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    /// When it was made.
    pub at: Timestamp,
    /// The HTTP status, if any came back.
    pub http_status: Option<u16>,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// The new status.
    pub status: DeliveryStatus,
    /// When to try again (pending only).
    pub next_attempt_at: Option<Timestamp>,
}

/// A notification ready to store.
#[derive(Clone, Debug)]
pub struct NotificationRecord {
    /// Its id.
    pub id: String,
    /// The notification.
    pub notification: NewNotification,
}

/// "At most `max` open sessions of `kind` hosted by `host`", checked inside the transaction
/// before anything is written (and, where instances share the database, under a lock on that
/// host and kind).
#[derive(Clone, Debug)]
pub struct HostLimit {
    /// The kind.
    pub kind: String,
    /// The host.
    pub host: UserId,
    /// Most open sessions, before this commit's inserts.
    pub max: u32,
}

/// Everything one change writes, committed atomically.
#[derive(Clone, Debug, Default)]
pub struct Commit {
    /// The version of the rules in force the change was decided under: the commit is refused
    /// ([`StoreError::PolicyChanged`]) if another version came into force since.
    pub rules_version: Option<i64>,
    /// Refuse the whole commit if the host is at its limit.
    pub host_limit: Option<HostLimit>,
    /// Session rows.
    pub sessions: Vec<SessionWrite>,
    /// Events to append, in order.
    pub events: Vec<EventRecord>,
    /// Notifications to deliver.
    pub notifications: Vec<NotificationRecord>,
}

/// A coalesced heartbeat: the latest moment `user` was seen in `session`.
#[derive(Clone, Debug, PartialEq)]
pub struct Beat {
    /// The session.
    pub session: SessionId,
    /// The participant.
    pub user: UserId,
    /// When they were last seen.
    pub at: Timestamp,
}

/// A session a heartbeat flush moved, and its version after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moved {
    /// The session.
    pub id: SessionId,
    /// Its version after the flush.
    pub version: i64,
}

/// Filters for listing sessions; `after` is the cursor (the last id of the previous page).
#[derive(Clone, Debug, Default)]
pub struct SessionQuery {
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this status.
    pub status: Option<Status>,
    /// Only open sessions (pending or active).
    pub open_only: bool,
    /// Only sessions that count against their host's limit: those created while their kind
    /// had one, or open when rules giving it one were put in force ([`Store::publish_rules`]).
    pub host_limited: bool,
    /// Only this host.
    pub host: Option<UserId>,
    /// Only sessions this user ever joined.
    pub participant: Option<UserId>,
    /// Ids after this one.
    pub after: Option<SessionId>,
    /// Page size.
    pub limit: u32,
}

/// Filters for reading events.
#[derive(Clone, Debug, Default)]
pub struct EventQuery {
    /// Events with `seq` greater than this.
    pub after: i64,
    /// Page size.
    pub limit: u32,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only these types.
    pub types: Vec<EventType>,
    /// Only this session.
    pub session: Option<SessionId>,
}

/// A stored wake-up to move (see [`Store::rearm`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Rearm {
    /// The session.
    pub id: SessionId,
    /// The version it was read at.
    pub version: i64,
    /// Its next wake-up, if any.
    pub wake_at: Option<Timestamp>,
    /// The rule of its `next_due`, if any.
    pub rule: Option<String>,
}

/// Which rows a re-arm writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RearmOnly {
    /// Rows still at the version they were read at.
    Unchanged,
    /// Rows whose stored wake-up is later than the new one, whatever changed since they were
    /// read: a wake-up stored early is only looked at again (lazy re-arm), never applied
    /// early, so moving one earlier is always safe.
    Earlier,
}

/// The rules in force, as stored (see [`Store::publish_rules`]).
#[derive(Clone, Debug, PartialEq)]
pub struct RulesInForce {
    /// Bumped each time other rules come into force.
    pub version: i64,
    /// The `[kinds.*]` tables, as TOML.
    pub kinds: String,
    /// When they came into force.
    pub updated_at: Timestamp,
    /// Whether every stored deadline has been worked out under them (see
    /// [`Store::mark_rearmed`]).
    pub rearmed: bool,
}

/// A due session as the sweep sees it: its id and stored deadline.
#[derive(Clone, Debug, PartialEq)]
pub struct DueRow {
    /// The session.
    pub id: SessionId,
    /// Its stored `next_due` (possibly earlier than the truth, see lazy re-arm).
    pub at: Timestamp,
}

/// Count of sessions of one kind in one status.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusCount {
    /// The kind.
    pub kind: String,
    /// The status.
    pub status: Status,
    /// How many.
    pub count: i64,
}

/// The first response to a request made with an `Idempotency-Key`.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredResponse {
    /// Hash of the method, path and body the key was first used with.
    pub request_hash: String,
    /// The HTTP status.
    pub status: u16,
    /// Its content type.
    pub content_type: String,
    /// Its body.
    pub body: String,
    /// When it was first answered.
    pub created_at: Timestamp,
}

/// The figures `/v1/health` judges by.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct HealthCounts {
    /// Sessions whose stored wake-up passed before the `overdue_before` instant.
    pub overdue: i64,
    /// Pending sessions created before the `stale_before` instant.
    pub stale_pending: i64,
    /// Webhook deliveries waiting for an attempt.
    pub deliveries_pending: i64,
    /// Webhook deliveries that gave up.
    pub deliveries_dead: i64,
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

    /// Deliveries due at `now` with their events, oldest first; with `claim`, leased to this
    /// caller like due sessions.
    async fn due_deliveries(
        &self,
        now: Timestamp,
        limit: u32,
        claim: bool,
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

    /// Makes a delivery due again at `now`; `None` if there is no such delivery.
    async fn retry_delivery(
        &self,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<Delivery>, StoreError>;

    /// When the earliest pending delivery is due.
    async fn next_delivery_at(&self) -> Result<Option<Timestamp>, StoreError>;

    /// Deletes up to `limit` events, and up to `limit` finished deliveries, recorded before
    /// `before`; returns how many rows went.
    async fn prune(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError>;

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
