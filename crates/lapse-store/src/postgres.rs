//! PostgreSQL: one database shared by any number of stateless lapse instances.
//!
//! What changes with several instances, and how this file answers it:
//! - concurrent sweepers lease due rows with `for update skip locked`, so they take disjoint
//!   batches (exactly-once itself rests on compare-and-set, as in SQLite);
//! - a commit that stores a deadline sends `pg_notify` in its transaction, so every instance's
//!   sleeping sweeper learns of it; heartbeat flushes never notify;
//! - a heartbeat flush is one statement (two data-modifying CTEs), touching no indexed
//!   column, so its row updates stay HOT.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use lapse_core::event::{Event, Notification};
use lapse_core::session::Session;
use lapse_core::store::{
    Attempt, Beat, Change, ChangeCallback, Commit, Delivery, DeliveryStatus, DueRow, EventQuery,
    HealthCounts, HostLimit, Rearm, SessionQuery, SessionWrite, StatusCount, Store, StoredResponse,
};
use lapse_core::{SessionId, Status, StoreError, Timestamp, UserId};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};

use crate::rows::{self, DELIVERY_COLUMNS, PG_SESSION_COLUMNS, to_json};
use crate::{backend, migrate};

/// The channel changes are announced on: a payload `d<ms>` for a stored deadline, `e` for
/// new events.
const CHANNEL: &str = "lapse_changes";
/// Key of the advisory lock that makes event numbers follow commit order (see `commit`).
const EVENTS_LOCK: i64 = 0x006c_6170_7366;
/// How long a sweeper's lease on a due row lasts if it never writes the row (it crashed).
const LEASE: Duration = Duration::from_secs(60);
/// Key of the advisory lock that serializes migrations of instances starting together.
const MIGRATION_LOCK: i64 = 0x006c_6170_7365; // "lapse"

/// Sessions in a PostgreSQL database.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

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
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| {
                StoreError::Backend(format!("cannot connect to {}: {e}", crate::redact(url)))
            })?;
        Ok(PostgresStore { pool })
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

    /// Pending deliveries due at `now`, with their events, oldest first.
    async fn pending_deliveries(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<(Delivery, Event)>, StoreError> {
        let sql = format!(
            "select {DELIVERY_COLUMNS}, e.seq, e.id, e.type, e.at, e.applied_at, e.session_id, \
             e.kind, e.actor, e.rule, e.data \
             from webhook_deliveries d join events e on e.seq = d.event_seq \
             where d.status = 'pending' and d.next_attempt_at <= $1 \
             order by d.next_attempt_at, d.id limit $2"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(now.millis())
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|r| Ok((rows::delivery(r)?, rows::event(r)?)))
            .collect()
    }

    async fn attach_participants(&self, sessions: &mut [Session]) -> Result<(), StoreError> {
        if sessions.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = sessions.iter().map(|s| s.id.to_string()).collect();
        let rows = sqlx::query(
            "select session_id, user_id, role, state, joined_at, left_at, last_seen_at, offline_for \
             from participants where session_id = any($1) order by joined_at, user_id",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        for row in &rows {
            let (session_id, p) = rows::participant(row)?;
            if let Some(s) = sessions.iter_mut().find(|s| s.id.as_str() == session_id) {
                s.participants.push(p);
            }
        }
        Ok(())
    }
}

async fn insert_session(tx: &mut Transaction<'_, Postgres>, s: &Session) -> Result<(), StoreError> {
    let result = sqlx::query(
        "insert into sessions (id, kind, title, metadata, host, parent, scheduled_start, \
         scheduled_end, status, delayed, used, created_at, started_at, ended_at, \
         last_activity_at, end_reason, ended_by, counters, summary, parent_ended_at, \
         next_due_at, next_due_rule, warnings, version) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
         $18, $19, $20, $21, $22, $23, 1) on conflict (id) do nothing",
    )
    .bind(s.id.as_str())
    .bind(&s.kind)
    .bind(&s.title)
    .bind(to_json(&s.metadata))
    .bind(s.host.as_str())
    .bind(s.parent.as_ref().map(|p| p.as_str()))
    .bind(s.scheduled_start.map(Timestamp::millis))
    .bind(s.scheduled_end.map(Timestamp::millis))
    .bind(s.status.as_str())
    .bind(s.delayed)
    .bind(s.used)
    .bind(s.created_at.millis())
    .bind(s.started_at.map(Timestamp::millis))
    .bind(s.ended_at.map(Timestamp::millis))
    .bind(s.last_activity_at.millis())
    .bind(s.end_reason.as_deref())
    .bind(s.ended_by.as_deref())
    .bind(to_json(&s.counters))
    .bind(s.summary.as_ref().map(to_json))
    .bind(s.parent_ended_at.map(Timestamp::millis))
    .bind(s.wake_at.map(Timestamp::millis))
    .bind(s.next_due.as_ref().map(|n| n.rule.as_str()))
    .bind(to_json(&s.warnings))
    .execute(&mut **tx)
    .await
    .map_err(backend)?;
    if result.rows_affected() == 0 {
        return Err(StoreError::Duplicate);
    }
    Ok(())
}

async fn update_session(tx: &mut Transaction<'_, Postgres>, s: &Session) -> Result<(), StoreError> {
    let result = sqlx::query(
        "update sessions set title = $2, metadata = $3, scheduled_start = $4, \
         scheduled_end = $5, status = $6, delayed = $7, used = $8, started_at = $9, \
         ended_at = $10, last_activity_at = greatest(last_activity_at, $11), end_reason = $12, \
         ended_by = $13, counters = $14, summary = $15, parent_ended_at = $16, \
         next_due_at = $17, next_due_rule = $18, warnings = $20, claimed_until = null, version = version + 1 \
         where id = $1 and version = $19",
    )
    .bind(s.id.as_str())
    .bind(&s.title)
    .bind(to_json(&s.metadata))
    .bind(s.scheduled_start.map(Timestamp::millis))
    .bind(s.scheduled_end.map(Timestamp::millis))
    .bind(s.status.as_str())
    .bind(s.delayed)
    .bind(s.used)
    .bind(s.started_at.map(Timestamp::millis))
    .bind(s.ended_at.map(Timestamp::millis))
    .bind(s.last_activity_at.millis())
    .bind(s.end_reason.as_deref())
    .bind(s.ended_by.as_deref())
    .bind(to_json(&s.counters))
    .bind(s.summary.as_ref().map(to_json))
    .bind(s.parent_ended_at.map(Timestamp::millis))
    .bind(s.wake_at.map(Timestamp::millis))
    .bind(s.next_due.as_ref().map(|n| n.rule.as_str()))
    .bind(s.version)
    .bind(to_json(&s.warnings))
    .execute(&mut **tx)
    .await
    .map_err(backend)?;
    if result.rows_affected() == 0 {
        return Err(StoreError::Conflict);
    }
    Ok(())
}

async fn upsert_participants(
    tx: &mut Transaction<'_, Postgres>,
    s: &Session,
) -> Result<(), StoreError> {
    for p in &s.participants {
        sqlx::query(
            "insert into participants (session_id, user_id, role, state, joined_at, left_at, \
             last_seen_at, offline_for) values ($1, $2, $3, $4, $5, $6, $7, $8) \
             on conflict (session_id, user_id) do update set role = excluded.role, \
             state = excluded.state, joined_at = excluded.joined_at, left_at = excluded.left_at, \
             offline_for = excluded.offline_for, \
             last_seen_at = greatest(participants.last_seen_at, excluded.last_seen_at)",
        )
        .bind(s.id.as_str())
        .bind(p.user.as_str())
        .bind(p.role.as_str())
        .bind(p.state.as_str())
        .bind(p.joined_at.millis())
        .bind(p.left_at.map(Timestamp::millis))
        .bind(p.last_seen_at.millis())
        .bind(p.offline_for.map(Timestamp::millis))
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    }
    Ok(())
}

async fn delete_session(
    tx: &mut Transaction<'_, Postgres>,
    id: &SessionId,
    version: i64,
) -> Result<(), StoreError> {
    let result = sqlx::query("delete from sessions where id = $1 and version = $2")
        .bind(id.as_str())
        .bind(version)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    if result.rows_affected() == 0 {
        return Err(StoreError::Conflict);
    }
    sqlx::query("delete from participants where session_id = $1")
        .bind(id.as_str())
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    Ok(())
}

/// Counts the host's open sessions of the kind under a transaction-scoped lock on that pair,
/// so creates on different instances take turns.
async fn check_host_limit(
    tx: &mut Transaction<'_, Postgres>,
    limit: &HostLimit,
) -> Result<(), StoreError> {
    sqlx::query("select pg_advisory_xact_lock(hashtext($1), hashtext($2))")
        .bind(limit.host.as_str())
        .bind(&limit.kind)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    let open: i64 = sqlx::query_scalar(
        "select count(*) from sessions where host = $1 and kind = $2 \
         and status in ('pending', 'active')",
    )
    .bind(limit.host.as_str())
    .bind(&limit.kind)
    .fetch_one(&mut **tx)
    .await
    .map_err(backend)?;
    if open >= i64::from(limit.max) {
        return Err(StoreError::LimitReached);
    }
    Ok(())
}

async fn append_events(
    tx: &mut Transaction<'_, Postgres>,
    commit: &Commit,
) -> Result<(), StoreError> {
    for r in &commit.events {
        let e = &r.event;
        let seq: i64 = sqlx::query_scalar(
            "insert into events (id, type, at, applied_at, session_id, kind, actor, rule, data) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9) returning seq",
        )
        .bind(&r.id)
        .bind(e.event_type.as_str())
        .bind(e.at.millis())
        .bind(r.applied_at.millis())
        .bind(e.session_id.as_str())
        .bind(&e.kind)
        .bind(&e.actor)
        .bind(e.rule.as_deref())
        .bind(to_json(&e.data))
        .fetch_one(&mut **tx)
        .await
        .map_err(backend)?;
        for (n, url) in r.webhooks.iter().enumerate() {
            queue_delivery(tx, &format!("{}.{n}", r.id), url, seq, r.applied_at).await?;
        }
    }
    Ok(())
}

/// Queues one event for one endpoint, unless the endpoint was disabled.
async fn queue_delivery(
    tx: &mut Transaction<'_, Postgres>,
    id: &str,
    url: &str,
    seq: i64,
    at: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query(
        "insert into webhook_deliveries (id, endpoint, event_seq, status, attempts, \
         next_attempt_at, created_at) \
         select $1, $2, $3, 'pending', 0, $4, $4 \
         where not exists (select 1 from webhook_endpoints_disabled where url = $2)",
    )
    .bind(id)
    .bind(url)
    .bind(seq)
    .bind(at.millis())
    .execute(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(())
}

async fn deliver_notifications(
    tx: &mut Transaction<'_, Postgres>,
    commit: &Commit,
) -> Result<(), StoreError> {
    for r in &commit.notifications {
        let n = &r.notification;
        sqlx::query(
            "insert into notifications (id, user_id, type, title, message, session_id, link, \
             created_at) values ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&r.id)
        .bind(n.user.as_str())
        .bind(&n.notification_type)
        .bind(&n.title)
        .bind(&n.message)
        .bind(n.session.as_str())
        .bind(n.link.as_deref())
        .bind(n.created_at.millis())
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    }
    Ok(())
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

#[async_trait]
impl Store for PostgresStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        // Instances starting together migrate one at a time; the loser finds the work done.
        sqlx::query("select pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
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

    async fn load(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        let sql = format!("select {PG_SESSION_COLUMNS} from sessions where id = $1");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        let Some(row) = row else { return Ok(None) };
        let mut sessions = vec![rows::session(&row)?];
        self.attach_participants(&mut sessions).await?;
        Ok(sessions.pop())
    }

    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        if let Some(limit) = &commit.host_limit {
            check_host_limit(&mut tx, limit).await?;
        }
        let mut earliest: Option<Timestamp> = None;
        for write in &commit.sessions {
            match write {
                SessionWrite::Insert(s) | SessionWrite::Update(s) => {
                    if matches!(write, SessionWrite::Insert(_)) {
                        insert_session(&mut tx, s).await?;
                    } else {
                        update_session(&mut tx, s).await?;
                    }
                    upsert_participants(&mut tx, s).await?;
                    if let Some(at) = s.wake_at {
                        earliest = Some(earliest.map_or(at, |e| e.min(at)));
                    }
                }
                SessionWrite::Delete { id, version } => {
                    delete_session(&mut tx, id, *version).await?
                }
            }
        }
        if !commit.events.is_empty() {
            // Sequence numbers are handed out at insert but become visible at commit; taking
            // this lock until commit makes the two orders agree, so a reader that has seen
            // event N never later finds an N-1 it skipped (SSE and `after=` paging rely on it).
            sqlx::query("select pg_advisory_xact_lock($1)")
                .bind(EVENTS_LOCK)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            append_events(&mut tx, &commit).await?;
            announce(&mut tx, "e".into()).await?;
        }
        deliver_notifications(&mut tx, &commit).await?;
        if let Some(at) = earliest {
            announce(&mut tx, format!("d{}", at.millis())).await?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn list(&self, q: &SessionQuery) -> Result<Vec<Session>, StoreError> {
        let sql = format!(
            "select {PG_SESSION_COLUMNS} from sessions s \
             where ($1::text is null or kind = $1) and ($2::text is null or status = $2) \
             and (not $3 or status in ('pending', 'active')) and ($4::text is null or host = $4) \
             and ($5::text is null or exists (select 1 from participants p \
                  where p.session_id = s.id and p.user_id = $5)) \
             and ($6::text is null or parent = $6) and ($7::text is null or id > $7) \
             order by id limit $8"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(q.kind.as_deref())
            .bind(q.status.map(Status::as_str))
            .bind(q.open_only)
            .bind(q.host.as_ref().map(UserId::as_str))
            .bind(q.participant.as_ref().map(UserId::as_str))
            .bind(q.parent.as_ref().map(SessionId::as_str))
            .bind(q.after.as_ref().map(SessionId::as_str))
            .bind(q.limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        let mut sessions = rows
            .iter()
            .map(rows::session)
            .collect::<Result<Vec<_>, _>>()?;
        self.attach_participants(&mut sessions).await?;
        Ok(sessions)
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
        let query = if claim {
            sqlx::query(
                "with picked as ( \
                     select id from sessions \
                     where next_due_at is not null and next_due_at <= $1 \
                     and ($2::text is null or kind = $2) \
                     and ($3::bigint is null or next_due_at > $3 or (next_due_at = $3 and id > $4)) \
                     and (claimed_until is null or claimed_until < $6) \
                     order by next_due_at, id limit $5 \
                     for update skip locked) \
                 update sessions s set claimed_until = $7 from picked where s.id = picked.id \
                 returning s.id, s.next_due_at",
            )
        } else {
            sqlx::query(
                "select id, next_due_at from sessions \
                 where next_due_at is not null and next_due_at <= $1 \
                 and ($2::text is null or kind = $2) \
                 and ($3::bigint is null or next_due_at > $3 or (next_due_at = $3 and id > $4)) \
                 order by next_due_at, id limit $5",
            )
        };
        let mut query = query
            .bind(now.millis())
            .bind(kind)
            .bind(cursor.map(|c| c.at.millis()))
            .bind(cursor.map(|c| c.id.as_str()))
            .bind(limit as i64);
        if claim {
            query = query.bind(wall).bind(wall + LEASE.as_millis() as i64);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(backend)?;
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

    async fn rearm(&self, rows: &[Rearm]) -> Result<u64, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        let versions: Vec<i64> = rows.iter().map(|r| r.version).collect();
        let wakes: Vec<Option<i64>> = rows
            .iter()
            .map(|r| r.wake_at.map(Timestamp::millis))
            .collect();
        let rules: Vec<Option<&str>> = rows.iter().map(|r| r.rule.as_deref()).collect();
        let result = sqlx::query(
            "update sessions set next_due_at = b.at, next_due_rule = b.rule, claimed_until = null \
             from unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[]) as b(id, version, at, rule) \
             where sessions.id = b.id and sessions.version = b.version",
        )
        .bind(&ids)
        .bind(&versions)
        .bind(&wakes)
        .bind(&rules)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(result.rows_affected())
    }

    async fn next_deadline(&self) -> Result<Option<Timestamp>, StoreError> {
        let at: Option<i64> = sqlx::query_scalar(
            "select min(next_due_at) from sessions where next_due_at is not null",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(at.map(Timestamp::from_millis))
    }

    async fn flush_heartbeats(&self, beats: &[Beat]) -> Result<(), StoreError> {
        if beats.is_empty() {
            return Ok(());
        }
        let sessions: Vec<&str> = beats.iter().map(|b| b.session.as_str()).collect();
        let users: Vec<&str> = beats.iter().map(|b| b.user.as_str()).collect();
        let ats: Vec<i64> = beats.iter().map(|b| b.at.millis()).collect();
        // One statement: the participants, then their sessions' activity and version (so a
        // sweep decided on the older row loses its compare-and-set). No NOTIFY, no index.
        sqlx::query(
            "with b as (select * from unnest($1::text[], $2::text[], $3::bigint[]) as b(s, u, at)), \
             p as (update participants set beat_at = b.at, \
                       last_seen_at = greatest(participants.last_seen_at, b.at) \
                   from b where participants.session_id = b.s and participants.user_id = b.u \
                   and participants.state = 'joined' \
                   returning participants.session_id, b.at) \
             update sessions set last_activity_at = greatest(last_activity_at, m.at), \
                 used = true, version = version + 1 \
             from (select session_id, max(at) as at from p group by session_id) m \
             where sessions.id = m.session_id and sessions.status in ('pending', 'active')",
        )
        .bind(&sessions)
        .bind(&users)
        .bind(&ats)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn was_deleted(&self, id: &SessionId) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar(
            "select seq from events where session_id = $1 \
             and type in ('session.deleted', 'session.purged') limit 1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(found.is_some())
    }

    async fn events(&self, q: &EventQuery) -> Result<Vec<Event>, StoreError> {
        let types: Vec<&str> = q.types.iter().map(|t| t.as_str()).collect();
        let rows = sqlx::query(
            "select seq, id, type, at, applied_at, session_id, kind, actor, rule, data \
             from events where seq > $1 and ($2::text is null or kind = $2) \
             and ($3::text is null or session_id = $3) \
             and (cardinality($4::text[]) = 0 or type = any($4)) \
             order by seq limit $5",
        )
        .bind(q.after)
        .bind(q.kind.as_deref())
        .bind(q.session.as_ref().map(SessionId::as_str))
        .bind(&types)
        .bind(q.limit as i64)
        .fetch_all(&self.pool)
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
            } else if let Some(ms) = payload.strip_prefix('d').and_then(|m| m.parse().ok()) {
                seen(Change::Deadline(Timestamp::from_millis(ms)));
            }
        }
    }

    async fn due_deliveries(
        &self,
        now: Timestamp,
        limit: u32,
        claim: bool,
    ) -> Result<Vec<(Delivery, Event)>, StoreError> {
        if !claim {
            return self.pending_deliveries(now, limit).await;
        }
        let wall = wall_now();
        let ids: Vec<String> = sqlx::query_scalar(
            "with picked as ( \
                 select id from webhook_deliveries \
                 where status = 'pending' and next_attempt_at <= $1 \
                 and (claimed_until is null or claimed_until < $3) \
                 order by next_attempt_at, id limit $2 \
                 for update skip locked) \
             update webhook_deliveries d set claimed_until = $4 from picked \
             where d.id = picked.id returning d.id",
        )
        .bind(now.millis())
        .bind(limit as i64)
        .bind(wall)
        .bind(wall + LEASE.as_millis() as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let mut claimed = self.pending_deliveries(now, limit).await?;
        claimed.retain(|(d, _)| ids.contains(&d.id));
        Ok(claimed)
    }

    async fn record_attempt(&self, id: &str, attempt: &Attempt) -> Result<(), StoreError> {
        sqlx::query(
            "update webhook_deliveries set status = $2, attempts = attempts + 1, \
             next_attempt_at = $3, last_attempt_at = $4, last_status = $5, \
             last_error = $6, claimed_until = null where id = $1",
        )
        .bind(id)
        .bind(attempt.status.as_str())
        .bind(attempt.next_attempt_at.map(Timestamp::millis))
        .bind(attempt.at.millis())
        .bind(attempt.http_status.map(i64::from))
        .bind(attempt.error.as_deref())
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn disable_endpoint(
        &self,
        url: &str,
        at: Timestamp,
        reason: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        sqlx::query(
            "insert into webhook_endpoints_disabled (url, disabled_at, reason) \
             values ($1, $2, $3) on conflict (url) do nothing",
        )
        .bind(url)
        .bind(at.millis())
        .bind(reason)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        sqlx::query(
            "update webhook_deliveries set status = 'dead', next_attempt_at = null, \
             last_error = $2, claimed_until = null where endpoint = $1 and status = 'pending'",
        )
        .bind(url)
        .bind(reason)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn deliveries(
        &self,
        status: Option<DeliveryStatus>,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        let sql = format!(
            "select {DELIVERY_COLUMNS} from webhook_deliveries d \
             join events e on e.seq = d.event_seq \
             where ($1::text is null or d.status = $1) \
             order by d.created_at desc, d.id desc limit $2"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(status.map(DeliveryStatus::as_str))
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(rows::delivery).collect()
    }

    async fn retry_delivery(
        &self,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<Delivery>, StoreError> {
        sqlx::query(
            "update webhook_deliveries set status = 'pending', next_attempt_at = $2, \
             claimed_until = null where id = $1",
        )
        .bind(id)
        .bind(now.millis())
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        let sql = format!(
            "select {DELIVERY_COLUMNS} from webhook_deliveries d \
             join events e on e.seq = d.event_seq where d.id = $1"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(rows::delivery).transpose()
    }

    async fn next_delivery_at(&self) -> Result<Option<Timestamp>, StoreError> {
        let at: Option<i64> = sqlx::query_scalar(
            "select min(next_attempt_at) from webhook_deliveries where status = 'pending'",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(at.map(Timestamp::from_millis))
    }

    async fn prune(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError> {
        // Events a pending delivery still needs stay until it is done with them.
        let events = sqlx::query(
            "delete from events where seq in (select seq from events \
             where applied_at < $1 and not exists (select 1 from webhook_deliveries d \
             where d.event_seq = events.seq and d.status = 'pending') \
             order by seq limit $2)",
        )
        .bind(before.millis())
        .bind(limit as i64)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        let deliveries = sqlx::query(
            "delete from webhook_deliveries where id in (select id from webhook_deliveries \
             where created_at < $1 and status <> 'pending' limit $2)",
        )
        .bind(before.millis())
        .bind(limit as i64)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        let keys = sqlx::query("delete from idempotency_keys where created_at < $1 - 86400000")
            .bind(before.millis())
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(events.rows_affected() + deliveries.rows_affected() + keys.rows_affected())
    }

    async fn health_counts(
        &self,
        overdue_before: Timestamp,
        stale_before: Timestamp,
    ) -> Result<HealthCounts, StoreError> {
        let row = sqlx::query(
            "select \
             (select count(*) from sessions where next_due_at is not null \
                 and next_due_at < $1) as overdue, \
             (select count(*) from sessions where status = 'pending' \
                 and created_at < $2) as stale_pending, \
             (select count(*) from webhook_deliveries where status = 'pending') as pending, \
             (select count(*) from webhook_deliveries where status = 'dead') as dead",
        )
        .bind(overdue_before.millis())
        .bind(stale_before.millis())
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        let get = |c: &str| row.try_get::<i64, _>(c).map_err(backend);
        Ok(HealthCounts {
            overdue: get("overdue")?,
            stale_pending: get("stale_pending")?,
            deliveries_pending: get("pending")?,
            deliveries_dead: get("dead")?,
        })
    }

    async fn idempotent_response(
        &self,
        actor: &str,
        key: &str,
        since: Timestamp,
    ) -> Result<Option<StoredResponse>, StoreError> {
        let row = sqlx::query(
            "select request_hash, status, content_type, body, created_at from idempotency_keys \
             where actor = $1 and key = $2 and created_at >= $3",
        )
        .bind(actor)
        .bind(key)
        .bind(since.millis())
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(|r| {
            Ok(StoredResponse {
                request_hash: r.try_get("request_hash").map_err(backend)?,
                status: u16::try_from(r.try_get::<i64, _>("status").map_err(backend)?)
                    .unwrap_or(500),
                content_type: r.try_get("content_type").map_err(backend)?,
                body: r.try_get("body").map_err(backend)?,
                created_at: Timestamp::from_millis(r.try_get("created_at").map_err(backend)?),
            })
        })
        .transpose()
    }

    async fn save_idempotent_response(
        &self,
        actor: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<(), StoreError> {
        // An expired entry for the key is replaced; a live one is kept.
        sqlx::query(
            "insert into idempotency_keys (actor, key, request_hash, status, content_type, body, \
             created_at) values ($1, $2, $3, $4, $5, $6, $7) \
             on conflict (actor, key) do update set request_hash = excluded.request_hash, \
             status = excluded.status, content_type = excluded.content_type, \
             body = excluded.body, created_at = excluded.created_at \
             where idempotency_keys.created_at < $8",
        )
        .bind(actor)
        .bind(key)
        .bind(&response.request_hash)
        .bind(i64::from(response.status))
        .bind(&response.content_type)
        .bind(&response.body)
        .bind(response.created_at.millis())
        .bind(response.created_at.millis() - 24 * 3_600_000)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    fn is_shared(&self) -> bool {
        true
    }
}
