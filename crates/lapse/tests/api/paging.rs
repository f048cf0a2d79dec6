//! Paging (SPEC §6): the event log a page at a time, in order and filtered, and session
//! lists that reach the end even when rules thin a page.

use serde_json::json;

use crate::helpers::*;

both_stores!(
    the_event_log_pages_in_order_and_filters,
    listing_pages_through_every_session_even_when_rules_thin_a_page,
);

async fn the_event_log_pages_in_order_and_filters(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("study", "e1", "alice", json!({})).await;
    app.create("coding", "e2", "alice", json!({})).await;
    app.join("e1", "bob").await;
    let page = app.get(As::Admin, "/v1/events?limit=2").await.expect(200);
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    let next = page["next_after"].as_i64().unwrap();
    let rest = app
        .get(As::Admin, &format!("/v1/events?after={next}"))
        .await
        .expect(200);
    assert_eq!(rest["events"].as_array().unwrap().len(), 3);
    assert!(rest["events"][0]["seq"].as_i64().unwrap() > next);

    let coding = app
        .get(As::Admin, "/v1/events?kind=coding")
        .await
        .expect(200);
    assert!(
        coding["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["kind"] == "coding")
    );
    let joins = app
        .get(As::Admin, "/v1/events?type=participant.joined&session=e1")
        .await
        .expect(200);
    assert_eq!(joins["events"].as_array().unwrap().len(), 2);
}

async fn listing_pages_through_every_session_even_when_rules_thin_a_page(backend: Backend) {
    let app = spawn_app(backend).await;
    for i in 0..5 {
        app.create("study", &format!("l{i}"), "alice", json!({}))
            .await;
    }
    app.create("coding", "l5", "alice", json!({})).await;
    app.advance("31m").await; // the five study rooms are now unused past their deadline

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/sessions?limit=2&cursor={c}"),
            None => "/v1/sessions?limit=2".to_string(),
        };
        let page = app.get(As::Admin, &path).await.expect(200);
        seen.extend(
            page["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        ["l5"],
        "deleted rooms are not listed, and the listing reaches the end"
    );
    let filtered = app
        .get(As::Admin, "/v1/sessions?kind=coding&status=pending")
        .await
        .expect(200);
    assert_eq!(filtered["sessions"].as_array().unwrap().len(), 1);
}
