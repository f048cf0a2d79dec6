//! Seed 003, coding rooms: a week of silence expires the room, keeps its data and moves its
//! members out; `lapse sweep --dry-run --verbose` previews what the cron job would do.

use std::process::Command;

use serde_json::json;

use crate::helpers::*;

async fn a_room_silent_for_seven_days_expires_and_keeps_its_data(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create(
        "coding",
        "pair",
        "ana",
        json!({ "metadata": { "repo": "lapse" } }),
    )
    .await;
    app.join("pair", "ben").await;
    app.start("pair", "ana").await;
    app.post(
        As::User("ben"),
        "/v1/sessions/pair/activity",
        json!({ "user": "ben", "type": "commits", "count": 5 }),
    )
    .await
    .expect(204);
    app.advance("6d").await;
    assert!(app.sweep().await["applied"].as_array().unwrap().is_empty());

    app.advance("2d").await;
    let dry = app.dry_sweep().await;
    assert_eq!(dry["dry_run"], true);
    let report = app.sweep().await;
    assert_eq!(
        dry["applied"], report["applied"],
        "a dry run reports exactly what the sweep applies"
    );

    let s = app.session("pair").await.expect(200);
    assert_eq!(s["status"], "expired");
    assert_eq!(s["ended_at"], at(START, "7d"));
    assert_eq!(s["metadata"]["repo"], "lapse");
    assert_eq!(s["counters"]["commits"], 5);
    assert!(
        s["participants"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["state"] == "left" && p["online"] == false)
    );
}

async fn dry_run_changes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("coding", "idle", "ana", json!({})).await;
    app.advance("8d").await;
    let first = app.dry_sweep().await;
    let second = app.dry_sweep().await;
    assert_eq!(first["applied"].as_array().unwrap().len(), 1);
    assert_eq!(first["applied"], second["applied"]);
    // The global log applies no rules on read, so it shows exactly what the dry runs left.
    let log = app
        .get(As::Admin, "/v1/events?session=idle&type=session.expired")
        .await
        .expect(200);
    assert!(log["events"].as_array().unwrap().is_empty());
}

async fn the_cli_sweep_previews_and_then_applies_on_the_database(backend: Backend) {
    // The CLI reads the system clock, so these rooms live in the past.
    let app = spawn_app(backend).await;
    app.post(
        As::Admin,
        "/v1/admin/clock",
        json!({ "set": "2026-01-05T09:00:00Z" }),
    )
    .await
    .expect(200);
    app.create("coding", "old-room", "ana", json!({})).await;
    app.create("coding", "newer-room", "ben", json!({})).await;
    app.advance("1d").await;
    app.heartbeat("newer-room", "ben").await.expect(204);
    app.sweep().await; // flushes the heartbeat

    let lapse = env!("CARGO_BIN_EXE_lapse");
    let run = |args: &[&str]| {
        let out = Command::new(lapse)
            .args(args)
            .env("DATABASE_URL", &app.db_url)
            .env_remove("LAPSE_CONFIG")
            .env_remove("LAPSE_CLOCK")
            .output()
            .expect("lapse runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (code, out) = run(&["sweep", "--dry-run", "--verbose"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("would apply old-room [coding] rule expire-inactive"),
        "{out}"
    );
    assert!(out.contains("would apply newer-room"), "{out}");
    assert!(out.contains("dry run: would apply 2 rule(s)"), "{out}");

    // Progress shows once a sweep has more than a batch to do: here batches of one row.
    let small_batches = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(small_batches.path(), "[sweeper]\nbatch = 1\n").unwrap();
    let sweep = |config: Option<&std::path::Path>| {
        let mut command = Command::new(lapse);
        command
            .args(["sweep", "--dry-run"])
            .env("DATABASE_URL", &app.db_url)
            .env_remove("LAPSE_CONFIG")
            .env_remove("LAPSE_CLOCK");
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let out = command.output().unwrap();
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let stderr = sweep(Some(small_batches.path()));
    assert!(
        stderr.contains("sweeping: 2 due row(s) examined, 2 rule(s) applied"),
        "progress on stderr: {stderr}"
    );
    let stderr = sweep(None);
    assert!(
        !stderr.contains("sweeping:"),
        "one batch, no progress: {stderr}"
    );

    let (code, out) = run(&["sweep", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["counts"]["expire"], 2);
    let due_of = |id: &str| {
        report["applied"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["session"] == id)
            .unwrap()["due_at"]
            .clone()
    };
    assert_eq!(due_of("old-room"), "2026-01-12T09:00:00.000Z");
    assert_eq!(
        due_of("newer-room"),
        "2026-01-13T09:00:00.000Z",
        "its heartbeat moved the deadline"
    );

    let (_, out) = run(&["sweep", "--dry-run", "--verbose"]);
    assert!(out.contains("would apply 0 rule(s)"), "{out}");
    let (_, out) = run(&["stats"]);
    assert!(out.contains("coding") && out.contains("expired"), "{out}");
    assert!(out.starts_with("KIND"), "a header names the columns: {out}");
    let (_, out) = run(&["explain", "old-room"]);
    assert!(
        out.contains("expire-inactive") && out.contains("expired"),
        "{out}"
    );
}

both_stores!(
    a_room_silent_for_seven_days_expires_and_keeps_its_data,
    dry_run_changes_nothing,
    the_cli_sweep_previews_and_then_applies_on_the_database,
);
