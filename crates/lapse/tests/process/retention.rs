//! Retention runs in `lapse serve` whatever the sweeper's mode: with the sweeper on a
//! schedule that never comes, history past its period still goes, from the start, and the
//! rest stays.

use std::time::{Duration, Instant};

use std::sync::Arc;

use lapse_core::{Config, SessionId, Span, Timestamp, UserId};
use lapse_engine::ops::CreateRequest;
use lapse_engine::{Caller, Clock, Engine};

use crate::ledger::{Ledger, config_file, fresh_database, kinds};
use crate::running::{Lapse, wall_ms};

fn config() -> String {
    format!(
        "[sweeper]\nmode = \"schedule\"\ncron = \"0 0 1 1 *\"\n\n[retention]\nevents = \"1h\"\n{}",
        kinds("1d")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_past_its_period_goes_with_the_sweeper_on_a_schedule_on_sqlite() {
    history_goes_with_the_sweeper_on_a_schedule(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_past_its_period_goes_with_the_sweeper_on_a_schedule_on_postgres() {
    history_goes_with_the_sweeper_on_a_schedule(true).await;
}

async fn history_goes_with_the_sweeper_on_a_schedule(postgres: bool) {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = fresh_database(dir.path(), postgres).await else {
        return;
    };
    let (config_path, config) = config_file(dir.path(), &config());
    // History made through the engine, on clocks two hours ago and now: sessions, each with
    // its `session.created` event.
    let now = Timestamp::from_millis(wall_ms());
    make(&url, &config, "old", 30, now - Span::from_secs(2 * 3600)).await;
    make(&url, &config, "new", 5, now).await;
    let ledger = Ledger::open(&url).await;
    let before = ledger.events_by_session().await;
    assert_eq!(before.keys().filter(|s| s.starts_with("old")).count(), 30);

    let lapse = Lapse::start(&url, &config_path, dir.path().join("lapse.log")).await;
    let waited = Instant::now();
    let after = loop {
        let after = ledger.events_by_session().await;
        if !after.keys().any(|s| s.starts_with("old")) {
            break after;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "history two hours old is still there 30 s after start: {} sessions' events\n{}",
            after.keys().filter(|s| s.starts_with("old")).count(),
            lapse.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        after.keys().filter(|s| s.starts_with("new")).count(),
        5,
        "history within its period stays"
    );
    lapse.terminate();
    ledger.close().await;
}

/// `count` sessions of kind `kept` named `{prefix}{n}`, made through an engine whose clock
/// reads `at`.
async fn make(url: &str, config: &Config, prefix: &str, count: usize, at: Timestamp) {
    let store = lapse_store::open(url, None, None)
        .await
        .expect("the database opens");
    store.migrate().await.expect("migrate");
    let engine = Engine::new(store, Arc::new(config.clone()), Clock::manual(at));
    let admin = Caller::Admin {
        name: "test".into(),
        actor: None,
    };
    for n in 0..count {
        let request = CreateRequest {
            id: Some(SessionId::parse(&format!("{prefix}{n}")).unwrap()),
            kind: "kept".into(),
            title: None,
            metadata: None,
            host: Some(UserId::parse("h0").unwrap()),
            parent: None,
            scheduled_start: None,
            scheduled_end: None,
        };
        engine.create(&admin, request).await.expect("created");
    }
}
