//! Bad input gets a clear problem document, never a 5xx: axum's own rejections included.

use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

async fn malformed_and_mistyped_bodies_are_problems(backend: Backend) {
    let app = spawn_app(backend).await;
    let r = app
        .client
        .post(format!("{}/v1/sessions", app.base))
        .bearer_auth(ADMIN_KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    let r = app
        .client
        .post(format!("{}/v1/sessions", app.base))
        .bearer_auth(ADMIN_KEY)
        .body(r#"{"kind":"study","host":"a"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "validation_failed");

    app.post(As::Admin, "/v1/sessions", json!({ "kind": 5 }))
        .await
        .problem(422, "validation_failed");
    app.post(
        As::Admin,
        "/v1/sessions",
        json!({ "kind": "study", "host": "a", "colour": "red" }),
    )
    .await
    .problem(422, "validation_failed");
    let p = app
        .post(
            As::Admin,
            "/v1/sessions",
            json!({ "kind": "nope", "host": "a" }),
        )
        .await
        .problem(422, "validation_failed");
    assert_eq!(p["field"], "kind");
    let p = app
        .post(As::Admin, "/v1/sessions", json!({ "kind": "study" }))
        .await
        .problem(422, "validation_failed");
    assert_eq!(p["field"], "host");
    app.post(
        As::Admin,
        "/v1/sessions",
        json!({ "id": "bad id", "kind": "study", "host": "a" }),
    )
    .await
    .problem(422, "validation_failed");
    app.post(
        As::Admin,
        "/v1/sessions",
        json!({ "kind": "study", "host": "a", "scheduled_start": "tomorrow" }),
    )
    .await
    .problem(422, "validation_failed");
}

async fn oversized_bodies_and_metadata_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let big = "x".repeat(70 * 1024);
    app.post(
        As::Admin,
        "/v1/sessions",
        json!({ "kind": "study", "host": "a", "title": big }),
    )
    .await
    .problem(413, "validation_failed");
    let meta = json!({ "blob": "y".repeat(17 * 1024) });
    let p = app
        .post(
            As::Admin,
            "/v1/sessions",
            json!({ "kind": "study", "host": "a", "metadata": meta }),
        )
        .await
        .problem(422, "validation_failed");
    assert_eq!(p["field"], "metadata");
}

async fn unknown_routes_methods_and_ids_are_problems(backend: Backend) {
    let app = spawn_app(backend).await;
    app.get(As::Admin, "/v1/nothing-here")
        .await
        .problem(404, "not_found");
    app.send(As::Admin, Method::PUT, "/v1/sessions", None)
        .await
        .problem(405, "not_found");
    app.get(As::Admin, "/v1/sessions/does-not-exist")
        .await
        .problem(404, "not_found");
    app.get(As::Admin, "/v1/sessions/bad%20id")
        .await
        .problem(422, "validation_failed");
    app.get(As::Admin, "/v1/sessions?limit=abc")
        .await
        .problem(400, "validation_failed");
    app.get(As::Admin, "/v1/sessions?status=sleeping")
        .await
        .problem(422, "validation_failed");
    app.get(As::Admin, "/v1/events?type=session.exploded")
        .await
        .problem(422, "validation_failed");
    app.post(As::Admin, "/v1/admin/clock", json!({ "advance": "soon" }))
        .await
        .problem(422, "validation_failed");
    app.post(
        As::Admin,
        "/v1/admin/clock",
        json!({ "set": "2020-01-01T00:00:00Z" }),
    )
    .await
    .problem(422, "validation_failed");
}

async fn a_taken_id_is_a_conflict_and_state_errors_are_409(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("study", "dup", "alice", json!({})).await;
    app.post(
        As::User("alice"),
        "/v1/sessions",
        json!({ "id": "dup", "kind": "study" }),
    )
    .await
    .problem(409, "conflict");
    // The role a joiner asks for is the session's to give: only its host is host.
    let problem = app
        .post(
            As::User("bob"),
            "/v1/sessions/dup/participants",
            json!({ "user": "bob", "role": "host" }),
        )
        .await
        .problem(409, "conflict");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("`alice` hosts it")
    );
    let bob = app
        .post(
            As::User("bob"),
            "/v1/sessions/dup/participants",
            json!({ "user": "bob", "role": "member" }),
        )
        .await
        .expect(201);
    assert_eq!(bob["role"], "member");
    app.post_empty(As::User("alice"), "/v1/sessions/dup/end")
        .await
        .problem(409, "invalid_transition");
    app.post(
        As::User("bob"),
        "/v1/sessions/dup/heartbeat",
        json!({ "user": "stranger" }),
    )
    .await
    .problem(403, "not_self");
    app.post(
        As::Admin,
        "/v1/sessions/dup/heartbeat",
        json!({ "user": "stranger" }),
    )
    .await
    .problem(404, "not_found");
}

async fn a_full_session_refuses_another_member(backend: Backend) {
    let config = "[kinds.tiny]\nmax_participants = 2\n";
    let app = spawn_app_with(backend, Some(config)).await;
    app.create("tiny", "t", "alice", json!({})).await;
    app.join("t", "bob").await;
    app.post(
        As::User("carol"),
        "/v1/sessions/t/participants",
        json!({ "user": "carol" }),
    )
    .await
    .problem(409, "session_full");
    app.delete(As::User("bob"), "/v1/sessions/t/participants/bob")
        .await
        .expect(204);
    app.join("t", "carol").await;
    app.post(
        As::User("bob"),
        "/v1/sessions/t/participants",
        json!({ "user": "bob" }),
    )
    .await
    .problem(409, "session_full");
}

async fn a_retried_post_with_an_idempotency_key_acts_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let send = |who: &'static str, key: &'static str, body: serde_json::Value| {
        let app = &app;
        async move {
            app.client
                .post(format!("{}/v1/sessions", app.base))
                .header("X-API-Key", SERVICE_KEY)
                .header("X-Actor", who)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let body = json!({ "kind": "study", "title": "once" });
    let first = send("alice", "k-1", body.clone()).await;
    assert_eq!(first.status(), 201);
    let first: serde_json::Value = first.json().await.unwrap();
    let again = send("alice", "k-1", body.clone()).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(
        again["id"], first["id"],
        "the first response, not a second session"
    );
    let mine = app.get(As::User("alice"), "/v1/sessions").await.expect(200);
    assert_eq!(mine["sessions"].as_array().unwrap().len(), 1);

    let other = send("alice", "k-1", json!({ "kind": "study", "title": "twice" })).await;
    assert_eq!(
        other.status(),
        422,
        "the same key with another request is refused"
    );
    let bob = send("bob", "k-1", body.clone()).await;
    assert_eq!(bob.status(), 201, "keys are per actor");

    app.advance("25h").await;
    let later: serde_json::Value = send("alice", "k-1", body).await.json().await.unwrap();
    assert_ne!(later["id"], first["id"], "a key is remembered for 24 hours");
}

/// A JSON Schema validator (and so a client generated from `/openapi.json`) calls `2.0` an
/// integer: lapse counts it as 2, and refuses `2.5` naming the field.
async fn an_activity_count_is_any_whole_json_number(backend: Backend) {
    let app = spawn_app(backend).await;
    app.post(
        As::Admin,
        "/v1/sessions",
        json!({ "id": "c1", "kind": "study", "host": "ann" }),
    )
    .await
    .expect(201);
    for count in [json!(2.0), json!(3)] {
        app.post(
            As::Admin,
            "/v1/sessions/c1/activity",
            json!({ "type": "notes", "count": count }),
        )
        .await
        .expect(204);
    }
    let s = app.session("c1").await.expect(200);
    assert_eq!(s["counters"]["notes"], 5);
    let r = app
        .post(
            As::Admin,
            "/v1/sessions/c1/activity",
            json!({ "type": "notes", "count": 2.5 }),
        )
        .await
        .problem(422, "validation_failed");
    assert!(r["detail"].as_str().unwrap().contains("count"), "{r}");
}

both_stores!(
    a_retried_post_with_an_idempotency_key_acts_once,
    malformed_and_mistyped_bodies_are_problems,
    oversized_bodies_and_metadata_are_refused,
    unknown_routes_methods_and_ids_are_problems,
    a_taken_id_is_a_conflict_and_state_errors_are_409,
    a_full_session_refuses_another_member,
    an_activity_count_is_any_whole_json_number,
);
