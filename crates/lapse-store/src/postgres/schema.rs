//! Bringing a PostgreSQL database's schema up to date, while other instances may be serving
//! from it (a rolling upgrade).
//!
//! The scripts run in one transaction, under an advisory lock, so instances starting together
//! migrate one at a time and the loser finds the work done. A script marked
//! [`Script::online`] builds an index on a table that may be large: inside that transaction
//! the build would hold back every write to the table until it finished, minutes on a big one.
//! So online scripts run afterwards, outside any transaction, statement by statement (`create
//! index concurrently`), under a session's advisory lock on a connection of their own, which
//! closes when they are done. Each begins by dropping what an interrupted build left behind,
//! and counts as done only once it has finished.

use sqlx::Connection as _;
use sqlx::postgres::{PgConnection, PgPool};

use lapse_core::StoreError;

use super::leases::wall_now;
use super::{MIGRATION_LOCK, lock_until_commit};
use crate::backend;
use crate::migrate::{self, Script};

/// Applies every script `pool`'s database has not had yet.
pub(super) async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let mut tx = pool.begin().await.map_err(backend)?;
    lock_until_commit(&mut tx, MIGRATION_LOCK).await?;
    sqlx::query(
        "create table if not exists lapse_migrations (version bigint primary key, \
         name text not null, applied_at bigint not null)",
    )
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    let done = applied(&mut tx).await?;
    for script in pending(&done).filter(|s| !s.online) {
        sqlx::raw_sql(script.sql)
            .execute(&mut *tx)
            .await
            .map_err(|e| failed(script, e))?;
        record(&mut tx, script).await?;
    }
    tx.commit().await.map_err(backend)?;
    if pending(&done).any(|s| s.online) {
        build_online(pool).await?;
    }
    Ok(())
}

/// Runs the online scripts not yet applied, under the migration lock held by a connection of
/// their own (closed at the end, which lets the lock go even if a statement failed).
async fn build_online(pool: &PgPool) -> Result<(), StoreError> {
    let mut conn = PgConnection::connect_with(&pool.connect_options())
        .await
        .map_err(backend)?;
    // A build takes as long as its table needs, whatever `[database] statement_timeout` says.
    sqlx::raw_sql("set statement_timeout = 0")
        .execute(&mut conn)
        .await
        .map_err(backend)?;
    sqlx::query("select pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut conn)
        .await
        .map_err(backend)?;
    let result = async {
        // Another instance may have built them while this one waited for the lock.
        let done = applied(&mut conn).await?;
        for script in pending(&done).filter(|s| s.online) {
            tracing::info!(
                migration = script.name,
                "building an index; writes go on meanwhile"
            );
            for statement in statements(script.sql) {
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                    .execute(&mut conn)
                    .await
                    .map_err(|e| failed(script, e))?;
            }
            record(&mut conn, script).await?;
        }
        Ok(())
    }
    .await;
    let _ = conn.close().await;
    result
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
/// transaction, where `concurrently` is refused. Comment lines are left out.
fn statements(sql: &'static str) -> impl Iterator<Item = String> {
    sql.split(';').filter_map(|part| {
        let text: Vec<&str> = part
            .lines()
            .filter(|line| !line.trim_start().starts_with("--"))
            .collect();
        let text = text.join("\n").trim().to_string();
        (!text.is_empty()).then_some(text)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_online_script_runs_statement_by_statement_without_its_comments() {
        let sql = "-- why\n-- and how\ndrop index concurrently if exists a;\n\
                   create index concurrently a on t (c);\n";
        assert_eq!(
            statements(sql).collect::<Vec<_>>(),
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
