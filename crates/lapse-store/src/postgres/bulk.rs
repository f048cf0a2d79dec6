//! Writes in bulk: a run of a sweep's single-update commits as a few set-based statements,
//! and sessions imported by the thousand.
//!
//! A page's session rows, participant rows, events and webhook rows, the bulk of what a sweep
//! sends, go as one array per column (`unnest`), which the server takes in binary with
//! nothing to parse. The rest (notifications, imports) go as JSON read as `json`, not
//! `jsonb`: a `jsonb` parameter is parsed whole into its binary form while the statement is
//! planned (a page's session rows, about 500 KB, took 10–14 ms to plan that way), where
//! `json_to_recordset` reads the text once (2 ms to plan, about 7.5 ms in all against 13–16).

use lapse_core::store::Commit;
use lapse_core::{Session, StoreError};
use sqlx::{AssertSqlSafe, PgPool, Postgres, Transaction};

use crate::rows::{
    IMPORT_PARTICIPANT_COLUMNS, IMPORT_SESSION_COLUMNS, ParticipantArrays, SessionArrays,
    import_rows, to_json,
};
use crate::{backend, batch};

/// Sessions in bulk (see `Store::import`): two statements per chunk.
pub(super) async fn import(pool: &PgPool, sessions: &[Session]) -> Result<u64, StoreError> {
    let mut inserted = 0;
    for chunk in sessions.chunks(IMPORT_CHUNK) {
        let (rows, participants) = import_rows(chunk);
        let mut tx = pool.begin().await.map_err(backend)?;
        let sql = format!(
            "insert into sessions ({IMPORT_SESSION_COLUMNS}, host_limited, version) \
             select {IMPORT_SESSION_COLUMNS}, false, 1 from json_to_recordset($1::json) as r(\
             id text, kind text, title text, metadata text, host text, parent text, \
             scheduled_start bigint, scheduled_end bigint, status text, delayed boolean, \
             used boolean, created_at bigint, started_at bigint, ended_at bigint, \
             last_activity_at bigint, end_reason text, ended_by text, counters text, \
             summary text, parent_ended_at bigint, warnings text, next_due_at bigint, \
             next_due_rule text) on conflict (id) do nothing"
        );
        let result = sqlx::query(AssertSqlSafe(sql))
            .bind(rows)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        inserted += result.rows_affected();
        let sql = format!(
            "insert into participants ({IMPORT_PARTICIPANT_COLUMNS}) \
             select {IMPORT_PARTICIPANT_COLUMNS} from json_to_recordset($1::json) as r(\
             session_id text, user_id text, role text, state text, joined_at bigint, \
             left_at bigint, last_seen_at bigint, offline_for bigint) on conflict do nothing"
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

/// A run of single-update commits' rows (see `batch`) in two statements: the session rows,
/// compare-and-set each, then the winners' participants; each commit's outcome.
pub(super) async fn write_updates(
    tx: &mut Transaction<'_, Postgres>,
    run: &[&Commit],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let c = SessionArrays::of(batch::session_rows(run));
    let won: std::collections::HashSet<String> = sqlx::query_scalar(UPDATE_SESSIONS)
        .bind(c.id)
        .bind(c.version)
        .bind(c.title)
        .bind(c.metadata)
        .bind(c.scheduled_start)
        .bind(c.scheduled_end)
        .bind(c.status)
        .bind(c.delayed)
        .bind(c.used)
        .bind(c.started_at)
        .bind(c.ended_at)
        .bind(c.last_activity_at)
        .bind(c.end_reason)
        .bind(c.ended_by)
        .bind(c.counters)
        .bind(c.summary)
        .bind(c.parent_ended_at)
        .bind(c.next_due_at)
        .bind(c.next_due_rule)
        .bind(c.warnings)
        .fetch_all(&mut **tx)
        .await
        .map_err(backend)?
        .into_iter()
        .collect();
    let (outcomes, participants) = batch::participants(run, &won);
    if !participants.is_empty() {
        let p = ParticipantArrays::of(&participants);
        sqlx::query(UPSERT_PARTICIPANTS)
            .bind(p.session_id)
            .bind(p.user_id)
            .bind(p.role)
            .bind(p.state)
            .bind(p.joined_at)
            .bind(p.left_at)
            .bind(p.last_seen_at)
            .bind(p.offline_for)
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
    }
    Ok(outcomes)
}

/// What a run's written commits cause, in one statement: their events with the webhook rows
/// and notifications those cause (data-modifying CTEs, so the webhook rows take their
/// events' numbers without reading the events table).
pub(super) async fn write_caused(
    tx: &mut Transaction<'_, Postgres>,
    written: &[&Commit],
) -> Result<(), StoreError> {
    let rows = batch::caused(written);
    if !rows.events.is_empty() || !rows.notifications.is_empty() {
        let (e, d) = (
            batch::EventArrays::of(&rows.events),
            batch::DeliveryArrays::of(&rows.deliveries),
        );
        sqlx::query(APPEND_EVENTS)
            .bind(e.id)
            .bind(e.event_type)
            .bind(e.at)
            .bind(e.applied_at)
            .bind(e.session_id)
            .bind(e.kind)
            .bind(e.actor)
            .bind(e.rule)
            .bind(e.data)
            .bind(d.id)
            .bind(d.url)
            .bind(d.event)
            .bind(d.at)
            .bind(to_json(&rows.notifications))
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
    }
    Ok(())
}

/// A batch of session rows, compare-and-set each on its version; the ids that won. A session
/// reopened counts against its host's limit again, as in the single-row update (see
/// SQLite's `REOPENED_COUNTS`).
pub(super) const UPDATE_SESSIONS: &str = "update sessions set title = b.title, \
    metadata = b.metadata, scheduled_start = b.scheduled_start, \
    scheduled_end = b.scheduled_end, status = b.status, \
    host_limited = sessions.host_limited or (sessions.status not in ('pending', 'active') \
    and b.status in ('pending', 'active')), delayed = b.delayed, used = b.used, \
    started_at = b.started_at, ended_at = b.ended_at, \
    last_activity_at = greatest(sessions.last_activity_at, b.last_activity_at), \
    end_reason = b.end_reason, ended_by = b.ended_by, counters = b.counters, \
    summary = b.summary, parent_ended_at = b.parent_ended_at, next_due_at = b.next_due_at, \
    next_due_rule = b.next_due_rule, warnings = b.warnings, claimed_until = null, \
    version = sessions.version + 1 \
    from unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], \
    $7::text[], $8::boolean[], $9::boolean[], $10::bigint[], $11::bigint[], $12::bigint[], \
    $13::text[], $14::text[], $15::text[], $16::text[], $17::bigint[], $18::bigint[], \
    $19::text[], $20::text[]) as b(id, version, title, metadata, scheduled_start, \
    scheduled_end, status, delayed, used, started_at, ended_at, last_activity_at, end_reason, \
    ended_by, counters, summary, parent_ended_at, next_due_at, next_due_rule, warnings) \
    where sessions.id = b.id and sessions.version = b.version \
    returning sessions.id";

/// A batch of participant rows, one array per column; `last_seen_at` only moves forward.
const UPSERT_PARTICIPANTS: &str = "insert into participants (session_id, user_id, role, state, \
    joined_at, left_at, last_seen_at, offline_for) \
    select session_id, user_id, role, state, joined_at, left_at, last_seen_at, offline_for \
    from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], \
    $7::bigint[], $8::bigint[]) as r(session_id, user_id, role, state, joined_at, left_at, \
    last_seen_at, offline_for) \
    on conflict (session_id, user_id) do update set role = excluded.role, \
    state = excluded.state, joined_at = excluded.joined_at, left_at = excluded.left_at, \
    offline_for = excluded.offline_for, \
    last_seen_at = greatest(participants.last_seen_at, excluded.last_seen_at)";

/// A batch of events in array order (so `seq` follows the order they were decided in), the
/// webhook rows they cause (unless the endpoint was disabled), and notifications.
const APPEND_EVENTS: &str = "with e as (\
        insert into events (id, type, at, applied_at, session_id, kind, actor, rule, data) \
        select id, type, at, applied_at, session_id, kind, actor, rule, data \
        from unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], \
        $6::text[], $7::text[], $8::text[], $9::text[]) \
        with ordinality as b(id, type, at, applied_at, session_id, kind, actor, rule, data, n) \
        order by n \
        returning id, seq), \
    d as (\
        insert into webhook_deliveries (id, endpoint, event_seq, status, attempts, \
        next_attempt_at, created_at) \
        select d.id, d.url, e.seq, 'pending', 0, d.at, d.at \
        from unnest($10::text[], $11::text[], $12::text[], $13::bigint[]) \
        as d(id, url, event, at) \
        join e on e.id = d.event \
        where not exists (select 1 from webhook_endpoints_disabled w where w.url = d.url)) \
    insert into notifications (id, user_id, type, title, message, session_id, link, created_at) \
    select id, user_id, type, title, message, session_id, link, created_at \
    from json_to_recordset($14::json) as r(id text, user_id text, type text, title text, \
    message text, session_id text, link text, created_at bigint)";
