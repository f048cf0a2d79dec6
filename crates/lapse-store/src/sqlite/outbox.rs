//! The outbox side: webhook deliveries, retention, health figures, idempotency keys.

use lapse_core::event::Event;
use lapse_core::store::{
    Attempt, Delivery, DeliveryStatus, DisabledEndpoint, HealthCounts, PruneBefore, Pruned,
    StoredResponse,
};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lapse_core::{Span, StoreError, Timestamp};
use sqlx::{AssertSqlSafe, Connection as _, Row};

use serde::Serialize;

use super::conns::Conns;
use super::values::{self, Values};
use crate::backend;
use crate::rows::{self, DELIVERY_COLUMNS};

/// Pending deliveries to endpoint `?3` due at `?1`, oldest first, at most `?2`, with their
/// events: the endpoint's first entries of `webhook_deliveries_endpoint_due`, which is in this
/// order (an index ends with the row's number). Named, because without statistics SQLite
/// prefers the status index's equality to this index's range, and then reads and sorts every
/// pending delivery for each page.
pub(super) fn due_deliveries_sql() -> String {
    format!(
        "select {DELIVERY_COLUMNS}, e.seq, e.id, e.type, e.at, e.applied_at, e.session_id, \
         e.kind, e.actor, e.rule, e.data \
         from webhook_deliveries d indexed by webhook_deliveries_endpoint_due \
         join events e on e.seq = d.event_seq \
         where d.status = 'pending' and d.endpoint = ?3 and d.next_attempt_at <= ?1 \
         order by d.next_attempt_at, d.rowid limit ?2"
    )
}

pub(super) async fn due_deliveries(
    conns: &Conns,
    endpoint: &str,
    now: Timestamp,
    limit: u32,
) -> Result<Vec<(Delivery, Event)>, StoreError> {
    let rows = sqlx::query(AssertSqlSafe(due_deliveries_sql()))
        .bind(now.millis())
        .bind(limit as i64)
        .bind(endpoint)
        .fetch_all(&mut *conns.get().await?)
        .await
        .map_err(backend)?;
    rows.iter()
        .map(|r| Ok((rows::delivery(r)?, rows::event(r)?)))
        .collect()
}

/// Deliveries handed out under a lease and not recorded since: by id, their endpoint and
/// when the lease runs out. One instance delivers from a SQLite file, so its leases live in
/// its memory; they keep a claim made while attempts are under way from handing those out
/// again, as PostgreSQL's stored leases do.
#[derive(Default)]
pub(super) struct Leases(Mutex<HashMap<String, (String, Instant)>>);

impl Leases {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, (String, Instant)>> {
        // The map holds plain values; a panic elsewhere cannot leave it inconsistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deliveries to `endpoint` due at `now`, oldest first, at most `limit`, skipping those
    /// leased; each leased for `lease` from now.
    pub(super) async fn claim(
        &self,
        conns: &Conns,
        endpoint: &str,
        now: Timestamp,
        limit: u32,
        lease: Span,
    ) -> Result<Vec<(Delivery, Event)>, StoreError> {
        let held = {
            let mut leases = self.lock();
            let wall = Instant::now();
            leases.retain(|_, (_, until)| *until > wall);
            leases.values().filter(|(url, _)| url == endpoint).count() as u32
        };
        // Enough to find `limit` past the leased ones, which may come first.
        let due = due_deliveries(conns, endpoint, now, limit.saturating_add(held)).await?;
        let wall = Instant::now();
        let until = wall + Duration::from_millis(lease.millis().max(0) as u64);
        let mut leases = self.lock();
        let mut claimed = Vec::with_capacity(due.len().min(limit as usize));
        for (delivery, event) in due {
            if claimed.len() == limit as usize {
                break;
            }
            if leases
                .get(&delivery.id)
                .is_some_and(|(_, held)| *held > wall)
            {
                continue;
            }
            leases.insert(delivery.id.clone(), (endpoint.to_string(), until));
            claimed.push((delivery, event));
        }
        Ok(claimed)
    }

    /// Ends the leases of deliveries whose attempts were recorded.
    pub(super) fn release(&self, ids: impl Iterator<Item = impl AsRef<str>>) {
        let mut leases = self.lock();
        for id in ids {
            leases.remove(id.as_ref());
        }
    }
}

/// A delivery attempt's outcome as a row of [`record_attempts_sql`].
#[derive(Default, Serialize)]
struct AttemptRow<'a> {
    id: &'a str,
    status: &'a str,
    next_attempt_at: Option<i64>,
    at: i64,
    http_status: Option<i64>,
    error: Option<&'a str>,
}

/// Attempts (`AttemptRow`s) recorded on their deliveries, found by primary key. An attempt
/// to an endpoint disabled meanwhile (by another attempt's 410) is not retried, whatever it
/// was answered.
pub(super) fn record_attempts_sql(b: &Values) -> String {
    let disabled = "b.status = 'pending' and exists (select 1 from webhook_endpoints_disabled w \
         where w.url = webhook_deliveries.endpoint)";
    format!(
        "with {} update webhook_deliveries set \
         status = case when {disabled} then 'dead' else b.status end, \
         next_attempt_at = case when {disabled} then null else b.next_attempt_at end, \
         attempts = attempts + 1, last_attempt_at = b.at, \
         last_status = b.http_status, last_error = b.error, claimed_until = null \
         from b where b.pos is not null and webhook_deliveries.id = b.id",
        b.table()
    )
}

/// The statement of [`record_attempts`] for a chunk of two rows, for the plan tests.
pub(super) fn record_attempts_statement() -> Result<String, StoreError> {
    values::for_two_rows::<AttemptRow>(record_attempts_sql)
}

/// Records attempts in one statement (a chunk of rows at a time): a step's deliveries cost
/// one round trip to the writer's thread, not one each. No transaction around it, which
/// would cost two more: each row stands alone, and a statement is atomic by itself (an
/// attempt left unrecorded is sent again, with the same webhook id).
pub(super) async fn record_attempts(
    conns: &Conns,
    attempts: &[(String, Attempt)],
) -> Result<(), StoreError> {
    if attempts.is_empty() {
        return Ok(());
    }
    let rows: Vec<AttemptRow> = attempts
        .iter()
        .map(|(id, a)| AttemptRow {
            id,
            status: a.status.as_str(),
            next_attempt_at: a.next_attempt_at.map(Timestamp::millis),
            at: a.at.millis(),
            http_status: a.http_status.map(i64::from),
            error: a.error.as_deref(),
        })
        .collect();
    values::execute(&mut *conns.get().await?, &rows, record_attempts_sql).await?;
    Ok(())
}

/// Every disabled endpoint (a handful of rows: endpoints come from the configuration).
pub(super) async fn disabled_endpoints(conns: &Conns) -> Result<Vec<DisabledEndpoint>, StoreError> {
    let rows: Vec<(String, i64, String)> = sqlx::query_as(
        "select url, disabled_at, reason from webhook_endpoints_disabled order by url",
    )
    .fetch_all(&mut *conns.get().await?)
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
    conns: &Conns,
    url: &str,
    at: Timestamp,
    reason: &str,
    attempted: &[String],
) -> Result<(), StoreError> {
    let attempted = crate::rows::to_json(&attempted);
    let mut conn = conns.get().await?;
    let mut tx = conn.begin().await.map_err(backend)?;
    sqlx::query(
        "insert into webhook_endpoints_disabled (url, disabled_at, reason) \
         values (?1, ?2, ?3) on conflict (url) do nothing",
    )
    .bind(url)
    .bind(at.millis())
    .bind(reason)
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    sqlx::query(
        "update webhook_deliveries set status = 'dead', next_attempt_at = null, \
         last_error = ?2, claimed_until = null where endpoint = ?1 and status = 'pending' \
         and id not in (select value from json_each(?3))",
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
    conns: &Conns,
    id: &str,
    now: Timestamp,
) -> Result<Option<Delivery>, StoreError> {
    sqlx::query(
        "update webhook_deliveries set status = 'pending', next_attempt_at = ?2, \
         claimed_until = null where id = ?1 and not exists \
         (select 1 from webhook_endpoints_disabled w where w.url = webhook_deliveries.endpoint)",
    )
    .bind(id)
    .bind(now.millis())
    .execute(&mut *conns.get().await?)
    .await
    .map_err(backend)?;
    let sql = format!(
        "select {DELIVERY_COLUMNS} from webhook_deliveries d \
         join events e on e.seq = d.event_seq where d.id = ?1"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conns.get().await?)
        .await
        .map_err(backend)?;
    row.as_ref().map(rows::delivery).transpose()
}

/// The endpoints of pending deliveries, each found by one seek in
/// `webhook_deliveries_endpoint_due` past the one before (not a walk of every pending one).
pub(super) const PENDING_ENDPOINTS: &str = "with recursive e(url) as ( \
       select min(endpoint) from webhook_deliveries indexed by webhook_deliveries_endpoint_due \
       where status = 'pending' \
       union all \
       select (select min(d.endpoint) \
               from webhook_deliveries d indexed by webhook_deliveries_endpoint_due \
               where d.status = 'pending' and d.endpoint > e.url) \
       from e where e.url is not null) \
     select url from e where url is not null";

pub(super) async fn pending_endpoints(conns: &Conns) -> Result<Vec<String>, StoreError> {
    sqlx::query_scalar(PENDING_ENDPOINTS)
        .fetch_all(&mut *conns.get().await?)
        .await
        .map_err(backend)
}

/// When the first pending delivery to endpoint `?1` due after `?2` is due: its first entry
/// past `?2` in `webhook_deliveries_endpoint_due`.
/// Named, as in [`due_deliveries_sql`]: through the status index it reads every pending one.
pub(super) const NEXT_DELIVERY: &str = "select min(next_attempt_at) \
     from webhook_deliveries indexed by webhook_deliveries_endpoint_due \
     where status = 'pending' and endpoint = ?1 and next_attempt_at > ?2";

pub(super) async fn next_delivery_at(
    conns: &Conns,
    endpoint: &str,
    after: Timestamp,
) -> Result<Option<Timestamp>, StoreError> {
    let at: Option<i64> = sqlx::query_scalar(NEXT_DELIVERY)
        .bind(endpoint)
        .bind(after.millis())
        .fetch_one(&mut *conns.get().await?)
        .await
        .map_err(backend)?;
    Ok(at.map(Timestamp::from_millis))
}

pub(super) async fn prune(
    conns: &Conns,
    before: &PruneBefore,
    after: i64,
    limit: u32,
) -> Result<Pruned, StoreError> {
    // Each statement takes the writer for itself: other writes pass between them.
    // The last of the events looked at, read before they are deleted.
    let last: Option<(i64, i64)> = sqlx::query_as(EVENTS_LOOKED_AT)
        .bind(after)
        .bind(i64::from(limit.max(1) - 1))
        .fetch_optional(&mut *conns.get().await?)
        .await
        .map_err(backend)?;
    let mut rows = sqlx::query(PRUNE_EVENTS)
        .bind(before.events.millis())
        .bind(i64::from(limit))
        .bind(after)
        .execute(&mut *conns.get().await?)
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
        rows += query
            .execute(&mut *conns.get().await?)
            .await
            .map_err(backend)?
            .rows_affected();
    }
    Ok(Pruned {
        rows,
        events_after: before.events_after(last.map(|(seq, at)| (seq, Timestamp::from_millis(at)))),
    })
}

/// The `?2 + 1`-th event numbered after `?1`: the last that [`PRUNE_EVENTS`] looks at, with
/// when it was applied; none when fewer are left.
pub(super) const EVENTS_LOOKED_AT: &str = "select seq, applied_at from events where seq > ?1 \
             order by seq limit 1 offset ?2";

/// Of the `?2` events numbered after `?3` (events are numbered in the order they were
/// applied), those applied before `?1` that no pending delivery still needs. It reads those
/// `?2` rows and no more, also when nothing is old enough; each one old enough is looked for
/// among the pending deliveries through `webhook_deliveries_pending`, one probe, however many
/// are waiting.
pub(super) const PRUNE_EVENTS: &str = "delete from events where seq in (select head.seq from \
             (select seq, applied_at from events where seq > ?3 order by seq limit ?2) as head \
             where head.applied_at < ?1 and not exists (select 1 from webhook_deliveries d \
             where d.event_seq = head.seq and d.status = 'pending'))";

/// Finished deliveries of one status (`?3`: `delivered`, then `dead`) recorded before
/// `?1`, oldest first, through `webhook_deliveries_status`.
pub(super) const PRUNE_DELIVERIES: &str = "delete from webhook_deliveries where id in \
             (select id from webhook_deliveries where status = ?3 and created_at < ?1 \
             order by created_at limit ?2)";

/// Users' notifications made before `?1`, oldest first, through `notifications_created`.
pub(super) const PRUNE_NOTIFICATIONS: &str = "delete from notifications where rowid in \
             (select rowid from notifications where created_at < ?1 \
             order by created_at limit ?2)";

/// Idempotency keys saved before `?1`, oldest first, through `idempotency_keys_created`.
pub(super) const PRUNE_KEYS: &str = "delete from idempotency_keys where rowid in \
             (select rowid from idempotency_keys where created_at < ?1 \
             order by created_at limit ?2)";

/// Rewrites the one row of `write_check`.
pub(super) async fn write_check(conns: &Conns, at: Timestamp) -> Result<(), StoreError> {
    sqlx::query(
        "insert into write_check (id, at) values (1, ?1) \
         on conflict (id) do update set at = excluded.at",
    )
    .bind(at.millis())
    .execute(&mut *conns.get().await?)
    .await
    .map_err(backend)?;
    Ok(())
}

pub(super) async fn health_counts(
    conns: &Conns,
    overdue_before: Timestamp,
    stale_before: Timestamp,
) -> Result<HealthCounts, StoreError> {
    let row = sqlx::query(
        "select \
         (select count(*) from sessions where next_due_at is not null \
             and next_due_at < ?1) as overdue, \
         (select count(*) from sessions where status = 'pending' \
             and created_at < ?2) as stale_pending, \
         (select count(*) from webhook_deliveries where status = 'pending') as pending, \
         (select count(*) from webhook_deliveries where status = 'dead') as dead",
    )
    .bind(overdue_before.millis())
    .bind(stale_before.millis())
    .fetch_one(&mut *conns.get().await?)
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
    conns: &Conns,
    actor: &str,
    key: &str,
    since: Timestamp,
) -> Result<Option<StoredResponse>, StoreError> {
    let row = sqlx::query(
        "select request_hash, status, content_type, body, created_at from idempotency_keys \
         where actor = ?1 and key = ?2 and created_at >= ?3",
    )
    .bind(actor)
    .bind(key)
    .bind(since.millis())
    .fetch_optional(&mut *conns.get().await?)
    .await
    .map_err(backend)?;
    row.as_ref().map(rows::stored_response).transpose()
}

pub(super) async fn save_idempotent_response(
    conns: &Conns,
    actor: &str,
    key: &str,
    response: &StoredResponse,
) -> Result<(), StoreError> {
    // An expired entry for the key is replaced; a live one is kept.
    sqlx::query(
        "insert into idempotency_keys (actor, key, request_hash, status, content_type, body, \
         created_at) values (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         on conflict (actor, key) do update set request_hash = excluded.request_hash, \
         status = excluded.status, content_type = excluded.content_type, \
         body = excluded.body, created_at = excluded.created_at \
         where idempotency_keys.created_at < ?8",
    )
    .bind(actor)
    .bind(key)
    .bind(&response.request_hash)
    .bind(i64::from(response.status))
    .bind(&response.content_type)
    .bind(&response.body)
    .bind(response.created_at.millis())
    .bind(response.created_at.millis() - 24 * 3_600_000)
    .execute(&mut *conns.get().await?)
    .await
    .map_err(backend)?;
    Ok(())
}
