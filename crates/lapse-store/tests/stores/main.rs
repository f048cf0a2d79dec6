//! Each store's promises to the engine, on SQLite and on PostgreSQL: compare-and-set on every
//! write, heartbeat flushes that beat stale decisions without touching the deadline column, and
//! due rows read in deadline order behind a cursor. Here, the helpers every test shares; the
//! tests, by what they are about, in `stores/`.

use lapse_core::lifecycle::{self, By, Effects, NewSession};
use lapse_core::store::{
    Beat, Commit, DueRow, HostLimit, Rearm, RearmOnly, SessionQuery, SessionWrite,
};
use lapse_core::{Config, Session, SessionId, Span, Store, StoreError, Timestamp, UserId};
use lapse_store::{PostgresStore, SqliteStore};

mod events;
mod heartbeats;
mod opening;
mod retention;
mod rules;
mod sessions;
mod sweeps;

fn t0() -> Timestamp {
    "2026-02-01T12:00:00Z".parse().unwrap()
}

/// Every store this machine can test: SQLite always, PostgreSQL when a test server is set.
async fn stores() -> Vec<(Box<dyn Store>, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let mut stores: Vec<(Box<dyn Store>, tempfile::TempDir)> =
        vec![(Box::new(SqliteStore::open(&url, None).await.unwrap()), dir)];
    if let Some(url) = lapse_store::testing::fresh_postgres_database().await {
        let pg = PostgresStore::open(&url, None, None).await.unwrap();
        stores.push((Box::new(pg), tempfile::tempdir().unwrap()));
    }
    for (s, _) in &stores {
        s.migrate().await.unwrap();
        s.migrate().await.unwrap(); // twice: migrating is idempotent
    }
    stores
}

fn session(kind: &str, id: &str, at: Timestamp) -> Session {
    let config = Config::default();
    let kind = &config.kinds[kind];
    let input = NewSession {
        title: None,
        metadata: None,
        host: UserId::parse("host").unwrap(),
        parent: None,
        scheduled_start: None,
        scheduled_end: None,
    };
    let mut fx = Effects::default();
    let mut s = lifecycle::create(
        kind,
        SessionId::parse(id).unwrap(),
        input,
        None,
        at,
        &By::system(),
        &mut fx,
    )
    .unwrap();
    s.observe(kind, at);
    s
}

/// `s` with `users` joined at [`t0`], each as a member (`study` rules).
fn with_joined(mut s: Session, users: &[&str]) -> Session {
    let config = Config::default();
    for u in users {
        lifecycle::join(
            &config.kinds["study"],
            &mut s,
            &UserId::parse(u).unwrap(),
            None,
            lifecycle::Via::Direct,
            t0(),
            &By::system(),
            &mut Effects::default(),
        )
        .unwrap();
    }
    s
}

/// The stored session `id`, which must exist.
async fn loaded(store: &dyn Store, id: &str) -> Session {
    store
        .load(&SessionId::parse(id).unwrap())
        .await
        .unwrap()
        .unwrap()
}

async fn insert(store: &dyn Store, s: &Session) {
    store
        .commit(Commit {
            sessions: vec![SessionWrite::Insert(s.clone())],
            ..Commit::default()
        })
        .await
        .unwrap();
}

/// Two stores on one fresh PostgreSQL database, as two lapse instances; `None` without a
/// test server.
async fn two_postgres_instances() -> Option<(PostgresStore, PostgresStore)> {
    let url = lapse_store::testing::fresh_postgres_database().await?;
    let open = || async {
        let store = PostgresStore::open(&url, None, None).await.unwrap();
        store.migrate().await.unwrap();
        store
    };
    Some((open().await, open().await))
}

/// A PostgreSQL store on a fresh database, and a plain connection pool to the same database
/// for a test's own transactions; `None` without a test server.
async fn postgres_and_raw() -> Option<(PostgresStore, sqlx::PgPool)> {
    let url = lapse_store::testing::fresh_postgres_database().await?;
    let store = PostgresStore::open(&url, None, None).await.unwrap();
    store.migrate().await.unwrap();
    Some((store, sqlx::PgPool::connect(&url).await.unwrap()))
}
