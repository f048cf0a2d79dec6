//! PostgreSQL: one database shared by any number of stateless lapse instances.
//!
//! What changes with several instances, and how this file answers it:
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
    Attempt, Beat, Change, ChangeCallback, Commit, Delivery, DeliveryStatus, DisabledEndpoint,
    DueRow, EventQuery, EventRecord, HealthCounts, Moved, Rearm, RearmOnly, RulesInForce,
    SessionQuery, StatusCount, Store, StoredResponse,
};
use lapse_core::{SessionId, Status, StoreError, Timestamp, UserId};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection, Postgres, Row, Transaction};

use crate::batch::Step;
use crate::rows::{self, PG_SESSION_COLUMNS};
use crate::statements::{self, Arg, Dialect, Statement};
use crate::{backend, migrate};

mod outbox;
mod writes;

use writes::{exec, write_commit, write_updates};

/// The channel changes are announced on: a payload `d<ms>` for a stored deadline, `e` for
/// new events.
const CHANNEL: &str = "lapse_changes";
/// How long opening the store waits for the server's first connection (a call waits
/// [`crate::ACQUIRE_TIMEOUT`]): a server starting beside lapse, or loaded, may be slow to
/// answer the first time.
const FIRST_CONNECTION: Duration = Duration::from_secs(10);
/// Key of the advisory lock that makes event numbers follow commit order (see `commit`).
const EVENTS_LOCK: i64 = 0x006c_6170_7366;
/// How long a sweeper's lease on a due row lasts if it neither writes the row nor gives it
/// back (it crashed, or lost the database as its sweep failed).
const LEASE: Duration = Duration::from_secs(60);
/// Gives back this holder's leases on some rows, by primary key.
const RELEASE: &str =
    "update sessions set claimed_until = null where id = any($1) and claimed_by = $2";
/// Key of the advisory lock that serializes migrations of instances starting together.
const MIGRATION_LOCK: i64 = 0x006c_6170_7365; // "lapse"
/// Key of the advisory lock that takes instances' heartbeat flushes one at a time.
const FLUSH_LOCK: i64 = 0x006c_6170_7368;
/// The advisory-lock namespace of lease holders: an instance holds `(LEASE_HOLDERS, its
/// number)` on a connection of its own for as long as it lives (see `Holder`).
pub(crate) const LEASE_HOLDERS: i32 = 0x6c61_7073; // "laps"

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

/// Key of the advisory lock between commits (shared) and other rules coming into force
/// (exclusive): rules are replaced only between commits decided under them.
const RULES_LOCK: i64 = 0x006c_6170_7372;

/// What a commit takes first. With `checked` (it names the rules it was decided under): the
/// rules lock, shared, and then the version in force, read in a statement of its own so that
/// its snapshot follows any reload it waited for. With `events`: the events lock, which makes
/// sequence numbers (handed out at insert, visible at commit) follow commit order, so a
/// reader that has seen event N never later finds an N-1 it skipped (SSE and `after=` paging
/// rely on it). Returns the version in force, if read.
async fn first_locks(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    checked: bool,
    events: bool,
) -> Result<Option<i64>, StoreError> {
    if !checked {
        if events {
            lock_until_commit(tx, EVENTS_LOCK).await?;
        }
        return Ok(None);
    }
    let locks = if events {
        "select pg_advisory_xact_lock_shared($1), pg_advisory_xact_lock($2)"
    } else {
        "select pg_advisory_xact_lock_shared($1), $2::int8"
    };
    sqlx::query(locks)
        .bind(RULES_LOCK)
        .bind(EVENTS_LOCK)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    rules_version_of(tx).await
}

/// The version of the rules in force, read inside `tx`.
async fn rules_version_of(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
) -> Result<Option<i64>, StoreError> {
    sqlx::query_scalar(RULES_VERSION)
        .fetch_optional(&mut **tx)
        .await
        .map_err(backend)
}

/// The version of the rules in force, by the primary key of their one row.
const RULES_VERSION: &str = "select version from rules_in_force where id = 1";

/// The rules in force.
const RULES_IN_FORCE: &str =
    "select version, kinds, updated_at, rearmed_version from rules_in_force where id = 1";

/// Every deadline stored under the rules of a version, if still in force.
const MARK_REARMED: &str =
    "update rules_in_force set rearmed_version = version where id = 1 and version = $1";

/// Other rules in force.
const PUBLISH_RULES: &str = "insert into rules_in_force (id, version, kinds, updated_at) \
     values (1, $1, $2, $3) on conflict (id) do update \
     set version = excluded.version, kinds = excluded.kinds, updated_at = excluded.updated_at";

/// The open sessions of the kinds named (a JSON array) counted against their host's limit
/// from now on (`sessions_kind_status`; run once per rules put in force).
const MARK_HOST_LIMITED: &str = "update sessions set host_limited = true \
     where kind in (select jsonb_array_elements_text($1::jsonb)) \
     and status in ('pending', 'active') and not host_limited";

/// Sessions in a PostgreSQL database.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// This store as a lease holder, from its first claim on.
    holder: Arc<tokio::sync::Mutex<Option<Holder>>>,
}

/// A connection of a store's own that holds the advisory lock `(LEASE_HOLDERS, number)` for
/// as long as the store lives: the database then knows whether a lease's holder is alive,
/// for the lock goes with the connection, however the process ends.
struct Holder {
    number: i32,
    connection: PgConnection,
    /// When the connection (and so the lock) was last seen alive.
    checked: std::time::Instant,
}

/// How long a lease holder's connection is trusted without a look: a claim made later first
/// checks it is still there (a database restart or a network cut ends it, and the lock with it).
const HOLDER_CHECKED_FOR: Duration = Duration::from_secs(1);

fn wall_now() -> i64 {
    chrono::Utc::now().timestamp_millis()
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

    /// This store's number as a lease holder, taken (with its lock) on first use: a number
    /// from the clock and the process id, or the next free one. If the holder's connection
    /// has gone since (the lock went with it, so its leases are free to others already), a new
    /// one is taken.
    async fn holder(&self) -> Result<i32, StoreError> {
        let mut holder = self.holder.lock().await;
        if let Some(h) = holder.as_mut() {
            if h.checked.elapsed() < HOLDER_CHECKED_FOR {
                return Ok(h.number);
            }
            match h.connection.ping().await {
                Ok(()) => {
                    h.checked = std::time::Instant::now();
                    return Ok(h.number);
                }
                Err(e) => {
                    tracing::warn!(error = %e, number = h.number, "lease holder connection lost; taking a new one");
                    *holder = None;
                }
            }
        }
        let mut connection = PgConnection::connect_with(&self.pool.connect_options())
            .await
            .map_err(backend)?;
        let mut number = ((wall_now() as u32) ^ std::process::id()) as i32 & i32::MAX;
        loop {
            let taken: bool = sqlx::query_scalar("select pg_try_advisory_lock($1, $2)")
                .bind(LEASE_HOLDERS)
                .bind(number)
                .fetch_one(&mut connection)
                .await
                .map_err(backend)?;
            if taken {
                break;
            }
            number = number.wrapping_add(1) & i32::MAX;
        }
        *holder = Some(Holder {
            number,
            connection,
            checked: std::time::Instant::now(),
        });
        Ok(number)
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

    /// The generic plan PostgreSQL picks for every hot statement (`plan_cache_mode =
    /// force_generic_plan`, so no plan is fitted to the values), as `(what, plan)`, after
    /// `analyze`: the plan tests fail on any that scans `sessions`, `participants` or
    /// `events` whole.
    pub async fn hot_plans(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut hot = statements::hot_reads(Dialect::Postgres, PG_SESSION_COLUMNS);
        let fixed = |name, sql: &str, args: Vec<Arg>| {
            let mut st = Statement::fixed(Dialect::Postgres, sql);
            st.args = args;
            (name, st)
        };
        let text = |t: &str| Arg::Text(t.to_string());
        let empty = || Arg::Texts(Vec::new());
        hot.push((
            "a session by id with its participants",
            statements::pg_session_with_participants(PG_SESSION_COLUMNS, "s1".into()),
        ));
        hot.extend([
            fixed(
                "heartbeat flush, sessions",
                FLUSH_SESSIONS,
                vec![empty(), empty(), empty()],
            ),
            fixed(
                "heartbeat flush, participants",
                FLUSH_PARTICIPANTS,
                vec![empty(), empty(), empty()],
            ),
            fixed("re-arm", REARM, vec![empty(), empty(), empty(), empty()]),
            fixed(
                "re-arm earlier",
                REARM_EARLIER,
                vec![empty(), empty(), empty(), empty()],
            ),
            fixed("rules in force", RULES_IN_FORCE, vec![]),
            fixed("rules version", RULES_VERSION, vec![]),
            fixed("rules rearmed", MARK_REARMED, vec![Arg::Int(1)]),
            fixed(
                "batched session update",
                writes::UPDATE_SESSIONS,
                vec![text("[]")],
            ),
            fixed("lease release", RELEASE, vec![empty(), Arg::Int(1)]),
            fixed("next deadline", NEXT_DEADLINE, vec![]),
            fixed("session version", SESSION_VERSION, vec![text("s1")]),
            fixed("was deleted", WAS_DELETED, vec![text("s1")]),
            fixed(
                "host limit",
                writes::HOST_OPEN_COUNT,
                vec![text("u1"), text("study")],
            ),
            // Not here: `MARK_HOST_LIMITED`, which runs once per rules put in force and reads
            // every open session of the kinds named. PostgreSQL plans it with their numbers
            // (its first plans are custom) and scans the table where they are most sessions,
            // as in the plan tests' database.
            fixed(
                "due deliveries",
                &outbox::claim_deliveries_sql(32),
                vec![Arg::Int(0), Arg::Int(0), Arg::Int(0), Arg::Int(1)],
            ),
            fixed("next delivery", outbox::NEXT_DELIVERY, vec![]),
            fixed(
                "batched webhook attempts",
                outbox::RECORD_ATTEMPTS,
                vec![empty(), empty(), empty(), empty(), empty(), empty()],
            ),
        ]);
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        for sql in ["analyze", "set plan_cache_mode = force_generic_plan"] {
            sqlx::query(sql)
                .execute(&mut *conn)
                .await
                .map_err(backend)?;
        }
        let mut plans = Vec::new();
        for (name, st) in hot {
            // Values as literals: EXPLAIN EXECUTE takes no parameters of its own.
            let values: Vec<String> = st.args.iter().map(Arg::literal).collect();
            let execute = if values.is_empty() {
                "explain execute lapse_plan".to_string()
            } else {
                format!("explain execute lapse_plan({})", values.join(", "))
            };
            let prepare = format!("prepare lapse_plan as {}", st.sql);
            sqlx::raw_sql(AssertSqlSafe(prepare))
                .execute(&mut *conn)
                .await
                .map_err(backend)?;
            let lines: Vec<String> = sqlx::query_scalar(AssertSqlSafe(execute))
                .fetch_all(&mut *conn)
                .await
                .map_err(backend)?;
            sqlx::raw_sql("deallocate lapse_plan")
                .execute(&mut *conn)
                .await
                .map_err(backend)?;
            plans.push((name.to_string(), lines.join("\n")));
        }
        sqlx::query("reset plan_cache_mode")
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
        Ok(plans)
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

/// One heartbeat flush (one beat per participant), first statement: the sessions of the joined
/// participants beating take their latest beat as activity and a new version (so a sweep
/// decided on the older row loses its compare-and-set). Sessions before participants, the
/// order every commit takes them in: a flush that held a participant while it waited for its
/// session could deadlock with a commit holding the session and writing that participant
/// (ending a room whose people beat).
const FLUSH_SESSIONS: &str = "update sessions set last_activity_at = greatest(last_activity_at, m.at), \
                 used = true, version = version + 1 \
             from (select b.s, max(b.at) as at \
                   from unnest($1::text[], $2::text[], $3::bigint[]) as b(s, u, at) \
                   join participants p on p.session_id = b.s and p.user_id = b.u \
                   and p.state = 'joined' group by b.s) m \
             where sessions.id = m.s and sessions.status in ('pending', 'active') \
             returning sessions.id, sessions.version";

/// Second statement: the joined participants beating move to their latest beat. Their open
/// sessions are held by this transaction already, so no commit is halfway through them.
const FLUSH_PARTICIPANTS: &str = "update participants set beat_at = b.at, \
                 last_seen_at = greatest(participants.last_seen_at, b.at) \
             from unnest($1::text[], $2::text[], $3::bigint[]) as b(s, u, at) \
             where participants.session_id = b.s and participants.user_id = b.u \
             and participants.state = 'joined'";

/// Lazy re-arms of a batch, compare-and-set per row.
const REARM: &str = "update sessions set next_due_at = b.at, next_due_rule = b.rule, claimed_until = null \
             from unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[]) as b(id, version, at, rule) \
             where sessions.id = b.id and sessions.version = b.version";

/// Stored wake-ups moved earlier, whatever else changed (see `RearmOnly::Earlier`).
const REARM_EARLIER: &str = "update sessions set next_due_at = b.at, next_due_rule = b.rule, claimed_until = null \
             from unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[]) as b(id, version, at, rule) \
             where sessions.id = b.id and b.at is not null and sessions.next_due_at > b.at";

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
        writes::import(&self.pool, sessions).await
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
        let wall = wall_now();
        let rows = if claim {
            // Lease the rows no live sweeper holds.
            let mut st = statements::due_sessions(
                Dialect::Postgres,
                now.millis(),
                kind,
                cursor,
                limit,
                Some(wall),
            );
            let until = format!("${}", st.args.len() + 1);
            let holder = format!("${}", st.args.len() + 2);
            st.sql = format!(
                "with picked as ({} for update skip locked) \
                 update sessions s set claimed_until = {until}, claimed_by = {holder} \
                 from picked where s.id = picked.id returning s.id, s.next_due_at",
                st.sql
            );
            let holder = self.holder().await?;
            query(&st)
                .bind(wall + LEASE.as_millis() as i64)
                .bind(holder)
                .fetch_all(&self.pool)
                .await
        } else {
            let st = statements::due_sessions(
                Dialect::Postgres,
                now.millis(),
                kind,
                cursor,
                limit,
                None,
            );
            query(&st).fetch_all(&self.pool).await
        }
        .map_err(backend)?;
        let mut due = rows
            .iter()
            .map(|r| {
                let id: String = r.try_get("id").map_err(backend)?;
                let at: i64 = r.try_get("next_due_at").map_err(backend)?;
                Ok(DueRow {
                    id: SessionId::parse(&id).map_err(|e| StoreError::Backend(e.to_string()))?,
                    at: Timestamp::from_millis(at),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // `update ... returning` keeps no order.
        due.sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
        Ok(due)
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
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let checked = rules_version.is_some();
        if first_locks(&mut tx, checked, false).await? != rules_version {
            return Err(StoreError::PolicyChanged);
        }
        // Heartbeat flushes write many of the same rows in an order of their own: taken one at
        // a time with them, a re-arm never deadlocks with one.
        lock_until_commit(&mut tx, FLUSH_LOCK).await?;
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        let versions: Vec<i64> = rows.iter().map(|r| r.version).collect();
        let wakes: Vec<Option<i64>> = rows
            .iter()
            .map(|r| r.wake_at.map(Timestamp::millis))
            .collect();
        let rules: Vec<Option<&str>> = rows.iter().map(|r| r.rule.as_deref()).collect();
        let statement = match only {
            RearmOnly::Unchanged => REARM,
            RearmOnly::Earlier => REARM_EARLIER,
        };
        let result = sqlx::query(statement)
            .bind(&ids)
            .bind(&versions)
            .bind(&wakes)
            .bind(&rules)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(result.rows_affected())
    }

    async fn mark_rearmed(&self, version: i64) -> Result<(), StoreError> {
        sqlx::query(MARK_REARMED)
            .bind(version)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn rules_in_force(&self) -> Result<Option<RulesInForce>, StoreError> {
        let row = sqlx::query(RULES_IN_FORCE)
            .fetch_optional(&self.pool)
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
        let mut tx = self.pool.begin().await.map_err(backend)?;
        // Waits for every commit decided under the rules in force to end; later ones read the
        // new version and are refused.
        lock_until_commit(&mut tx, RULES_LOCK).await?;
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
            lock_until_commit(&mut tx, EVENTS_LOCK).await?;
            let commit = Commit {
                events: vec![event],
                ..Commit::default()
            };
            write_commit(&mut tx, &commit).await?;
            announce(&mut tx, "e".into()).await?;
        }
        announce(&mut tx, "r".into()).await?;
        tx.commit().await.map_err(backend)?;
        Ok(expected + 1)
    }

    async fn next_deadline(&self) -> Result<Option<Timestamp>, StoreError> {
        let at: Option<i64> = sqlx::query_scalar(NEXT_DEADLINE)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(at.map(Timestamp::from_millis))
    }

    async fn flush_heartbeats(&self, beats: &[Beat]) -> Result<Vec<Moved>, StoreError> {
        if beats.is_empty() {
            return Ok(Vec::new());
        }
        let latest = rows::latest_beats(beats);
        let sessions: Vec<&str> = latest.iter().map(|b| b.0).collect();
        let users: Vec<&str> = latest.iter().map(|b| b.1).collect();
        let ats: Vec<i64> = latest.iter().map(|b| b.2).collect();
        // Instances beating the same rooms flush the same rows each second. A statement
        // cannot choose the order it locks its sessions in, so two flushes at once (or a flush
        // and a sweep's batch) could each wait on the other until PostgreSQL's deadlock check
        // (a second) untangled them; taking turns, one waits only for the other's statements.
        let mut tx = self.pool.begin().await.map_err(backend)?;
        lock_until_commit(&mut tx, FLUSH_LOCK).await?;
        // Sessions, then participants; no NOTIFY, no index.
        let moved: Vec<(String, i64)> = sqlx::query_as(FLUSH_SESSIONS)
            .bind(&sessions)
            .bind(&users)
            .bind(&ats)
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query(FLUSH_PARTICIPANTS)
            .bind(&sessions)
            .bind(&users)
            .bind(&ats)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        rows::moved(moved)
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
        if ids.is_empty() {
            return Ok(());
        }
        let mut holder = self.holder.lock().await;
        // Never a holder, nothing leased.
        let Some(h) = holder.as_mut() else {
            return Ok(());
        };
        // On the holder's own connection: a sweep fails most often for want of a free
        // connection in the pool, and giving its rows back must not wait for one. If that
        // connection is gone, so is the lock, and the leases are free already.
        let ids: Vec<&str> = ids.iter().map(SessionId::as_str).collect();
        sqlx::query(RELEASE)
            .bind(ids)
            .bind(h.number)
            .execute(&mut h.connection)
            .await
            .map_err(backend)?;
        Ok(())
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
