//! Due rows on PostgreSQL, leased to the sweeper that reads them so that concurrent sweepers
//! take disjoint batches. A lease names its holder, whose own connection holds an advisory
//! lock for as long as the store lives: the lease of an instance that died is taken at once,
//! and a sweep that fails gives its leases back.

use std::time::Duration;

use lapse_core::store::DueRow;
use lapse_core::{SessionId, StoreError, Timestamp};
use sqlx::{Connection, PgConnection, Row};

use super::PostgresStore;
use super::reads::query;
use crate::backend;
use crate::statements::{self, Dialect};

/// How long a sweeper's lease on a due row lasts if it neither writes the row nor gives it
/// back (it crashed, or lost the database as its sweep failed).
pub(super) const LEASE: Duration = Duration::from_secs(60);
/// Gives back this holder's leases on some rows, by primary key.
pub(super) const RELEASE: &str =
    "update sessions set claimed_until = null where id = any($1) and claimed_by = $2";
/// The advisory-lock namespace of lease holders: an instance holds `(LEASE_HOLDERS, its
/// number)` on a connection of its own for as long as it lives (see `Holder`).
pub(crate) const LEASE_HOLDERS: i32 = 0x6c61_7073; // "laps"

/// A connection of a store's own that holds the advisory lock `(LEASE_HOLDERS, number)` for
/// as long as the store lives: the database then knows whether a lease's holder is alive,
/// for the lock goes with the connection, however the process ends.
pub(super) struct Holder {
    number: i32,
    connection: PgConnection,
    /// When the connection (and so the lock) was last seen alive.
    checked: std::time::Instant,
}

/// How long a lease holder's connection is trusted without a look: a claim made later first
/// checks it is still there (a database restart or a network cut ends it, and the lock with it).
const HOLDER_CHECKED_FOR: Duration = Duration::from_secs(1);

/// The wall clock, in milliseconds: leases run out by it, whatever clock the engine keeps
/// (a manual one in tests), since other instances read them.
pub(super) fn wall_now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl PostgresStore {
    /// This store's number as a lease holder, taken (with its lock) on first use: a number
    /// from the clock and the process id, or the next free one. If the holder's connection
    /// has gone since (the lock went with it, so its leases are free to others already), a new
    /// one is taken.
    pub(super) async fn holder(&self) -> Result<i32, StoreError> {
        let mut holder = self.holder.lock().await;
        if let Some(h) = holder.as_mut() {
            if h.checked.elapsed() < HOLDER_CHECKED_FOR {
                return Ok(h.number);
            }
            match h.connection.ping().await {
                Ok(()) => {
                    h.checked = std::time::Instant::now();
                    return Ok(h.number);
                }
                Err(e) => {
                    tracing::warn!(error = %e, number = h.number, "lease holder connection lost; taking a new one");
                    *holder = None;
                }
            }
        }
        let mut connection = PgConnection::connect_with(&self.pool.connect_options())
            .await
            .map_err(backend)?;
        let mut number = ((wall_now() as u32) ^ std::process::id()) as i32 & i32::MAX;
        loop {
            let taken: bool = sqlx::query_scalar("select pg_try_advisory_lock($1, $2)")
                .bind(LEASE_HOLDERS)
                .bind(number)
                .fetch_one(&mut connection)
                .await
                .map_err(backend)?;
            if taken {
                break;
            }
            number = number.wrapping_add(1) & i32::MAX;
        }
        *holder = Some(Holder {
            number,
            connection,
            checked: std::time::Instant::now(),
        });
        Ok(number)
    }
}

/// Due rows in deadline order behind `cursor`; with `claim`, leased to this store.
pub(super) async fn due(
    store: &PostgresStore,
    now: Timestamp,
    kind: Option<&str>,
    cursor: Option<&DueRow>,
    limit: u32,
    claim: bool,
) -> Result<Vec<DueRow>, StoreError> {
    let wall = wall_now();
    let rows = if claim {
        // Lease the rows no live sweeper holds.
        let mut st = statements::due_sessions(
            Dialect::Postgres,
            now.millis(),
            kind,
            cursor,
            limit,
            Some(wall),
        );
        let until = format!("${}", st.args.len() + 1);
        let holder = format!("${}", st.args.len() + 2);
        st.sql = format!(
            "with picked as ({} for update skip locked) \
             update sessions s set claimed_until = {until}, claimed_by = {holder} \
             from picked where s.id = picked.id returning s.id, s.next_due_at",
            st.sql
        );
        let holder = store.holder().await?;
        query(&st)
            .bind(wall + LEASE.as_millis() as i64)
            .bind(holder)
            .fetch_all(&store.pool)
            .await
    } else {
        let st =
            statements::due_sessions(Dialect::Postgres, now.millis(), kind, cursor, limit, None);
        query(&st).fetch_all(&store.pool).await
    }
    .map_err(backend)?;
    let mut due = rows
        .iter()
        .map(|r| {
            let id: String = r.try_get("id").map_err(backend)?;
            let at: i64 = r.try_get("next_due_at").map_err(backend)?;
            Ok(DueRow {
                id: SessionId::parse(&id).map_err(|e| StoreError::Backend(e.to_string()))?,
                at: Timestamp::from_millis(at),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    // `update ... returning` keeps no order.
    due.sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
    Ok(due)
}

/// Gives this store's leases on `ids` back.
pub(super) async fn release(store: &PostgresStore, ids: &[SessionId]) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut holder = store.holder.lock().await;
    // Never a holder, nothing leased.
    let Some(h) = holder.as_mut() else {
        return Ok(());
    };
    // On the holder's own connection: a sweep fails most often for want of a free
    // connection in the pool, and giving its rows back must not wait for one. If that
    // connection is gone, so is the lock, and the leases are free already.
    let ids: Vec<&str> = ids.iter().map(SessionId::as_str).collect();
    sqlx::query(RELEASE)
        .bind(ids)
        .bind(h.number)
        .execute(&mut h.connection)
        .await
        .map_err(backend)?;
    Ok(())
}
