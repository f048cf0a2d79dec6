//! The writes of one commit, inside its transaction: session rows (compare-and-set),
//! participants, events with their webhook deliveries, notifications, the host limit.

use lapse_core::store::{Commit, HostLimit, SessionWrite};
use lapse_core::{Session, SessionId, StoreError, Timestamp, UserId};
use sqlx::{AssertSqlSafe, Connection as _, Sqlite, Transaction};

use super::conns::Conns;
use super::values::{self, Values};
use crate::rows::{
    IMPORT_PARTICIPANT_COLUMNS, IMPORT_SESSION_COLUMNS, counted_by, import_rows, to_json,
};
use crate::{backend, batch};

/// Runs a statement without values (savepoints).
pub(super) async fn exec(
    tx: &mut Transaction<'_, Sqlite>,
    sql: &'static str,
) -> Result<(), StoreError> {
    sqlx::query(sql).execute(&mut **tx).await.map_err(backend)?;
    Ok(())
}

/// Everything one commit writes, in order, inside `tx`. Its first statement is the one that
/// can refuse it (host limit, insert, compare-and-set).
pub(super) async fn write_commit(
    tx: &mut Transaction<'_, Sqlite>,
    commit: &Commit,
) -> Result<(), StoreError> {
    if let Some(limit) = &commit.host_limit {
        check_host_limit(tx, limit).await?;
    }
    for write in &commit.sessions {
        match write {
            SessionWrite::Insert(s) => {
                insert_session(tx, s, counted_by(commit, s)).await?;
                upsert_participants(tx, s, None).await?;
            }
            SessionWrite::Update { session, changed } => {
                update_session(tx, session).await?;
                upsert_participants(tx, session, changed.as_deref()).await?;
            }
            SessionWrite::Delete { id, version } => delete_session(tx, id, *version).await?,
        }
    }
    append_events(tx, commit).await?;
    deliver_notifications(tx, commit).await
}

async fn insert_session(
    tx: &mut Transaction<'_, Sqlite>,
    s: &Session,
    host_limited: bool,
) -> Result<(), StoreError> {
    let result = sqlx::query(
        "insert into sessions (id, kind, title, metadata, host, parent, scheduled_start, \
         scheduled_end, status, delayed, used, created_at, started_at, ended_at, \
         last_activity_at, end_reason, ended_by, counters, summary, parent_ended_at, \
         next_due_at, next_due_rule, warnings, host_limited, version) \
         values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, \
         ?18, ?19, ?20, ?21, ?22, ?23, ?24, 1) on conflict (id) do nothing",
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
    .bind(s.delayed as i64)
    .bind(s.used as i64)
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
    .bind(host_limited)
    .execute(&mut **tx)
    .await
    .map_err(backend)?;
    if result.rows_affected() == 0 {
        return Err(StoreError::Duplicate);
    }
    Ok(())
}

/// A session row rewritten under compare-and-set, with `status = ?6` set where the first
/// placeholder stands, `next_due_at = ?17` where the second does, and the guard after the key
/// and version where the third does.
macro_rules! update_session_sql {
    ($status:literal, $wake:literal, $guard:literal) => {
        concat!(
            "update sessions set title = ?2, metadata = ?3, scheduled_start = ?4, \
             scheduled_end = ?5, ",
            $status,
            "delayed = ?7, used = ?8, started_at = ?9, ended_at = ?10, \
             last_activity_at = max(last_activity_at, ?11), end_reason = ?12, ended_by = ?13, \
             counters = ?14, summary = ?15, parent_ended_at = ?16, ",
            $wake,
            "next_due_rule = ?18, warnings = ?20, version = version + 1 \
             where id = ?1 and version = ?19",
            $guard
        )
    };
}

/// A session reopened counts against its host's limit again, marked whatever its kind (see
/// `REOPENED_COUNTS` in the batched form): reopens are rare, and a mark on a kind without a
/// limit is counted by nothing.
///
/// SQLite moves a row's entries in every index whose columns an update names, changed or
/// not, and three of `sessions`' indexes hold its status. Most writes of one session (a join,
/// a leave, activity, a patch) keep it, and most of those keep its stored wake-up too (the
/// engine leaves one that is only put off in place: lazy re-arm). So the row is first written
/// naming neither, guarded by the stored status and wake-up being the new ones already; then
/// naming the wake-up; only when that finds no row either is it written whole (a status that
/// changes, or a version that no longer matches).
pub(super) const UPDATE_KEEPING_WAKE: &str =
    update_session_sql!("", "", " and status = ?6 and next_due_at is ?17");
pub(super) const UPDATE_KEEPING_STATUS: &str =
    update_session_sql!("", "next_due_at = ?17, ", " and status = ?6");
pub(super) const UPDATE_WHOLE: &str = update_session_sql!(
    "status = ?6, host_limited = host_limited or (status not in ('pending', 'active') \
     and ?6 in ('pending', 'active')), ",
    "next_due_at = ?17, ",
    ""
);

async fn update_session(tx: &mut Transaction<'_, Sqlite>, s: &Session) -> Result<(), StoreError> {
    let metadata = to_json(&s.metadata);
    let counters = to_json(&s.counters);
    let summary = s.summary.as_ref().map(to_json);
    let warnings = to_json(&s.warnings);
    for sql in [UPDATE_KEEPING_WAKE, UPDATE_KEEPING_STATUS, UPDATE_WHOLE] {
        let result = sqlx::query(sql)
            .bind(s.id.as_str())
            .bind(&s.title)
            .bind(&metadata)
            .bind(s.scheduled_start.map(Timestamp::millis))
            .bind(s.scheduled_end.map(Timestamp::millis))
            .bind(s.status.as_str())
            .bind(s.delayed as i64)
            .bind(s.used as i64)
            .bind(s.started_at.map(Timestamp::millis))
            .bind(s.ended_at.map(Timestamp::millis))
            .bind(s.last_activity_at.millis())
            .bind(s.end_reason.as_deref())
            .bind(s.ended_by.as_deref())
            .bind(&counters)
            .bind(summary.as_deref())
            .bind(s.parent_ended_at.map(Timestamp::millis))
            .bind(s.wake_at.map(Timestamp::millis))
            .bind(s.next_due.as_ref().map(|n| n.rule.as_str()))
            .bind(s.version)
            .bind(&warnings)
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
        if result.rows_affected() == 1 {
            return Ok(());
        }
    }
    Err(StoreError::Conflict)
}

async fn upsert_participants(
    tx: &mut Transaction<'_, Sqlite>,
    s: &Session,
    changed: Option<&[UserId]>,
) -> Result<(), StoreError> {
    let wanted = |p: &&lapse_core::Participant| changed.is_none_or(|c| c.contains(&p.user));
    for p in s.participants.iter().filter(wanted) {
        sqlx::query(
            "insert into participants (session_id, user_id, role, state, joined_at, left_at, \
             last_seen_at, offline_for) values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             on conflict (session_id, user_id) do update set role = excluded.role, \
             state = excluded.state, joined_at = excluded.joined_at, left_at = excluded.left_at, \
             offline_for = excluded.offline_for, \
             last_seen_at = max(participants.last_seen_at, excluded.last_seen_at)",
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
    tx: &mut Transaction<'_, Sqlite>,
    id: &SessionId,
    version: i64,
) -> Result<(), StoreError> {
    let result = sqlx::query("delete from sessions where id = ?1 and version = ?2")
        .bind(id.as_str())
        .bind(version)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    if result.rows_affected() == 0 {
        return Err(StoreError::Conflict);
    }
    sqlx::query("delete from participants where session_id = ?1")
        .bind(id.as_str())
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    Ok(())
}

/// How many open sessions of a kind a host has that count against its limit (marked
/// `host_limited`; `sessions_open_by_host`).
pub(super) const HOST_OPEN_COUNT: &str = "select count(*) from sessions where host = ?1 and kind = ?2 \
         and host_limited = 1 and status in ('pending', 'active')";

async fn check_host_limit(
    tx: &mut Transaction<'_, Sqlite>,
    limit: &HostLimit,
) -> Result<(), StoreError> {
    let open: i64 = sqlx::query_scalar(HOST_OPEN_COUNT)
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
    tx: &mut Transaction<'_, Sqlite>,
    commit: &Commit,
) -> Result<(), StoreError> {
    for r in &commit.events {
        let e = &r.event;
        let seq: i64 = sqlx::query_scalar(
            "insert into events (id, type, at, applied_at, session_id, kind, actor, rule, data) \
             values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) returning seq",
        )
        .bind(&r.id)
        .bind(e.event_type.as_str())
        .bind(e.at.millis())
        .bind(r.applied_at.millis())
        .bind(e.session_id.as_str())
        .bind(&e.kind)
        .bind(&e.actor)
        .bind(e.rule.as_deref())
        .bind(e.data.as_str())
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
    tx: &mut Transaction<'_, Sqlite>,
    id: &str,
    url: &str,
    seq: i64,
    at: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query(
        "insert into webhook_deliveries (id, endpoint, event_seq, status, attempts, \
         next_attempt_at, created_at) \
         select ?1, ?2, ?3, 'pending', 0, ?4, ?4 \
         where not exists (select 1 from webhook_endpoints_disabled where url = ?2)",
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
    tx: &mut Transaction<'_, Sqlite>,
    commit: &Commit,
) -> Result<(), StoreError> {
    for r in &commit.notifications {
        let n = &r.notification;
        sqlx::query(
            "insert into notifications (id, user_id, type, title, message, session_id, link, \
             created_at) values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
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

/// A run of single-update commits (see `batch`) in five statements, each over the run's rows
/// bound as `values` lists (see `values`; a statement per chunk of up to 256 rows).
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

    let (outcomes, rows) = batch::followers(run, &won);
    values::execute(tx, &rows.participants, upsert_participants_sql).await?;
    values::execute(tx, &rows.events, insert_events).await?;
    values::execute(tx, &rows.deliveries, insert_deliveries).await?;
    values::execute(tx, &rows.notifications, insert_notifications).await?;
    Ok(outcomes)
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
