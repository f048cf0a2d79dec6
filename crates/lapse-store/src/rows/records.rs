//! Stored rows other than sessions and participants back into model values: events,
//! notifications, webhook deliveries, the rules in force, due rows, a flush's moved versions,
//! session counts, the responses kept for idempotency keys.

use lapse_core::event::{Event, EventData, EventType, Notification};
use lapse_core::store::{Delivery, DeliveryStatus, RulesInForce, StatusCount, StoredResponse};
use lapse_core::{SessionId, Status, StoreError, Timestamp, UserId};
use sqlx::Row;

use super::{corrupt, json, ts};

/// An `events` row.
pub fn event<R: Row>(row: &R) -> Result<Event, StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database>,
{
    let get_s = |c: &str| row.try_get::<String, _>(c).map_err(|e| corrupt(c, e));
    let get_i = |c: &str| row.try_get::<i64, _>(c).map_err(|e| corrupt(c, e));
    let type_text = get_s("type")?;
    Ok(Event {
        seq: get_i("seq")?,
        id: get_s("id")?,
        event_type: EventType::parse(&type_text).ok_or_else(|| corrupt("type", &type_text))?,
        at: Timestamp::from_millis(get_i("at")?),
        applied_at: Timestamp::from_millis(get_i("applied_at")?),
        session_id: SessionId::parse(&get_s("session_id")?)
            .map_err(|e| corrupt("session_id", e))?,
        kind: get_s("kind")?,
        actor: get_s("actor")?,
        rule: row
            .try_get::<Option<String>, _>("rule")
            .map_err(|e| corrupt("rule", e))?,
        data: EventData::from_text(get_s("data")?).map_err(|e| corrupt("data", e))?,
    })
}

/// A `notifications` row.
pub fn notification<R: Row>(row: &R) -> Result<Notification, StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database>,
{
    let get_s = |c: &str| row.try_get::<String, _>(c).map_err(|e| corrupt(c, e));
    Ok(Notification {
        id: get_s("id")?,
        user: UserId::parse(&get_s("user_id")?).map_err(|e| corrupt("user_id", e))?,
        notification_type: get_s("type")?,
        title: get_s("title")?,
        message: get_s("message")?,
        session: SessionId::parse(&get_s("session_id")?).map_err(|e| corrupt("session_id", e))?,
        link: row
            .try_get::<Option<String>, _>("link")
            .map_err(|e| corrupt("link", e))?,
        created_at: Timestamp::from_millis(
            row.try_get::<i64, _>("created_at")
                .map_err(|e| corrupt("created_at", e))?,
        ),
        read_at: ts(row
            .try_get::<Option<i64>, _>("read_at")
            .map_err(|e| corrupt("read_at", e))?),
    })
}

/// The `rules_in_force` row.
pub fn rules_in_force<R: Row>(row: &R) -> Result<RulesInForce, StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let get_i = |c: &str| row.try_get::<i64, _>(c).map_err(|e| corrupt(c, e));
    let version = get_i("version")?;
    Ok(RulesInForce {
        version,
        kinds: row
            .try_get::<String, _>("kinds")
            .map_err(|e| corrupt("kinds", e))?,
        updated_at: Timestamp::from_millis(get_i("updated_at")?),
        rearmed: get_i("rearmed_version")? == version,
    })
}

/// Columns of a delivery joined with its event, as [`delivery`] reads them.
pub const DELIVERY_COLUMNS: &str = "d.id as d_id, d.endpoint, d.event_seq, e.id as event_id, \
    e.type as event_type, d.status, d.attempts, d.next_attempt_at, d.last_attempt_at, \
    d.last_status, d.last_error, d.created_at as d_created_at";

/// A `webhook_deliveries` row joined with its event.
pub fn delivery<R: Row>(row: &R) -> Result<Delivery, StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database>,
{
    let get_s = |c: &str| row.try_get::<String, _>(c).map_err(|e| corrupt(c, e));
    let get_i = |c: &str| row.try_get::<i64, _>(c).map_err(|e| corrupt(c, e));
    let get_oi = |c: &str| row.try_get::<Option<i64>, _>(c).map_err(|e| corrupt(c, e));
    let status_text = get_s("status")?;
    Ok(Delivery {
        id: get_s("d_id")?,
        endpoint: get_s("endpoint")?,
        event_seq: get_i("event_seq")?,
        event_id: get_s("event_id")?,
        event_type: get_s("event_type")?,
        status: DeliveryStatus::parse(&status_text)
            .ok_or_else(|| corrupt("status", &status_text))?,
        attempts: get_i("attempts")?,
        next_attempt_at: ts(get_oi("next_attempt_at")?),
        last_attempt_at: ts(get_oi("last_attempt_at")?),
        last_status: get_oi("last_status")?,
        last_error: row
            .try_get::<Option<String>, _>("last_error")
            .map_err(|e| corrupt("last_error", e))?,
        created_at: Timestamp::from_millis(get_i("d_created_at")?),
    })
}

/// Due rows read as one JSON array of `[id, next_due_at]`.
pub fn due_rows(rows: &str) -> Result<Vec<lapse_core::store::DueRow>, StoreError> {
    let rows: Vec<(String, i64)> = json("due rows", rows)?;
    rows.into_iter()
        .map(|(id, at)| {
            Ok(lapse_core::store::DueRow {
                id: SessionId::parse(&id).map_err(|e| corrupt("session id", e))?,
                at: Timestamp::from_millis(at),
            })
        })
        .collect()
}

/// The `(id, version)` rows a heartbeat flush returns.
pub fn moved(rows: Vec<(String, i64)>) -> Result<Vec<lapse_core::store::Moved>, StoreError> {
    rows.into_iter()
        .map(|(id, version)| {
            let id = SessionId::parse(&id).map_err(|e| corrupt("session id", e))?;
            Ok(lapse_core::store::Moved { id, version })
        })
        .collect()
}

/// Sessions counted by kind and status (the same text in both dialects): every entry of
/// `sessions_kind_status` is read, so its callers read it seldom (see `Engine::counted`).
pub const COUNT_BY_KIND_AND_STATUS: &str = "select kind, status, count(*) as n from sessions \
             group by kind, status order by kind, status";

/// A row of [`COUNT_BY_KIND_AND_STATUS`].
pub fn status_count<R: Row>(row: &R) -> Result<StatusCount, StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let status: String = row.try_get("status").map_err(|e| corrupt("status", e))?;
    Ok(StatusCount {
        kind: row.try_get("kind").map_err(|e| corrupt("kind", e))?,
        status: Status::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        count: row.try_get("n").map_err(|e| corrupt("count", e))?,
    })
}

/// An `idempotency_keys` row (`request_hash, status, content_type, body, created_at`): the
/// response kept for a key.
pub fn stored_response<R: Row>(row: &R) -> Result<StoredResponse, StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let get_s = |c: &str| row.try_get::<String, _>(c).map_err(|e| corrupt(c, e));
    let get_i = |c: &str| row.try_get::<i64, _>(c).map_err(|e| corrupt(c, e));
    let status = get_i("status")?;
    Ok(StoredResponse {
        request_hash: get_s("request_hash")?,
        status: u16::try_from(status).map_err(|e| corrupt("status", e))?,
        content_type: get_s("content_type")?,
        body: get_s("body")?,
        created_at: Timestamp::from_millis(get_i("created_at")?),
    })
}
