//! The embedded store: one SQLite file in WAL mode.
//!
//! Writes go through one connection, so they queue in-process instead of meeting
//! `SQLITE_BUSY`; reads use connections of their own and run beside the writer (WAL lets
//! them). The store holds them itself (`conns.rs`).
//!
//! Here: opening, migrating, reading sessions and events, due rows and heartbeats;
//! `writes.rs` holds a commit's statements, `outbox.rs` deliveries, retention, health figures
//! and idempotency keys.

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
mod conns;
mod outbox;
mod values;
mod writes;

pub use backup::{Backup, backup};

use writes::{exec, write_commit, write_updates};

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
        // index (64 MB); readers, who mostly probe by key, 16 MB each.
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
            .pragma("cache_size", format!("-{}", 16 * 1024));
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

    /// The plan SQLite picks for every hot statement, as `(what, plan)`: the plan tests fail
    /// on any that scans `sessions`, `participants` or `events` whole.
    pub async fn hot_plans(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut hot = statements::hot_reads(Dialect::Sqlite, SESSION_COLUMNS);
        let fixed = |name, sql: &str, args: Vec<Arg>| {
            let mut st = Statement::fixed(Dialect::Sqlite, sql);
            st.args = args;
            (name, st)
        };
        let text = |t: &str| Arg::Text(t.to_string());
        // The sweep's reads of sessions, as this store sends them (one JSON value).
        let json = rows::SESSIONS_AS_JSON;
        hot.extend([
            (
                "sessions by id with their participants, as two values",
                statements::sessions_with_participants(json, vec!["s1".into()]),
            ),
            (
                "open children, as one value",
                statements::open_children(Dialect::Sqlite, json, vec!["s1".into()]),
            ),
        ]);
        hot.extend([
            fixed(
                "heartbeat flush, participants",
                FLUSH_PARTICIPANTS,
                vec![text("[]")],
            ),
            fixed(
                "heartbeat flush, sessions",
                FLUSH_SESSIONS,
                vec![text("[]")],
            ),
            fixed(
                "heartbeat flush, sessions moved",
                FLUSH_MOVED,
                vec![text("[]")],
            ),
            fixed("re-arm", REARM, vec![text("[]")]),
            fixed("re-arm earlier", REARM_EARLIER, vec![text("[]")]),
            fixed("rules in force", RULES_IN_FORCE, vec![]),
            fixed("rules version", RULES_VERSION, vec![]),
            fixed("rules rearmed", MARK_REARMED, vec![Arg::Int(1)]),
            fixed(
                "session update, status and wake-up kept",
                writes::UPDATE_KEEPING_WAKE,
                vec![text("s1")],
            ),
            fixed(
                "session update, status kept",
                writes::UPDATE_KEEPING_STATUS,
                vec![text("s1")],
            ),
            fixed("session update", writes::UPDATE_WHOLE, vec![text("s1")]),
            fixed("next deadline", NEXT_DEADLINE, vec![]),
            fixed("session version", SESSION_VERSION, vec![text("s1")]),
            fixed("was deleted", WAS_DELETED, vec![text("s1")]),
            fixed(
                "host limit",
                writes::HOST_OPEN_COUNT,
                vec![text("u1"), text("study")],
            ),
            fixed(
                "host limits put in force",
                MARK_HOST_LIMITED,
                vec![text(r#"["study"]"#)],
            ),
            fixed(
                "due deliveries",
                &outbox::due_deliveries_sql(),
                vec![Arg::Int(0), Arg::Int(32)],
            ),
            fixed("next delivery", outbox::NEXT_DELIVERY, vec![]),
        ]);
        for (name, sql) in writes::batch_statements()? {
            hot.push((name, Statement::fixed(Dialect::Sqlite, &sql)));
        }
        hot.push((
            "batched webhook attempts",
            Statement::fixed(Dialect::Sqlite, &outbox::record_attempts_statement()?),
        ));
        let mut plans = Vec::new();
        for (name, mut st) in hot {
            st.sql = format!("explain query plan {}", st.sql);
            let rows = query(&st)
                .fetch_all(&mut *self.reader.get().await?)
                .await
                .map_err(backend)?;
            let lines: Vec<String> = rows
                .iter()
                .map(|r| r.try_get::<String, _>("detail").map_err(backend))
                .collect::<Result<_, _>>()?;
            plans.push((name.to_string(), lines.join("\n")));
        }
        Ok(plans)
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

/// One heartbeat flush, first step: the joined participants beating move to their latest
/// beat (one per participant in the batch).
const FLUSH_PARTICIPANTS: &str = "update participants set beat_at = b.at, \
             last_seen_at = max(last_seen_at, b.at) \
             from (select value ->> 0 as s, value ->> 1 as u, value ->> 2 as at \
                   from jsonb_each(?1)) as b \
             where participants.session_id = b.s and participants.user_id = b.u \
             and participants.state = 'joined'";

/// The sessions of a heartbeat flush, each with the latest beat its joined participants just
/// took (their `beat_at`):
/// activity moves forward and the version up (so a sweep that decided on the older row loses
/// its compare-and-set); the deadline column is left alone (lazy re-arm). `+status`: the batch
/// drives, each session found by its key (through the status index, the batch would be read
/// once per session).
const FLUSH_SESSIONS: &str = "update sessions set last_activity_at = max(last_activity_at, b.at), \
             used = 1, version = version + 1 \
             from (select p.session_id as s, max(p.beat_at) as at \
                   from (select value ->> 0 as s, value ->> 1 as u from jsonb_each(?1)) as j \
                   join participants p on p.session_id = j.s and p.user_id = j.u \
                   where p.state = 'joined' group by 1) as b \
             where sessions.id = b.s and +sessions.status in ('pending', 'active')";

/// The sessions [`FLUSH_SESSIONS`] just moved (the same ones: open, with a joined participant
/// in the batch) and their new versions, as one JSON array of `[id, version]`: one row back
/// instead of one per session, each of which would cross from SQLite's thread to ours.
const FLUSH_MOVED: &str = "select json_group_array(json_array(s.id, s.version)) from sessions s \
             where s.id in (select p.session_id \
                   from (select value ->> 0 as s, value ->> 1 as u from jsonb_each(?1)) as j \
                   join participants p on p.session_id = j.s and p.user_id = j.u \
                   where p.state = 'joined') \
             and +s.status in ('pending', 'active')";

/// Lazy re-arms of a batch, compare-and-set per row.
/// The version of the rules in force, by the primary key of their one row.
const RULES_VERSION: &str = "select version from rules_in_force where id = 1";

/// The rules in force, by the primary key of their one row.
const RULES_IN_FORCE: &str =
    "select version, kinds, updated_at, rearmed_version from rules_in_force where id = 1";

/// Every deadline stored under the rules of a version, if still in force.
const MARK_REARMED: &str =
    "update rules_in_force set rearmed_version = version where id = 1 and version = ?1";

/// Other rules in force.
const PUBLISH_RULES: &str = "insert into rules_in_force (id, version, kinds, updated_at) \
     values (1, ?1, ?2, ?3) on conflict (id) do update \
     set version = excluded.version, kinds = excluded.kinds, updated_at = excluded.updated_at";

/// The open sessions of the kinds named (a JSON array) counted against their host's limit
/// from now on (`sessions_kind_status`; run once per rules put in force).
const MARK_HOST_LIMITED: &str = "update sessions set host_limited = 1 \
     where kind in (select value from json_each(?1)) and status in ('pending', 'active') \
     and host_limited = 0";

/// The version of the rules in force, read inside `tx`.
async fn rules_version_of(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
) -> Result<Option<i64>, StoreError> {
    sqlx::query_scalar(RULES_VERSION)
        .fetch_optional(&mut **tx)
        .await
        .map_err(backend)
}

const REARM: &str = "update sessions set next_due_at = b.at, next_due_rule = b.rule \
             from (select value ->> 0 as id, value ->> 1 as version, value ->> 2 as at, \
                   value ->> 3 as rule from jsonb_each(?1)) as b \
             where sessions.id = b.id and sessions.version = b.version";

/// Stored wake-ups moved earlier, whatever else changed (see `RearmOnly::Earlier`).
const REARM_EARLIER: &str = "update sessions set next_due_at = b.at, next_due_rule = b.rule \
             from (select value ->> 0 as id, value ->> 2 as at, value ->> 3 as rule \
                   from jsonb_each(?1)) as b \
             where sessions.id = b.id and b.at is not null and sessions.next_due_at > b.at";

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
            rules_version_of(&mut tx).await?
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
        writes::import(&self.writer, sessions).await
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
        if rows.is_empty() {
            return Ok(0);
        }
        // One writer: nothing can put other rules in force between these two statements.
        let mut writer = self.writer.get().await?;
        let mut tx = writer.begin().await.map_err(backend)?;
        if rules_version.is_some() && rules_version_of(&mut tx).await? != rules_version {
            return Err(StoreError::PolicyChanged);
        }
        let batch: Vec<(&str, i64, Option<i64>, Option<&str>)> = rows
            .iter()
            .map(|r| {
                (
                    r.id.as_str(),
                    r.version,
                    r.wake_at.map(Timestamp::millis),
                    r.rule.as_deref(),
                )
            })
            .collect();
        let statement = match only {
            RearmOnly::Unchanged => REARM,
            RearmOnly::Earlier => REARM_EARLIER,
        };
        let result = sqlx::query(statement)
            .bind(to_json(&batch))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(result.rows_affected())
    }

    async fn mark_rearmed(&self, version: i64) -> Result<(), StoreError> {
        sqlx::query(MARK_REARMED)
            .bind(version)
            .execute(&mut *self.writer.get().await?)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn rules_in_force(&self) -> Result<Option<RulesInForce>, StoreError> {
        let row = sqlx::query(RULES_IN_FORCE)
            .fetch_optional(&mut *self.writer.get().await?)
            .await
            .map_err(backend)?;
        row.as_ref().map(rows::rules_in_force).transpose()
    }

    async fn publish_rules(
        &self,
        expected: i64,
        kinds: &str,
        limited: &[String],
        at: Timestamp,
        event: Option<EventRecord>,
    ) -> Result<i64, StoreError> {
        let mut writer = self.writer.get().await?;
        let mut tx = writer.begin().await.map_err(backend)?;
        if rules_version_of(&mut tx).await?.unwrap_or(0) != expected {
            return Err(StoreError::PolicyChanged);
        }
        sqlx::query(PUBLISH_RULES)
            .bind(expected + 1)
            .bind(kinds)
            .bind(at.millis())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query(MARK_HOST_LIMITED)
            .bind(rows::to_json(&limited))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if let Some(event) = event {
            let commit = Commit {
                events: vec![event],
                ..Commit::default()
            };
            write_commit(&mut tx, &commit).await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(expected + 1)
    }

    async fn next_deadline(&self) -> Result<Option<Timestamp>, StoreError> {
        let at: Option<i64> = sqlx::query_scalar(NEXT_DEADLINE)
            .fetch_one(&mut *self.reader.get().await?)
            .await
            .map_err(backend)?;
        Ok(at.map(Timestamp::from_millis))
    }

    async fn flush_heartbeats(&self, beats: &[Beat]) -> Result<Vec<Moved>, StoreError> {
        if beats.is_empty() {
            return Ok(Vec::new());
        }
        let batch = to_json(&rows::latest_beats(beats));
        let mut writer = self.writer.get().await?;
        let mut tx = writer.begin().await.map_err(backend)?;
        // The participants, then their sessions, each once.
        sqlx::query(FLUSH_PARTICIPANTS)
            .bind(&batch)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query(FLUSH_SESSIONS)
            .bind(&batch)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let moved: String = sqlx::query_scalar(FLUSH_MOVED)
            .bind(&batch)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        let moved: Vec<(String, i64)> = serde_json::from_str(&moved)
            .map_err(|e| StoreError::Backend(format!("flushed sessions unreadable: {e}")))?;
        rows::moved(moved)
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
