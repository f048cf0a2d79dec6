//! Changes announced between instances: a commit that stores a deadline, appends events or
//! puts other rules in force says so with `pg_notify` inside its transaction (delivered at
//! commit), and every instance's watcher hears it. The payload is written and read here
//! only: `d<ms>` a stored deadline, `e` new events, `r` other rules.

use lapse_core::store::{Change, ChangeCallback};
use lapse_core::{StoreError, Timestamp};
use sqlx::postgres::{PgListener, PgPool};
use sqlx::{Postgres, Transaction};

use crate::backend;

/// The channel changes are announced on.
const CHANNEL: &str = "lapse_changes";

/// Tells every instance (this one included) of `change` once `tx` commits.
pub(super) async fn announce(
    tx: &mut Transaction<'_, Postgres>,
    change: Change,
) -> Result<(), StoreError> {
    let payload = match change {
        Change::Deadline(at) => format!("d{}", at.millis()),
        Change::Events => "e".into(),
        Change::Rules => "r".into(),
    };
    sqlx::query("select pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    Ok(())
}

/// Calls `seen` with every change announced, for as long as the connection can be kept.
pub(super) async fn watch(pool: &PgPool, seen: ChangeCallback) -> Result<(), StoreError> {
    let mut listener = PgListener::connect_with(pool).await.map_err(backend)?;
    listener.listen(CHANNEL).await.map_err(backend)?;
    loop {
        // `recv` reconnects and re-listens by itself after a dropped connection.
        let n = listener.recv().await.map_err(backend)?;
        let payload = n.payload();
        if payload == "e" {
            seen(Change::Events);
        } else if payload == "r" {
            seen(Change::Rules);
        } else if let Some(ms) = payload.strip_prefix('d').and_then(|m| m.parse().ok()) {
            seen(Change::Deadline(Timestamp::from_millis(ms)));
        }
    }
}
