//! Seed 004, mechanic requests: a customer has at most one open repair, a stale waiting one
//! never blocks a new one, and a repair dies with its request.

use serde_json::json;

use crate::helpers::*;

async fn a_customer_with_an_open_repair_is_refused_a_second_one(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("request", "req-1", "cust", json!({})).await;
    app.create("repair", "rep-1", "cust", json!({ "parent": "req-1" }))
        .await;
    app.create("request", "req-2", "cust", json!({})).await;
    let p = app
        .post(
            As::User("cust"),
            "/v1/sessions",
            json!({ "id": "rep-2", "kind": "repair", "parent": "req-2" }),
        )
        .await
        .problem(409, "host_has_open_session");
    assert_eq!(
        p["blocking_session"],
        json!({ "id": "rep-1", "status": "pending" })
    );
    // Another customer is not blocked.
    app.create("repair", "rep-3", "other", json!({ "parent": "req-2" }))
        .await;
}

async fn a_stale_waiting_repair_never_blocks_a_new_one(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("request", "req-1", "cust", json!({})).await;
    app.create("repair", "rep-1", "cust", json!({ "parent": "req-1" }))
        .await;
    app.advance("16m").await;
    // No sweep has run; create itself applies the host's due rules first.
    app.create("request", "req-2", "cust", json!({})).await;
    app.create("repair", "rep-2", "cust", json!({ "parent": "req-2" }))
        .await;
    let old = app.session("rep-1").await.expect(200);
    assert_eq!(old["status"], "cancelled");
    assert_eq!(old["ended_at"], at(START, "15m"));
}

async fn an_expired_request_cancels_its_repair_in_the_same_sweep(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("request", "req", "cust", json!({})).await;
    app.advance("10m").await;
    app.create("repair", "rep", "cust", json!({ "parent": "req" }))
        .await;
    app.advance("6m").await;

    let dry = app.dry_sweep().await;
    let report = app.sweep().await;
    assert_eq!(
        dry["applied"], report["applied"],
        "the dry run follows the cascade too"
    );
    let applied = report["applied"].as_array().unwrap();
    assert_eq!(applied.len(), 2, "{report}");
    assert_eq!(applied[0]["session"], "req");
    assert_eq!(applied[1]["session"], "rep");
    assert_eq!(applied[1]["rule"], "cancel-with-request");

    let rep = app.session("rep").await.expect(200);
    assert_eq!(rep["status"], "cancelled");
    assert_eq!(
        rep["ended_at"],
        at(START, "15m"),
        "at its parent's end, not its own 15 minutes"
    );
}

async fn a_repair_whose_request_was_cancelled_by_hand_follows_it_on_access(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("request", "req", "cust", json!({})).await;
    app.create("repair", "rep", "cust", json!({ "parent": "req" }))
        .await;
    app.advance("1m").await;
    app.post_empty(As::User("cust"), "/v1/sessions/req/cancel")
        .await
        .expect(200);
    let rep = app.session("rep").await.expect(200);
    assert_eq!(rep["status"], "cancelled");
    assert_eq!(rep["ended_by"], "rule:cancel-with-request");
}

/// The request's own rule ended it, and no sweep has run since: reading the repair (or
/// beating in it) meets it cancelled at its request's end, as a sweep would have left it.
async fn a_repair_follows_its_expired_request_on_access_before_any_sweep(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("request", "req", "cust", json!({})).await;
    app.advance("10m").await;
    app.create("repair", "rep", "cust", json!({ "parent": "req" }))
        .await;
    app.start("rep", "cust").await;
    app.heartbeat("rep", "cust").await.expect(204);
    app.advance("6m").await;
    app.heartbeat("rep", "cust")
        .await
        .problem(409, "invalid_transition");
    let rep = app.session("rep").await.expect(200);
    assert_eq!(rep["status"], "cancelled", "{rep}");
    assert_eq!(rep["ended_by"], "rule:cancel-with-request");
    assert_eq!(rep["ended_at"], at(START, "15m"), "at its request's end");
}

async fn an_active_repair_without_a_request_is_cancelled_as_orphaned(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("repair", "lone", "cust", json!({})).await;
    app.start("lone", "cust").await;
    app.advance("21m").await;
    let report = app.sweep().await;
    assert_eq!(report["applied"][0]["rule"], "cancel-orphaned", "{report}");
    assert_eq!(
        app.session("lone").await.expect(200)["ended_at"],
        at(START, "20m")
    );
}

async fn a_repair_must_belong_to_a_request(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("study", "not-a-request", "cust", json!({}))
        .await;
    let p = app
        .post(
            As::User("cust"),
            "/v1/sessions",
            json!({ "kind": "repair", "parent": "not-a-request" }),
        )
        .await
        .problem(409, "conflict");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("belongs to a `request`")
    );
    let p = app
        .post(
            As::User("cust"),
            "/v1/sessions",
            json!({ "kind": "repair", "parent": "nope" }),
        )
        .await
        .problem(404, "not_found");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("parent session `nope`")
    );
}

async fn concurrent_creates_for_one_customer_open_one_repair(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("request", "req", "cust", json!({})).await;
    let attempts = futures::future::join_all((0..12).map(|i| {
        let app = &app;
        async move {
            let body = json!({ "id": format!("rep-{i}"), "kind": "repair", "parent": "req" });
            app.post(As::User("cust"), "/v1/sessions", body).await
        }
    }))
    .await;
    let created = attempts.iter().filter(|r| r.status == 201).count();
    assert_eq!(created, 1, "{attempts:?}");
    for r in attempts.into_iter().filter(|r| r.status != 201) {
        r.problem(409, "host_has_open_session");
    }
}

async fn the_health_check_finds_stuck_work_and_says_what_to_do(backend: Backend) {
    let app = spawn_app(backend).await;
    let report = app.get(As::Service, "/v1/health").await.expect(200);
    assert_eq!(report["health"], "healthy");
    assert_eq!(report["recommendations"], json!(["All systems healthy"]));

    app.create("request", "req", "cust", json!({})).await;
    app.create("repair", "rep", "cust", json!({ "parent": "req" }))
        .await;
    app.advance("20m").await; // both are past their 15 minutes; no sweep has run
    let report = app.get(As::Service, "/v1/health").await.expect(200);
    assert_eq!(report["health"], "degraded", "{report}");
    assert_eq!(report["sessions"]["pending"], 2);
    assert_eq!(report["overdue"], 2);
    assert_eq!(report["problems"][0]["code"], "overdue_rules");
    assert!(
        report["recommendations"][0]
            .as_str()
            .unwrap()
            .contains("/v1/sweep")
    );

    app.sweep().await;
    let report = app.get(As::Service, "/v1/health").await.expect(200);
    assert_eq!(report["health"], "healthy", "{report}");
    assert_eq!(report["sessions"]["cancelled"], 2);
    app.get(As::Nobody, "/v1/health")
        .await
        .problem(401, "unauthorized");

    // The command line answers with its exit code, on the database directly.
    let lapse = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_lapse"))
            .args(args)
            .env("DATABASE_URL", &app.db_url)
            .env_remove("LAPSE_CONFIG")
            .env_remove("LAPSE_CLOCK")
            .output()
            .unwrap()
    };
    assert_eq!(lapse(&["health"]).status.code(), Some(0));
    app.create("request", "late", "cust", json!({})).await; // due long ago by the system clock
    let out = lapse(&["health"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("overdue_rules"));
}

async fn a_kind_without_a_pending_rule_reports_stale_sessions(backend: Backend) {
    let app = spawn_app_with(backend, Some("[kinds.ticket]\npresence_timeout = \"7d\"\n")).await;
    app.create("ticket", "t1", "cust", json!({})).await;
    app.advance("2h").await;
    let report = app.get(As::Service, "/v1/health").await.expect(200);
    assert_eq!(report["health"], "degraded");
    assert_eq!(report["stale_pending"], 1);
    assert_eq!(report["problems"][0]["code"], "stale_pending");
}

async fn metrics_are_exposed_for_prometheus_without_credentials(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("request", "m1", "cust", json!({})).await;
    app.advance("16m").await;
    app.sweep().await;
    let r = app.get(As::Nobody, "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r.content_type.starts_with("text/plain"));
    let text = r.text;
    assert!(text.contains("# TYPE lapse_sessions gauge"), "{text}");
    assert!(
        text.contains("lapse_sessions{kind=\"request\",status=\"cancelled\"} 1"),
        "{text}"
    );
    assert!(text.contains("lapse_sweeps_total 1"), "{text}");
    assert!(text.contains("lapse_rules_applied_total 1"), "{text}");
    assert!(
        text.contains("lapse_webhook_deliveries{status=\"dead\"} 0"),
        "{text}"
    );
    assert!(text.contains("lapse_database_up 1"), "{text}");
    // The request was cancelled a minute after its deadline (the clock moved 16 minutes).
    assert!(
        text.contains("# TYPE lapse_expiry_lag_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains("lapse_expiry_lag_seconds_bucket{le=\"30\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("lapse_expiry_lag_seconds_bucket{le=\"60\"} 1"),
        "{text}"
    );
    assert!(text.contains("lapse_expiry_lag_seconds_sum 60\n"), "{text}");
    assert!(
        text.contains(
            "lapse_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/sessions\",status=\"201\"} 1"
        ),
        "{text}"
    );
}

/// `/metrics` takes no credentials and counting sessions reads a whole index: it counts once,
/// and every scrape within the next 5 s gets those counts; `/v1/stats` counts each time.
async fn metrics_count_sessions_at_most_once_every_five_seconds(backend: Backend) {
    let app = spawn_app(backend).await;
    let pending = |n: i64| format!("lapse_sessions{{kind=\"request\",status=\"pending\"}} {n}\n");
    app.create("request", "c1", "cust-1", json!({})).await;
    let text = app.get(As::Nobody, "/metrics").await.text;
    assert!(text.contains(&pending(1)), "{text}");

    app.create("request", "c2", "cust-2", json!({})).await;
    let text = app.get(As::Nobody, "/metrics").await.text;
    assert!(
        text.contains(&pending(1)),
        "counted again within 5 s: {text}"
    );
    let stats = app.get(As::Admin, "/v1/stats").await.expect(200);
    assert_eq!(stats["sessions"]["by_status"]["pending"], 2, "{stats}");

    app.advance("5s").await;
    let text = app.get(As::Nobody, "/metrics").await.text;
    assert!(
        text.contains(&pending(2)),
        "not counted again after 5 s: {text}"
    );
}

both_stores!(
    a_repair_follows_its_expired_request_on_access_before_any_sweep,
    metrics_are_exposed_for_prometheus_without_credentials,
    metrics_count_sessions_at_most_once_every_five_seconds,
    the_health_check_finds_stuck_work_and_says_what_to_do,
    a_kind_without_a_pending_rule_reports_stale_sessions,
    concurrent_creates_for_one_customer_open_one_repair,
    a_customer_with_an_open_repair_is_refused_a_second_one,
    a_stale_waiting_repair_never_blocks_a_new_one,
    an_expired_request_cancels_its_repair_in_the_same_sweep,
    a_repair_whose_request_was_cancelled_by_hand_follows_it_on_access,
    an_active_repair_without_a_request_is_cancelled_as_orphaned,
    a_repair_must_belong_to_a_request,
);
