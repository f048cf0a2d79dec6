//! Exactly once: a manual action racing a sweep, two sweeps racing each other, and two manual
//! actions racing on one session all move each session once; the loser gets 409.

use std::collections::HashMap;

use futures::future::join_all;
use futures::stream::{self, StreamExt};
use serde_json::json;

use crate::helpers::*;

const SESSIONS: usize = 60;
/// Hosts take turns, so no host passes the study kind's 20 ends a minute.
const HOSTS: [&str; 6] = ["ada", "ben", "cai", "dee", "eve", "fay"];

fn host(i: usize) -> &'static str {
    HOSTS[i % HOSTS.len()]
}

async fn a_manual_end_racing_two_sweeps_moves_each_session_once(backend: Backend) {
    let app = spawn_app(backend).await;
    for i in 0..SESSIONS {
        let id = format!("race-{i}");
        app.create("study", &id, host(i), json!({})).await;
        app.start(&id, host(i)).await;
    }
    app.advance("6h").await; // every session's auto-end is due now

    let ends = join_all((0..SESSIONS).map(|i| {
        let app = &app;
        async move {
            app.post_empty(As::User(host(i)), &format!("/v1/sessions/race-{i}/end"))
                .await
        }
    }));
    let sweeps = join_all((0..2).map(|_| app.sweep()));
    let (ends, sweeps) = tokio::join!(ends, sweeps);

    for r in &ends {
        // The rule was due first, so whoever applied it, the manual end finds it completed.
        assert!(r.status == 409 || r.status == 200, "{:?}", r);
        if r.status == 409 {
            assert_eq!(r.body["code"], "invalid_transition");
        }
    }
    let swept: usize = sweeps
        .iter()
        .map(|s| s["applied"].as_array().unwrap().len())
        .sum();
    assert!(swept <= SESSIONS);

    let page = app
        .get(As::Admin, "/v1/events?type=session.completed&limit=1000")
        .await
        .expect(200);
    let mut per_session: HashMap<String, usize> = HashMap::new();
    for e in page["events"].as_array().unwrap() {
        *per_session
            .entry(e["session_id"].as_str().unwrap().to_string())
            .or_default() += 1;
        assert_eq!(
            e["at"],
            at(START, "6h"),
            "stamped at the deadline whoever applied it"
        );
    }
    assert_eq!(per_session.len(), SESSIONS);
    assert!(per_session.values().all(|n| *n == 1), "{per_session:?}");
}

async fn an_end_racing_a_cancel_has_one_winner_and_one_409(backend: Backend) {
    let app = spawn_app(backend).await;
    for i in 0..SESSIONS {
        let id = format!("duel-{i}");
        app.create("study", &id, host(i), json!({})).await;
        app.start(&id, host(i)).await;
    }
    // Each pair races; the pairs go ten at a time, so what is tested is the race on one
    // session, not how long 120 requests at once wait for the pool's 10 connections (past
    // its acquire timeout a request is refused with 503, by design).
    let mut results: Vec<_> = stream::iter(0..SESSIONS)
        .map(|i| {
            let app = &app;
            async move {
                let (end_path, cancel_path) = (
                    format!("/v1/sessions/duel-{i}/end"),
                    format!("/v1/sessions/duel-{i}/cancel"),
                );
                let end = app.post_empty(As::User(host(i)), &end_path);
                let cancel = app.post_empty(As::User(host(i)), &cancel_path);
                (i, tokio::join!(end, cancel))
            }
        })
        .buffer_unordered(10)
        .collect()
        .await;
    results.sort_by_key(|(i, _)| *i);
    for (i, (end, cancel)) in &results {
        let codes = [end.status.as_u16(), cancel.status.as_u16()];
        assert!(
            codes.contains(&200) && codes.contains(&409),
            "session {i}: {codes:?}, end {}, cancel {}",
            end.body,
            cancel.body
        );
        let events = app.events_of(&format!("duel-{i}")).await;
        let endings = types(&events)
            .into_iter()
            .filter(|t| t == "session.completed" || t == "session.cancelled")
            .count();
        assert_eq!(endings, 1);
    }
}

both_stores!(
    a_manual_end_racing_two_sweeps_moves_each_session_once,
    an_end_racing_a_cancel_has_one_winner_and_one_409,
);
