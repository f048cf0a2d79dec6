//! The embedded store: one SQLite file in WAL mode.
//!
//! Writes go through one connection, so they queue in-process instead of meeting
//! `SQLITE_BUSY`; reads use connections of their own and run beside the writer (WAL lets
//! them). The store holds them itself (`conns.rs`).
//!
//! Here: opening, migrating, reading sessions and events, due rows; `writes.rs` holds a
//! commit's statements, `heartbeats.rs` the flush, `rules.rs` the rules in force and the
//! re-arms of stored deadlines (a sweep's lazy re-arms and a reload's, each checked against
//! the rules' version), `outbox.rs` deliveries, retention, health figures and idempotency
//! keys, `plans.rs` the plan of every hot statement for the plan tests.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lapse_core::event::{Event, Notification};
use lapse_core::session::Session;
use lapse_core::store::{
    Attempt, Beat, ChangeCallback, Commit, Delivery, DeliveryStatus, DisabledEndpoint, DueRow,
    EventQuery, EventRecord, HealthCounts, Moved, Rearm, RearmOnly, RulesInForce, SessionQuery,
    StatusCount, Store, StoredResponse,
};
use lapse_core::{SessionId, Status, StoreError, Timestamp, UserId};
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection as _, Row, Sqlite};

use crate::batch::Step;
use crate::rows::{self, SESSION_COLUMNS, to_json};
use crate::statements::{self, Arg, Dialect, Statement};
use crate::{backend, migrate};
use conns::Conns;

mod backup;
mod bulk;
mod conns;
mod heartbeats;
mod outbox;
mod plans;
mod rules;
mod values;
mod writes;

pub use backup::{Backup, backup};

use bulk::write_updates;
use writes::{exec, write_commit};

/// How long a connection waits for another's lock before its statement fails as busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Sessions in a SQLite database.
#[derive(Clone)]
pub struct SqliteStore {
    writer: Arc<Conns>,
    reader: Arc<Conns>,
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
        // then reads its index pages back from the OS. The writer keeps the hot pages of every
        // index (64 MB). A reader's cache is cleared at the start of every read that follows a
        // write, by a walk over every slot the cache has grown to: readers, who mostly probe by
        // key, keep 2 MB each (a 16 MB cache walked 4,096 slots, about 15 µs, per read). Each
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
            .pragma("cache_size", format!("-{}", 64 * 1024))
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
        Ok(SqliteStore { writer, reader })
    }

    /// Sessions by id (any order; missing ones are left out), with their participants.
    async fn sessions_by_id(&self, ids: &[SessionId]) -> Result<Vec<Session>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = ids.iter().map(SessionId::to_string).collect();
        let st = statements::sessions_with_participants(rows::SESSIONS_AS_JSON, ids);
        let (sessions, participants): (String, String) =
            sqlx::query_as_with(AssertSqlSafe(st.sql.clone()), arguments(&st))
                .fetch_one(&mut *self.reader.get().await?)
                .await
                .map_err(backend)?;
        let mut sessions = rows::sessions_json(&sessions)?;
        rows::attach_participants_json(&mut sessions, &participants)?;
        Ok(sessions)
    }

    async fn fetch_sessions(&self, st: &Statement) -> Result<Vec<Session>, StoreError> {
        let rows = query(st)
            .fetch_all(&mut *self.reader.get().await?)
            .await
            .map_err(backend)?;
        let mut sessions = sessions_from(&rows)?;
        self.attach_participants(&mut sessions).await?;
        Ok(sessions)
    }

    /// Sessions selected as one JSON array ([`rows::SESSIONS_AS_JSON`]), with their
    /// participants.
    async fn fetch_sessions_json(&self, st: &Statement) -> Result<Vec<Session>, StoreError> {
        let rows: String = query_scalar(st)
            .fetch_one(&mut *self.reader.get().await?)
            .await
            .map_err(backend)?;
        let mut sessions = rows::sessions_json(&rows)?;
        self.attach_participants(&mut sessions).await?;
        Ok(sessions)
    }

    async fn attach_participants(&self, sessions: &mut [Session]) -> Result<(), StoreError> {
        if sessions.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = sessions.iter().map(|s| s.id.to_string()).collect();
        let st = statements::participants_of(Dialect::Sqlite, ids);
        let rows: String = query_scalar(&st)
            .fetch_one(&mut *self.reader.get().await?)
            .await
            .map_err(backend)?;
        rows::attach_participants_json(sessions, &rows)
    }
}

/// Binds a built statement's values.
fn query(st: &Statement) -> sqlx::query::Query<'static, Sqlite, SqliteArguments> {
    sqlx::query_with(AssertSqlSafe(st.sql.clone()), arguments(st))
}

/// Binds a built statement's values, for the one text value it selects.
fn query_scalar(
    st: &Statement,
) -> sqlx::query::QueryScalar<'static, Sqlite, String, SqliteArguments> {
    sqlx::query_scalar_with(AssertSqlSafe(st.sql.clone()), arguments(st))
}

fn arguments(st: &Statement) -> SqliteArguments {
    use sqlx::Arguments as _;
    let mut args = SqliteArguments::default();
    for arg in &st.args {
        // Texts and integers always encode.
        let _ = match arg {
            Arg::Text(t) => args.add(t.clone()),
            Arg::Int(i) => args.add(*i),
            Arg::Texts(list) => args.add(to_json(list)),
        };
    }
    args
}

fn sessions_from(rows: &[SqliteRow]) -> Result<Vec<Session>, StoreError> {
    rows.iter().map(rows::session).collect()
}

/// A session's version, through the primary key.
const SESSION_VERSION: &str = "select version from sessions where id = ?1";

/// The earliest stored deadline, from the end of the deadline index.
const NEXT_DEADLINE: &str = "select min(next_due_at) from sessions where next_due_at is not null";

/// Whether a session was deleted, from its events.
const WAS_DELETED: &str = "select seq from events where session_id = ?1 \
             and type in ('session.deleted', 'session.purged') limit 1";

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
        Ok(self.sessions_by_id(std::slice::from_ref(id)).await?.pop())
    }

    async fn version(&self, id: &SessionId) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar(SESSION_VERSION)
            .bind(id.as_str())
            .fetch_optional(&mut *self.reader.get().await?)
            .await
            .map_err(backend)
    }

    async fn load_many(&self, ids: &[SessionId]) -> Result<Vec<Session>, StoreError> {
        self.sessions_by_id(ids).await
    }

    async fn open_children(&self, parents: &[SessionId]) -> Result<Vec<Session>, StoreError> {
        if parents.is_empty() {
            return Ok(Vec::new());
        }
        let parents = parents.iter().map(SessionId::to_string).collect();
        let st = statements::open_children(Dialect::Sqlite, rows::SESSIONS_AS_JSON, parents);
        self.fetch_sessions_json(&st).await
    }

    async fn commit_many(
        &self,
        commits: &[Commit],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        // The single writer connection already serializes this with every other commit, so
        // host limits and the rules version are checked without a lock.
        let mut writer = self.writer.get().await?;
        let mut tx = writer.begin().await.map_err(backend)?;
        let in_force = if commits.iter().any(|c| c.rules_version.is_some()) {
            rules::rules_version_of(&mut tx).await?
        } else {
            None
        };
        let stale = crate::batch::stale(commits, in_force);
        let fresh = crate::batch::fresh(commits, &stale);
        let mut outcomes = Vec::with_capacity(commits.len());
        let alone = fresh.len() == 1;
        for step in crate::batch::steps(&fresh) {
            let commit = match step {
                // A run of single-row updates (a sweep's transitions): set-based statements.
                Step::Run(run) => {
                    outcomes.extend(write_updates(&mut tx, &run).await?);
                    continue;
                }
                Step::One(commit) => commit,
            };
            // A commit's first statement is its compare-and-set (or insert, or host limit), and
            // one that fails there has written nothing: only longer commits need a savepoint.
            let savepoint = !alone && commit.sessions.len() > 1;
            if savepoint {
                exec(&mut tx, "savepoint one_commit").await?;
            }
            match write_commit(&mut tx, commit).await {
                Ok(()) => outcomes.push(Ok(())),
                Err(e @ (StoreError::Backend(_) | StoreError::RolledBack)) => return Err(e),
                Err(e) if alone => return Ok(crate::batch::with_stale(&stale, vec![Err(e)])),
                Err(e) => {
                    if savepoint {
                        exec(&mut tx, "rollback to one_commit").await?;
                    }
                    outcomes.push(Err(e));
                }
            }
            if savepoint {
                exec(&mut tx, "release one_commit").await?;
            }
        }
        tx.commit().await.map_err(backend)?;
        Ok(crate::batch::with_stale(&stale, outcomes))
    }

    async fn import(&self, sessions: &[Session]) -> Result<u64, StoreError> {
        bulk::import(&self.writer, sessions).await
    }

    async fn list(&self, q: &SessionQuery) -> Result<Vec<Session>, StoreError> {
        let st = statements::list_sessions(Dialect::Sqlite, SESSION_COLUMNS, q);
        self.fetch_sessions(&st).await
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
        let st = statements::due_sessions(Dialect::Sqlite, now.millis(), kind, cursor, limit, None);
        let rows: String = query_scalar(&st)
            .fetch_one(&mut *self.reader.get().await?)
            .await
            .map_err(backend)?;
        rows::due_rows(&rows)
    }

    async fn release(&self, _ids: &[SessionId]) -> Result<(), StoreError> {
        // `due` leases nothing here.
        Ok(())
    }

    async fn count_due(&self, now: Timestamp, kind: Option<&str>) -> Result<u64, StoreError> {
        let st = statements::count_due(Dialect::Sqlite, now.millis(), kind);
        let row = query(&st)
            .fetch_one(&mut *self.reader.get().await?)
            .await
            .map_err(backend)?;
        let n: i64 = row.try_get("n").map_err(backend)?;
        Ok(n.max(0) as u64)
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
        let at: Option<i64> = sqlx::query_scalar(NEXT_DEADLINE)
            .fetch_one(&mut *self.reader.get().await?)
            .await
            .map_err(backend)?;
        Ok(at.map(Timestamp::from_millis))
    }

    async fn flush_heartbeats(&self, beats: &[Beat]) -> Result<Vec<Moved>, StoreError> {
        heartbeats::flush(&self.writer, beats).await
    }

    async fn was_deleted(&self, id: &SessionId) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar(WAS_DELETED)
            .bind(id.as_str())
            .fetch_optional(&mut *self.reader.get().await?)
            .await
            .map_err(backend)?;
        Ok(found.is_some())
    }

    async fn last_event_seq(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("select coalesce(max(seq), 0) from events")
            .fetch_one(&mut *self.reader.get().await?)
            .await
            .map_err(backend)
    }

    async fn events(&self, q: &EventQuery) -> Result<Vec<Event>, StoreError> {
        let st = statements::events_page(Dialect::Sqlite, q);
        let rows = query(&st)
            .fetch_all(&mut *self.reader.get().await?)
            .await
            .map_err(backend)?;
        rows.iter().map(rows::event).collect()
    }

    async fn notifications(
        &self,
        user: &UserId,
        unread_only: bool,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        let rows = sqlx::query(
            "select id, user_id, type, title, message, session_id, link, created_at, read_at \
             from notifications where user_id = ?1 and (?2 = 0 or read_at is null) \
             order by created_at desc, id desc limit ?3",
        )
        .bind(user.as_str())
        .bind(unread_only as i64)
        .bind(limit as i64)
        .fetch_all(&mut *self.reader.get().await?)
        .await
        .map_err(backend)?;
        rows.iter().map(rows::notification).collect()
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
        let rows = sqlx::query("select kind, status, count(*) as n from sessions group by kind, status order by kind, status")
            .fetch_all(&mut *self.reader.get().await?)
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|r| {
                let status: String = r.try_get("status").map_err(backend)?;
                Ok(StatusCount {
                    kind: r.try_get("kind").map_err(backend)?,
                    status: Status::parse(&status)
                        .ok_or_else(|| StoreError::Backend(format!("unknown status {status}")))?,
                    count: r.try_get("n").map_err(backend)?,
                })
            })
            .collect()
    }

    async fn watch(&self, _seen: ChangeCallback) -> Result<(), StoreError> {
        Ok(())
    }

    async fn due_deliveries(
        &self,
        now: Timestamp,
        limit: u32,
        _claim: bool,
    ) -> Result<Vec<(Delivery, Event)>, StoreError> {
        outbox::due_deliveries(&self.reader, now, limit, _claim).await
    }

    async fn record_attempts(&self, attempts: &[(String, Attempt)]) -> Result<(), StoreError> {
        outbox::record_attempts(&self.writer, attempts).await
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
        let st = statements::deliveries_page(Dialect::Sqlite, status, limit);
        let rows = query(&st)
            .fetch_all(&mut *self.reader.get().await?)
            .await
            .map_err(backend)?;
        rows.iter().map(rows::delivery).collect()
    }

    async fn retry_delivery(
        &self,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<Delivery>, StoreError> {
        outbox::retry_delivery(&self.writer, id, now).await
    }

    async fn next_delivery_at(&self) -> Result<Option<Timestamp>, StoreError> {
        outbox::next_delivery_at(&self.reader).await
    }

    async fn prune(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError> {
        outbox::prune(&self.writer, before, limit).await
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
