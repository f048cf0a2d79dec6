//! Reads on PostgreSQL, each one statement on the pool: sessions (one with its participants,
//! by id, by page, by parent), events, notifications, counts and the delivery log. Due rows
//! are in `leases.rs`, since claiming them writes.

use lapse_core::event::{Event, Notification};
use lapse_core::session::Session;
use lapse_core::store::{Delivery, DeliveryStatus, EventQuery, SessionQuery, StatusCount};
use lapse_core::{SessionId, StoreError, Timestamp, UserId};
use sqlx::postgres::{PgArguments, PgPool};
use sqlx::{AssertSqlSafe, Postgres, Row};

use crate::backend;
use crate::rows::{self, PG_SESSION_COLUMNS};
use crate::statements::{self, Arg, Dialect, Statement};

/// A session's version, through the primary key.
pub(super) const SESSION_VERSION: &str = "select version from sessions where id = $1";

/// The earliest stored deadline, from the end of the deadline index.
pub(super) const NEXT_DEADLINE: &str =
    "select min(next_due_at) from sessions where next_due_at is not null";

/// Whether a session was deleted, from its events.
pub(super) const WAS_DELETED: &str = "select seq from events where session_id = $1 \
             and type in ('session.deleted', 'session.purged') limit 1";

/// A user's notifications, newest first, through `notifications_user`.
pub(super) const NOTIFICATIONS: &str = "select id, user_id, type, title, message, session_id, \
             link, created_at, read_at from notifications where user_id = $1 \
             order by created_at desc, id desc limit $2";

/// A user's unread notifications, newest first, through `notifications_user`.
pub(super) const UNREAD_NOTIFICATIONS: &str = "select id, user_id, type, title, message, \
             session_id, link, created_at, read_at from notifications \
             where user_id = $1 and read_at is null order by created_at desc, id desc limit $2";

/// One statement, the session with its participants: one round trip and one snapshot
/// instead of two. (Pages of sessions, as a sweep reads them, keep two statements:
/// measured, one building each session's participants in the server swept slower.)
pub(super) async fn load(pool: &PgPool, id: &SessionId) -> Result<Option<Session>, StoreError> {
    let st = statements::pg_session_with_participants(PG_SESSION_COLUMNS, id.to_string());
    let Some(row) = query(&st).fetch_optional(pool).await.map_err(backend)? else {
        return Ok(None);
    };
    let mut session = rows::session(&row)?;
    let participants: String = row.try_get("participants").map_err(backend)?;
    rows::attach_participants_json(std::slice::from_mut(&mut session), &participants)?;
    Ok(Some(session))
}

/// Sessions by id (any order; missing ones are left out), with their participants.
pub(super) async fn sessions_by_id(
    pool: &PgPool,
    ids: &[SessionId],
) -> Result<Vec<Session>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let ids = ids.iter().map(SessionId::to_string).collect();
    let st = statements::sessions_by_id(Dialect::Postgres, PG_SESSION_COLUMNS, ids);
    fetch_sessions(pool, &st).await
}

pub(super) async fn version(pool: &PgPool, id: &SessionId) -> Result<Option<i64>, StoreError> {
    sqlx::query_scalar(SESSION_VERSION)
        .bind(id.as_str())
        .fetch_optional(pool)
        .await
        .map_err(backend)
}

pub(super) async fn open_children(
    pool: &PgPool,
    parents: &[SessionId],
) -> Result<Vec<Session>, StoreError> {
    if parents.is_empty() {
        return Ok(Vec::new());
    }
    let parents = parents.iter().map(SessionId::to_string).collect();
    let st = statements::open_children(Dialect::Postgres, PG_SESSION_COLUMNS, parents);
    fetch_sessions(pool, &st).await
}

pub(super) async fn list(pool: &PgPool, q: &SessionQuery) -> Result<Vec<Session>, StoreError> {
    let st = statements::list_sessions(Dialect::Postgres, PG_SESSION_COLUMNS, q);
    fetch_sessions(pool, &st).await
}

/// The sessions `st` selects, then their participants.
async fn fetch_sessions(pool: &PgPool, st: &Statement) -> Result<Vec<Session>, StoreError> {
    let rows = query(st).fetch_all(pool).await.map_err(backend)?;
    let mut sessions = rows
        .iter()
        .map(rows::session)
        .collect::<Result<Vec<_>, _>>()?;
    if sessions.is_empty() {
        return Ok(sessions);
    }
    let ids = sessions.iter().map(|s| s.id.to_string()).collect();
    let st = statements::participants_of(Dialect::Postgres, ids);
    let rows = query(&st).fetch_all(pool).await.map_err(backend)?;
    rows::attach_participants(&mut sessions, &rows)?;
    Ok(sessions)
}

pub(super) async fn count_due(
    pool: &PgPool,
    now: Timestamp,
    kind: Option<&str>,
) -> Result<u64, StoreError> {
    let st = statements::count_due(Dialect::Postgres, now.millis(), kind);
    let row = query(&st).fetch_one(pool).await.map_err(backend)?;
    let n: i64 = row.try_get("n").map_err(backend)?;
    Ok(n.max(0) as u64)
}

pub(super) async fn next_deadline(pool: &PgPool) -> Result<Option<Timestamp>, StoreError> {
    let at: Option<i64> = sqlx::query_scalar(NEXT_DEADLINE)
        .fetch_one(pool)
        .await
        .map_err(backend)?;
    Ok(at.map(Timestamp::from_millis))
}

pub(super) async fn was_deleted(pool: &PgPool, id: &SessionId) -> Result<bool, StoreError> {
    let found: Option<i64> = sqlx::query_scalar(WAS_DELETED)
        .bind(id.as_str())
        .fetch_optional(pool)
        .await
        .map_err(backend)?;
    Ok(found.is_some())
}

pub(super) async fn last_event_seq(pool: &PgPool) -> Result<i64, StoreError> {
    sqlx::query_scalar("select coalesce(max(seq), 0) from events")
        .fetch_one(pool)
        .await
        .map_err(backend)
}

pub(super) async fn events(pool: &PgPool, q: &EventQuery) -> Result<Vec<Event>, StoreError> {
    let st = statements::events_page(Dialect::Postgres, q);
    let rows = query(&st).fetch_all(pool).await.map_err(backend)?;
    rows.iter().map(rows::event).collect()
}

pub(super) async fn notifications(
    pool: &PgPool,
    user: &UserId,
    unread_only: bool,
    limit: u32,
) -> Result<Vec<Notification>, StoreError> {
    let sql = if unread_only {
        UNREAD_NOTIFICATIONS
    } else {
        NOTIFICATIONS
    };
    let rows = sqlx::query(sql)
        .bind(user.as_str())
        .bind(limit as i64)
        .fetch_all(pool)
        .await
        .map_err(backend)?;
    rows.iter().map(rows::notification).collect()
}

pub(super) async fn counts(pool: &PgPool) -> Result<Vec<StatusCount>, StoreError> {
    let rows = sqlx::query(rows::COUNT_BY_KIND_AND_STATUS)
        .fetch_all(pool)
        .await
        .map_err(backend)?;
    rows.iter().map(rows::status_count).collect()
}

pub(super) async fn deliveries(
    pool: &PgPool,
    status: Option<DeliveryStatus>,
    limit: u32,
) -> Result<Vec<Delivery>, StoreError> {
    let st = statements::deliveries_page(Dialect::Postgres, status, limit);
    let rows = query(&st).fetch_all(pool).await.map_err(backend)?;
    rows.iter().map(rows::delivery).collect()
}

/// Binds a built statement's values.
pub(super) fn query(st: &Statement) -> sqlx::query::Query<'static, Postgres, PgArguments> {
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
