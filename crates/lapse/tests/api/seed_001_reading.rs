//! Seed 001, tarot readings: a room silent for an hour is deleted, and its invite link says
//! so instead of letting anyone into a dead room. Heartbeats keep it alive.

use serde_json::json;

use crate::helpers::*;

async fn heartbeats_keep_a_reading_alive_and_silence_deletes_it(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("reading", "tarot", "mira", json!({})).await;
    for _ in 0..4 {
        app.advance("50m").await;
        app.heartbeat("tarot", "mira").await.expect(204);
        assert!(app.sweep().await["applied"].as_array().unwrap().is_empty());
    }
    let s = app.session("tarot").await.expect(200);
    assert_eq!(
        s["last_activity_at"],
        at(START, "200m"),
        "the last heartbeat counts"
    );
    assert_eq!(s["next_due"]["at"], at(START, "260m"));

    app.advance("61m").await;
    let report = app.sweep().await;
    assert_eq!(report["applied"][0]["action"], "delete");
    assert_eq!(report["applied"][0]["due_at"], at(START, "260m"));
    app.session("tarot").await.problem(404, "not_found");
}

async fn an_invite_to_a_room_silent_for_an_hour_has_expired(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("reading", "room", "mira", json!({})).await;
    app.advance("30m").await;
    let joined = app
        .post(
            As::User("sam"),
            "/v1/sessions/room/participants",
            json!({ "user": "sam", "via": "invite" }),
        )
        .await
        .expect(201);
    assert_eq!(joined["state"], "joined");

    app.advance("61m").await;
    // No sweep ran: the join itself finds the room lapsed.
    let p = app
        .post(
            As::User("lee"),
            "/v1/sessions/room/participants",
            json!({ "user": "lee", "via": "invite" }),
        )
        .await
        .problem(410, "invite_expired");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("invitation link has expired")
    );
}

async fn invite_expiry_applies_even_when_no_rule_deleted_the_room(backend: Backend) {
    let config = r#"
[kinds.reading]
invite_expiry = "1h"
"#;
    let app = spawn_app_with(backend, Some(config)).await;
    app.create("reading", "quiet", "mira", json!({})).await;
    app.advance("61m").await;
    app.post(
        As::User("lee"),
        "/v1/sessions/quiet/participants",
        json!({ "user": "lee", "via": "invite" }),
    )
    .await
    .problem(410, "invite_expired");
    // A direct join is not an invite link.
    app.post(
        As::User("lee"),
        "/v1/sessions/quiet/participants",
        json!({ "user": "lee" }),
    )
    .await
    .expect(201);
}

async fn a_heartbeat_not_yet_flushed_still_wins_over_the_sweep(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("reading", "fresh", "mira", json!({})).await;
    app.advance("59m").await;
    // Accepted into memory; the sweep that follows must see it.
    app.heartbeat("fresh", "mira").await.expect(204);
    app.advance("2m").await;
    assert!(app.sweep().await["applied"].as_array().unwrap().is_empty());
    app.session("fresh").await.expect(200);
}

async fn presence_goes_offline_after_ninety_seconds_without_heartbeats(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("reading", "presence", "mira", json!({})).await;
    app.join("presence", "sam").await;
    app.advance("60s").await;
    app.heartbeat("presence", "sam").await.expect(204);
    app.advance("60s").await;
    let s = app.session("presence").await.expect(200);
    let online = |user: &str| {
        s["participants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["user"] == user)
            .unwrap()["online"]
            .clone()
    };
    assert_eq!(online("mira"), false, "silent for 120s");
    assert_eq!(online("sam"), true, "seen 60s ago");
}

async fn batch_heartbeats_report_what_they_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("reading", "b1", "mira", json!({})).await;
    let r = app
        .post(
            As::Admin,
            "/v1/heartbeats",
            json!({ "beats": [
                { "session": "b1", "user": "mira" },
                { "session": "b1", "user": "stranger" },
                { "session": "missing", "user": "mira" },
            ]}),
        )
        .await
        .expect(200);
    assert_eq!(r["accepted"], 1);
    let rejected = r["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0]["index"], 1);
    assert_eq!(rejected[1]["code"], "not_found");
}

/// An idle rule waits two flush intervals past its deadline, for heartbeats accepted but not
/// yet written (by another instance, or by one killed before its flush); it is still stamped
/// at the deadline.
async fn idle_rules_wait_for_heartbeats_not_yet_written(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("reading", "grace", "mira", json!({})).await;
    app.advance("1h").await;
    app.advance("1s").await;
    let early = app.sweep().await;
    let applied = early["applied"].as_array().unwrap();
    assert!(applied.is_empty(), "still within the grace: {early}");
    app.advance("1s").await;
    let report = app.sweep().await;
    assert_eq!(report["applied"][0]["due_at"], at(START, "1h"), "{report}");
    app.session("grace").await.problem(404, "not_found");
}

async fn a_participant_goes_offline_once_per_lapse_and_back_with_a_heartbeat(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("reading", "p", "mira", json!({})).await;
    app.join("p", "sam").await;
    app.advance("60s").await;
    app.heartbeat("p", "sam").await.expect(204);
    app.advance("100s").await; // mira lapsed at 90 s, sam at 150 s
    app.sweep().await;
    app.sweep().await;
    let offline = |events: Vec<serde_json::Value>| {
        events
            .into_iter()
            .filter(|e| e["type"] == "participant.offline")
            .map(|e| {
                (
                    e["data"]["user"].as_str().unwrap().to_string(),
                    e["at"].as_str().unwrap().to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        offline(app.events_of("p").await),
        [
            ("mira".to_string(), at(START, "90s")),
            ("sam".to_string(), at(START, "150s"))
        ]
    );

    app.heartbeat("p", "sam").await.expect(204);
    let s = app.session("p").await.expect(200);
    let sam = s["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["user"] == "sam")
        .unwrap()
        .clone();
    assert_eq!(sam["online"], true, "a heartbeat brings them back");
    app.advance("2m").await;
    app.sweep().await;
    let events = offline(app.events_of("p").await);
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[2], ("sam".to_string(), at(START, "250s")));
}

async fn a_postponed_deadline_gets_a_new_warning(backend: Backend) {
    let config = r#"
[kinds.reading]
presence_timeout = "2h"
[[kinds.reading.rules]]
name = "delete-inactive"
on = "idle"
after = "1h"
do = "delete"
warn_before = "10m"
"#;
    let app = spawn_app_with(backend, Some(config)).await;
    app.create("reading", "w", "mira", json!({})).await;
    app.advance("50m").await;
    app.sweep().await;
    app.advance("5m").await;
    app.heartbeat("w", "mira").await.expect(204); // idle deadline moves from 1h to 1h55m
    app.advance("51m").await;
    app.sweep().await;
    let warnings: Vec<_> = app
        .events_of("w")
        .await
        .into_iter()
        .filter(|e| e["type"] == "session.ending_soon")
        .map(|e| {
            (
                e["at"].as_str().unwrap().to_string(),
                e["data"]["deadline"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        warnings,
        [
            (at(START, "50m"), at(START, "1h")),
            (at(START, "1h45m"), at(START, "1h55m"))
        ]
    );
}

async fn rooms_kept_alive_by_heartbeats_are_re_armed_not_deleted(backend: Backend) {
    let config = r#"
[kinds.reading]
presence_timeout = "2h"
[[kinds.reading.rules]]
name = "delete-inactive"
on = "idle"
after = "1h"
do = "delete"
"#;
    let app = spawn_app_with(backend, Some(config)).await;
    for id in ["r1", "r2", "r3"] {
        app.create("reading", id, "mira", json!({})).await;
    }
    app.advance("50m").await;
    for id in ["r1", "r2", "r3"] {
        app.heartbeat(id, "mira").await.expect(204);
    }
    app.advance("11m").await;
    // Due by their stored wake-up (1h), but the heartbeats moved them to 1h50m.
    let report = app.sweep().await;
    assert!(report["applied"].as_array().unwrap().is_empty(), "{report}");
    let stats = app.get(As::Service, "/v1/stats").await.expect(200);
    assert_eq!(stats["sweeper"]["rearmed"], 3);
    // The stored wake-up is when the rule may fire: after the grace.
    assert_eq!(stats["sweeper"]["next_deadline"], at(START, "110m 2s"));

    app.advance("50m").await;
    assert_eq!(app.sweep().await["counts"]["delete"], 3);
}

both_stores!(
    rooms_kept_alive_by_heartbeats_are_re_armed_not_deleted,
    a_participant_goes_offline_once_per_lapse_and_back_with_a_heartbeat,
    a_postponed_deadline_gets_a_new_warning,
    heartbeats_keep_a_reading_alive_and_silence_deletes_it,
    an_invite_to_a_room_silent_for_an_hour_has_expired,
    invite_expiry_applies_even_when_no_rule_deleted_the_room,
    a_heartbeat_not_yet_flushed_still_wins_over_the_sweep,
    presence_goes_offline_after_ninety_seconds_without_heartbeats,
    batch_heartbeats_report_what_they_refused,
    idle_rules_wait_for_heartbeats_not_yet_written,
);
