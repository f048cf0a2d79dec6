//! Changing rules safely (SPEC §10), on seed 003's coding rooms: a week of silence expires a
//! room, and the team wants three days. The preview says which rooms that ends at once; the
//! reload puts it in force; the sweep right after applies exactly what the preview said.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::helpers::*;

fn coding(idle: &str, rollout: &str) -> String {
    format!(
        "{rollout}\n[kinds.coding]\n[[kinds.coding.rules]]\nname = \"expire-inactive\"\n\
         on = \"idle\"\nafter = \"{idle}\"\ndo = \"expire\"\n"
    )
}

/// Rooms created a day apart, silent since: `r1` the oldest (5 days), `r5` the newest (1 day).
async fn five_rooms(app: &TestApp) {
    for i in 1..=5 {
        app.create("coding", &format!("r{i}"), "ana", json!({}))
            .await;
        app.advance("1d").await;
    }
}

/// `(session, rule, deadline)` of each entry.
fn triples(
    entries: &[Value],
    session: &str,
    rule: &str,
    at: &str,
) -> BTreeSet<(String, String, String)> {
    entries
        .iter()
        .map(|e| {
            let get = |path: &str| {
                e.pointer(path)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            (get(session), get(rule), get(at))
        })
        .collect()
}

async fn the_sweep_after_a_reload_applies_exactly_what_the_preview_listed(backend: Backend) {
    let app = spawn_app_with_file(backend, &coding("7d", "")).await;
    five_rooms(&app).await;
    assert!(app.sweep().await["applied"].as_array().unwrap().is_empty());
    let three_days = coding("3d", "");

    let preview = app
        .post(
            As::Admin,
            "/v1/policy/preview",
            json!({ "config": three_days }),
        )
        .await
        .expect(200);
    assert_eq!(preview["fire_now_total"], 2, "{preview}");
    let change = &preview["changes"][0];
    assert_eq!(change["kind"], "coding");
    assert_eq!(change["rule"], "expire-inactive");
    assert_eq!(change["change"], "changed");
    assert_eq!(change["sessions"]["earlier"], 5);
    assert_eq!(change["sessions"]["fire_now"], 2);
    let r1 = &change["fire_now"][0];
    assert_eq!(r1["session"], "r1");
    assert_eq!(r1["current"]["at"], at(START, "7d"));
    assert_eq!(r1["new"]["at"], at(START, "3d"));
    // A preview changes nothing.
    assert_eq!(app.session("r1").await.expect(200)["status"], "pending");

    app.rewrite_config(&three_days);
    let reloaded = app
        .post_empty(As::Admin, "/v1/admin/config/reload")
        .await
        .expect(200);
    assert_eq!(reloaded["reloaded"], true);
    assert_eq!(
        reloaded["rules_version"], 2,
        "the start put version 1 in force"
    );
    let report = app.sweep().await;
    let applied = report["applied"].as_array().unwrap();
    assert_eq!(
        triples(applied, "/session", "/rule", "/due_at"),
        triples(
            change["fire_now"].as_array().unwrap(),
            "/session",
            "/new/rule",
            "/new/at"
        ),
        "the sweep right after the reload applies the preview's fire_now: {report}"
    );

    // Stored deadlines follow the new rules at once: r3 (silent 3 days less 1 day) is found by
    // the next sweep as soon as its three days are up, not after seven.
    let r3 = app.session("r3").await.expect(200);
    assert_eq!(r3["next_due"]["at"], at(START, "5d"));
    app.advance("1d").await;
    let report = app.sweep().await;
    let ids: Vec<&str> = report["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["session"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["r3"]);

    // The reload is on the record, with its diff.
    let log = app
        .get(As::Admin, "/v1/events?type=config.reloaded")
        .await
        .expect(200);
    let events = log["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{log}");
    let data = &events[0]["data"];
    assert_eq!(data["from_version"], 1);
    assert_eq!(data["to_version"], 2);
    assert_eq!(data["fire_now_total"], 2);
    let changed = &data["diff"]["coding"]["changed"][0];
    assert_eq!(changed["rule"], "expire-inactive");
    assert_eq!(changed["before"]["after"], "7days");
    assert_eq!(changed["after"]["after"], "3days");
}

async fn a_longer_rule_moves_deadlines_later_and_fires_nothing(backend: Backend) {
    let app = spawn_app_with_file(backend, &coding("7d", "")).await;
    five_rooms(&app).await;
    let fortnight = coding("14d", "");
    let preview = app
        .post(
            As::Admin,
            "/v1/policy/preview",
            json!({ "config": fortnight }),
        )
        .await
        .expect(200);
    assert_eq!(preview["fire_now_total"], 0);
    assert_eq!(preview["changes"][0]["sessions"]["later"], 5);
    app.rewrite_config(&fortnight);
    app.post_empty(As::Admin, "/v1/admin/config/reload")
        .await
        .expect(200);
    // Past the old week for every room: nothing fires under the new rules.
    app.advance("3d").await;
    assert!(app.sweep().await["applied"].as_array().unwrap().is_empty());
    assert_eq!(app.session("r1").await.expect(200)["status"], "pending");
    let kinds = app.get(As::Admin, "/v1/kinds").await.expect(200);
    assert_eq!(kinds["kinds"][0]["rules"][0]["after"], "14days", "{kinds}");
}

async fn a_reload_firing_more_than_max_immediate_is_refused_unless_forced(backend: Backend) {
    let app = spawn_app_with_file(backend, &coding("7d", "")).await;
    five_rooms(&app).await;
    app.rewrite_config(&coding("3d", "[rollout]\nmax_immediate = 1"));
    let refused = app
        .post_empty(As::Admin, "/v1/admin/config/reload")
        .await
        .problem(409, "rollout_refused");
    assert_eq!(refused["fire_now_total"], 2);
    assert_eq!(refused["max_immediate"], 1);
    assert_eq!(
        refused["preview"]["changes"][0]["fire_now"][1]["session"],
        "r2"
    );
    // Nothing changed: the old rules are in force and no reload is recorded.
    assert!(app.sweep().await["applied"].as_array().unwrap().is_empty());
    let log = app
        .get(As::Admin, "/v1/events?type=config.reloaded")
        .await
        .expect(200);
    assert!(log["events"].as_array().unwrap().is_empty());

    let forced = app
        .post_empty(As::Admin, "/v1/admin/config/reload?force=true")
        .await
        .expect(200);
    assert_eq!(forced["fire_now_total"], 2);
    assert_eq!(app.sweep().await["applied"].as_array().unwrap().len(), 2);
}

async fn an_invalid_candidate_is_refused_naming_its_kind_and_rule(backend: Backend) {
    let app = spawn_app_with_file(backend, &coding("7d", "")).await;
    let bad = "[kinds.coding]\n[[kinds.coding.rules]]\nname = \"wipe\"\non = \"start_missed\"\n\
               after = \"1h\"\ndo = \"purge\"\n";
    let problem = app
        .post(As::Admin, "/v1/policy/preview", json!({ "config": bad }))
        .await
        .problem(422, "invalid_config");
    assert_eq!(problem["kind"], "coding");
    assert_eq!(problem["rule"], "wipe");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("cannot follow"),
        "{problem}"
    );
    // The same file on disk: the reload refuses it and the rules in force stay.
    app.rewrite_config(bad);
    let problem = app
        .post_empty(As::Admin, "/v1/admin/config/reload")
        .await
        .problem(422, "invalid_config");
    assert_eq!(problem["rule"], "wipe");
    let kinds = app.get(As::Admin, "/v1/kinds").await.expect(200);
    assert_eq!(kinds["kinds"][0]["rules"][0]["name"], "expire-inactive");

    // Only admins preview or reload.
    app.post(
        As::Service,
        "/v1/policy/preview",
        json!({ "config": coding("3d", "") }),
    )
    .await
    .problem(403, "forbidden");
    app.post_empty(As::Service, "/v1/admin/config/reload")
        .await
        .problem(403, "forbidden");
}

async fn a_preview_explains_one_session_under_both_policies(backend: Backend) {
    let app = spawn_app_with_file(backend, &coding("7d", "")).await;
    five_rooms(&app).await;
    let preview = app
        .post(
            As::Admin,
            "/v1/policy/preview?session=r4",
            json!({ "config": coding("1d", ""), "at": at(START, "4d") }),
        )
        .await
        .expect(200);
    assert_eq!(preview["now"], at(START, "4d"));
    let current = &preview["explain"]["current"][0];
    let new = &preview["explain"]["new"][0];
    assert_eq!(current["due"], false);
    assert_eq!(new["due"], true);
    assert_eq!(new["deadline"], at(START, "4d"));
    app.post(
        As::Admin,
        "/v1/policy/preview?session=nope",
        json!({ "config": coding("1d", "") }),
    )
    .await
    .problem(404, "not_found");
}

async fn the_cli_previews_a_file_against_the_database_and_explains_under_both(backend: Backend) {
    // The CLI reads the system clock: the room goes silent two days before now.
    let app = spawn_app_with_file(backend, &coding("7d", "")).await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let two_days_ago = lapse_core::Timestamp::from_millis(now_ms - 2 * 86_400_000);
    app.post(
        As::Admin,
        "/v1/admin/clock",
        json!({ "set": two_days_ago.to_string() }),
    )
    .await
    .expect(200);
    app.create("coding", "quiet-room", "ana", json!({})).await;

    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let one_day = write("one-day.toml", &coding("1d", ""));
    let a_month = write("a-month.toml", &coding("30d", ""));
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lapse"))
            .args(args)
            .env("DATABASE_URL", &app.db_url)
            .env_remove("LAPSE_CONFIG")
            .env_remove("LAPSE_CLOCK")
            .env("RUST_LOG", "warn")
            .output()
            .expect("lapse runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };

    let (code, out) = run(&["check-config", &one_day, "--against"]);
    assert_eq!(code, Some(3), "something would fire at once: {out}");
    assert!(
        out.contains("FIRE NOW") && out.contains("expire-inactive"),
        "{out}"
    );
    assert!(out.contains("1 session(s) would fire at once"), "{out}");
    assert!(out.contains("quiet-room"), "{out}");
    let (code, out) = run(&["check-config", &one_day, "--against", "--json"]);
    assert_eq!(code, Some(3));
    let preview: Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(preview["fire_now_total"], 1);
    let (code, out) = run(&["check-config", &a_month, "--against"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("nothing would fire at once"), "{out}");

    let (code, out) = run(&["explain", "quiet-room", "--with", &one_day]);
    assert_eq!(code, Some(0), "{out}");
    let (current, new) = out
        .split_once(&format!("under {one_day}:"))
        .expect("a section per policy");
    assert!(current.contains("wait expire-inactive"), "{out}");
    assert!(new.contains("DUE  expire-inactive"), "{out}");
    // Nothing was changed by any of it.
    assert_eq!(
        app.session("quiet-room").await.expect(200)["status"],
        "pending"
    );
}

both_stores!(
    the_cli_previews_a_file_against_the_database_and_explains_under_both,
    the_sweep_after_a_reload_applies_exactly_what_the_preview_listed,
    a_longer_rule_moves_deadlines_later_and_fires_nothing,
    a_reload_firing_more_than_max_immediate_is_refused_unless_forced,
    an_invalid_candidate_is_refused_naming_its_kind_and_rule,
    a_preview_explains_one_session_under_both_policies,
);
