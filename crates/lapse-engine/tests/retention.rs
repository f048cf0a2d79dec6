//! Retention: history past its period is pruned in batches, and idempotency keys a day after
//! they were saved. Driven with a manual clock.

use lapse_core::Span;
use lapse_engine::Caller;

mod common;
use common::{engine, request};

#[tokio::test]
async fn history_past_the_retention_period_is_pruned_in_batches() {
    let engine = engine().await;
    let admin = Caller::Admin {
        name: "test".into(),
        actor: None,
    };
    for i in 0..3 {
        engine
            .create(&admin, request("coding", &format!("old-{i}"), None))
            .await
            .unwrap();
    }
    engine
        .clock()
        .advance(Span::from_secs(29 * 86_400))
        .unwrap();
    engine
        .create(&admin, request("coding", "recent", None))
        .await
        .unwrap();
    let all = lapse_core::store::EventQuery {
        limit: 1000,
        ..Default::default()
    };
    let before = engine.events(&admin, &all).await.unwrap().len();
    assert_eq!(
        engine.prune_once().await.unwrap(),
        0,
        "nothing is 30 days old yet"
    );

    engine.clock().advance(Span::from_secs(2 * 86_400)).unwrap();
    let pruned = engine.prune_once().await.unwrap() as usize;
    let left = engine.events(&admin, &all).await.unwrap();
    assert_eq!(before - left.len(), pruned);
    assert!(pruned >= 6, "the old sessions' creation events went");
    let cutoff = engine.now() - Span::from_secs(30 * 86_400);
    assert!(
        left.iter().all(|e| e.applied_at >= cutoff),
        "nothing older is left"
    );
    assert!(
        left.iter().any(|e| e.session_id.as_str() == "recent"),
        "recent history stays"
    );
}

/// Requests and their repairs, all due at once, swept three rows a page. A request's end
/// cancels its repair at once (`parent_ended`); the repair is also due by itself, often in the
/// next page, which is read while this page commits: it must still change once.

#[tokio::test]
async fn idempotency_keys_are_pruned_a_day_after_they_were_saved() {
    let engine = engine().await;
    engine
        .remember_response(
            "admin",
            "k1",
            "h1".into(),
            201,
            "application/json".into(),
            "{}".into(),
        )
        .await
        .unwrap();
    engine.clock().advance(Span::from_secs(23 * 3600)).unwrap();
    assert_eq!(engine.prune_once().await.unwrap(), 0, "kept within the day");
    engine.clock().advance(Span::from_secs(2 * 3600)).unwrap();
    assert_eq!(
        engine.prune_once().await.unwrap(),
        1,
        "pruned a day on, not with the events' 30 days"
    );
}
