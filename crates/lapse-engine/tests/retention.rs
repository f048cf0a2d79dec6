//! Retention: history past its period is pruned in batches, and idempotency keys a day after
//! they were saved. Driven with a manual clock.

use std::sync::Arc;

use lapse_core::lifecycle::Via;
use lapse_core::store::EventQuery;
use lapse_core::{SessionId, Span, UserId};
use lapse_engine::deliveries::Endpoint;
use lapse_engine::{Caller, Clock, Engine, retention};

mod common;
use common::{engine, memory_store, request};

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

/// One run prunes all the history past its period, however much: more than ten pages of
/// events (ten pages a minute was once all a run took), and past a first page of events that
/// stay because a webhook delivery still needs them.
#[tokio::test]
async fn one_run_prunes_all_history_past_the_period_past_events_still_needed() {
    let store = memory_store().await;
    let config = lapse_core::Config::default();
    // An endpoint for study rooms, never called here: their events' deliveries stay pending.
    let endpoint = Endpoint {
        config: lapse_core::config::Webhook {
            url: "http://127.0.0.1:9/hook".into(),
            secret_env: None,
            events: vec!["*".into()],
            kinds: Some(vec!["study".into()]),
        },
        keys: vec![b"secret".to_vec()],
    };
    let engine = Engine::with_webhooks(
        store,
        Arc::new(config),
        Clock::manual(common::t0()),
        vec![endpoint],
    );
    let admin = common::admin();
    let page = retention::PAGE as usize;
    for i in 0..page {
        engine
            .create(&admin, request("study", &format!("held-{i}"), None))
            .await
            .unwrap();
    }
    for i in 0..5 * page {
        engine
            .create(&admin, request("coding", &format!("old-{i}"), None))
            .await
            .unwrap();
    }
    let count = |kind: &'static str| {
        let engine = engine.clone();
        let admin = admin.clone();
        async move {
            let mut query = EventQuery {
                limit: 1000,
                kind: Some(kind.into()),
                ..Default::default()
            };
            let mut n = 0;
            loop {
                let events = engine.events(&admin, &query).await.unwrap();
                let Some(last) = events.last() else {
                    return n;
                };
                n += events.len();
                query.after = last.seq;
            }
        }
    };
    let (held, old) = (count("study").await, count("coding").await);
    assert!(held >= page, "a first page and more is held: {held}");
    assert!(
        old >= 10 * page,
        "more than ten pages past the period: {old}"
    );

    engine
        .clock()
        .advance(Span::from_secs(31 * 86_400))
        .unwrap();
    let pruned = engine.prune_once().await.unwrap() as usize;
    assert_eq!(pruned, old, "every event no delivery needs, in one run");
    assert_eq!(count("coding").await, 0);
    assert_eq!(count("study").await, held, "those a delivery needs stay");
}

/// Users' notifications go after their own period (`[retention] notifications`, 90 days),
/// read or not, and not with the events' 30.
#[tokio::test]
async fn notifications_are_pruned_after_their_own_period() {
    let engine = engine().await;
    let admin = common::admin();
    let (room, bob) = (
        SessionId::parse("evening").unwrap(),
        UserId::parse("bob").unwrap(),
    );
    engine
        .create(&admin, common::create("study", "evening", "alice"))
        .await
        .unwrap();
    engine
        .join(&admin, &room, &bob, None, Via::Direct)
        .await
        .unwrap();
    engine.start(&admin, &room).await.unwrap();
    engine.end(&admin, &room).await.unwrap();
    let inbox = || async {
        engine
            .notifications(&admin, &bob, false, 100)
            .await
            .unwrap()
    };
    assert_eq!(inbox().await.len(), 1, "the host's end told bob");

    engine
        .clock()
        .advance(Span::from_secs(89 * 86_400))
        .unwrap();
    assert!(engine.prune_once().await.unwrap() > 0, "the events went");
    assert_eq!(inbox().await.len(), 1, "kept past the events' period");

    engine.clock().advance(Span::from_secs(2 * 86_400)).unwrap();
    // The host's and bob's (an operator ended the session, so both were told).
    assert_eq!(engine.prune_once().await.unwrap(), 2);
    assert!(inbox().await.is_empty(), "gone after its own");
}
