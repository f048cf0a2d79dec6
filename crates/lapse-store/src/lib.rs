//! Storage for lapse: implementations of [`lapse_core::Store`].
//!
//! - [`sqlite`]: the embedded default, one file, zero configuration.
//! - [`postgres`]: one database shared by several stateless instances.
//! - `batch`: a sweep's page of transitions gathered for set-based writes, both backends.
//! - [`migrate`]: the small versioned-script runner both backends use.
//! - `rows`: turning stored columns back into sessions and events.
//! - `statements`: the reads whose shape follows the filters given, for both dialects.
//! - [`testing`]: throwaway databases for tests.
//!
//! All SQL of the project lives in this crate, one statement per function, named after what
//! it does.

mod batch;
pub mod migrate;
pub mod postgres;
mod rows;
pub mod sqlite;
mod statements;
pub mod testing;

use std::sync::Arc;

use lapse_core::{Store, StoreError};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Longest a call waits for a free connection (on PostgreSQL, or for a new one to open)
/// before it fails as [`StoreError::Busy`]: in an outage the first request is answered within
/// a second (the rest at once, see `lapse_engine::outage`) rather than hanging, and under a
/// burst beyond what the connections serve a request is refused rather than queued without
/// bound.
pub const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(750);

/// Opens a pool and its first connection, waiting up to `wait` for that connection where a
/// call waits [`ACQUIRE_TIMEOUT`]: a server merely slow to answer the first time (starting
/// beside lapse, or under load) is tried again until then, with a line in the log, since
/// failing `lapse serve` at start for that helps no one. Any other error (a bad path, no
/// permission, a wrong password) fails at once. `shown` names the database in messages,
/// without its password.
pub(crate) async fn open_pool<DB: sqlx::Database>(
    pool: sqlx::pool::PoolOptions<DB>,
    options: &<DB::Connection as sqlx::Connection>::Options,
    wait: std::time::Duration,
    shown: &str,
) -> Result<sqlx::Pool<DB>, StoreError> {
    let give_up = std::time::Instant::now() + wait;
    loop {
        match pool.clone().connect_with(options.clone()).await {
            Ok(pool) => return Ok(pool),
            Err(sqlx::Error::PoolTimedOut) if std::time::Instant::now() < give_up => {
                tracing::info!(
                    database = shown,
                    "the database is slow to answer; still trying"
                );
            }
            Err(e) => return Err(StoreError::Backend(format!("cannot open {shown}: {e}"))),
        }
    }
}

/// Opens the store a database URL names (`sqlite://path`, `sqlite::memory:`,
/// `postgres://...`), without migrating it.
pub async fn open(
    url: &str,
    pool_size: Option<u32>,
    statement_timeout: Option<std::time::Duration>,
) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        return Ok(Arc::new(SqliteStore::open(url, pool_size).await?));
    }
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        return Ok(Arc::new(
            PostgresStore::open(url, pool_size, statement_timeout).await?,
        ));
    }
    Err(StoreError::Backend(format!(
        "unsupported database url `{}`: use sqlite://path or postgres://user@host/db",
        redact(url)
    )))
}

/// The URL with any password replaced, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

pub(crate) fn backend(e: sqlx::Error) -> StoreError {
    if matches!(e, sqlx::Error::PoolTimedOut) {
        StoreError::Busy
    } else if unavailable(&e) {
        StoreError::Unavailable(e.to_string())
    } else if rolled_back(&e) {
        StoreError::RolledBack
    } else {
        StoreError::Backend(e.to_string())
    }
}

/// Whether PostgreSQL rolled the transaction back to break a deadlock (40P01) or a
/// serialization failure (40001).
fn rolled_back(e: &sqlx::Error) -> bool {
    e.as_database_error().is_some_and(|db| {
        db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .is_some()
            && matches!(db.code().as_deref(), Some("40P01" | "40001"))
    })
}

/// Whether `e` says the database is out of reach for now rather than that the statement is
/// wrong: the same call may succeed once it is back.
fn unavailable(e: &sqlx::Error) -> bool {
    use sqlx::Error as E;
    match e {
        E::Io(_) | E::Tls(_) | E::PoolClosed | E::WorkerCrashed => true,
        E::Database(db) => {
            let code = db.code().unwrap_or_default();
            if db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some()
            {
                // Class 08: connection exceptions; 57P01-57P03: the server is shutting down
                // or starting; 53100: disk full.
                code.starts_with("08") || code.starts_with("57P0") || code == "53100"
            } else {
                // SQLite's primary result code (the low byte of the extended one): BUSY past
                // the busy timeout, READONLY, IOERR, FULL, CANTOPEN.
                let primary = code.parse::<i32>().map_or(0, |c| c & 0xff);
                matches!(primary, 5 | 8 | 10 | 13 | 14)
            }
        }
        _ => false,
    }
}
