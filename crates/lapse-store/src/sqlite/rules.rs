//! The rules in force on SQLite: their one row, read inside a commit's transaction (a change
//! decided under other rules is refused) or replaced with the event that says so, and the
//! stored deadlines re-armed under them.

use lapse_core::StoreError;
use lapse_core::Timestamp;
use lapse_core::store::{Commit, EventRecord, Rearm, RearmOnly, RulesInForce};
use sqlx::Connection as _;

use super::conns::Conns;
use crate::backend;
use crate::batch::write_commit;
use crate::rows::{self, to_json};

/// Stores `rows`' wake-ups (see [`REARM`], [`REARM_EARLIER`]), if the rules are still those
/// of `rules_version`; the rows written.
pub(super) async fn rearm(
    writer: &Conns,
    rows: &[Rearm],
    rules_version: Option<i64>,
    only: RearmOnly,
) -> Result<u64, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    // One writer: nothing can put other rules in force between these two statements.
    let mut writer = writer.get().await?;
    let mut tx = writer.begin().await.map_err(backend)?;
    if rules_version.is_some() && rules_version_of(&mut tx).await? != rules_version {
        return Err(StoreError::PolicyChanged);
    }
    let batch: Vec<(&str, i64, Option<i64>, Option<&str>)> = rows
        .iter()
        .map(|r| {
            (
                r.id.as_str(),
                r.version,
                r.wake_at.map(Timestamp::millis),
                r.rule.as_deref(),
            )
        })
        .collect();
    let statement = match only {
        RearmOnly::Unchanged => REARM,
        RearmOnly::Earlier => REARM_EARLIER,
    };
    let result = sqlx::query(statement)
        .bind(to_json(&batch))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    tx.commit().await.map_err(backend)?;
    Ok(result.rows_affected())
}

/// Records that every deadline stored under `version` is re-armed, if it is still in force.
pub(super) async fn mark_rearmed(writer: &Conns, version: i64) -> Result<(), StoreError> {
    sqlx::query(MARK_REARMED)
        .bind(version)
        .execute(&mut *writer.get().await?)
        .await
        .map_err(backend)?;
    Ok(())
}

/// The rules in force, if any were ever put in force here.
pub(super) async fn rules_in_force(writer: &Conns) -> Result<Option<RulesInForce>, StoreError> {
    let row = sqlx::query(RULES_IN_FORCE)
        .fetch_optional(&mut *writer.get().await?)
        .await
        .map_err(backend)?;
    row.as_ref().map(rows::rules_in_force).transpose()
}

/// Puts other rules in force, if those in force are still `expected`, with the sessions
/// they newly limit per host and the event that says so; the new version.
pub(super) async fn publish_rules(
    writer: &Conns,
    expected: i64,
    kinds: &str,
    limited: &[String],
    at: Timestamp,
    event: Option<EventRecord>,
) -> Result<i64, StoreError> {
    let mut writer = writer.get().await?;
    let mut tx = writer.begin().await.map_err(backend)?;
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
    }
    tx.commit().await.map_err(backend)?;
    Ok(expected + 1)
}

/// The version of the rules in force, by the primary key of their one row.
pub(super) const RULES_VERSION: &str = "select version from rules_in_force where id = 1";

/// The rules in force, by the primary key of their one row.
pub(super) const RULES_IN_FORCE: &str =
    "select version, kinds, updated_at, rearmed_version from rules_in_force where id = 1";

/// Every deadline stored under the rules of a version, if still in force.
pub(super) const MARK_REARMED: &str =
    "update rules_in_force set rearmed_version = version where id = 1 and version = ?1";

/// Other rules in force.
pub(super) const PUBLISH_RULES: &str = "insert into rules_in_force (id, version, kinds, updated_at) \
     values (1, ?1, ?2, ?3) on conflict (id) do update \
     set version = excluded.version, kinds = excluded.kinds, updated_at = excluded.updated_at";

/// The open sessions of the kinds named (a JSON array) counted against their host's limit
/// from now on (`sessions_kind_status`; run once per rules put in force).
pub(super) const MARK_HOST_LIMITED: &str = "update sessions set host_limited = 1 \
     where kind in (select value from json_each(?1)) and status in ('pending', 'active') \
     and host_limited = 0";

/// The version of the rules in force, read inside `tx`.
pub(super) async fn rules_version_of(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
) -> Result<Option<i64>, StoreError> {
    sqlx::query_scalar(RULES_VERSION)
        .fetch_optional(&mut **tx)
        .await
        .map_err(backend)
}

/// Lazy re-arms of a batch, compare-and-set per row.
pub(super) const REARM: &str = "update sessions set next_due_at = b.at, next_due_rule = b.rule \
             from (select value ->> 0 as id, value ->> 1 as version, value ->> 2 as at, \
                   value ->> 3 as rule from jsonb_each(?1)) as b \
             where sessions.id = b.id and sessions.version = b.version";

/// Stored wake-ups moved earlier, whatever else changed (see `RearmOnly::Earlier`).
pub(super) const REARM_EARLIER: &str = "update sessions set next_due_at = b.at, next_due_rule = b.rule \
             from (select value ->> 0 as id, value ->> 2 as at, value ->> 3 as rule \
                   from jsonb_each(?1)) as b \
             where sessions.id = b.id and b.at is not null and sessions.next_due_at > b.at";
