//! PostgreSQL: one database shared by any number of stateless lapse instances.
//!
//! What changes with several instances, and how this store answers it:
//! - concurrent sweepers lease due rows with `for update skip locked`, so they take disjoint
//!   batches (exactly-once itself rests on compare-and-set, as in SQLite); a lease names its
//!   holder, whose own connection holds an advisory lock, so the lease of an instance that
//!   died is taken at once, and a sweep that fails gives its leases back;
//! - a commit that stores a deadline sends `pg_notify` in its transaction, so every instance's
//!   sleeping sweeper learns of it; heartbeat flushes never notify;
//! - a heartbeat flush is two statements, touching no indexed column, so its row updates stay
//!   HOT; it takes sessions before participants, as commits do, and it and every commit that
//!   writes more than one session take turns (an advisory lock), so no two writers ever wait
//!   for each other's rows in a circle; sweeps' batches of rows leased to each alone write
//!   disjoint rows, and take their turn together;
//! - event numbers follow commit order: a transaction takes the events lock after its session
//!   rows, just before its first event, and holds it to its commit.
//!
//! Here: opening, migrating, and the store's calls, each handed to the file that holds it:
//! `reads.rs` the reads (sessions, events, notifications, counts, the delivery log),
//! `writes.rs` a transaction of commits and each commit's statements, `changes.rs` the
//! changes announced between instances, `leases.rs` due rows and their leases,
//! `heartbeats.rs` the flush, `rules.rs` the rules in force and the re-arms of stored
//! deadlines (a sweep's lazy re-arms and a reload's, each checked against the rules'
//! version), `outbox.rs` deliveries, retention, health figures and idempotency keys,
//! `plans.rs` the plan of every hot statement for the plan tests.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lapse_core::event::{Event, Notification};
use lapse_core::session::Session;
use lapse_core::store::{
    Attempt, Beat, BeatsWritten, ChangeCallback, Commit, Delivery, DeliveryStatus,
    DisabledEndpoint, DueRow, EventQuery, EventRecord, HealthCounts, Moved, PruneBefore, Pruned,
    Rearm, RearmOnly, RulesInForce, SessionQuery, StatusCount, Store, StoredResponse,
};
use lapse_core::{SessionId, Span, StoreError, Timestamp, UserId};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::backend;
use crate::rows;

mod bulk;
mod changes;
mod heartbeats;
mod leases;
mod outbox;
mod plans;
mod reads;
mod rules;
mod schema;
mod writes;

use leases::Holder;
pub(crate) use leases::LEASE_HOLDERS;

/// How long opening the store waits for the server's first connection (a call waits
/// [`crate::ACQUIRE_TIMEOUT`]): a server starting beside lapse, or loaded, may be slow to
/// answer the first time.
const FIRST_CONNECTION: Duration = Duration::from_secs(10);
/// Key of the advisory lock that makes event numbers follow commit order (see
/// `rules::first_locks`).
const EVENTS_LOCK: i64 = 0x006c_6170_7366;
/// Key of the advisory lock that serializes migrations of instances starting together.
const MIGRATION_LOCK: i64 = 0x006c_6170_7365; // "lapse"
/// Key of the advisory lock writers of more than one session take turns on: flushes, re-arms,
/// cascades and the committer's groups alone; sweeps' batches of leased rows together.
const FLUSH_LOCK: i64 = 0x006c_6170_7368;

/// Takes the advisory lock `key` until `tx` ends: whoever else asks for it waits.
async fn lock_until_commit(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    key: i64,
) -> Result<(), StoreError> {
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(key)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    Ok(())
}

/// Takes the advisory lock `key` shared until `tx` ends: others may take it shared too;
/// whoever asks for it exclusively waits.
async fn lock_shared_until_commit(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    key: i64,
) -> Result<(), StoreError> {
    sqlx::query("select pg_advisory_xact_lock_shared($1)")
        .bind(key)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    Ok(())
}

/// Sessions in a PostgreSQL database.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// This store as a lease holder, from its first claim on.
    holder: Arc<tokio::sync::Mutex<Option<Holder>>>,
}

impl PostgresStore {
    /// Connects to `url` with at most `pool_size` connections; every statement is cancelled
    /// after `statement_timeout`.
    pub async fn open(
        url: &str,
        pool_size: Option<u32>,
        statement_timeout: Option<Duration>,
    ) -> Result<Self, StoreError> {
        let mut options = PgConnectOptions::from_str(url)
            .map_err(|e| {
                StoreError::Backend(format!("bad postgres url `{}`: {e}", crate::redact(url)))
            })?
            .application_name("lapse");
        if let Some(timeout) = statement_timeout {
            options =
                options.options([("statement_timeout", format!("{}ms", timeout.as_millis()))]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.unwrap_or(10).max(2))
            .acquire_timeout(crate::ACQUIRE_TIMEOUT);
        let pool = crate::open_pool(pool, &options, FIRST_CONNECTION, &crate::redact(url)).await?;
        Ok(PostgresStore {
            pool,
            holder: Arc::default(),
        })
    }

    /// A server setting as this store's connections see it (`statement_timeout`, ...), for
    /// diagnostics.
    pub async fn server_setting(&self, name: &str) -> Result<String, StoreError> {
        sqlx::query_scalar("select current_setting($1)")
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)
    }

    /// The most connections this store opens.
    pub fn max_connections(&self) -> u32 {
        self.pool.options().get_max_connections()
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        schema::migrate(&self.pool).await
    }

    async fn load(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        reads::load(&self.pool, id).await
    }

    async fn version(&self, id: &SessionId) -> Result<Option<i64>, StoreError> {
        reads::version(&self.pool, id).await
    }

    async fn load_many(&self, ids: &[SessionId]) -> Result<Vec<Session>, StoreError> {
        reads::sessions_by_id(&self.pool, ids).await
    }

    async fn open_children(&self, parents: &[SessionId]) -> Result<Vec<Session>, StoreError> {
        reads::open_children(&self.pool, parents).await
    }

    async fn commit_many(
        &self,
        commits: &[Commit],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        writes::commit_many(&self.pool, commits).await
    }

    async fn import(&self, sessions: &[Session]) -> Result<u64, StoreError> {
        bulk::import(&self.pool, sessions).await
    }

    async fn list(&self, q: &SessionQuery) -> Result<Vec<Session>, StoreError> {
        reads::list(&self.pool, q).await
    }

    async fn count_due(&self, now: Timestamp, kind: Option<&str>) -> Result<u64, StoreError> {
        reads::count_due(&self.pool, now, kind).await
    }

    async fn due(
        &self,
        now: Timestamp,
        kind: Option<&str>,
        cursor: Option<&DueRow>,
        limit: u32,
        claim: bool,
    ) -> Result<Vec<DueRow>, StoreError> {
        leases::due(self, now, kind, cursor, limit, claim).await
    }

    async fn rearm(
        &self,
        rows: &[Rearm],
        rules_version: Option<i64>,
        only: RearmOnly,
    ) -> Result<u64, StoreError> {
        rules::rearm(&self.pool, rows, rules_version, only).await
    }

    async fn mark_rearmed(&self, version: i64) -> Result<(), StoreError> {
        rules::mark_rearmed(&self.pool, version).await
    }

    async fn rules_in_force(&self) -> Result<Option<RulesInForce>, StoreError> {
        rules::rules_in_force(&self.pool).await
    }

    async fn publish_rules(
        &self,
        expected: i64,
        kinds: &str,
        limited: &[String],
        at: Timestamp,
        event: Option<EventRecord>,
    ) -> Result<i64, StoreError> {
        rules::publish_rules(&self.pool, expected, kinds, limited, at, event).await
    }

    async fn next_deadline(&self) -> Result<Option<Timestamp>, StoreError> {
        reads::next_deadline(&self.pool).await
    }

    async fn flush_heartbeats(&self, beats: &[Beat]) -> Result<Vec<Moved>, StoreError> {
        heartbeats::flush(&self.pool, beats).await
    }

    async fn write_heartbeats(
        &self,
        read: &[Beat],
        unread: &[Beat],
    ) -> Result<BeatsWritten, StoreError> {
        heartbeats::write(&self.pool, read, unread).await
    }

    async fn was_deleted(&self, id: &SessionId) -> Result<bool, StoreError> {
        reads::was_deleted(&self.pool, id).await
    }

    async fn last_event_seq(&self) -> Result<i64, StoreError> {
        reads::last_event_seq(&self.pool).await
    }

    async fn events(&self, q: &EventQuery) -> Result<Vec<Event>, StoreError> {
        reads::events(&self.pool, q).await
    }

    async fn notifications(
        &self,
        user: &UserId,
        unread_only: bool,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        reads::notifications(&self.pool, user, unread_only, limit).await
    }

    async fn mark_read(
        &self,
        user: &UserId,
        id: &str,
        at: Timestamp,
    ) -> Result<Option<Notification>, StoreError> {
        let row = sqlx::query(
            "update notifications set read_at = coalesce(read_at, $3) \
             where id = $1 and user_id = $2 \
             returning id, user_id, type, title, message, session_id, link, created_at, read_at",
        )
        .bind(id)
        .bind(user.as_str())
        .bind(at.millis())
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.as_ref().map(rows::notification).transpose()
    }

    async fn counts(&self) -> Result<Vec<StatusCount>, StoreError> {
        reads::counts(&self.pool).await
    }

    async fn watch(&self, seen: ChangeCallback) -> Result<(), StoreError> {
        changes::watch(&self.pool, seen).await
    }

    async fn release(&self, ids: &[SessionId]) -> Result<(), StoreError> {
        leases::release(self, ids).await
    }

    async fn due_deliveries(
        &self,
        endpoint: &str,
        now: Timestamp,
        limit: u32,
        lease: Option<Span>,
    ) -> Result<Vec<(Delivery, Event)>, StoreError> {
        let claim = match lease {
            Some(lease) => Some((self.holder().await?, lease)),
            None => None,
        };
        outbox::due_deliveries(&self.pool, endpoint, now, limit, claim).await
    }

    async fn record_attempts(&self, attempts: &[(String, Attempt)]) -> Result<(), StoreError> {
        outbox::record_attempts(&self.pool, attempts).await
    }

    async fn disable_endpoint(
        &self,
        url: &str,
        at: Timestamp,
        reason: &str,
        attempted: &[String],
    ) -> Result<(), StoreError> {
        outbox::disable_endpoint(&self.pool, url, at, reason, attempted).await
    }

    async fn disabled_endpoints(&self) -> Result<Vec<DisabledEndpoint>, StoreError> {
        outbox::disabled_endpoints(&self.pool).await
    }

    async fn deliveries(
        &self,
        status: Option<DeliveryStatus>,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        reads::deliveries(&self.pool, status, limit).await
    }

    async fn retry_delivery(
        &self,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<Delivery>, StoreError> {
        outbox::retry_delivery(&self.pool, id, now).await
    }

    async fn pending_endpoints(&self) -> Result<Vec<String>, StoreError> {
        outbox::pending_endpoints(&self.pool).await
    }

    async fn next_delivery_at(
        &self,
        endpoint: &str,
        after: Timestamp,
    ) -> Result<Option<Timestamp>, StoreError> {
        outbox::next_delivery_at(&self.pool, endpoint, after).await
    }

    async fn prune(
        &self,
        before: &PruneBefore,
        after: i64,
        limit: u32,
    ) -> Result<Pruned, StoreError> {
        outbox::prune(&self.pool, before, after, limit).await
    }

    async fn write_check(&self, at: Timestamp) -> Result<(), StoreError> {
        outbox::write_check(&self.pool, at).await
    }

    async fn health_counts(
        &self,
        overdue_before: Timestamp,
        stale_before: Timestamp,
    ) -> Result<HealthCounts, StoreError> {
        outbox::health_counts(&self.pool, overdue_before, stale_before).await
    }

    async fn idempotent_response(
        &self,
        actor: &str,
        key: &str,
        since: Timestamp,
    ) -> Result<Option<StoredResponse>, StoreError> {
        outbox::idempotent_response(&self.pool, actor, key, since).await
    }

    async fn save_idempotent_response(
        &self,
        actor: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<(), StoreError> {
        outbox::save_idempotent_response(&self.pool, actor, key, response).await
    }

    fn is_shared(&self) -> bool {
        true
    }
}
