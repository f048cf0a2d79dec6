//! Storage for lapse: implementations of [`lapse_core::Store`].
//!
//! - [`sqlite`]: the embedded default, one file, zero configuration.
//! - [`postgres`]: one database shared by several stateless instances.
//! - `batch`: a sweep's page of transitions gathered for set-based writes, both backends.
//! - [`migrate`]: the small versioned-script runner both backends use.
//! - [`rows`]: turning stored columns back into sessions and events.
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
    StoreError::Backend(e.to_string())
}
