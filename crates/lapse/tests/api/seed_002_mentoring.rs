//! Seed 002, mentor bookings: a booking not started by its time is marked delayed and stays
//! active until ended by hand; one started on time completes at its scheduled end.

use serde_json::json;

use crate::helpers::*;

fn booking() -> serde_json::Value {
    json!({ "scheduled_start": at(START, "1h"), "scheduled_end": at(START, "2h") })
}

async fn a_booking_not_started_on_time_is_delayed_and_stays_active(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("mentoring", "b1", "mentor", booking()).await;
    app.advance("3h").await;
    let report = app.sweep().await;
    let applied = report["applied"].as_array().unwrap();
    assert_eq!(
        applied.len(),
        1,
        "delayed bookings do not auto-complete: {report}"
    );
    assert_eq!(applied[0]["action"], "start_delayed");

    let s = app.session("b1").await.expect(200);
    assert_eq!(s["status"], "active");
    assert_eq!(s["delayed"], true);
    assert_eq!(s["started_at"], at(START, "1h"));
    assert!(s["next_due"].is_null());
    let events = app.events_of("b1").await;
    assert!(types(&events).contains(&"session.delayed".to_string()));

    app.advance("5h").await;
    assert!(app.sweep().await["applied"].as_array().unwrap().is_empty());
    let ended = app
        .post_empty(As::User("mentor"), "/v1/sessions/b1/end")
        .await
        .expect(200);
    assert_eq!(ended["session"]["status"], "completed");
}

async fn a_booking_started_on_time_completes_at_its_scheduled_end(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("mentoring", "b2", "mentor", booking()).await;
    app.join("b2", "student").await;
    app.advance("55m").await;
    let s = app.start("b2", "mentor").await;
    assert_eq!(s["delayed"], false);
    assert_eq!(s["next_due"]["rule"], "complete-on-time");

    app.advance("3h").await;
    app.sweep().await;
    let s = app.session("b2").await.expect(200);
    assert_eq!(s["status"], "completed");
    assert_eq!(s["ended_at"], at(START, "2h"));
    assert_eq!(s["summary"]["duration_minutes"], 65);
}

async fn reading_a_booking_after_its_start_time_shows_it_delayed_without_a_sweep(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("mentoring", "b3", "mentor", booking()).await;
    app.advance("70m").await;
    let s = app.session("b3").await.expect(200);
    assert_eq!(s["status"], "active");
    assert_eq!(s["delayed"], true);
    app.post_empty(As::User("mentor"), "/v1/sessions/b3/start")
        .await
        .problem(409, "invalid_transition");
}

async fn moving_the_schedule_moves_the_deadline(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("mentoring", "b4", "mentor", booking()).await;
    let s = app
        .send(
            As::User("mentor"),
            reqwest::Method::PATCH,
            "/v1/sessions/b4",
            Some(json!({ "scheduled_start": at(START, "3h"), "scheduled_end": at(START, "4h") })),
        )
        .await
        .expect(200);
    assert_eq!(s["next_due"]["at"], at(START, "3h"));
    app.send(
        As::User("mentor"),
        reqwest::Method::PATCH,
        "/v1/sessions/b4",
        Some(json!({ "scheduled_end": at(START, "2h") })),
    )
    .await
    .problem(422, "validation_failed");
}

both_stores!(
    a_booking_not_started_on_time_is_delayed_and_stays_active,
    a_booking_started_on_time_completes_at_its_scheduled_end,
    reading_a_booking_after_its_start_time_shows_it_delayed_without_a_sweep,
    moving_the_schedule_moves_the_deadline,
);
