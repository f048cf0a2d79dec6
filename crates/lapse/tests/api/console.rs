//! What the operator's console (`/admin`) asks of the API beyond the rest: sessions due
//! within a window, a sweep of exactly what a preview listed, the latest event's number.

use serde_json::json;

use crate::helpers::{As, Backend, spawn_app};

async fn sessions_due_before_an_instant_come_earliest_first(backend: Backend) {
    let app = spawn_app(backend).await;
    // Study rooms nobody uses are deleted 30 minutes after creation; one is made every minute.
    for i in 0..5 {
        app.create("study", &format!("room-{i}"), "ana", json!({}))
            .await;
        app.advance("1m").await;
    }
    app.create("coding", "pairing", "ben", json!({})).await; // due in 7 days
    let stats = app.get(As::Admin, "/v1/stats").await.expect(200);
    let now = stats["now"].as_str().unwrap().to_string();
    let within = |span: &str| crate::helpers::at(&now, span);
    let ids = |page: &serde_json::Value| -> Vec<String> {
        page["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };

    let page = app
        .get(
            As::Admin,
            &format!("/v1/sessions?due_before={}", within("27m")),
        )
        .await
        .expect(200);
    assert_eq!(
        ids(&page),
        ["room-0", "room-1", "room-2"],
        "earliest deadline first; room-3 and room-4 come due after the window"
    );
    assert!(page["next_cursor"].is_null(), "one page");
    let page = app
        .get(
            As::Admin,
            &format!("/v1/sessions?due_before={}&limit=2", within("27m")),
        )
        .await
        .expect(200);
    assert_eq!(ids(&page), ["room-0", "room-1"]);
    let page = app
        .get(
            As::Admin,
            &format!("/v1/sessions?due_before={}&kind=coding", within("8d")),
        )
        .await
        .expect(200);
    assert_eq!(ids(&page), ["pairing"]);

    app.get(
        As::Admin,
        &format!("/v1/sessions?due_before={}&cursor=room-1", within("27m")),
    )
    .await
    .problem(422, "validation_failed");
    app.get(
        As::User("ana"),
        &format!("/v1/sessions?due_before={}", within("1h")),
    )
    .await
    .problem(403, "forbidden");
    app.get(As::Admin, "/v1/sessions?due_before=soon")
        .await
        .problem(422, "validation_failed");
}

async fn a_sweep_until_an_instant_applies_what_a_preview_then_listed(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("study", "early", "ana", json!({})).await;
    app.advance("10m").await;
    app.create("study", "late", "ben", json!({})).await;
    app.advance("25m").await; // early is due (30m), late is not (at 40m)
    let preview = app
        .post(As::Admin, "/v1/sweep?dry_run=true", json!({}))
        .await
        .expect(200);
    let listed: Vec<&str> = preview["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["session"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["early"]);
    let at = preview["now"].as_str().unwrap().to_string();

    // Time passes between the preview and the click: late comes due too.
    app.advance("10m").await;
    let applied = app
        .post(As::Admin, &format!("/v1/sweep?until={at}"), json!({}))
        .await
        .expect(200);
    let done: Vec<&str> = applied["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["session"].as_str().unwrap())
        .collect();
    assert_eq!(done, ["early"], "only what the preview listed");
    let stats = app.get(As::Admin, "/v1/stats").await.expect(200);
    assert!(
        stats["events"]["last_seq"].as_i64().unwrap() >= 5,
        "{stats}"
    );
    let rest = app.sweep().await;
    assert_eq!(rest["applied"][0]["session"], "late");
}

both_stores!(
    sessions_due_before_an_instant_come_earliest_first,
    a_sweep_until_an_instant_applies_what_a_preview_then_listed,
);
