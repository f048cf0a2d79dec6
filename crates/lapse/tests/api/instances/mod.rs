//! Several lapse instances on one PostgreSQL database, as separate `lapse serve` processes:
//! however the sweeps and manual actions interleave, each session transitions once. Each
//! instance is started and called through `process.rs`.

mod process;

use std::time::Duration;

use futures::stream::{self, StreamExt};
use serde_json::json;

use crate::helpers::*;
use process::{call, count_events, move_clock, read, retried, start_instance, start_instance_with};

const SESSIONS: usize = 2000;
const ACTIVE: usize = 200;
const CLOCK: &str = "2030-01-01T00:00:00Z";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_sweeping_one_database_transition_each_session_once() {
    if postgres_skipped() {
        return;
    }
    let (db, _dir) = fresh_database(Backend::Postgres).await;
    let (a, b) = tokio::join!(start_instance(&db), start_instance(&db));
    let client = reqwest::Client::new();
    for i in [&a, &b] {
        move_clock(&client, &i.base, json!({ "set": CLOCK })).await;
    }

    // Unused rooms on one instance, active ones on the other.
    let created: Vec<u16> = stream::iter(0..SESSIONS + ACTIVE)
        .map(|i| {
            let (client, base) = (&client, if i < SESSIONS { &a.base } else { &b.base });
            async move {
                // Each host makes its own requests: rate limits are per actor.
                let host = format!("u{}", i % 50);
                let body = json!({ "id": format!("s{i}"), "kind": "study", "host": host });
                let (status, _) =
                    call(client, base, "/v1/sessions", Some(host.clone()), Some(body)).await;
                if i >= SESSIONS {
                    let path = format!("/v1/sessions/s{i}/start");
                    assert_eq!(call(client, base, &path, Some(host), None).await.0, 200);
                }
                status
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(created.iter().all(|s| *s == 201));

    for i in [&a, &b] {
        move_clock(&client, &i.base, json!({ "advance": "6h" })).await;
    }
    // Both instances sweep at once while the hosts end their rooms by hand on instance A.
    // Manual clocks run no sweeper of their own: these sweeps do all of it. One refused
    // (503) is asked again; it gave back the rows it had leased, so the retry takes them.
    let sweeps = futures::future::join_all(
        [&a.base, &b.base, &a.base, &b.base]
            .map(|base| retried(|| call(&client, base, "/v1/sweep", None, None))),
    );
    let ends = stream::iter(SESSIONS..SESSIONS + ACTIVE)
        .map(|i| {
            let client = &client;
            let base = &a.base;
            async move {
                let path = format!("/v1/sessions/s{i}/end");
                let actor = format!("u{}", i % 50);
                retried(|| call(client, base, &path, Some(actor.clone()), None))
                    .await
                    .0
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<u16>>();
    let (sweeps, ends) = tokio::join!(sweeps, ends);

    assert!(ends.iter().all(|s| *s == 409 || *s == 200), "{ends:?}");
    let mut applied = 0;
    for (status, report) in &sweeps {
        assert_eq!(*status, 200, "{report}");
        assert!(report["errors"].as_array().unwrap().is_empty(), "{report}");
        applied += report["applied"].as_array().unwrap().len();
    }
    assert!(
        applied <= SESSIONS + ACTIVE,
        "no rule is reported applied twice"
    );

    let deleted = count_events(&client, &b.base, "session.deleted").await;
    assert_eq!(deleted.len(), SESSIONS, "every unused room is deleted");
    assert!(deleted.values().all(|n| *n == 1), "and each exactly once");
    let completed = count_events(&client, &a.base, "session.completed").await;
    assert_eq!(completed.len(), ACTIVE);
    assert!(completed.values().all(|n| *n == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_one_instance_sees_events_committed_on_another() {
    if postgres_skipped() {
        return;
    }
    let (db, _dir) = fresh_database(Backend::Postgres).await;
    let (a, b) = tokio::join!(start_instance(&db), start_instance(&db));
    let client = reqwest::Client::new();
    let mut stream = client
        .get(format!("{}/v1/events?session=far", b.base))
        .bearer_auth(ADMIN_KEY)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let body = json!({ "id": "far", "kind": "study", "host": "alice" });
    assert_eq!(
        call(&client, &a.base, "/v1/sessions", None, Some(body))
            .await
            .0,
        201
    );
    let mut seen = String::new();
    while !seen.contains("participant.joined") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
            .await
            .expect("B streams A's events within seconds")
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("session.created"), "{seen}");
}

/// `kill -9` in the middle of a sweep: the rows it committed stay committed, the rest are
/// applied by the next process, and nothing is applied twice or stamped differently.
async fn a_process_killed_mid_sweep_loses_and_doubles_nothing(backend: Backend) {
    const ROOMS: usize = 1500;
    let (db, _dir) = fresh_database(backend).await;
    let client = reqwest::Client::new();
    let first = start_instance(&db).await;
    move_clock(&client, &first.base, json!({ "set": CLOCK })).await;
    let created: Vec<u16> = stream::iter(0..ROOMS)
        .map(|i| {
            let (client, base) = (&client, &first.base);
            async move {
                let host = format!("u{}", i % 50);
                let body = json!({ "id": format!("k{i}"), "kind": "study", "host": host });
                call(client, base, "/v1/sessions", Some(host), Some(body))
                    .await
                    .0
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(created.iter().all(|s| *s == 201));
    move_clock(&client, &first.base, json!({ "advance": "31m" })).await;

    // Start a sweep and kill the process while it works.
    let sweep = {
        let (client, base) = (client.clone(), first.base.clone());
        // Its answer never comes: the process dies first.
        tokio::spawn(async move {
            let _ = client
                .post(format!("{base}/v1/sweep"))
                .bearer_auth(ADMIN_KEY)
                .send()
                .await;
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut first = first;
    first.child.kill().expect("kill -9");
    let _ = first.child.wait();
    let _ = sweep.await;
    let done_before = count_events_on(&db, "session.deleted").await;

    let second = start_instance(&db).await;
    move_clock(&client, &second.base, json!({ "set": CLOCK })).await;
    move_clock(&client, &second.base, json!({ "advance": "31m" })).await;
    let (status, report) = call(&client, &second.base, "/v1/sweep", None, None).await;
    assert_eq!(status, 200, "{report}");
    // On PostgreSQL the dead sweeper's leases hold its unfinished batch back from other
    // sweepers for a minute; reading a session applies its rules regardless (passive
    // expiry), so nothing waits on a lease to be seen as it is.
    let reads: Vec<u16> = stream::iter(0..ROOMS)
        .map(|i| {
            let (client, base) = (&client, &second.base);
            async move {
                let req = client
                    .get(format!("{base}/v1/sessions/k{i}"))
                    .bearer_auth(ADMIN_KEY)
                    .header("X-Actor", format!("u{}", i % 50));
                req.send().await.unwrap().status().as_u16()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(reads.iter().all(|s| *s == 404), "every room is gone");

    let deleted = count_events(&client, &second.base, "session.deleted").await;
    assert_eq!(
        deleted.len(),
        ROOMS,
        "every room deleted ({done_before} before the kill)"
    );
    assert!(deleted.values().all(|n| *n == 1), "none twice");
    let page = read(
        &client,
        &second.base,
        "/v1/events?type=session.deleted&limit=1000",
    )
    .await;
    let stamp = at(CLOCK, "30m");
    let stamp = stamp.as_str();
    assert!(
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["at"] == stamp),
        "all at the deadline"
    );
}

/// Events of `type` in the database at `db`, read through a short-lived lapse.
async fn count_events_on(db: &str, event_type: &str) -> usize {
    let instance = start_instance(db).await;
    count_events(&reqwest::Client::new(), &instance.base, event_type)
        .await
        .len()
}

both_stores!(a_process_killed_mid_sweep_loses_and_doubles_nothing);

/// One instance reloads a longer rule; the other, started with the old file and never told
/// to reload, must not apply the old rule: it decides under the rules in force in the
/// database (SPEC §10, README "Changing rules safely").
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_that_did_not_reload_does_not_apply_a_rule_another_lengthened() {
    if postgres_skipped() {
        return;
    }
    let rules = |idle: &str| {
        format!(
            "[kinds.coding]\n[[kinds.coding.rules]]\nname = \"expire-inactive\"\n\
             on = \"idle\"\nafter = \"{idle}\"\ndo = \"expire\"\n"
        )
    };
    let (db, dir) = fresh_database(Backend::Postgres).await;
    let file = dir.path().join("lapse.toml");
    std::fs::write(&file, rules("7d")).unwrap();
    let (a, b) = tokio::join!(
        start_instance_with(&db, Some(&file)),
        start_instance_with(&db, Some(&file))
    );
    let client = reqwest::Client::new();
    for i in [&a, &b] {
        move_clock(&client, &i.base, json!({ "set": CLOCK })).await;
    }
    for n in 0..20 {
        let body = json!({ "id": format!("room{n}"), "kind": "coding", "host": "ana" });
        let (status, body) = call(&client, &a.base, "/v1/sessions", None, Some(body)).await;
        assert_eq!(status, 201, "{body}");
    }

    std::fs::write(&file, rules("30d")).unwrap();
    let (status, reloaded) = call(&client, &a.base, "/v1/admin/config/reload", None, None).await;
    assert_eq!(status, 200, "{reloaded}");
    assert_eq!(reloaded["rules_version"], 2);

    // A week and a day later: due under the old rule, not under the one in force.
    for i in [&a, &b] {
        move_clock(&client, &i.base, json!({ "advance": "8d" })).await;
    }
    let (status, report) = call(&client, &b.base, "/v1/sweep", None, None).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report["applied"],
        json!([]),
        "instance B applied the old rule"
    );
    let room = read(&client, &b.base, "/v1/sessions/room0").await;
    assert_eq!(room["status"], "pending", "{room}");
    assert_eq!(room["next_due"]["at"], "2030-01-31T00:00:00.000Z", "{room}");
    let kinds = read(&client, &b.base, "/v1/kinds").await;
    assert_eq!(kinds["kinds"][0]["rules"][0]["after"], "30days", "{kinds}");

    // Both instances at the new deadline: the rule applies once, whichever sweeps.
    for i in [&a, &b] {
        move_clock(&client, &i.base, json!({ "set": "2030-01-31T00:01:00Z" })).await;
    }
    let (x, y) = tokio::join!(
        call(&client, &a.base, "/v1/sweep", None, None),
        call(&client, &b.base, "/v1/sweep", None, None)
    );
    let applied =
        x.1["applied"].as_array().unwrap().len() + y.1["applied"].as_array().unwrap().len();
    assert_eq!(applied, 20, "{} {}", x.1, y.1);
}
