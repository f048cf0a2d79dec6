//! Reads on SQLite, each on a reader connection: sessions (by id, by page, by parent), what
//! is due, events, notifications, counts and the delivery log.

use lapse_core::event::{Event, Notification};
use lapse_core::session::Session;
use lapse_core::store::{Delivery, DeliveryStatus, DueRow, EventQuery, SessionQuery, StatusCount};
use lapse_core::{SessionId, StoreError, Timestamp, UserId};
use sqlx::sqlite::SqliteArguments;
use sqlx::{AssertSqlSafe, Row, Sqlite};

use super::conns::Conns;
use crate::backend;
use crate::rows::{self, SESSION_COLUMNS, to_json};
use crate::statements::{self, Arg, Dialect, Statement};

/// A session's version, through the primary key.
pub(super) const SESSION_VERSION: &str = "select version from sessions where id = ?1";

/// The earliest stored deadline, from the end of the deadline index.
pub(super) const NEXT_DEADLINE: &str =
    "select min(next_due_at) from sessions where next_due_at is not null";

/// Whether a session was deleted, from its events.
pub(super) const WAS_DELETED: &str = "select seq from events where session_id = ?1 \
             and type in ('session.deleted', 'session.purged') limit 1";

/// A user's notifications, newest first, through `notifications_user`.
pub(super) const NOTIFICATIONS: &str = "select id, user_id, type, title, message, session_id, \
             link, created_at, read_at from notifications where user_id = ?1 \
             order by created_at desc, id desc limit ?2";

/// A user's unread notifications, newest first, through `notifications_user`.
pub(super) const UNREAD_NOTIFICATIONS: &str = "select id, user_id, type, title, message, \
             session_id, link, created_at, read_at from notifications \
             where user_id = ?1 and read_at is null order by created_at desc, id desc limit ?2";

/// Sessions by id (any order; missing ones are left out), with their participants.
pub(super) async fn sessions_by_id(
    reader: &Conns,
    ids: &[SessionId],
) -> Result<Vec<Session>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = ids.iter().map(SessionId::to_string).collect();
    let st = statements::sessions_with_participants(rows::SESSIONS_AS_JSON, ids);
    let (sessions, participants): (String, String) =
        sqlx::query_as_with(AssertSqlSafe(st.sql.clone()), arguments(&st))
            .fetch_one(&mut *reader.get().await?)
            .await
            .map_err(backend)?;
    let mut sessions = rows::sessions_json(&sessions)?;
    rows::attach_participants_json(&mut sessions, &participants)?;
    Ok(sessions)
}

pub(super) async fn version(reader: &Conns, id: &SessionId) -> Result<Option<i64>, StoreError> {
    sqlx::query_scalar(SESSION_VERSION)
        .bind(id.as_str())
        .fetch_optional(&mut *reader.get().await?)
        .await
        .map_err(backend)
}

pub(super) async fn open_children(
    reader: &Conns,
    parents: &[SessionId],
) -> Result<Vec<Session>, StoreError> {
    if parents.is_empty() {
        return Ok(Vec::new());
    }
    let parents = parents.iter().map(SessionId::to_string).collect();
    let st = statements::open_children(Dialect::Sqlite, rows::SESSIONS_AS_JSON, parents);
    // Selected as one JSON array ([`rows::SESSIONS_AS_JSON`]).
    let rows: String = query_scalar(&st)
        .fetch_one(&mut *reader.get().await?)
        .await
        .map_err(backend)?;
    let mut sessions = rows::sessions_json(&rows)?;
    attach_participants(reader, &mut sessions).await?;
    Ok(sessions)
}

pub(super) async fn list(reader: &Conns, q: &SessionQuery) -> Result<Vec<Session>, StoreError> {
    let st = statements::list_sessions(Dialect::Sqlite, SESSION_COLUMNS, q);
    let rows = query(&st)
        .fetch_all(&mut *reader.get().await?)
        .await
        .map_err(backend)?;
    let mut sessions = rows
        .iter()
        .map(rows::session)
        .collect::<Result<Vec<_>, _>>()?;
    attach_participants(reader, &mut sessions).await?;
    Ok(sessions)
}

async fn attach_participants(reader: &Conns, sessions: &mut [Session]) -> Result<(), StoreError> {
    if sessions.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = sessions.iter().map(|s| s.id.to_string()).collect();
    let st = statements::participants_of(Dialect::Sqlite, ids);
    let rows: String = query_scalar(&st)
        .fetch_one(&mut *reader.get().await?)
        .await
        .map_err(backend)?;
    rows::attach_participants_json(sessions, &rows)
}

pub(super) async fn due(
    reader: &Conns,
    now: Timestamp,
    kind: Option<&str>,
    cursor: Option<&DueRow>,
    limit: u32,
) -> Result<Vec<DueRow>, StoreError> {
    let st = statements::due_sessions(Dialect::Sqlite, now.millis(), kind, cursor, limit, None);
    let rows: String = query_scalar(&st)
        .fetch_one(&mut *reader.get().await?)
        .await
        .map_err(backend)?;
    rows::due_rows(&rows)
}

pub(super) async fn count_due(
    reader: &Conns,
    now: Timestamp,
    kind: Option<&str>,
) -> Result<u64, StoreError> {
    let st = statements::count_due(Dialect::Sqlite, now.millis(), kind);
    let row = query(&st)
        .fetch_one(&mut *reader.get().await?)
        .await
        .map_err(backend)?;
    let n: i64 = row.try_get("n").map_err(backend)?;
    Ok(n.max(0) as u64)
}

pub(super) async fn next_deadline(reader: &Conns) -> Result<Option<Timestamp>, StoreError> {
    let at: Option<i64> = sqlx::query_scalar(NEXT_DEADLINE)
        .fetch_one(&mut *reader.get().await?)
        .await
        .map_err(backend)?;
    Ok(at.map(Timestamp::from_millis))
}

pub(super) async fn was_deleted(reader: &Conns, id: &SessionId) -> Result<bool, StoreError> {
    let found: Option<i64> = sqlx::query_scalar(WAS_DELETED)
        .bind(id.as_str())
        .fetch_optional(&mut *reader.get().await?)
        .await
        .map_err(backend)?;
    Ok(found.is_some())
}

pub(super) async fn last_event_seq(reader: &Conns) -> Result<i64, StoreError> {
    sqlx::query_scalar("select coalesce(max(seq), 0) from events")
        .fetch_one(&mut *reader.get().await?)
        .await
        .map_err(backend)
}

pub(super) async fn events(reader: &Conns, q: &EventQuery) -> Result<Vec<Event>, StoreError> {
    let st = statements::events_page(Dialect::Sqlite, q);
    let rows = query(&st)
        .fetch_all(&mut *reader.get().await?)
        .await
        .map_err(backend)?;
    rows.iter().map(rows::event).collect()
}

pub(super) async fn notifications(
    reader: &Conns,
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
        .fetch_all(&mut *reader.get().await?)
        .await
        .map_err(backend)?;
    rows.iter().map(rows::notification).collect()
}

pub(super) async fn counts(reader: &Conns) -> Result<Vec<StatusCount>, StoreError> {
    let rows = sqlx::query(rows::COUNT_BY_KIND_AND_STATUS)
        .fetch_all(&mut *reader.get().await?)
        .await
        .map_err(backend)?;
    rows.iter().map(rows::status_count).collect()
}

pub(super) async fn deliveries(
    reader: &Conns,
    status: Option<DeliveryStatus>,
    limit: u32,
) -> Result<Vec<Delivery>, StoreError> {
    let st = statements::deliveries_page(Dialect::Sqlite, status, limit);
    let rows = query(&st)
        .fetch_all(&mut *reader.get().await?)
        .await
        .map_err(backend)?;
    rows.iter().map(rows::delivery).collect()
}

/// Binds a built statement's values.
pub(super) fn query(st: &Statement) -> sqlx::query::Query<'static, Sqlite, SqliteArguments> {
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
