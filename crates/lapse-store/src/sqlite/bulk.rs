//! Writes in bulk: a run of a sweep's single-update commits as a few set-based statements
//! over values lists, and sessions imported by the thousand.

use lapse_core::store::Commit;
use lapse_core::{Session, StoreError};
use sqlx::{AssertSqlSafe, Connection as _, Sqlite, Transaction};

use super::conns::Conns;
use super::values::{self, Values};
use crate::rows::{IMPORT_PARTICIPANT_COLUMNS, IMPORT_SESSION_COLUMNS, import_rows};
use crate::{backend, batch};

/// Sessions in bulk (see `Store::import`): two statements per chunk.
pub(super) async fn import(conns: &Conns, sessions: &[Session]) -> Result<u64, StoreError> {
    let mut inserted = 0;
    for chunk in sessions.chunks(IMPORT_CHUNK) {
        let (rows, participants) = import_rows(chunk);
        let mut conn = conns.get().await?;
        let mut tx = conn.begin().await.map_err(backend)?;
        let select = |cols: &str| {
            cols.split(", ")
                .map(|c| format!("value ->> '{c}'"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let sql = format!(
            "insert into sessions ({IMPORT_SESSION_COLUMNS}, host_limited, version) \
             select {}, 0, 1 from jsonb_each(?1) where true on conflict (id) do nothing",
            select(IMPORT_SESSION_COLUMNS)
        );
        let result = sqlx::query(AssertSqlSafe(sql))
            .bind(rows)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        inserted += result.rows_affected();
        let sql = format!(
            "insert into participants ({IMPORT_PARTICIPANT_COLUMNS}) \
             select {} from jsonb_each(?1) where true on conflict do nothing",
            select(IMPORT_PARTICIPANT_COLUMNS)
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(participants)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
    }
    Ok(inserted)
}

/// Sessions per import transaction.
const IMPORT_CHUNK: usize = 5_000;

/// A run of single-update commits' rows (see `batch`) in four statements, each over the run's
/// rows bound as `values` lists (see `values`; a statement per chunk of up to 256 rows).
pub(super) async fn write_updates(
    tx: &mut Transaction<'_, Sqlite>,
    run: &[&Commit],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    // Which rows will lose their compare-and-set, and which keep their stored status and
    // wake-up, read first: this connection is the only writer, so nothing moves between the
    // two statements (and were another process to write in between, SQLite refuses a write
    // on the older snapshot rather than commit it), and the updates then return no rows
    // (each would cross from SQLite's thread on its own).
    let mut stale = std::collections::HashSet::new();
    let mut keeping = std::collections::HashSet::new();
    let keys = batch::session_keys(run);
    for found in values::select_text(tx, &keys, stored_states).await? {
        let found: StoredStates = serde_json::from_str(&found)
            .map_err(|e| StoreError::Backend(format!("stored sessions unreadable: {e}")))?;
        stale.extend(found.stale);
        keeping.extend(found.keeping);
    }
    // As for one row (`UPDATE_KEEPING_WAKE`): rows that keep both are written naming neither,
    // so their index entries stay where they are.
    let (kept, rest) = batch::split(run, &keeping);
    let written = values::execute(tx, &batch::session_rows(&kept), update_sessions_keeping).await?
        + values::execute(tx, &batch::session_rows(&rest), update_sessions).await?;
    let won = batch::won_unless(run, &stale);
    // What was read above held (see there); were it ever not to, the batch fails whole rather
    // than answer for a row it did not write.
    if written != won.len() as u64 {
        return Err(StoreError::Backend(format!(
            "a batch wrote {written} of the {} session rows it checked",
            won.len()
        )));
    }

    let (outcomes, participants) = batch::participants(run, &won);
    values::execute(tx, &participants, upsert_participants_sql).await?;
    Ok(outcomes)
}

/// What a run's written commits cause, each kind in its own statement (per chunk).
pub(super) async fn write_caused(
    tx: &mut Transaction<'_, Sqlite>,
    written: &[&Commit],
) -> Result<(), StoreError> {
    let rows = batch::caused(written);
    values::execute(tx, &rows.events, insert_events).await?;
    values::execute(tx, &rows.deliveries, insert_deliveries).await?;
    values::execute(tx, &rows.notifications, insert_notifications).await?;
    Ok(())
}

/// The batch statements as sent for a chunk of two rows, named, for the plan tests.
pub(super) fn batch_statements() -> Result<Vec<(&'static str, String)>, StoreError> {
    use values::for_two_rows as two;
    Ok(vec![
        (
            "batched session update, stored states",
            two::<batch::SessionKey>(stored_states)?,
        ),
        (
            "batched session update",
            two::<crate::rows::SessionRow>(update_sessions)?,
        ),
        (
            "batched session update, keeping status and wake-up",
            two::<crate::rows::SessionRow>(update_sessions_keeping)?,
        ),
        (
            "batched participants",
            two::<crate::rows::ParticipantRow>(upsert_participants_sql)?,
        ),
        ("batched events", two::<batch::EventRow>(insert_events)?),
        (
            "batched webhook deliveries",
            two::<batch::DeliveryRow>(insert_deliveries)?,
        ),
        (
            "batched notifications",
            two::<batch::NotificationRow>(insert_notifications)?,
        ),
    ])
}

/// Participants (`ParticipantRow`s), inserted or updated in place.
fn upsert_participants_sql(b: &Values) -> String {
    format!(
        "with {} insert into participants ({}) {} \
         on conflict (session_id, user_id) do update set role = excluded.role, \
         state = excluded.state, joined_at = excluded.joined_at, \
         left_at = excluded.left_at, offline_for = excluded.offline_for, \
         last_seen_at = max(participants.last_seen_at, excluded.last_seen_at)",
        b.table(),
        b.columns(),
        b.select_in_order()
    )
}

/// Events (`EventRow`s), in order, so `seq` follows the order they were decided in.
fn insert_events(b: &Values) -> String {
    format!(
        "with {} insert into events ({}) {}",
        b.table(),
        b.columns(),
        b.select_in_order()
    )
}

/// Webhook deliveries (`DeliveryRow`s), each naming its event by id, but for endpoints that
/// were disabled.
fn insert_deliveries(b: &Values) -> String {
    format!(
        "with {} insert into webhook_deliveries (id, endpoint, event_seq, status, attempts, \
         next_attempt_at, created_at) \
         select b.id, b.url, e.seq, 'pending', 0, b.at, b.at \
         from b join events e on e.id = b.event \
         where b.pos is not null \
         and not exists (select 1 from webhook_endpoints_disabled w where w.url = b.url)",
        b.table()
    )
}

/// Notifications (`NotificationRow`s).
fn insert_notifications(b: &Values) -> String {
    format!(
        "with {} insert into notifications ({}) {}",
        b.table(),
        b.columns(),
        b.select_in_order()
    )
}

/// A session going from ended back to open (a reopen) counts against its host's limit
/// again: it may have ended before its kind was given one (`Store::publish_rules` marks only
/// the sessions open then). Marked whatever its kind: reopens are rare, and a mark on a kind
/// without a limit is counted by nothing.
const REOPENED_COUNTS: &str = "host_limited = host_limited or (sessions.status not in \
     ('pending', 'active') and b.status in ('pending', 'active'))";

/// A batch of session rows (`SessionRow`s as table `b`), compare-and-set each on its version.
fn update_sessions(b: &Values) -> String {
    batched_update(
        b,
        &format!("status = b.status, {REOPENED_COUNTS}, "),
        "next_due_at = b.next_due_at, ",
        "",
    )
}

/// The same, for rows whose stored status and wake-up are already the ones written: neither
/// column is named (see `UPDATE_KEEPING_WAKE`).
fn update_sessions_keeping(b: &Values) -> String {
    batched_update(
        b,
        "",
        "",
        // `+`: found by its key, not through an index of its status.
        " and +sessions.status = b.status and +sessions.next_due_at is b.next_due_at",
    )
}

/// The batched session update with `status` set as the first text says, `next_due_at` as
/// the second, and the guard after the key and version as the third.
fn batched_update(b: &Values, status: &str, wake: &str, guard: &str) -> String {
    format!(
        "with {} update sessions set title = b.title, metadata = b.metadata, \
         scheduled_start = b.scheduled_start, scheduled_end = b.scheduled_end, \
         {status}delayed = b.delayed, used = b.used, \
         started_at = b.started_at, ended_at = b.ended_at, \
         last_activity_at = max(sessions.last_activity_at, b.last_activity_at), \
         end_reason = b.end_reason, ended_by = b.ended_by, counters = b.counters, \
         summary = b.summary, parent_ended_at = b.parent_ended_at, \
         {wake}next_due_rule = b.next_due_rule, \
         warnings = b.warnings, version = sessions.version + 1 \
         from b where sessions.id = b.id and sessions.version = b.version \
         and b.pos is not null{guard}",
        b.table()
    )
}

/// Of a batch of keys (`SessionKey`s as table `b`): the sessions whose version has moved
/// since they were read, or that are gone (`stale`), and those whose stored status and
/// wake-up are the ones about to be written (`keeping`), as one JSON object of two arrays.
fn stored_states(b: &Values) -> String {
    format!(
        "with {} select json_object(\
         'stale', json_group_array(b.id) filter (where s.id is null), \
         'keeping', json_group_array(b.id) filter (where s.status = b.status \
         and s.next_due_at is b.next_due_at)) \
         from b left join sessions s on s.id = b.id and s.version = b.version \
         where b.pos is not null",
        b.table()
    )
}

/// What [`stored_states`] reads.
#[derive(serde::Deserialize)]
struct StoredStates {
    stale: Vec<String>,
    keeping: Vec<String>,
}
