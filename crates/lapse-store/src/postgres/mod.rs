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
//!   for each other's rows in a circle.
//!
//! Here: opening, migrating, reading sessions and events, a commit's transaction; `writes.rs`
//! holds a commit's statements, `leases.rs` due rows and their leases, `heartbeats.rs` the
//! flush, `rules.rs` the rules in force and the re-arms of stored deadlines (a sweep's lazy
//! re-arms and a reload's, each checked against the rules' version), `outbox.rs` deliveries,
//! retention, health figures and idempotency keys, `plans.rs` the plan of every hot statement
//! for the plan tests.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lapse_core::event::{Event, Notification};
use lapse_core::session::Session;
use lapse_core::store::{
    Attempt, Beat, Change, ChangeCallback, Commit, Delivery, DeliveryStatus, DisabledEndpoint,
    DueRow, EventQuery, EventRecord, HealthCounts, Moved, Rearm, RearmOnly, RulesInForce,
    SessionQuery, StatusCount, Store, StoredResponse,
};
use lapse_core::{SessionId, Status, StoreError, Timestamp, UserId};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};

use crate::batch::Step;
use crate::rows::{self, PG_SESSION_COLUMNS};
use crate::statements::{self, Arg, Dialect, Statement};
use crate::{backend, migrate};

mod bulk;
mod heartbeats;
mod leases;
mod outbox;
mod plans;
mod rules;
mod writes;

use bulk::write_updates;
pub(crate) use leases::LEASE_HOLDERS;
use leases::{Holder, wall_now};
use rules::first_locks;
use writes::{exec, write_commit};

/// The channel changes are announced on: a payload `d<ms>` for a stored deadline, `e` for
/// new events.
const CHANNEL: &str = "lapse_changes";
/// How long opening the store waits for the server's first connection (a call waits
/// [`crate::ACQUIRE_TIMEOUT`]): a server starting beside lapse, or loaded, may be slow to
/// answer the first time.
const FIRST_CONNECTION: Duration = Duration::from_secs(10);
/// Key of the advisory lock that makes event numbers follow commit order (see `commit`).
const EVENTS_LOCK: i64 = 0x006c_6170_7366;
/// Key of the advisory lock that serializes migrations of instances starting together.
const MIGRATION_LOCK: i64 = 0x006c_6170_7365; // "lapse"
/// Key of the advisory lock that takes instances' heartbeat flushes one at a time.
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

    /// Sessions by id (any order; missing ones are left out), with their participants.
    async fn sessions_by_id(&self, ids: &[SessionId]) -> Result<Vec<Session>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = ids.iter().map(SessionId::to_string).collect();
        let st = statements::sessions_by_id(Dialect::Postgres, PG_SESSION_COLUMNS, ids);
        self.fetch_sessions(&st).await
    }

    async fn fetch_sessions(&self, st: &Statement) -> Result<Vec<Session>, StoreError> {
        let rows = query(st).fetch_all(&self.pool).await.map_err(backend)?;
        let mut sessions = rows
            .iter()
            .map(rows::session)
            .collect::<Result<Vec<_>, _>>()?;
        if sessions.is_empty() {
            return Ok(sessions);
        }
        let ids = sessions.iter().map(|s| s.id.to_string()).collect();
        let st = statements::participants_of(Dialect::Postgres, ids);
        let rows = query(&st).fetch_all(&self.pool).await.map_err(backend)?;
        rows::attach_participants(&mut sessions, &rows)?;
        Ok(sessions)
    }
}

/// Binds a built statement's values.
fn query(st: &Statement) -> sqlx::query::Query<'static, Postgres, PgArguments> {
    let mut q = sqlx::query(AssertSqlSafe(st.sql.clone()));
    for arg in &st.args {
        q = match arg {
            Arg::Text(t) => q.bind(t.clone()),
            Arg::Int(i) => q.bind(*i),
            Arg::Texts(list) => q.bind(list.clone()),
        };
    }
    q
}

/// Tells every instance (this one included) of a change; delivered at commit.
async fn announce(tx: &mut Transaction<'_, Postgres>, payload: String) -> Result<(), StoreError> {
    sqlx::query("select pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    Ok(())
}

/// A session's version, through the primary key.
const SESSION_VERSION: &str = "select version from sessions where id = $1";

/// The earliest stored deadline, from the end of the deadline index.
const NEXT_DEADLINE: &str = "select min(next_due_at) from sessions where next_due_at is not null";

/// Whether a session was deleted, from its events.
const WAS_DELETED: &str = "select seq from events where session_id = $1 \
             and type in ('session.deleted', 'session.purged') limit 1";

#[async_trait]
impl Store for PostgresStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        // Instances starting together migrate one at a time; the loser finds the work done.
        lock_until_commit(&mut tx, MIGRATION_LOCK).await?;
        sqlx::query(
            "create table if not exists lapse_migrations (version bigint primary key, \
             name text not null, applied_at bigint not null)",
        )
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        let done: Vec<i64> = sqlx::query_scalar("select version from lapse_migrations")
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
        for script in migrate::POSTGRES
            .iter()
            .filter(|s| !done.contains(&s.version))
        {
            sqlx::raw_sql(script.sql)
                .execute(&mut *tx)
                .await
                .map_err(|e| {
                    StoreError::Backend(format!("migration {} failed: {e}", script.name))
                })?;
            sqlx::query(
                "insert into lapse_migrations (version, name, applied_at) values ($1, $2, $3)",
            )
            .bind(script.version)
            .bind(script.name)
            .bind(wall_now())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    /// One statement, the session with its participants: one round trip and one snapshot
    /// instead of two. (Pages of sessions, as a sweep reads them, keep two statements:
    /// measured, one building each session's participants in the server swept slower.)
    async fn load(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        let st = statements::pg_session_with_participants(PG_SESSION_COLUMNS, id.to_string());
        let Some(row) = query(&st)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let mut session = rows::session(&row)?;
        let participants: String = row.try_get("participants").map_err(backend)?;
        rows::attach_participants_json(std::slice::from_mut(&mut session), &participants)?;
        Ok(Some(session))
    }

    async fn version(&self, id: &SessionId) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar(SESSION_VERSION)
            .bind(id.as_str())
            .fetch_optional(&self.pool)
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
        let st = statements::open_children(Dialect::Postgres, PG_SESSION_COLUMNS, parents);
        self.fetch_sessions(&st).await
    }

    async fn commit_many(
        &self,
        commits: &[Commit],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let checked = commits.iter().any(|c| c.rules_version.is_some());
        let events = commits.iter().any(|c| !c.events.is_empty());
        let in_force = first_locks(&mut tx, checked, events).await?;
        let stale = crate::batch::stale(commits, in_force);
        let fresh = crate::batch::fresh(commits, &stale);
        // A flush writes many sessions in an order of its own, and so does a sweep's batch or
        // a cascade: taken one at a time with flushes, they never deadlock with one. A commit
        // of one session needs no turn: a flush waits for it before touching its participants.
        if fresh.iter().map(|c| c.sessions.len()).sum::<usize>() > 1 {
            lock_until_commit(&mut tx, FLUSH_LOCK).await?;
        }
        let alone = fresh.len() == 1;
        let mut outcomes = Vec::with_capacity(commits.len());
        for step in crate::batch::steps(&fresh) {
            let commit = match step {
                // A run of single-row updates (a sweep's transitions): set-based statements.
                Step::Run(run) => {
                    outcomes.extend(write_updates(&mut tx, &run).await?);
                    continue;
                }
                Step::One(commit) => commit,
            };
            // As on SQLite: a commit refused by its first statement has written nothing.
            let savepoint = !alone && commit.sessions.len() > 1;
            if savepoint {
                exec(&mut tx, "savepoint one_commit").await?;
            }
            match write_commit(&mut tx, commit).await {
                Ok(()) => outcomes.push(Ok(())),
                // The transaction is aborted: nothing of it can commit.
                Err(e @ (StoreError::Backend(_) | StoreError::RolledBack)) => return Err(e),
                Err(e) if alone => return Ok(crate::batch::with_stale(&stale, vec![Err(e)])),
                Err(e) => {
                    if savepoint {
                        exec(&mut tx, "rollback to savepoint one_commit").await?;
                    }
                    outcomes.push(Err(e));
                }
            }
            if savepoint {
                exec(&mut tx, "release savepoint one_commit").await?;
            }
        }
        let outcomes = crate::batch::with_stale(&stale, outcomes);
        // What the written commits announce: new events, and their earliest deadline.
        let written = commits
            .iter()
            .zip(&outcomes)
            .filter_map(|(c, o)| o.is_ok().then_some(c));
        let (mut earliest, mut events) = (None::<Timestamp>, false);
        for commit in written {
            events |= !commit.events.is_empty();
            let wakes = commit.sessions.iter().filter_map(|w| w.session()?.wake_at);
            earliest = earliest.into_iter().chain(wakes).min();
        }
        if events {
            announce(&mut tx, "e".into()).await?;
        }
        if let Some(at) = earliest {
            announce(&mut tx, format!("d{}", at.millis())).await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(outcomes)
    }

    async fn import(&self, sessions: &[Session]) -> Result<u64, StoreError> {
        bulk::import(&self.pool, sessions).await
    }

    async fn list(&self, q: &SessionQuery) -> Result<Vec<Session>, StoreError> {
        let st = statements::list_sessions(Dialect::Postgres, PG_SESSION_COLUMNS, q);
        self.fetch_sessions(&st).await
    }

    async fn count_due(&self, now: Timestamp, kind: Option<&str>) -> Result<u64, StoreError> {
        let st = statements::count_due(Dialect::Postgres, now.millis(), kind);
        let row = query(&st).fetch_one(&self.pool).await.map_err(backend)?;
        let n: i64 = row.try_get("n").map_err(backend)?;
        Ok(n.max(0) as u64)
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
        let at: Option<i64> = sqlx::query_scalar(NEXT_DEADLINE)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(at.map(Timestamp::from_millis))
    }

    async fn flush_heartbeats(&self, beats: &[Beat]) -> Result<Vec<Moved>, StoreError> {
        heartbeats::flush(&self.pool, beats).await
    }

    async fn was_deleted(&self, id: &SessionId) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar(WAS_DELETED)
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(found.is_some())
    }

    async fn last_event_seq(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("select coalesce(max(seq), 0) from events")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)
    }

    async fn events(&self, q: &EventQuery) -> Result<Vec<Event>, StoreError> {
        let st = statements::events_page(Dialect::Postgres, q);
        let rows = query(&st).fetch_all(&self.pool).await.map_err(backend)?;
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
             from notifications where user_id = $1 and (not $2 or read_at is null) \
             order by created_at desc, id desc limit $3",
        )
        .bind(user.as_str())
        .bind(unread_only)
        .bind(limit as i64)
        .fetch_all(&self.pool)
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
        let rows = sqlx::query(
            "select kind, status, count(*) as n from sessions group by kind, status order by kind, status",
        )
        .fetch_all(&self.pool)
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

    async fn watch(&self, seen: ChangeCallback) -> Result<(), StoreError> {
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(backend)?;
        listener.listen(CHANNEL).await.map_err(backend)?;
        loop {
            // `recv` reconnects and re-listens by itself after a dropped connection.
            let n = listener.recv().await.map_err(backend)?;
            let payload = n.payload();
            if payload == "e" {
                seen(Change::Events);
            } else if payload == "r" {
                seen(Change::Rules);
            } else if let Some(ms) = payload.strip_prefix('d').and_then(|m| m.parse().ok()) {
                seen(Change::Deadline(Timestamp::from_millis(ms)));
            }
        }
    }

    async fn release(&self, ids: &[SessionId]) -> Result<(), StoreError> {
        leases::release(self, ids).await
    }

    async fn due_deliveries(
        &self,
        now: Timestamp,
        limit: u32,
        claim: bool,
    ) -> Result<Vec<(Delivery, Event)>, StoreError> {
        let holder = match claim {
            true => Some(self.holder().await?),
            false => None,
        };
        outbox::due_deliveries(&self.pool, now, limit, holder).await
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
        let st = statements::deliveries_page(Dialect::Postgres, status, limit);
        let rows = query(&st).fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(rows::delivery).collect()
    }

    async fn retry_delivery(
        &self,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<Delivery>, StoreError> {
        outbox::retry_delivery(&self.pool, id, now).await
    }

    async fn next_delivery_at(&self) -> Result<Option<Timestamp>, StoreError> {
        outbox::next_delivery_at(&self.pool).await
    }

    async fn prune(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError> {
        outbox::prune(&self.pool, before, limit).await
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
