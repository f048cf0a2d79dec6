//! Every hot statement uses an index: on a populated database, neither SQLite's plan nor
//! PostgreSQL's generic plan (the one a prepared statement keeps, fitted to no value) may scan
//! `sessions`, `participants`, `events`, `webhook_deliveries` or `notifications` whole, and
//! no page may be sorted where an index holds it in order.

use lapse_core::event::{NewEvent, NewNotification};
use lapse_core::store::{Commit, EventRecord, NotificationRecord, StoredResponse};
use lapse_core::{Config, EventType, SessionId, Store, Timestamp};
use lapse_store::testing::synthetic_sessions;
use lapse_store::{PostgresStore, SqliteStore};

fn t0() -> Timestamp {
    "2026-02-01T12:00:00Z".parse().unwrap()
}

/// Many sessions of two kinds over many hosts, three participants each, many events, each
/// with a webhook delivery, many users' notifications, and idempotency keys.
async fn populate(store: &dyn Store) {
    let config = Config::default();
    for kind in ["study", "reading"] {
        let sessions = synthetic_sessions(&config.kinds[kind], kind, 10_000, 2_000, 2, t0());
        assert_eq!(store.import(&sessions).await.unwrap(), 10_000);
    }
    let events = (0..20_000)
        .map(|n| EventRecord {
            id: format!("e{n}"),
            applied_at: t0(),
            event: NewEvent {
                event_type: EventType::SessionCreated,
                at: t0(),
                session_id: SessionId::parse(&format!("study{n}")).unwrap(),
                kind: "study".into(),
                actor: "system".into(),
                rule: None,
                data: serde_json::json!({}).into(),
            },
            // Their deliveries, all due at one instant, as a sweep's batch leaves them.
            webhooks: vec!["http://hooks.example/lapse".into()],
        })
        .collect();
    let notifications = (0..20_000)
        .map(|n| NotificationRecord {
            id: format!("n{n}"),
            notification: NewNotification {
                user: lapse_core::UserId::parse(&format!("u{}", n % 2_000)).unwrap(),
                notification_type: "session.ended".into(),
                title: "Ended".into(),
                message: "The session ended.".into(),
                session: SessionId::parse(&format!("study{n}")).unwrap(),
                link: None,
                created_at: t0(),
            },
        })
        .collect();
    store
        .commit(Commit {
            events,
            notifications,
            ..Commit::default()
        })
        .await
        .unwrap();
    for n in 0..5_000 {
        let response = StoredResponse {
            request_hash: format!("h{n}"),
            status: 201,
            content_type: "application/json".into(),
            body: "{}".into(),
            created_at: t0(),
        };
        store
            .save_idempotent_response(&format!("a{}", n % 50), &format!("k{n}"), &response)
            .await
            .unwrap();
    }
}

/// The plan lines that read a big table whole.
fn full_scans(plan: &str) -> Vec<&str> {
    plan.lines()
        .filter(|line| {
            let line = line.trim_start_matches([' ', '-', '>']);
            [
                "sessions",
                "participants",
                "events",
                "webhook_deliveries",
                "notifications",
            ]
            .iter()
            .any(|table| {
                // SQLite: `SCAN sessions` (with or without an index walked end to end);
                // PostgreSQL: `Seq Scan on sessions`.
                line.starts_with(&format!("SCAN {table}"))
                    || line.starts_with(&format!("Seq Scan on {table}"))
            })
        })
        .collect()
}

/// The plan lines that sort a page before it is cut: SQLite's `USE TEMP B-TREE FOR ... ORDER
/// BY` (not an aggregate's `json_group_array(ORDER BY)`, which orders the page's own rows),
/// PostgreSQL's `Sort` and `Incremental Sort` under a `Limit` (one above it orders the page
/// once cut).
fn sorts(plan: &str) -> Vec<&str> {
    fn node(line: &str) -> &str {
        line.trim_start_matches([' ', '-', '>'])
    }
    let lines: Vec<&str> = plan.lines().collect();
    let indent = |line: &str| line.len() - node(line).len();
    (0..lines.len())
        .filter(|&i| {
            let line = node(lines[i]);
            if line.starts_with("USE TEMP B-TREE FOR") {
                return line.contains(" ORDER BY");
            }
            // A node, not its `Sort Key:` detail.
            let sort = line.starts_with("Sort ") || line.starts_with("Incremental Sort ");
            if !sort || !line.contains("(cost=") {
                return false;
            }
            // The nodes above it: each line above that is less indented than the last.
            let mut level = indent(lines[i]);
            lines[..i].iter().rev().any(|above| {
                let above_level = indent(above);
                let is_ancestor = above_level < level;
                if is_ancestor {
                    level = above_level;
                }
                is_ancestor && node(above).starts_with("Limit ")
            })
        })
        .map(|i| lines[i])
        .collect()
}

/// The plan of the statement called `name`.
fn plan_of<'a>(backend: &str, plans: &'a [(String, String)], name: &str) -> &'a str {
    plans
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, plan)| plan.as_str())
        .unwrap_or_else(|| panic!("{backend}: no plan for {name}"))
}

fn assert_indexed(backend: &str, plans: &[(String, String)]) {
    assert!(
        plans.len() >= 20,
        "{backend}: every hot statement is checked"
    );
    let scans: Vec<String> = plans
        .iter()
        .filter(|(_, plan)| !full_scans(plan).is_empty())
        .map(|(name, plan)| format!("{name}:\n{plan}"))
        .collect();
    assert!(
        scans.is_empty(),
        "{backend}: hot statements that scan a whole table:\n\n{}",
        scans.join("\n\n")
    );
    // An index can be walked as wastefully as a table: these paths must take their own.
    for (name, index) in [
        ("open children", "sessions_parent"),
        ("list by participant", "participants_user"),
        ("list by host", "sessions_host"),
        ("host limit", "sessions_open_by_host"),
        (
            "host's open sessions of a kind, as its limit counts them",
            "sessions_open_by_host",
        ),
        ("due rows", "sessions_next_due"),
        ("due rows of a kind", "sessions_next_due"),
        ("due rows counted", "sessions_next_due"),
        ("due rows of a kind counted", "sessions_next_due"),
        ("events of a session", "events_session"),
        ("was deleted", "events_session"),
        ("due deliveries", "webhook_deliveries_endpoint_due"),
        ("deliveries by status", "webhook_deliveries_status"),
        ("deliveries of every status", "webhook_deliveries_status"),
        ("next delivery", "webhook_deliveries_endpoint_due"),
        (
            "endpoints of pending deliveries",
            "webhook_deliveries_endpoint_due",
        ),
        // Each old event's pending deliveries by its number, not every pending one.
        ("retention, events", "webhook_deliveries_pending"),
        ("retention, deliveries", "webhook_deliveries_status"),
        ("retention, notifications", "notifications_created"),
        ("retention, idempotency keys", "idempotency_keys_created"),
        ("notifications of a user", "notifications_user"),
        ("unread notifications of a user", "notifications_user"),
    ]
    .into_iter()
    .chain(batch_paths(backend))
    {
        let plan = plan_of(backend, plans, name);
        assert!(
            plan.contains(index),
            "{backend}: {name} should read {index}:\n{plan}"
        );
    }
    // A page read in its index's order ends where the page does. One that sorts reads every
    // row tied with the page's last first: deliveries due at one instant come in thousands.
    // (On SQLite the list by status sorts the deliveries of one commit, tied on their time: at
    // most a sweep's batch.)
    for name in [
        "due deliveries",
        "due rows",
        "due rows of a kind",
        "list, first page",
        "list, next page",
        "list by kind and status",
        "host's open sessions of a kind, as its limit counts them",
        "retention, events looked at",
        "retention, events",
    ] {
        let plan = plan_of(backend, plans, name);
        assert!(
            sorts(plan).is_empty(),
            "{backend}: {name} sorts its page instead of reading it in order:\n{plan}"
        );
    }
}

/// Batch writes join a batch (a JSON text, or on SQLite a sweep's `values` lists) to a big
/// table: the batch must drive, each row found by its key (a batch probed once per row of the
/// table costs rows × batch).
fn batch_paths(backend: &str) -> Vec<(&'static str, &'static str)> {
    if backend == "sqlite" {
        vec![
            ("batched session update", "sqlite_autoindex_sessions_1"),
            (
                "batched session update, keeping status and wake-up",
                "sqlite_autoindex_sessions_1",
            ),
            (
                "batched session update, stored states",
                "sqlite_autoindex_sessions_1",
            ),
            ("batched webhook deliveries", "sqlite_autoindex_events_1"),
            ("heartbeat flush, sessions", "sqlite_autoindex_sessions_1"),
            (
                "heartbeat flush, sessions moved",
                "sqlite_autoindex_sessions_1",
            ),
            (
                "heartbeat flush, participants",
                "participants USING PRIMARY KEY",
            ),
            (
                "session update, status and wake-up kept",
                "sqlite_autoindex_sessions_1",
            ),
            ("session update, status kept", "sqlite_autoindex_sessions_1"),
            ("session update", "sqlite_autoindex_sessions_1"),
        ]
    } else {
        vec![
            ("batched session update", "sessions_pkey"),
            ("heartbeat flush, sessions", "sessions_pkey"),
            // Its key, or the same two columns the other way round.
            (
                "heartbeat flush, participants",
                "Index Scan using participants_",
            ),
        ]
    }
}

#[tokio::test]
async fn no_hot_statement_scans_a_whole_table_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("plans.db").display());
    let store = SqliteStore::open(&url, None).await.unwrap();
    store.migrate().await.unwrap();
    populate(&store).await;
    assert_indexed("sqlite", &store.hot_plans().await.unwrap());
}

/// The plans above are read from statements prepared with no values: SQLite keeps those plans
/// only with its query planner's stability guarantee (`.cargo/config.toml`). Without it, a
/// statement with a bound `LIMIT ?` (the event reader's page after every commit) is planned
/// around the value sent and prepared again from its text each time it is sent another.
#[tokio::test]
async fn sqlite_keeps_the_plan_a_statement_was_prepared_with() {
    use sqlx::Connection as _;
    let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:")
        .await
        .unwrap();
    let keeps: i64 = sqlx::query_scalar(
        "select count(*) from pragma_compile_options where compile_options = 'ENABLE_QPSG'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(keeps, 1, "SQLite was built without SQLITE_ENABLE_QPSG");
}

#[tokio::test]
async fn no_hot_statement_scans_a_whole_table_on_postgres_even_with_a_generic_plan() {
    let Some(url) = lapse_store::testing::fresh_postgres_database().await else {
        return;
    };
    let store = PostgresStore::open(&url, None, None).await.unwrap();
    store.migrate().await.unwrap();
    populate(&store).await;
    assert_indexed("postgres", &store.hot_plans().await.unwrap());
}

#[test]
fn the_check_itself_spots_a_full_scan() {
    assert_eq!(
        full_scans("SCAN sessions USING INDEX sqlite_autoindex_sessions_1"),
        vec!["SCAN sessions USING INDEX sqlite_autoindex_sessions_1"]
    );
    assert_eq!(
        full_scans("  ->  Seq Scan on events  (cost=0.00..1.00)").len(),
        1
    );
    assert!(full_scans("SEARCH sessions USING INDEX sessions_parent (parent=?)").is_empty());
    assert!(full_scans("SCAN json_each VIRTUAL TABLE INDEX 1:").is_empty());
    assert_eq!(sorts("USE TEMP B-TREE FOR RIGHT PART OF ORDER BY").len(), 1);
    assert!(sorts("USE TEMP B-TREE FOR json_group_array(ORDER BY)").is_empty());
    assert!(sorts("USE TEMP B-TREE FOR GROUP BY").is_empty());
    let cut_after_sorting = "Limit  (cost=1.00..2.00)\n  \
        ->  LockRows  (cost=1.00..2.00)\n        \
        ->  Incremental Sort  (cost=1.00..2.00)\n              \
        Sort Key: next_attempt_at, id";
    assert_eq!(sorts(cut_after_sorting).len(), 1);
    let sorted_once_cut = "Sort  (cost=1.00..2.00)\n  Sort Key: d.next_attempt_at\n  \
        CTE picked\n    ->  Limit  (cost=1.00..2.00)\n          \
        ->  Index Scan using webhook_deliveries_endpoint_due on webhook_deliveries";
    assert!(sorts(sorted_once_cut).is_empty());
    assert!(sorts("SEARCH d USING INDEX webhook_deliveries_endpoint_due (endpoint=? AND next_attempt_at<?)").is_empty());
}
