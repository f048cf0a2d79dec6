//! Seed 000, study sessions: unused rooms are deleted after 30 minutes, abandoned ones are
//! completed after 6 hours, and the host's end writes a summary and notifies the others.

use serde_json::json;

use crate::helpers::*;

async fn unused_study_session_is_deleted_after_thirty_minutes(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("study", "algebra", "alice", json!({})).await;

    app.advance("29m").await;
    assert!(app.sweep().await["applied"].as_array().unwrap().is_empty());
    app.session("algebra").await.expect(200);

    let now = app.advance("2m").await;
    let report = app.sweep().await;
    let applied = report["applied"].as_array().unwrap();
    assert_eq!(applied.len(), 1, "{report}");
    assert_eq!(applied[0]["rule"], "delete-unused");
    assert_eq!(applied[0]["to"], "deleted");
    assert_eq!(applied[0]["due_at"], at(START, "30m"));
    assert_eq!(report["counts"]["delete"], 1);

    app.session("algebra").await.problem(404, "not_found");
    let events = app.events_of("algebra").await;
    let deleted = events.last().unwrap();
    assert_eq!(deleted["type"], "session.deleted");
    assert_eq!(deleted["at"], at(START, "30m"), "stamped at the deadline");
    assert_eq!(deleted["applied_at"], now, "applied when swept");
    assert_eq!(
        deleted["data"]["session"]["title"], "study algebra",
        "carries the last state"
    );
}

async fn a_used_study_session_is_not_deleted_as_unused(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("study", "used", "alice", json!({})).await;
    app.post(
        As::User("alice"),
        "/v1/sessions/used/activity",
        json!({ "type": "notes" }),
    )
    .await
    .expect(204);
    app.advance("2h").await;
    app.sweep().await;
    let s = app.session("used").await.expect(200);
    assert_eq!(s["status"], "pending");
    assert_eq!(s["used"], true);
}

async fn abandoned_study_session_is_completed_after_six_hours_at_its_deadline(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("study", "marathon", "alice", json!({})).await;
    app.join("marathon", "bob").await;
    app.start("marathon", "alice").await;

    app.advance("7h").await;
    let report = app.sweep().await;
    assert_eq!(
        report["applied"][0]["rule"], "auto-end-abandoned",
        "{report}"
    );

    let s = app.session("marathon").await.expect(200);
    assert_eq!(s["status"], "completed");
    assert_eq!(
        s["ended_at"],
        at(START, "6h"),
        "ended at the deadline, not at the sweep"
    );
    assert_eq!(s["ended_by"], "rule:auto-end-abandoned");
    assert_eq!(s["summary"]["duration_minutes"], 360);
    assert!(
        s["participants"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["state"] == "left")
    );

    // Ended by a rule: everyone still joined is told, the host included.
    assert_eq!(app.notifications("alice").await.len(), 1);
    let bob = app.notifications("bob").await;
    assert_eq!(bob[0]["created_at"], at(START, "6h"));
}

async fn host_ends_a_session_with_a_summary_and_the_others_are_notified(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create(
        "study",
        "s1",
        "alice",
        json!({ "title": "Organic chemistry" }),
    )
    .await;
    app.join("s1", "bob").await;
    app.join("s1", "carol").await;
    app.start("s1", "alice").await;
    for (user, kind, n) in [
        ("bob", "notes", 3),
        ("carol", "flashcards", 2),
        ("bob", "messages", 40),
    ] {
        let who = if user == "bob" { "bob" } else { "carol" };
        app.post(
            As::User(who),
            "/v1/sessions/s1/activity",
            json!({ "user": user, "type": kind, "count": n }),
        )
        .await
        .expect(204);
    }
    app.get(As::User("alice"), "/v1/sessions/s1/summary")
        .await
        .problem(404, "not_found");
    app.advance("45m").await;

    app.post_empty(As::User("bob"), "/v1/sessions/s1/end")
        .await
        .problem(403, "not_host");
    let r = app
        .post_empty(As::User("alice"), "/v1/sessions/s1/end")
        .await
        .expect(200);
    assert_eq!(r["success"], true);
    assert_eq!(r["session"]["status"], "completed");
    assert_eq!(r["summary"]["duration_minutes"], 45);
    assert_eq!(r["summary"]["participants"], 3);
    assert_eq!(
        r["summary"]["counters"],
        json!({ "notes": 3, "flashcards": 2, "messages": 40 })
    );
    assert_eq!(r["summary"]["ended_by"], "alice");

    app.post_empty(As::User("alice"), "/v1/sessions/s1/end")
        .await
        .problem(409, "invalid_transition");
    let summary = app
        .get(As::User("bob"), "/v1/sessions/s1/summary")
        .await
        .expect(200);
    assert_eq!(summary["duration_seconds"], 45 * 60);

    assert!(
        app.notifications("alice").await.is_empty(),
        "the host ended it"
    );
    for user in ["bob", "carol"] {
        let inbox = app
            .notifications(if user == "bob" { "bob" } else { "carol" })
            .await;
        assert_eq!(inbox.len(), 1);
        assert_eq!(inbox[0]["type"], "session.ended");
        assert_eq!(inbox[0]["link"], "/study/s1/summary");
        assert!(
            inbox[0]["message"]
                .as_str()
                .unwrap()
                .contains("Organic chemistry")
        );
        assert!(inbox[0]["message"].as_str().unwrap().contains("45m"));
    }
    let nid = app.notifications("bob").await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let read = app
        .post_empty(
            As::User("bob"),
            &format!("/v1/users/bob/notifications/{nid}/read"),
        )
        .await
        .expect(200);
    assert!(read["read_at"].is_string());
    let unread = app
        .get(As::User("bob"), "/v1/users/bob/notifications?unread=true")
        .await
        .expect(200);
    assert!(unread["notifications"].as_array().unwrap().is_empty());
    assert_eq!(
        app.notifications("bob").await.len(),
        1,
        "read, still listed"
    );
    let unread = app
        .get(
            As::User("carol"),
            "/v1/users/carol/notifications?unread=true",
        )
        .await
        .expect(200);
    assert_eq!(unread["notifications"].as_array().unwrap().len(), 1);
}

async fn host_may_reopen_within_five_minutes_but_not_after(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("study", "r1", "alice", json!({})).await;
    app.join("r1", "bob").await;
    app.start("r1", "alice").await;
    app.post_empty(As::User("alice"), "/v1/sessions/r1/end")
        .await
        .expect(200);
    app.advance("4m").await;
    let s = app
        .post_empty(As::User("alice"), "/v1/sessions/r1/reopen")
        .await
        .expect(200);
    assert_eq!(s["status"], "active");
    assert!(s["summary"].is_null());
    assert!(
        s["participants"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["state"] == "joined")
    );

    app.post_empty(As::User("alice"), "/v1/sessions/r1/end")
        .await
        .expect(200);
    app.advance("6m").await;
    app.post_empty(As::User("alice"), "/v1/sessions/r1/reopen")
        .await
        .problem(409, "invalid_transition");
}

async fn participants_are_warned_five_minutes_before_the_auto_end(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("study", "late", "alice", json!({ "title": "Late night" }))
        .await;
    app.join("late", "bob").await;
    app.start("late", "alice").await;
    let warnings = |events: &[serde_json::Value]| {
        events
            .iter()
            .filter(|e| e["type"] == "session.ending_soon")
            .cloned()
            .collect::<Vec<_>>()
    };

    app.advance("5h54m").await;
    app.sweep().await;
    assert!(warnings(&app.events_of("late").await).is_empty());

    app.advance("1m").await;
    let report = app.sweep().await;
    assert!(
        report["applied"].as_array().unwrap().is_empty(),
        "a warning is not a transition"
    );
    app.sweep().await;
    let sent = warnings(&app.events_of("late").await);
    assert_eq!(sent.len(), 1, "once: {sent:?}");
    assert_eq!(sent[0]["at"], at(START, "5h55m"));
    assert_eq!(sent[0]["rule"], "auto-end-abandoned");
    assert_eq!(sent[0]["data"]["deadline"], at(START, "6h"));
    for user in ["alice", "bob"] {
        let inbox = app
            .notifications(if user == "alice" { "alice" } else { "bob" })
            .await;
        assert_eq!(inbox.len(), 1);
        assert_eq!(inbox[0]["type"], "session.ending_soon");
        assert!(inbox[0]["message"].as_str().unwrap().contains("Late night"));
    }

    app.advance("6m").await;
    app.sweep().await;
    assert_eq!(app.session("late").await.expect(200)["status"], "completed");
    assert_eq!(warnings(&app.events_of("late").await).len(), 1);
}

both_stores!(
    unused_study_session_is_deleted_after_thirty_minutes,
    a_used_study_session_is_not_deleted_as_unused,
    abandoned_study_session_is_completed_after_six_hours_at_its_deadline,
    host_ends_a_session_with_a_summary_and_the_others_are_notified,
    host_may_reopen_within_five_minutes_but_not_after,
    participants_are_warned_five_minutes_before_the_auto_end,
);
