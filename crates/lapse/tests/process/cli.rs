//! `lapse sessions list|show` and `lapse events tail` against a running `lapse serve`, as an
//! operator types them.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

use crate::running::{KEY, Lapse};

fn lapse(base: &str, key: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lapse"));
    command
        .args(args)
        .env("LAPSE_URL", base)
        .env("RUST_LOG", "warn");
    match key {
        Some(key) => command.env("LAPSE_ADMIN_KEY", key),
        None => command.env_remove("LAPSE_ADMIN_KEY"),
    };
    command.output().expect("lapse runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn an_operator_lists_shows_and_tails_sessions_of_a_running_lapse() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let db = format!("sqlite://{}", dir.path().join("lapse.db").display());
    let config = dir.path().join("lapse.toml");
    std::fs::write(&config, "").expect("an empty config: the built-in kinds");
    let server = Lapse::start(&db, &config, dir.path().join("lapse.log")).await;
    for (id, kind, host) in [("algebra", "study", "ana"), ("pairing", "coding", "ben")] {
        let (status, _) = server
            .post(
                "/v1/sessions",
                &json!({ "id": id, "kind": kind, "host": host, "title": "Room" }),
            )
            .await
            .expect("lapse answers");
        assert_eq!(status, 201);
    }
    server
        .post(
            "/v1/sessions/algebra/participants",
            &json!({ "user": "cy" }),
        )
        .await
        .expect("lapse answers");
    let base = server.base.clone();

    // A table with a header, every session a row; filters reach the API.
    let out = lapse(&base, Some(KEY), &["sessions", "list"]);
    assert!(out.status.success(), "{out:?}");
    let table = stdout(&out);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("NEXT DUE"),
        "{table}"
    );
    assert!(
        table.contains("algebra") && table.contains("pairing"),
        "{table}"
    );
    let out = lapse(
        &base,
        Some(KEY),
        &["sessions", "list", "--kind", "coding", "--json"],
    );
    let page: Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    let ids: Vec<&str> = page["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(ids, ["pairing"]);

    // One session: participants and the explain table.
    let shown = stdout(&lapse(&base, Some(KEY), &["sessions", "show", "algebra"]));
    assert!(shown.starts_with("algebra [study] pending"), "{shown}");
    assert!(
        shown.contains("cy") && shown.contains("PARTICIPANT"),
        "{shown}"
    );
    assert!(
        shown.contains("delete-unused") && shown.contains("waits"),
        "{shown}"
    );

    // Refusals are errors with lapse's code, and a failing exit status.
    let out = lapse(&base, Some(KEY), &["sessions", "show", "no-such-room"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("404 not_found"),
        "{out:?}"
    );
    let out = lapse(&base, None, &["sessions", "list"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401 unauthorized"),
        "{out:?}"
    );

    // The tail follows the stream: what happened before (from --after 0), then what happens.
    let mut tail = Command::new(env!("CARGO_BIN_EXE_lapse"))
        .args([
            "events",
            "tail",
            "--after",
            "0",
            "--session",
            "algebra",
            "--json",
        ])
        .env("LAPSE_URL", &base)
        .env("LAPSE_ADMIN_KEY", KEY)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("lapse events tail starts");
    // Should an event never come, the tail is stopped and the reads below fail, not hang.
    let pid = tail.id().to_string();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(20));
        let _ = Command::new("kill").args(["-9", &pid]).status();
    });
    let mut lines = BufReader::new(tail.stdout.take().expect("piped")).lines();
    let mut types = Vec::new();
    for _ in 0..3 {
        let line = lines.next().expect("an event").expect("a line");
        let event: Value = serde_json::from_str(&line).expect("one JSON event a line");
        assert_eq!(event["session_id"], "algebra");
        types.push(event["type"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(
        types,
        [
            "session.created",
            "participant.joined",
            "participant.joined"
        ]
    );
    server
        .post("/v1/sessions/algebra/cancel", &json!({}))
        .await
        .expect("lapse answers");
    let line = lines.next().expect("the new event").expect("a line");
    assert!(line.contains("session.cancelled"), "{line}");
    let _ = tail.kill();
    let _ = tail.wait();
}
