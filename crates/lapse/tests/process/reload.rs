//! `kill -HUP` (`systemctl reload lapse`): the configuration file read again and its rules put
//! in force without a restart; a file that is invalid, or that would end more sessions at once
//! than `[rollout] max_immediate` allows, is refused in the log and the rules in force stay.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::running::Lapse;

fn coding(idle: &str, rollout: &str) -> String {
    format!(
        "{rollout}\n[kinds.coding]\n[[kinds.coding.rules]]\nname = \"expire-inactive\"\n\
         on = \"idle\"\nafter = \"{idle}\"\ndo = \"expire\"\n"
    )
}

/// The `after` of the coding rule lapse reports, once it is `want` (a signal is handled
/// asynchronously), or what it still is after five seconds.
async fn coding_after(lapse: &Lapse, want: &str) -> String {
    let started = Instant::now();
    loop {
        let (_, kinds) = lapse.get("/v1/kinds").await.expect("lapse answers");
        let after = kinds["kinds"][0]["rules"][0]["after"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if after == want || started.elapsed() > Duration::from_secs(5) {
            return after;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits up to five seconds for the log to contain `text`.
async fn logged(lapse: &Lapse, text: &str) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        if lapse.log_text().contains(text) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn sighup_reloads_the_file_and_refuses_what_is_invalid_or_too_much_at_once() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let db = format!("sqlite://{}", dir.path().join("lapse.db").display());
    let config = dir.path().join("lapse.toml");
    std::fs::write(&config, coding("7d", "")).unwrap();
    let lapse = Lapse::start_with(
        &db,
        &config,
        dir.path().join("lapse.log"),
        &[("NO_COLOR", "1"), ("LAPSE_CLOCK", "manual")],
    )
    .await;
    let (status, _) = lapse
        .post(
            "/v1/sessions",
            &json!({ "id": "quiet", "kind": "coding", "host": "ana" }),
        )
        .await
        .expect("lapse answers");
    assert_eq!(status, 201);
    lapse
        .post("/v1/admin/clock", &json!({ "advance": "4d" }))
        .await
        .expect("lapse answers");

    // Three days would end the room at once; the file allows none.
    std::fs::write(&config, coding("3d", "[rollout]\nmax_immediate = 0")).unwrap();
    lapse.signal("HUP");
    assert!(
        logged(&lapse, "SIGHUP: reload refused").await,
        "{}",
        lapse.log_text()
    );
    assert_eq!(coding_after(&lapse, "7days").await, "7days");

    // Allowed: in force at once, and the room ends.
    std::fs::write(&config, coding("3d", "[rollout]\nmax_immediate = 1")).unwrap();
    lapse.signal("HUP");
    assert_eq!(coding_after(&lapse, "3days").await, "3days");
    let (_, report) = lapse
        .post("/v1/sweep", &json!({}))
        .await
        .expect("lapse answers");
    assert_eq!(report["applied"][0]["session"], "quiet", "{report}");

    // An invalid file changes nothing, and lapse goes on.
    std::fs::write(&config, "[kinds.coding]\nrules = 3\n").unwrap();
    lapse.signal("HUP");
    assert!(
        logged(&lapse, "SIGHUP: the configuration is invalid").await,
        "{}",
        lapse.log_text()
    );
    assert_eq!(coding_after(&lapse, "3days").await, "3days");
}
