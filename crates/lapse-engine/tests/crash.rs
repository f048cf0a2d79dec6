//! What a crash loses of acknowledged heartbeats (SPEC §7): never what could bring an idle
//! rule early. An engine dropped without a flush stands for an instance killed with `kill -9`;
//! another engine over the same database takes over, as an instance started again does.
//!
//! A beat waits in memory only while its room's stored activity is within the idle grace of
//! it; any other beat is written before it is answered. So whatever a crash loses, the rule
//! fires no sooner than the idle time after the last acknowledged beat.

use std::sync::Arc;

use lapse_core::{Config, SessionId, Span, Timestamp, UserId};
use lapse_engine::{Clock, Engine, SweepOptions};
use lapse_store::SqliteStore;

mod common;
use common::{Rng, admin, create, memory_store, t0};

/// The room's idle rule.
const IDLE: Span = Span::from_secs(60);

fn config() -> Arc<Config> {
    let text = r#"
[kinds.room]
[[kinds.room.rules]]
name = "expire-idle"
on = "idle"
after = "60s"
do = "expire"
"#;
    Arc::new(Config::parse(text, "crash.toml").unwrap())
}

/// An engine over `store` whose manual clock reads `now`: a new instance, nothing in memory.
fn instance(store: &Arc<SqliteStore>, now: Timestamp) -> Arc<Engine> {
    Engine::new(store.clone(), config(), Clock::manual(now))
}

/// Sweeps every 100 ms from the engine's clock until the room expires; when it did.
async fn expiry(engine: &Engine, until: Timestamp) -> Option<Timestamp> {
    while engine.now() <= until {
        let report = engine.sweep_once(&SweepOptions::default()).await.unwrap();
        if !report.applied.is_empty() {
            return Some(engine.now());
        }
        engine.clock().advance(Span::from_millis(100)).unwrap();
    }
    None
}

#[tokio::test]
async fn a_beat_after_a_silence_longer_than_the_grace_survives_a_crash() {
    let store = memory_store().await;
    let (room, host) = (
        SessionId::parse("r").unwrap(),
        UserId::parse("host").unwrap(),
    );
    let first = instance(&store, t0());
    first
        .create(&admin(), create("room", "r", "host"))
        .await
        .unwrap();
    // Fifteen seconds of silence, then a beat, acknowledged; the instance dies before its
    // next flush.
    first.clock().advance(Span::from_secs(15)).unwrap();
    first.heartbeat(&admin(), &room, &host).await.unwrap();
    assert_eq!(
        first.pending_heartbeats(),
        0,
        "written before it was answered"
    );
    let acknowledged = first.now();
    drop(first);

    let next = instance(&store, acknowledged + IDLE - Span::from_secs(1));
    let expired = expiry(&next, acknowledged + IDLE + Span::from_secs(5)).await;
    let expired = expired.expect("the room expires once idle");
    assert!(
        expired >= acknowledged + IDLE,
        "expired at {expired}, before the idle time after the beat acknowledged at {acknowledged}"
    );
}

/// Random beats at random gaps, some under the idle grace and some over it, through
/// instances killed at random moments (some before they flushed anything, one after
/// another); then silence. The room must expire, and no sooner than the idle time after the
/// last beat acknowledged. `LAPSE_CRASH_SEEDS=N` runs more seeds; a failure names its seed.
#[tokio::test]
async fn no_crash_brings_an_idle_rule_before_the_idle_time_after_the_last_acknowledged_beat() {
    let seeds: u64 = std::env::var("LAPSE_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    for seed in 0..seeds {
        let mut rng = Rng(seed);
        let store = memory_store().await;
        let (room, host) = (
            SessionId::parse("r").unwrap(),
            UserId::parse("host").unwrap(),
        );
        let mut engine = instance(&store, t0());
        engine
            .create(&admin(), create("room", "r", "host"))
            .await
            .unwrap();
        let mut acknowledged = engine.now();
        let mut crashes = 0;
        for _ in 0..30 {
            engine
                .clock()
                .advance(Span::from_millis(rng.below(4_000) as i64))
                .unwrap();
            if rng.chance(30) {
                // Killed: its pending beats are lost.
                let now = engine.now();
                engine = instance(&store, now);
                crashes += 1;
            } else if rng.chance(20) {
                engine.flush_heartbeats().await.unwrap();
            }
            engine.heartbeat(&admin(), &room, &host).await.unwrap();
            acknowledged = engine.now();
        }
        if rng.chance(50) {
            let now = engine.now();
            engine = instance(&store, now);
            crashes += 1;
        }
        // Swept first 2 s before the idle time is up: an expiry due any earlier is applied by
        // that sweep, and seen.
        let wait = (acknowledged + IDLE - Span::from_secs(2)).since(engine.now());
        engine.clock().advance(wait).unwrap();
        let grace = lapse_engine::heartbeats::IDLE_GRACE;
        let expired = expiry(
            &engine,
            acknowledged + IDLE + grace + Span::from_millis(100),
        )
        .await;
        let expired = expired.unwrap_or_else(|| {
            panic!("seed {seed}: the room did not expire by the idle time and the grace")
        });
        assert!(
            expired >= acknowledged + IDLE,
            "seed {seed} ({crashes} crashes): expired at {expired}, before the idle time after \
             the last beat acknowledged at {acknowledged}"
        );
    }
}
