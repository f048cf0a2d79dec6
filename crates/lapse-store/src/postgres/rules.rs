//! The rules in force on PostgreSQL: their one row, read by every commit decided under them
//! (a change decided under other rules is refused), replaced only between such commits (an
//! advisory lock, shared by commits), and the stored deadlines re-armed under them.

use lapse_core::store::{Change, Commit, EventRecord, Rearm, RearmOnly, RulesInForce};
use lapse_core::{StoreError, Timestamp};
use sqlx::PgPool;

use super::changes::announce;
use super::{FLUSH_LOCK, lock_shared_until_commit, lock_until_commit};
use crate::backend;
use crate::batch::write_commit;
use crate::rows;

/// Stores `rows`' wake-ups (see [`REARM`], [`REARM_EARLIER`]), if the rules are still those
/// of `rules_version`; the rows written.
pub(super) async fn rearm(
    pool: &PgPool,
    rows: &[Rearm],
    rules_version: Option<i64>,
    only: RearmOnly,
) -> Result<u64, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut tx = pool.begin().await.map_err(backend)?;
    let checked = rules_version.is_some();
    if first_locks(&mut tx, checked).await? != rules_version {
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

/// Records that every deadline stored under `version` is re-armed, if it is still in force.
pub(super) async fn mark_rearmed(pool: &PgPool, version: i64) -> Result<(), StoreError> {
    sqlx::query(MARK_REARMED)
        .bind(version)
        .execute(pool)
        .await
        .map_err(backend)?;
    Ok(())
}

/// The rules in force, if any were ever put in force here.
pub(super) async fn rules_in_force(pool: &PgPool) -> Result<Option<RulesInForce>, StoreError> {
    let row = sqlx::query(RULES_IN_FORCE)
        .fetch_optional(pool)
        .await
        .map_err(backend)?;
    row.as_ref().map(rows::rules_in_force).transpose()
}

/// Puts other rules in force, if those in force are still `expected`, with the sessions
/// they newly limit per host and the event that says so; the new version.
pub(super) async fn publish_rules(
    pool: &PgPool,
    expected: i64,
    kinds: &str,
    limited: &[String],
    at: Timestamp,
    event: Option<EventRecord>,
) -> Result<i64, StoreError> {
    let mut tx = pool.begin().await.map_err(backend)?;
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
        let commit = Commit {
            events: vec![event],
            ..Commit::default()
        };
        write_commit(&mut tx, &commit).await?;
        announce(&mut tx, Change::Events).await?;
    }
    announce(&mut tx, Change::Rules).await?;
    tx.commit().await.map_err(backend)?;
    Ok(expected + 1)
}

/// Key of the advisory lock between commits (shared) and other rules coming into force
/// (exclusive): rules are replaced only between commits decided under them.
const RULES_LOCK: i64 = 0x006c_6170_7372;

/// What a commit decided under rules (`checked`) takes first: the rules lock, shared, and
/// then the version in force, read in a statement of its own so that its snapshot follows any
/// reload it waited for. Returns that version, if read.
///
/// The events lock comes last, once the session rows are written (`Writes::before_events`):
/// it makes sequence numbers (handed out at insert, visible at commit) follow commit order, so
/// a reader that has seen event N never later finds an N-1 it skipped (SSE and `after=` paging
/// rely on it). Taken after the rows, it is never held while a row is waited for.
pub(super) async fn first_locks(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    checked: bool,
) -> Result<Option<i64>, StoreError> {
    if !checked {
        return Ok(None);
    }
    lock_shared_until_commit(tx, RULES_LOCK).await?;
    rules_version_of(tx).await
}

/// The version of the rules in force, read inside `tx`.
pub(super) async fn rules_version_of(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
) -> Result<Option<i64>, StoreError> {
    sqlx::query_scalar(RULES_VERSION)
        .fetch_optional(&mut **tx)
        .await
        .map_err(backend)
}

/// The version of the rules in force, by the primary key of their one row.
pub(super) const RULES_VERSION: &str = "select version from rules_in_force where id = 1";

/// The rules in force.
pub(super) const RULES_IN_FORCE: &str =
    "select version, kinds, updated_at, rearmed_version from rules_in_force where id = 1";

/// Every deadline stored under the rules of a version, if still in force.
pub(super) const MARK_REARMED: &str =
    "update rules_in_force set rearmed_version = version where id = 1 and version = $1";

/// Other rules in force.
pub(super) const PUBLISH_RULES: &str = "insert into rules_in_force (id, version, kinds, updated_at) \
     values (1, $1, $2, $3) on conflict (id) do update \
     set version = excluded.version, kinds = excluded.kinds, updated_at = excluded.updated_at";

/// The open sessions of the kinds named (a JSON array) counted against their host's limit
/// from now on (`sessions_kind_status`; run once per rules put in force).
pub(super) const MARK_HOST_LIMITED: &str = "update sessions set host_limited = true \
     where kind in (select jsonb_array_elements_text($1::jsonb)) \
     and status in ('pending', 'active') and not host_limited";

/// Lazy re-arms of a batch, compare-and-set per row.
pub(super) const REARM: &str = "update sessions set next_due_at = b.at, next_due_rule = b.rule, claimed_until = null \
             from unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[]) as b(id, version, at, rule) \
             where sessions.id = b.id and sessions.version = b.version";

/// Stored wake-ups moved earlier, whatever else changed (see `RearmOnly::Earlier`).
pub(super) const REARM_EARLIER: &str = "update sessions set next_due_at = b.at, next_due_rule = b.rule, claimed_until = null \
             from unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[]) as b(id, version, at, rule) \
             where sessions.id = b.id and b.at is not null and sessions.next_due_at > b.at";
