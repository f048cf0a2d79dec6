//! When a held copy is current, and when the event feed says it is not.

use lapse_core::Config;

use super::*;

fn session(id: &str) -> Session {
    let config = Config::default();
    let now: Timestamp = "2026-03-02T08:00:00Z".parse().unwrap();
    let mut s = lapse_store::testing::synthetic_sessions(&config.kinds["study"], id, 1, 1, 0, now)
        .remove(0);
    s.id = SessionId::parse(id).unwrap();
    s
}

async fn later() {
    tokio::time::advance(Duration::from_millis(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_copy_read_before_an_event_the_feed_has_already_read_is_not_current() {
    let cache = SessionCache::default();
    let s = session("room");
    // (Time stands still in these tests: `later` moves it on.)
    // A read begins; meanwhile another instance changes the room and the feed reads that
    // event; then the read's (older) copy arrives.
    let read_began = Instant::now();
    later().await;
    cache.touched([&s.id], Instant::now());
    later().await;
    cache.put(s.clone(), read_began);
    assert!(
        !cache.get(&s.id).unwrap().current,
        "the copy may predate the event"
    );
    // A check that begins after the event counts.
    later().await;
    cache.checked(&s.id, Instant::now());
    assert!(cache.get(&s.id).unwrap().current);
}

#[tokio::test(start_paused = true)]
async fn an_event_read_by_the_feed_makes_a_held_copy_not_current_until_it_is_checked() {
    let cache = SessionCache::default();
    let s = session("room");
    cache.put(s.clone(), Instant::now());
    assert!(cache.get(&s.id).unwrap().current, "checked just now");
    later().await;
    cache.touched([&s.id], Instant::now());
    assert!(!cache.get(&s.id).unwrap().current);
    later().await;
    cache.checked(&s.id, Instant::now());
    assert!(cache.get(&s.id).unwrap().current);
    // A restarted feed skipped events: nothing held is current until checked again.
    cache.feed_restarted();
    assert!(!cache.get(&s.id).unwrap().current);
}
