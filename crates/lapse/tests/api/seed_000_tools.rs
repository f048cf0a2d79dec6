//! Seed 000, study sessions, what surrounds the rules: the cleanup cron's secret, the
//! export of an ended session, the kinds and counts the app shows, and the limit on ends.

use serde_json::json;

use crate::helpers::*;

async fn the_cleanup_cron_authenticates_with_the_cron_secret(backend: Backend) {
    let app = spawn_app(backend).await;
    app.post_empty(As::Nobody, "/v1/sweep")
        .await
        .problem(401, "unauthorized");
    app.post_empty(As::User("alice"), "/v1/sweep")
        .await
        .expect(200);
    app.get(As::Cron, "/v1/sweep").await.expect(200);
    app.get(As::Cron, "/v1/sessions")
        .await
        .problem(403, "forbidden");
    app.post_empty(As::Bearer("wrong".into()), "/v1/sweep")
        .await
        .problem(401, "unauthorized");
}

async fn an_ended_session_exports_as_json_markdown_and_csv(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("study", "exp", "alice", json!({ "title": "Physics" }))
        .await;
    app.join("exp", "bob").await;
    app.start("exp", "alice").await;
    app.advance("20m").await;
    app.post_empty(As::User("alice"), "/v1/sessions/exp/end")
        .await
        .expect(200);

    let json = app
        .get(As::User("bob"), "/v1/sessions/exp/export?format=json")
        .await
        .expect(200);
    assert_eq!(json["summary"]["duration_minutes"], 20);
    assert_eq!(json["participants"].as_array().unwrap().len(), 2);
    assert!(types(json["timeline"].as_array().unwrap()).contains(&"session.completed".to_string()));

    let md = app
        .get(As::User("bob"), "/v1/sessions/exp/export?format=markdown")
        .await;
    assert_eq!(md.status, 200);
    assert!(md.content_type.starts_with("text/markdown"));
    assert!(
        md.text.starts_with("# Physics") && md.text.contains("| bob | member | left |"),
        "{}",
        md.text
    );

    let csv = app
        .get(As::User("bob"), "/v1/sessions/exp/export?format=csv")
        .await;
    assert!(csv.text.starts_with("seq,at,applied_at,type"));
    assert!(csv.text.contains("session.completed"));
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_lapse"))
        .args(["export", "exp", "--format", "markdown"])
        .env("DATABASE_URL", &app.db_url)
        .env_remove("LAPSE_CONFIG")
        .output()
        .unwrap();
    assert_eq!(cli.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&cli.stdout),
        md.text,
        "the command line prints the same page"
    );
    app.get(As::User("bob"), "/v1/sessions/exp/export?format=pdf")
        .await
        .problem(422, "validation_failed");
}

async fn kinds_and_stats_show_the_configuration_and_the_counts(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("study", "k1", "alice", json!({})).await;
    app.create("coding", "k2", "alice", json!({})).await;
    let kinds = app.get(As::User("alice"), "/v1/kinds").await.expect(200);
    let study = kinds["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "study")
        .unwrap()
        .clone();
    assert_eq!(study["rules"][1]["warn_before"], "5m");
    assert_eq!(study["rules"][0]["do"], "delete");

    let stats = app.get(As::Service, "/v1/stats").await.expect(200);
    app.get(As::Cron, "/v1/stats")
        .await
        .problem(403, "forbidden"); // the cron secret only sweeps
    assert_eq!(stats["sessions"]["total"], 2);
    assert_eq!(stats["sessions"]["by_kind"]["coding"]["pending"], 1);
    // The first thing due: the hosts' presence lapsing (90 s without a heartbeat).
    assert_eq!(stats["sweeper"]["next_deadline"], at(START, "90s"));
    app.get(As::Nobody, "/v1/stats")
        .await
        .problem(401, "unauthorized");
}

async fn ending_is_rate_limited_to_twenty_a_minute_per_host(backend: Backend) {
    let app = spawn_app(backend).await;
    // The limit comes before state: even ends of a session that cannot end count.
    app.create("study", "r", "alice", json!({})).await;
    for _ in 0..20 {
        app.post_empty(As::User("alice"), "/v1/sessions/r/end")
            .await
            .problem(409, "invalid_transition");
    }
    let r = app
        .post_empty(As::User("alice"), "/v1/sessions/r/end")
        .await;
    let retry_after: u64 = r
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After header");
    assert!((1..=3).contains(&retry_after), "{retry_after}");
    r.problem(429, "rate_limited");
    // Another host is not held back, nor are alice's other operations.
    app.create("study", "b", "bob", json!({})).await;
    app.post_empty(As::User("bob"), "/v1/sessions/b/end")
        .await
        .problem(409, "invalid_transition");
    app.get(As::User("alice"), "/v1/sessions/r")
        .await
        .expect(200);
    // Credentials are checked first.
    app.post_empty(As::Nobody, "/v1/sessions/r/end")
        .await
        .problem(401, "unauthorized");
}

both_stores!(
    the_cleanup_cron_authenticates_with_the_cron_secret,
    an_ended_session_exports_as_json_markdown_and_csv,
    kinds_and_stats_show_the_configuration_and_the_counts,
    ending_is_rate_limited_to_twenty_a_minute_per_host,
);
