//! `lapse backup PATH`: a copy taken while lapse runs holds every session and event committed
//! before it, and lapse starts on it as on the original.

use std::process::Command;

use serde_json::{Value, json};

use crate::helpers::{As, Backend, spawn_app};

fn backup(db_url: &str, path: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lapse"))
        .arg("backup")
        .arg(path)
        .env("DATABASE_URL", db_url)
        .env_remove("LAPSE_CONFIG")
        .output()
        .expect("lapse runs")
}

async fn everything(app: &crate::helpers::TestApp) -> (Value, Value) {
    let sessions = app
        .get(As::Admin, "/v1/sessions?limit=100")
        .await
        .expect(200);
    let events = app.get(As::Admin, "/v1/events?limit=500").await.expect(200);
    (sessions["sessions"].clone(), events["events"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_backup_taken_while_lapse_runs_restores_every_session_and_event() {
    let mut app = spawn_app(Backend::Sqlite).await;
    app.create("study", "b1", "alice", json!({})).await;
    app.create("coding", "b2", "alice", json!({})).await;
    app.join("b1", "bob").await;
    app.start("b1", "alice").await;
    let before = everything(&app).await;
    assert_eq!(before.0.as_array().unwrap().len(), 2);
    assert!(before.1.as_array().unwrap().len() >= 4, "{:#}", before.1);

    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy.db");
    let out = backup(&app.db_url, &copy);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = before.1.as_array().unwrap().len();
    assert!(
        stdout.contains(&format!("2 session(s), {events} event(s)")),
        "it says what the copy holds: {stdout}"
    );

    // Written after the copy: not in it.
    app.create("study", "b3", "carol", json!({})).await;

    let again = backup(&app.db_url, &copy);
    assert_eq!(again.status.code(), Some(2), "a backup never overwrites");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    app.db_url = format!("sqlite://{}", copy.display());
    app.restart().await;
    assert_eq!(
        everything(&app).await,
        before,
        "the copy is the database as it was"
    );
    app.join("b2", "dave").await; // and lapse works on it as on the original
}

#[tokio::test]
async fn backing_up_postgresql_says_to_use_pg_dump() {
    let dir = tempfile::tempdir().unwrap();
    let out = backup(
        "postgres://lapse@127.0.0.1:1/lapse",
        &dir.path().join("copy.dump"),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pg_dump --format=custom"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.path().join("copy.dump").exists());
}
