//! `lapse backup`: a consistent copy of a SQLite database, taken while lapse keeps using it.

use std::path::Path;
use std::str::FromStr;

use lapse_core::StoreError;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};

use crate::backend;

/// What a backup holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backup {
    /// Sessions in the copy.
    pub sessions: i64,
    /// Events in the copy.
    pub events: i64,
    /// The copy's size.
    pub bytes: u64,
}

/// Copies the database at `url` to `to`, which must not exist yet. SQLite's `VACUUM INTO`
/// reads one snapshot, so the copy is consistent however many commits land meanwhile, and
/// writes it compacted into a single file (no write-ahead log beside it): restoring is putting
/// that file where `DATABASE_URL` points, with lapse stopped. Returns what the copy holds, as
/// read back from it.
pub async fn backup(url: &str, to: &Path) -> Result<Backup, StoreError> {
    if to.exists() {
        return Err(StoreError::Backend(format!(
            "{} already exists; a backup never overwrites a file",
            to.display()
        )));
    }
    let target = to
        .to_str()
        .ok_or_else(|| StoreError::Backend(format!("{} is not a UTF-8 path", to.display())))?;
    // No `create_if_missing`: backing up a database that is not there is an error, not an
    // empty copy.
    let source = SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::Backend(format!("bad sqlite url: {e}")))?;
    let mut conn = SqliteConnection::connect_with(&source)
        .await
        .map_err(|e| StoreError::Backend(format!("cannot open the database: {e}")))?;
    sqlx::query("vacuum into ?1")
        .bind(target)
        .execute(&mut conn)
        .await
        .map_err(backend)?;
    conn.close().await.map_err(backend)?;

    let mut copy = SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(to))
        .await
        .map_err(backend)?;
    let (sessions, events): (i64, i64) =
        sqlx::query_as("select (select count(*) from sessions), (select count(*) from events)")
            .fetch_one(&mut copy)
            .await
            .map_err(backend)?;
    copy.close().await.map_err(backend)?;
    let bytes = std::fs::metadata(to)
        .map_err(|e| StoreError::Backend(format!("{}: {e}", to.display())))?
        .len();
    Ok(Backup {
        sessions,
        events,
        bytes,
    })
}
