//! Shared by the engine's tests: where their manual clocks start, the admin caller, a plain
//! create request, an engine over an in-memory database or a PostgreSQL one, and, for the
//! seeded tests
//! (`simulation/`, `promise.rs`), a small random generator, so that a seed gives the same
//! history everywhere and a failing one can be run again.

// Each test binary compiles this module and uses its own part of it.
#![allow(dead_code)]

use std::sync::Arc;

use lapse_core::{Config, SessionId, Span, Timestamp, UserId};
use lapse_engine::ops::CreateRequest;
use lapse_engine::{Caller, Clock, Engine};
use lapse_store::SqliteStore;

/// Where the manual clocks start.
pub fn t0() -> Timestamp {
    "2026-03-02T08:00:00Z".parse().unwrap()
}

/// An operator with every right.
pub fn admin() -> Caller {
    Caller::Admin {
        name: "test".into(),
        actor: None,
    }
}

/// A create of a `kind` session named `id`, hosted by `host`, with nothing else set.
pub fn create(kind: &str, id: &str, host: &str) -> CreateRequest {
    CreateRequest {
        id: Some(SessionId::parse(id).unwrap()),
        kind: kind.into(),
        title: None,
        metadata: None,
        host: Some(UserId::parse(host).unwrap()),
        parent: None,
        scheduled_start: None,
        scheduled_end: None,
    }
}

pub async fn engine() -> Arc<Engine> {
    engine_and_store().await.0
}

/// An engine over an in-memory database, and that database, to read what was written.
pub async fn engine_and_store() -> (Arc<Engine>, Arc<SqliteStore>) {
    let store = memory_store().await;
    (engine_over(store.clone()), store)
}

/// A migrated in-memory database.
pub async fn memory_store() -> Arc<SqliteStore> {
    let store = Arc::new(SqliteStore::open("sqlite::memory:", None).await.unwrap());
    lapse_core::Store::migrate(store.as_ref()).await.unwrap();
    store
}

/// One instance's store on the shared PostgreSQL database at `url`, migrated.
pub async fn postgres_instance(url: &str) -> Arc<lapse_store::PostgresStore> {
    let store = lapse_store::PostgresStore::open(url, None, None)
        .await
        .unwrap();
    lapse_core::Store::migrate(&store).await.unwrap();
    Arc::new(store)
}

/// An engine over `store`, with the built-in config and a manual clock at [`t0`].
pub fn engine_over(store: Arc<dyn lapse_core::Store>) -> Arc<Engine> {
    Engine::new(store, Arc::new(Config::default()), Clock::manual(t0()))
}

/// Opens study room `id` (hosted by `host`), now.
pub async fn open_study(engine: &Engine, id: &str) -> SessionId {
    engine
        .create(&admin(), request("study", id, None))
        .await
        .unwrap();
    SessionId::parse(id).unwrap()
}

/// A create of a `kind` session named `id`, hosted by `host`, scheduled to start `start`
/// after [`t0`] when given.
pub fn request(kind: &str, id: &str, start: Option<Span>) -> CreateRequest {
    CreateRequest {
        scheduled_start: start.map(|s| t0() + s),
        ..create(kind, id, "host")
    }
}

/// SplitMix64: small, fast, and the same everywhere.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One of `items`, if there are any.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.below(items.len() as u64) as usize])
    }
}
