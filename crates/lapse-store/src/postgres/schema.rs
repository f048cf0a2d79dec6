//! Bringing a PostgreSQL database's schema up to date, while other instances may be serving
//! from it (a rolling upgrade).
//!
//! Instances starting together migrate one at a time: each takes an advisory lock first, on a
//! connection of its own that closes when it is done (which lets the lock go, whatever
//! happened). The scripts run in one transaction. A script marked [`Script::online`] builds
//! an index on a table that may be large: inside that transaction the build would hold back
//! every write to the table until it finished, minutes on a big one. So online scripts run
//! afterwards, outside any transaction, statement by statement (`create index concurrently`).
//! Each begins by dropping what an interrupted build left behind, and counts as done only once
//! it has finished. No script runs under `[database] statement_timeout`.
//!
//! The lock is asked for again and again rather than waited for: a concurrent build waits for
//! every transaction older than it, and a statement waiting for the lock would be one, held
//! by the very build it waits for.

use std::time::Duration;

use sqlx::Connection as _;
use sqlx::postgres::{PgConnection, PgPool};

use lapse_core::StoreError;

use super::MIGRATION_LOCK;
use super::leases::wall_now;
use crate::backend;
use crate::migrate::{self, Script};

/// How often an instance asks again for the lock another instance's migrations hold.
const LOCK_RETRY: Duration = Duration::from_millis(100);

/// Applies every script `pool`'s database has not had yet.
pub(super) async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let mut conn = PgConnection::connect_with(&pool.connect_options())
        .await
        .map_err(backend)?;
    let result = migrate_holding_the_lock(&mut conn).await;
    let _ = conn.close().await;
    result
}

async fn migrate_holding_the_lock(conn: &mut PgConnection) -> Result<(), StoreError> {
    // A script takes as long as its tables need (an index built on a big one), whatever
    // `[database] statement_timeout` says for requests.
    sqlx::raw_sql("set statement_timeout = 0")
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    lock(conn).await?;
    sqlx::query(
        "create table if not exists lapse_migrations (version bigint primary key, \
         name text not null, applied_at bigint not null)",
    )
    .execute(&mut *conn)
    .await
    .map_err(backend)?;
    let done = applied(conn).await?;
    migrate::refuse_newer(migrate::POSTGRES, &done)?;
    let mut tx = conn.begin().await.map_err(backend)?;
    let in_transaction: Vec<&Script> = pending(&done).filter(|s| !s.online).collect();
    for script in in_transaction {
        sqlx::raw_sql(script.sql)
            .execute(&mut *tx)
            .await
            .map_err(|e| failed(script, e))?;
        record(&mut tx, script).await?;
    }
    tx.commit().await.map_err(backend)?;
    let online: Vec<&Script> = pending(&done).filter(|s| s.online).collect();
    for script in online {
        tracing::info!(
            migration = script.name,
            "building an index; writes go on meanwhile"
        );
        for statement in statements(script.sql) {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(&mut *conn)
                .await
                .map_err(|e| failed(script, e))?;
        }
        record(conn, script).await?;
    }
    Ok(())
}

/// Takes the migration lock for `conn`'s session, asking every [`LOCK_RETRY`] while another
/// instance holds it.
async fn lock(conn: &mut PgConnection) -> Result<(), StoreError> {
    let mut told = false;
    loop {
        let taken: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .fetch_one(&mut *conn)
            .await
            .map_err(backend)?;
        if taken {
            return Ok(());
        }
        if !told {
            tracing::info!("another instance is migrating the database; waiting for it");
            told = true;
        }
        tokio::time::sleep(LOCK_RETRY).await;
    }
}

/// The versions applied so far.
async fn applied(conn: &mut PgConnection) -> Result<Vec<i64>, StoreError> {
    sqlx::query_scalar("select version from lapse_migrations")
        .fetch_all(conn)
        .await
        .map_err(backend)
}

/// The scripts not among `done`, in order.
fn pending(done: &[i64]) -> impl Iterator<Item = &'static Script> + '_ {
    migrate::POSTGRES
        .iter()
        .filter(move |s| !done.contains(&s.version))
}

async fn record(conn: &mut PgConnection, script: &Script) -> Result<(), StoreError> {
    sqlx::query("insert into lapse_migrations (version, name, applied_at) values ($1, $2, $3)")
        .bind(script.version)
        .bind(script.name)
        .bind(wall_now())
        .execute(conn)
        .await
        .map_err(backend)?;
    Ok(())
}

fn failed(script: &Script, e: sqlx::Error) -> StoreError {
    StoreError::Backend(format!("migration {} failed: {e}", script.name))
}

/// An online script's statements, one at a time: PostgreSQL runs several sent together in one
/// transaction, where `concurrently` is refused. Comment lines are left out first (they may
/// hold a `;`).
fn statements(sql: &str) -> Vec<String> {
    let code: Vec<&str> = sql
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect();
    code.join("\n")
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_online_script_runs_statement_by_statement_without_its_comments() {
        let sql = "-- why; and how\ndrop index concurrently if exists a;\n\
                   create index concurrently a on t (c);\n";
        assert_eq!(
            statements(sql),
            [
                "drop index concurrently if exists a",
                "create index concurrently a on t (c)"
            ]
        );
    }

    #[test]
    fn online_scripts_only_build_indexes_concurrently() {
        for script in migrate::POSTGRES.iter().filter(|s| s.online) {
            for statement in statements(script.sql) {
                assert!(
                    statement.starts_with("drop index concurrently if exists ")
                        || statement.starts_with("create index concurrently "),
                    "{}: {statement}",
                    script.name
                );
            }
        }
    }
}
