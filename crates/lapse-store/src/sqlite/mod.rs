//! The embedded store: one SQLite file in WAL mode.
//!
//! Writes go through one connection, so they queue in-process instead of meeting
//! `SQLITE_BUSY`; reads use connections of their own and run beside the writer (WAL lets
//! them). The store holds them itself (`conns.rs`).
//!
//! Here: opening, migrating, and the store's calls, each handed to the file that holds it:
//! `reads.rs` every read (sessions, due rows, events, notifications, counts, the delivery
//! log), `writes.rs` a transaction of commits and each commit's statements, `heartbeats.rs`
//! the flush, `rules.rs` the rules in force and the re-arms of stored deadlines (a sweep's
//! lazy re-arms and a reload's, each checked against the rules' version), `outbox.rs`
//! deliveries, retention, health figures and idempotency keys, `plans.rs` the plan of every
//! hot statement for the plan tests.

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
use sqlx::Connection as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};

use crate::rows;
use crate::{backend, migrate};
use conns::Conns;

mod backup;
mod bulk;
mod conns;
mod heartbeats;
mod outbox;
mod plans;
mod reads;
mod rules;
mod values;
mod writes;

pub use backup::{Backup, backup};

/// How long a connection waits for another's lock before its statement fails as busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Sessions in a SQLite database.
#[derive(Clone)]
pub struct SqliteStore {
    writer: Arc<Conns>,
    reader: Arc<Conns>,
    /// Webhook deliveries leased to this instance's attempts under way.
    leases: Arc<outbox::Leases>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://path` or
    /// `sqlite::memory:`).
    pub async fn open(url: &str, pool_size: Option<u32>) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Backend(format!("bad sqlite url `{url}`: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        // SQLite's default page cache is 2 MB a connection: at a million sessions every write
        // then reads its index pages back from the OS. The writer keeps 16 MB. 64 MB missed
        // less but cost more: every commit that splits a b-tree page walks the writer's whole
        // cache (docs/PERFORMANCE.md, the concurrent joins), and creates, joins, ends and
        // sweeps ran faster with 16 MB at both 10k and 1M live. A reader's cache is cleared at
        // the start of every read that follows a write, by a walk over every slot the cache
        // has grown to: readers, who mostly probe by key, keep 2 MB each (a 16 MB cache walked 4,096 slots, about 15 µs, per read). Each
        // connection's cache is its own since SQLite is built without its memory management
        // (`.cargo/config.toml`), which pooled them all.
        //
        // A statement that writes many rows inside a transaction (a flush, a sweep's batch)
        // first copies each page it changes to a statement journal, to undo itself alone if it
        // fails. Past 64 KB that journal spills to a temp file, a write call per page: a tenth
        // of a flush's time. The writer keeps it in memory instead; it holds the pages one
        // statement of one batch changes (a few MB) and is freed when the statement ends. The
        // writer's sorts stay in memory too: a batch's, or a migration's index build at start.
        let writer_options = options
            .clone()
            .pragma("cache_size", format!("-{}", 16 * 1024))
            .pragma("temp_store", "memory");
        let reader_options = options
            .clone()
            .read_only(true)
            .pragma("cache_size", format!("-{}", 2 * 1024));
        // An in-memory database exists once per connection, and lives as long as it:
        // readers share the writer, which is never opened afresh.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let opened = |e: sqlx::Error| StoreError::Backend(format!("cannot open `{url}`: {e}"));
        let writer = Arc::new(
            Conns::open(&writer_options, 1, !in_memory)
                .await
                .map_err(opened)?,
        );
        let reader = if in_memory {
            writer.clone()
        } else {
            let readers = pool_size.unwrap_or(4).max(1) as usize;
            Arc::new(
                Conns::open(&reader_options, readers, true)
                    .await
                    .map_err(opened)?,
            )
        };
        Ok(SqliteStore {
            writer,
            reader,
            leases: Arc::default(),
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::query(
            "create table if not exists lapse_migrations (version integer primary key, \
             name text not null, applied_at integer not null)",
        )
        .execute(&mut *self.writer.get().await?)
        .await
        .map_err(backend)?;
        let done: Vec<i64> = sqlx::query_scalar("select version from lapse_migrations")
            .fetch_all(&mut *self.writer.get().await?)
            .await
            .map_err(backend)?;
        migrate::refuse_newer(migrate::SQLITE, &done)?;
        for script in migrate::SQLITE
            .iter()
            .filter(|s| !done.contains(&s.version))
        {
            let mut writer = self.writer.get().await?;
            let mut tx = writer.begin().await.map_err(backend)?;
            sqlx::raw_sql(script.sql)
                .execute(&mut *tx)
                .await
                .map_err(|e| {
                    StoreError::Backend(format!("migration {} failed: {e}", script.name))
                })?;
            sqlx::query("insert into lapse_migrations (version, name, applied_at) values (?1, ?2, strftime('%s','now') * 1000)")
                .bind(script.version)
                .bind(script.name)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            tx.commit().await.map_err(backend)?;
        }
        Ok(())
    }

    async fn load(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        Ok(
            reads::sessions_by_id(&self.reader, std::slice::from_ref(id))
                .await?
                .pop(),
        )
    }

    async fn version(&self, id: &SessionId) -> Result<Option<i64>, StoreError> {
        reads::version(&self.reader, id).await
    }

    async fn load_many(&self, ids: &[SessionId]) -> Result<Vec<Session>, StoreError> {
        reads::sessions_by_id(&self.reader, ids).await
    }

    async fn open_children(&self, parents: &[SessionId]) -> Result<Vec<Session>, StoreError> {
        reads::open_children(&self.reader, parents).await
    }

    async fn commit_many(
        &self,
        commits: &[Commit],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        writes::commit_many(&self.writer, commits).await
    }

    async fn import(&self, sessions: &[Session]) -> Result<u64, StoreError> {
        bulk::import(&self.writer, sessions).await
    }

    async fn list(&self, q: &SessionQuery) -> Result<Vec<Session>, StoreError> {
        reads::list(&self.reader, q).await
    }

    async fn due(
        &self,
        now: Timestamp,
        kind: Option<&str>,
        cursor: Option<&DueRow>,
        limit: u32,
        // One process writes an embedded database, so there is no one to lease rows from.
        _claim: bool,
    ) -> Result<Vec<DueRow>, StoreError> {
        reads::due(&self.reader, now, kind, cursor, limit).await
    }

    async fn release(&self, _ids: &[SessionId]) -> Result<(), StoreError> {
        // `due` leases nothing here.
        Ok(())
    }

    async fn count_due(&self, now: Timestamp, kind: Option<&str>) -> Result<u64, StoreError> {
        reads::count_due(&self.reader, now, kind).await
    }

    async fn rearm(
        &self,
        rows: &[Rearm],
        rules_version: Option<i64>,
        only: RearmOnly,
    ) -> Result<u64, StoreError> {
        rules::rearm(&self.writer, rows, rules_version, only).await
    }

    async fn mark_rearmed(&self, version: i64) -> Result<(), StoreError> {
        rules::mark_rearmed(&self.writer, version).await
    }

    async fn rules_in_force(&self) -> Result<Option<RulesInForce>, StoreError> {
        rules::rules_in_force(&self.writer).await
    }

    async fn publish_rules(
        &self,
        expected: i64,
        kinds: &str,
        limited: &[String],
        at: Timestamp,
        event: Option<EventRecord>,
    ) -> Result<i64, StoreError> {
        rules::publish_rules(&self.writer, expected, kinds, limited, at, event).await
    }

    async fn next_deadline(&self) -> Result<Option<Timestamp>, StoreError> {
        reads::next_deadline(&self.reader).await
    }

    async fn flush_heartbeats(&self, beats: &[Beat]) -> Result<Vec<Moved>, StoreError> {
        heartbeats::flush(&self.writer, beats).await
    }

    async fn write_heartbeats(
        &self,
        read: &[Beat],
        unread: &[Beat],
    ) -> Result<BeatsWritten, StoreError> {
        heartbeats::write(&self.writer, read, unread).await
    }

    async fn was_deleted(&self, id: &SessionId) -> Result<bool, StoreError> {
        reads::was_deleted(&self.reader, id).await
    }

    async fn last_event_seq(&self) -> Result<i64, StoreError> {
        reads::last_event_seq(&self.reader).await
    }

    async fn events(&self, q: &EventQuery) -> Result<Vec<Event>, StoreError> {
        reads::events(&self.reader, q).await
    }

    async fn notifications(
        &self,
        user: &UserId,
        unread_only: bool,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        reads::notifications(&self.reader, user, unread_only, limit).await
    }

    async fn mark_read(
        &self,
        user: &UserId,
        id: &str,
        at: Timestamp,
    ) -> Result<Option<Notification>, StoreError> {
        let row = sqlx::query(
            "update notifications set read_at = coalesce(read_at, ?3) \
             where id = ?1 and user_id = ?2 \
             returning id, user_id, type, title, message, session_id, link, created_at, read_at",
        )
        .bind(id)
        .bind(user.as_str())
        .bind(at.millis())
        .fetch_optional(&mut *self.writer.get().await?)
        .await
        .map_err(backend)?;
        row.as_ref().map(rows::notification).transpose()
    }

    async fn counts(&self) -> Result<Vec<StatusCount>, StoreError> {
        reads::counts(&self.reader).await
    }

    async fn watch(&self, _seen: ChangeCallback) -> Result<(), StoreError> {
        Ok(())
    }

    async fn due_deliveries(
        &self,
        endpoint: &str,
        now: Timestamp,
        limit: u32,
        lease: Option<Span>,
    ) -> Result<Vec<(Delivery, Event)>, StoreError> {
        match lease {
            Some(lease) => {
                self.leases
                    .claim(&self.reader, endpoint, now, limit, lease)
                    .await
            }
            None => outbox::due_deliveries(&self.reader, endpoint, now, limit).await,
        }
    }

    async fn record_attempts(&self, attempts: &[(String, Attempt)]) -> Result<(), StoreError> {
        outbox::record_attempts(&self.writer, attempts).await?;
        self.leases.release(attempts.iter().map(|(id, _)| id));
        Ok(())
    }

    async fn disable_endpoint(
        &self,
        url: &str,
        at: Timestamp,
        reason: &str,
        attempted: &[String],
    ) -> Result<(), StoreError> {
        outbox::disable_endpoint(&self.writer, url, at, reason, attempted).await
    }

    async fn disabled_endpoints(&self) -> Result<Vec<DisabledEndpoint>, StoreError> {
        outbox::disabled_endpoints(&self.reader).await
    }

    async fn deliveries(
        &self,
        status: Option<DeliveryStatus>,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        reads::deliveries(&self.reader, status, limit).await
    }

    async fn retry_delivery(
        &self,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<Delivery>, StoreError> {
        outbox::retry_delivery(&self.writer, id, now).await
    }

    async fn pending_endpoints(&self) -> Result<Vec<String>, StoreError> {
        outbox::pending_endpoints(&self.reader).await
    }

    async fn next_delivery_at(
        &self,
        endpoint: &str,
        after: Timestamp,
    ) -> Result<Option<Timestamp>, StoreError> {
        outbox::next_delivery_at(&self.reader, endpoint, after).await
    }

    async fn prune(
        &self,
        before: &PruneBefore,
        after: i64,
        limit: u32,
    ) -> Result<Pruned, StoreError> {
        outbox::prune(&self.writer, before, after, limit).await
    }

    async fn health_counts(
        &self,
        overdue_before: Timestamp,
        stale_before: Timestamp,
    ) -> Result<HealthCounts, StoreError> {
        outbox::health_counts(&self.reader, overdue_before, stale_before).await
    }

    async fn idempotent_response(
        &self,
        actor: &str,
        key: &str,
        since: Timestamp,
    ) -> Result<Option<StoredResponse>, StoreError> {
        outbox::idempotent_response(&self.writer, actor, key, since).await
    }

    async fn save_idempotent_response(
        &self,
        actor: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<(), StoreError> {
        outbox::save_idempotent_response(&self.writer, actor, key, response).await
    }

    async fn write_check(&self, at: Timestamp) -> Result<(), StoreError> {
        outbox::write_check(&self.writer, at).await
    }

    fn is_shared(&self) -> bool {
        false
    }

    fn writes_one_at_a_time(&self) -> bool {
        true
    }
}
