//! Group commit (SQLite): requests' changes written many to a transaction by the committer
//! get the answers they would get written alone, and nothing handed to it is lost when it
//! stops.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use lapse_core::intercept::{Call, Hook, Intercepted};
use lapse_core::{Config, SessionId, Store, StoreError};
use lapse_engine::{Clock, Engine, EngineError};
use lapse_store::SqliteStore;
use tokio_util::sync::CancellationToken;

mod common;
use common::{admin, create, t0};

/// Counts the store's write transactions.
#[derive(Default)]
struct Transactions(AtomicUsize);

impl Hook for Transactions {
    type Ticket = ();

    fn before(&self, call: Call) -> Result<(), StoreError> {
        if call.name == "commit_many" {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

const CONFIG: &str = r#"
[kinds.repair]
max_open_per_host = 1
[kinds.room]
"#;

async fn engine(dir: &tempfile::TempDir) -> (Arc<Engine>, Arc<dyn Store>, Arc<Transactions>) {
    let url = format!("sqlite://{}", dir.path().join("lapse.db").display());
    let store = SqliteStore::open(&url, None).await.unwrap();
    store.migrate().await.unwrap();
    let store: Arc<dyn Store> = Arc::new(store);
    let transactions = Arc::new(Transactions::default());
    let engine = Engine::new(
        Arc::new(Intercepted::new(store.clone(), transactions.clone())),
        Arc::new(Config::parse(CONFIG, "test.toml").unwrap()),
        Clock::manual(t0()),
    );
    (engine, store, transactions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_written_together_are_answered_as_if_written_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, store, transactions) = engine(&dir).await;
    let stop = CancellationToken::new();
    let committer = tokio::spawn({
        let (engine, stop) = (engine.clone(), stop.clone());
        async move { engine.run_committer(stop).await }
    });
    // It takes its place before `lapse serve` takes requests.
    while !engine.group_commits() {
        tokio::task::yield_now().await;
    }
    let before = transactions.0.load(Ordering::SeqCst);

    // 300 creates at once: 280 distinct rooms, one id asked for 10 times, and 10 repairs of
    // one host, who may have one open.
    let mut asks = Vec::new();
    for i in 0..280 {
        asks.push(create("room", &format!("room-{i}"), &format!("h{i}")));
    }
    for _ in 0..10 {
        asks.push(create("room", "taken", "t"));
    }
    for i in 0..10 {
        asks.push(create("repair", &format!("repair-{i}"), "ana"));
    }
    let asked: Vec<_> = asks
        .into_iter()
        .map(|ask| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.create(&admin(), ask).await })
        })
        .collect();
    let mut answers: Vec<Result<_, EngineError>> = Vec::new();
    for ask in asked {
        answers.push(ask.await.unwrap());
    }

    assert!(
        answers[..280].iter().all(Result::is_ok),
        "every room is created"
    );
    let taken: Vec<_> = answers[280..290].iter().collect();
    assert_eq!(taken.iter().filter(|a| a.is_ok()).count(), 1, "{taken:?}");
    assert!(
        taken
            .iter()
            .filter_map(|a| a.as_ref().err())
            .all(|e| matches!(e, EngineError::Conflict(_))),
        "the others find the id taken: {taken:?}"
    );
    let repairs: Vec<_> = answers[290..].iter().collect();
    assert_eq!(
        repairs.iter().filter(|a| a.is_ok()).count(),
        1,
        "{repairs:?}"
    );
    assert!(
        repairs
            .iter()
            .filter_map(|a| a.as_ref().err())
            .all(|e| matches!(e, EngineError::HostHasOpenSession { .. })),
        "the host limit holds inside a shared transaction: {repairs:?}"
    );
    for i in 0..280 {
        let id = SessionId::parse(&format!("room-{i}")).unwrap();
        assert!(store.load(&id).await.unwrap().is_some(), "{id} is stored");
    }
    let written = transactions.0.load(Ordering::SeqCst) - before;
    assert!(
        written < 200,
        "300 creates asked at once share transactions ({written} written)"
    );

    // Stopped, it has written everything handed to it; later changes are written directly.
    stop.cancel();
    committer.await.unwrap();
    assert!(!engine.group_commits());
    engine
        .create(&admin(), create("room", "after", "late"))
        .await
        .unwrap();
    let after = SessionId::parse("after").unwrap();
    assert!(store.load(&after).await.unwrap().is_some());
}
