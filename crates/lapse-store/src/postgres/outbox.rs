//! The outbox side: webhook deliveries (leased like due sessions), retention, health
//! figures, idempotency keys.

use lapse_core::event::Event;
use lapse_core::store::{
    Attempt, Delivery, DeliveryStatus, DisabledEndpoint, HealthCounts, PruneBefore, Pruned,
    StoredResponse,
};
use lapse_core::{Span, StoreError, Timestamp};
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Row};

use super::leases::wall_now;
use crate::rows::{self, DELIVERY_COLUMNS};
use crate::{backend, statements};

/// Pending deliveries to `endpoint` due at `now`, with their events, oldest first.
async fn pending_deliveries(
    pool: &PgPool,
    endpoint: &str,
    now: Timestamp,
    limit: u32,
) -> Result<Vec<(Delivery, Event)>, StoreError> {
    let sql = format!(
        "select {DELIVERY_COLUMNS}, e.seq, e.id, e.type, e.at, e.applied_at, e.session_id, \
         e.kind, e.actor, e.rule, e.data \
         from webhook_deliveries d join events e on e.seq = d.event_seq \
         where d.status = 'pending' and d.endpoint = $3 and d.next_attempt_at <= $1 \
         order by d.next_attempt_at, d.event_seq limit $2"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(now.millis())
        .bind(limit as i64)
        .bind(endpoint)
        .fetch_all(pool)
        .await
        .map_err(backend)?;
    rows.iter()
        .map(|r| Ok((rows::delivery(r)?, rows::event(r)?)))
        .collect()
}

/// Claims for holder `$4` until `$3` the pending deliveries to endpoint `$5` due at `$1` that
/// no live holder has leased at `$2`, oldest first, at most `limit`, and returns them with
/// their events.
/// The rows claimed, and only those, come back: the claim skips rows other instances hold, so
/// the first due rows are not necessarily this instance's. `webhook_deliveries_endpoint_due`
/// is in the claim's order within each endpoint, so a claim reads the endpoint's first
/// entries. The limit is written into the statement: a generic plan guesses a limit given as a parameter at a tenth of the due
/// rows, and for that many joins the claimed rows to whole tables.
pub(super) fn claim_deliveries_sql(limit: u32) -> String {
    format!(
        "with picked as ( \
             select id from webhook_deliveries \
             where status = 'pending' and endpoint = $5 and next_attempt_at <= $1 and {} \
             order by next_attempt_at, event_seq limit {limit} \
             for update skip locked), \
         claimed as ( \
             update webhook_deliveries d set claimed_until = $3, claimed_by = $4 from picked \
             where d.id = picked.id returning d.*) \
         select {DELIVERY_COLUMNS}, e.seq, e.id, e.type, e.at, e.applied_at, e.session_id, \
         e.kind, e.actor, e.rule, e.data \
         from claimed d join events e on e.seq = d.event_seq \
         order by d.next_attempt_at, d.event_seq",
        statements::unleased("$2")
    )
}

pub(super) async fn due_deliveries(
    pool: &PgPool,
    endpoint: &str,
    now: Timestamp,
    limit: u32,
    claim: Option<(i32, Span)>,
) -> Result<Vec<(Delivery, Event)>, StoreError> {
    let Some((holder, lease)) = claim else {
        return pending_deliveries(pool, endpoint, now, limit).await;
    };
    let wall = wall_now();
    let rows = sqlx::query(AssertSqlSafe(claim_deliveries_sql(limit)))
        .bind(now.millis())
        .bind(wall)
        .bind(wall.saturating_add(lease.millis()))
        .bind(holder)
        .bind(endpoint)
        .fetch_all(pool)
        .await
        .map_err(backend)?;
    rows.iter()
        .map(|r| Ok((rows::delivery(r)?, rows::event(r)?)))
        .collect()
}

/// Attempts recorded on their deliveries, found by primary key: one statement for a step's
/// attempts, each column an array. An attempt to an endpoint disabled meanwhile (by another
/// attempt's 410) is not retried, whatever it was answered.
pub(super) const RECORD_ATTEMPTS: &str = "update webhook_deliveries d set \
     status = case when b.status = 'pending' and exists \
       (select 1 from webhook_endpoints_disabled w where w.url = d.endpoint) \
       then 'dead' else b.status end, \
     next_attempt_at = case when b.status = 'pending' and exists \
       (select 1 from webhook_endpoints_disabled w where w.url = d.endpoint) \
       then null else b.next_at end, \
     attempts = d.attempts + 1, last_attempt_at = b.at, \
     last_status = b.http_status, last_error = b.error, claimed_until = null \
     from unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::text[]) \
     as b(id, status, next_at, at, http_status, error) \
     where d.id = b.id";

pub(super) async fn record_attempts(
    pool: &PgPool,
    attempts: &[(String, Attempt)],
) -> Result<(), StoreError> {
    if attempts.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&Attempt) -> Option<i64>| attempts.iter().map(|(_, a)| f(a)).collect();
    let ids: Vec<&str> = attempts.iter().map(|(id, _)| id.as_str()).collect();
    let statuses: Vec<&str> = attempts.iter().map(|(_, a)| a.status.as_str()).collect();
    let next: Vec<Option<i64>> = column(|a| a.next_attempt_at.map(Timestamp::millis));
    let at: Vec<i64> = attempts.iter().map(|(_, a)| a.at.millis()).collect();
    let http: Vec<Option<i64>> = column(|a| a.http_status.map(i64::from));
    let errors: Vec<Option<&str>> = attempts.iter().map(|(_, a)| a.error.as_deref()).collect();
    sqlx::query(RECORD_ATTEMPTS)
        .bind(ids)
        .bind(statuses)
        .bind(next)
        .bind(at)
        .bind(http)
        .bind(errors)
        .execute(pool)
        .await
        .map_err(backend)?;
    Ok(())
}

/// Every disabled endpoint (a handful of rows: endpoints come from the configuration).
pub(super) async fn disabled_endpoints(pool: &PgPool) -> Result<Vec<DisabledEndpoint>, StoreError> {
    let rows: Vec<(String, i64, String)> = sqlx::query_as(
        "select url, disabled_at, reason from webhook_endpoints_disabled order by url",
    )
    .fetch_all(pool)
    .await
    .map_err(backend)?;
    Ok(rows
        .into_iter()
        .map(|(url, at, reason)| DisabledEndpoint {
            url,
            at: Timestamp::from_millis(at),
            reason,
        })
        .collect())
}

pub(super) async fn disable_endpoint(
    pool: &PgPool,
    url: &str,
    at: Timestamp,
    reason: &str,
    attempted: &[String],
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await.map_err(backend)?;
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
         last_error = $2, claimed_until = null \
         where endpoint = $1 and status = 'pending' and not (id = any($3::text[]))",
    )
    .bind(url)
    .bind(reason)
    .bind(attempted)
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    tx.commit().await.map_err(backend)
}

pub(super) async fn retry_delivery(
    pool: &PgPool,
    id: &str,
    now: Timestamp,
) -> Result<Option<Delivery>, StoreError> {
    sqlx::query(
        "update webhook_deliveries set status = 'pending', next_attempt_at = $2, \
         claimed_until = null where id = $1 and not exists \
         (select 1 from webhook_endpoints_disabled w where w.url = webhook_deliveries.endpoint)",
    )
    .bind(id)
    .bind(now.millis())
    .execute(pool)
    .await
    .map_err(backend)?;
    let sql = format!(
        "select {DELIVERY_COLUMNS} from webhook_deliveries d \
         join events e on e.seq = d.event_seq where d.id = $1"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(backend)?;
    row.as_ref().map(rows::delivery).transpose()
}

/// The endpoints of pending deliveries, each found by one seek in
/// `webhook_deliveries_endpoint_due` past the one before (not a walk of every pending one).
pub(super) const PENDING_ENDPOINTS: &str = "with recursive e(url) as ( \
       select min(endpoint) from webhook_deliveries where status = 'pending' \
       union all \
       select (select min(d.endpoint) from webhook_deliveries d \
               where d.status = 'pending' and d.endpoint > e.url) \
       from e where e.url is not null) \
     select url from e where url is not null";

pub(super) async fn pending_endpoints(pool: &PgPool) -> Result<Vec<String>, StoreError> {
    sqlx::query_scalar(PENDING_ENDPOINTS)
        .fetch_all(pool)
        .await
        .map_err(backend)
}

/// When the first pending delivery to endpoint `$1` due after `$2` is due: its first entry
/// past `$2` in `webhook_deliveries_endpoint_due`.
pub(super) const NEXT_DELIVERY: &str = "select min(next_attempt_at) from webhook_deliveries \
     where status = 'pending' and endpoint = $1 and next_attempt_at > $2";

pub(super) async fn next_delivery_at(
    pool: &PgPool,
    endpoint: &str,
    after: Timestamp,
) -> Result<Option<Timestamp>, StoreError> {
    let at: Option<i64> = sqlx::query_scalar(NEXT_DELIVERY)
        .bind(endpoint)
        .bind(after.millis())
        .fetch_one(pool)
        .await
        .map_err(backend)?;
    Ok(at.map(Timestamp::from_millis))
}

pub(super) async fn prune(
    pool: &PgPool,
    before: &PruneBefore,
    after: i64,
    limit: u32,
) -> Result<Pruned, StoreError> {
    // The last of the events looked at, read before they are deleted.
    let last: Option<(i64, i64)> = sqlx::query_as(EVENTS_LOOKED_AT)
        .bind(after)
        .bind(i64::from(limit.max(1) - 1))
        .fetch_optional(pool)
        .await
        .map_err(backend)?;
    let mut rows = sqlx::query(PRUNE_EVENTS)
        .bind(before.events.millis())
        .bind(i64::from(limit))
        .bind(after)
        .execute(pool)
        .await
        .map_err(backend)?
        .rows_affected();
    for (sql, before, status) in [
        (
            PRUNE_DELIVERIES,
            before.events,
            Some(DeliveryStatus::Delivered),
        ),
        (PRUNE_DELIVERIES, before.events, Some(DeliveryStatus::Dead)),
        (PRUNE_NOTIFICATIONS, before.notifications, None),
        (PRUNE_KEYS, before.keys, None),
    ] {
        let mut query = sqlx::query(sql)
            .bind(before.millis())
            .bind(i64::from(limit));
        if let Some(status) = status {
            query = query.bind(status.as_str());
        }
        rows += query.execute(pool).await.map_err(backend)?.rows_affected();
    }
    Ok(Pruned {
        rows,
        events_after: before.events_after(last.map(|(seq, at)| (seq, Timestamp::from_millis(at)))),
    })
}

/// The `$2 + 1`-th event numbered after `$1`: the last that [`PRUNE_EVENTS`] looks at, with
/// when it was applied; none when fewer are left.
pub(super) const EVENTS_LOOKED_AT: &str = "select seq, applied_at from events where seq > $1 \
             order by seq limit 1 offset $2";

/// Of the `$2` events numbered after `$3` (events are numbered in the order they were
/// committed), those applied before `$1` that no pending delivery still needs, found by
/// their keys. It reads those `$2` rows and no more, also when nothing is old enough; each
/// one old enough is looked for among the pending deliveries through
/// `webhook_deliveries_pending`, one probe, however many are waiting. (`offset 0` keeps it a
/// probe per event: the planner would otherwise make the check a join that hashes every
/// pending delivery, from a scan of the whole table when most deliveries are pending.)
pub(super) const PRUNE_EVENTS: &str = "delete from events where seq = any(array(select head.seq \
             from (select seq, applied_at from events where seq > $3 order by seq limit $2) \
             as head where head.applied_at < $1 and not exists (select 1 \
             from webhook_deliveries d where d.event_seq = head.seq \
             and d.status = 'pending' offset 0)))";

/// Finished deliveries of one status (`$3`: `delivered`, then `dead`) recorded before
/// `$1`, oldest first, through `webhook_deliveries_status`, then each by its key (as an
/// array: a list from a subquery, the planner would hash and match against the whole table).
pub(super) const PRUNE_DELIVERIES: &str = "delete from webhook_deliveries where id = \
             any(array(select id from webhook_deliveries where status = $3 \
             and created_at < $1 order by created_at limit $2))";

/// Users' notifications made before `$1`, oldest first, through `notifications_created`,
/// then each where it lies (its `ctid`, as an array, for the reason above).
pub(super) const PRUNE_NOTIFICATIONS: &str = "delete from notifications where ctid = \
             any(array(select ctid from notifications where created_at < $1 \
             order by created_at limit $2))";

/// Idempotency keys saved before `$1`, oldest first, through `idempotency_keys_created`,
/// then each where it lies (its `ctid`, as an array, for the reason above).
pub(super) const PRUNE_KEYS: &str = "delete from idempotency_keys where ctid = \
             any(array(select ctid from idempotency_keys where created_at < $1 \
             order by created_at limit $2))";

/// Rewrites the one row of `write_check`.
pub(super) async fn write_check(pool: &PgPool, at: Timestamp) -> Result<(), StoreError> {
    sqlx::query(
        "insert into write_check (id, at) values (1, $1) \
         on conflict (id) do update set at = excluded.at",
    )
    .bind(at.millis())
    .execute(pool)
    .await
    .map_err(backend)?;
    Ok(())
}

pub(super) async fn health_counts(
    pool: &PgPool,
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
    .fetch_one(pool)
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

pub(super) async fn idempotent_response(
    pool: &PgPool,
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
    .fetch_optional(pool)
    .await
    .map_err(backend)?;
    row.as_ref().map(rows::stored_response).transpose()
}

pub(super) async fn save_idempotent_response(
    pool: &PgPool,
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
    .execute(pool)
    .await
    .map_err(backend)?;
    Ok(())
}
