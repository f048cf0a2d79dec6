//! SIGTERM in the middle of a large sweep: lapse stops after the batch in hand, keeps the
//! heartbeats it acknowledged, and exits within its drain; started again, it applies the
//! rest, each session once.

use std::time::{Duration, Instant};

use lapse_core::{Span, Timestamp};
use serde_json::json;

use crate::ledger::{Ledger, by_session, config_file, fresh_database, import, kinds};
use crate::running::{Lapse, wall_ms};

fn config() -> String {
    format!("[server]\ndrain = \"5s\"\n{}", kinds("1h"))
}

/// Due at once when lapse starts: more than a debug build sweeps in the moments before the
/// test sends SIGTERM.
const DUE: usize = 40_000;
const KEPT: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_large_sweep_on_sqlite_exits_promptly_and_loses_nothing() {
    sigterm_during_a_large_sweep(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_large_sweep_on_postgres_exits_promptly_and_loses_nothing() {
    sigterm_during_a_large_sweep(true).await;
}

async fn sigterm_during_a_large_sweep(postgres: bool) {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = fresh_database(dir.path(), postgres).await else {
        return;
    };
    let (config_path, config) = config_file(dir.path(), &config());
    let now = Timestamp::from_millis(wall_ms());
    let hour_ago = now - Span::from_secs(3600);
    import(&url, &config, "storm", "storm", DUE, |_| hour_ago).await;
    import(&url, &config, "kept", "kept", KEPT, |_| now).await;
    let ledger = Ledger::open(&url).await;

    let mut lapse = Lapse::start(&url, &config_path, dir.path().join("first.log")).await;
    // The sweeper starts on the backlog at once; wait until it is well under way.
    let started = Instant::now();
    while ledger.expiries().await.len() < 1_000 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no sweep began:\n{}",
            lapse.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let beats: Vec<_> = (0..KEPT)
        .map(|n| json!({"session": format!("kept{n}-0"), "user": "h0"}))
        .collect();
    let beat_at = wall_ms();
    let (status, body) = lapse
        .post("/v1/heartbeats", &json!({ "beats": beats }))
        .await
        .expect("lapse answers");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], KEPT, "{body}");

    let signalled = Instant::now();
    lapse.terminate();
    let exit = lapse
        .exited_within(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("still running 10 s after SIGTERM:\n{}", lapse.log_text()));
    let took = signalled.elapsed();
    assert!(exit.success(), "exit status {exit}:\n{}", lapse.log_text());
    assert!(
        took < Duration::from_secs(5),
        "exited {took:?} after SIGTERM, past the 5 s drain:\n{}",
        lapse.log_text()
    );

    let stopped = ledger.expiries().await;
    assert!(
        stopped.len() < DUE,
        "the sweep had finished before SIGTERM: nothing here was stopped mid-sweep"
    );
    assert!(
        by_session(&stopped).values().all(|&n| n == 1),
        "a session expired twice"
    );
    let activity = ledger.activity().await;
    for n in 0..KEPT {
        let at = activity[&format!("kept{n}-0")];
        assert!(
            at >= beat_at - 1_000,
            "kept{n}-0: the heartbeat acknowledged before SIGTERM was lost (activity {at}, beat at {beat_at})"
        );
    }
    eprintln!(
        "SIGTERM mid-sweep: exited in {} ms with {} of {DUE} applied",
        took.as_millis(),
        stopped.len()
    );

    // Started again, lapse applies the rest: every due session exactly once.
    let mut lapse = Lapse::start(&url, &config_path, dir.path().join("second.log")).await;
    let started = Instant::now();
    while ledger.expiries().await.len() < DUE {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the rest was not applied after the restart:\n{}",
            lapse.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lapse.terminate();
    assert!(lapse.exited_within(Duration::from_secs(10)).await.is_some());
    let all = ledger.expiries().await;
    let per_session = by_session(&all);
    assert_eq!(per_session.len(), DUE, "every due session expired");
    assert!(
        per_session.values().all(|&n| n == 1),
        "no session expired twice"
    );
    let statuses = ledger.statuses().await;
    assert!(
        (0..KEPT).all(|n| statuses[&format!("kept{n}-0")] == "pending"),
        "sessions with nothing due are untouched"
    );
    ledger.close().await;
}
