//! The store's SQLite connections, held by the store itself rather than by a `sqlx` pool.
//!
//! Each connection runs its statements on a thread of its own, and every call to it is a
//! round trip to that thread. A `sqlx` pool adds one more for each connection it takes back:
//! it pings the connection on its way in, from a task of its own, before the next caller may
//! have it. For a socket that catches a dead peer; for a library handle in this process there
//! is none to catch. So the store keeps its connections here: a caller takes one, uses it and
//! puts it back as it drops it, with nothing sent to its thread in between.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{Semaphore, SemaphorePermit};

use lapse_core::StoreError;

use crate::backend;

/// A fixed number of connections to one database, each used by one caller at a time.
pub(super) struct Conns {
    /// The connections no caller holds. There is one for each permit of `free` (or fewer,
    /// after a connection that could not be opened again: the next caller opens it).
    idle: Mutex<Vec<SqliteConnection>>,
    /// One permit for each connection; a caller waits for one.
    free: Semaphore,
    options: SqliteConnectOptions,
    /// Whether a connection found inside a transaction is opened afresh (see [`Conns::get`]).
    /// Never for an in-memory database, which lives only as long as its connection.
    reopen: bool,
}

impl Conns {
    /// Opens `n` connections with `options`, now, from the calling thread.
    ///
    /// Each connection's thread takes the scheduling priority of the thread that opened it.
    /// `lapse serve` opens its store at start and runs its request threads at a lower
    /// priority so that the sweeper goes first (`lapse::priority`): opened on demand by a
    /// request, a connection would run the sweeper's reads behind the requests. A connection
    /// that fails later is opened again by whoever needs it next.
    pub(super) async fn open(
        options: &SqliteConnectOptions,
        n: usize,
        reopen: bool,
    ) -> Result<Conns, sqlx::Error> {
        let mut idle = Vec::with_capacity(n);
        for _ in 0..n {
            idle.push(options.connect().await?);
        }
        Ok(Conns {
            idle: Mutex::new(idle),
            free: Semaphore::new(n),
            options: options.clone(),
            reopen,
        })
    }

    /// A connection of this caller's own until it drops it. It waits for one at most
    /// [`crate::ACQUIRE_TIMEOUT`], then fails as [`StoreError::Busy`].
    ///
    /// A connection left inside a transaction (a write whose COMMIT failed with a full disk
    /// can leave SQLite's transaction open, and the ROLLBACK queued after it can fail too) is
    /// closed, which rolls it back, and opened afresh: it would otherwise take every later
    /// write into that transaction, never committed, holding the write lock. The check costs
    /// nothing after a write that committed (the transaction depth is already zero).
    pub(super) async fn get(&self) -> Result<Conn<'_>, StoreError> {
        let permit = tokio::time::timeout(crate::ACQUIRE_TIMEOUT, self.free.acquire())
            .await
            .map_err(|_| StoreError::Busy)?
            // The semaphore is never closed.
            .map_err(|_| StoreError::Busy)?;
        let taken = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut conn = match taken {
            Some(conn) => conn,
            None => self.options.connect().await.map_err(backend)?,
        };
        if self.reopen && conn.is_in_transaction() {
            // A rollback may be queued on the connection still: let it run, then look again.
            let _ = conn.ping().await;
            if conn.is_in_transaction() {
                tracing::warn!("a failed write left its transaction open; reconnecting");
                let _ = conn.close().await;
                conn = self.options.connect().await.map_err(backend)?;
            }
        }
        Ok(Conn {
            conn: Some(conn),
            home: self,
            _permit: permit,
        })
    }
}

/// A connection taken from [`Conns`]; it goes back when dropped.
pub(super) struct Conn<'a> {
    /// Always `Some` until dropped.
    conn: Option<SqliteConnection>,
    home: &'a Conns,
    /// Given back after the connection (fields drop after `drop` has run).
    _permit: SemaphorePermit<'a>,
}

impl Deref for Conn<'_> {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        // `conn` is taken only in `drop`.
        self.conn.as_ref().expect("a held connection")
    }
}

impl DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        // `conn` is taken only in `drop`.
        self.conn.as_mut().expect("a held connection")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.home
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn);
        }
    }
}
