//! Every hot statement uses an index: on a populated database, neither SQLite's plan nor
//! PostgreSQL's generic plan (the one a prepared statement keeps, fitted to no value) may scan
//! `sessions`, `participants` or `events` whole.

use lapse_core::event::NewEvent;
use lapse_core::store::{Commit, EventRecord};
use lapse_core::{Config, EventType, SessionId, Store, Timestamp};
use lapse_store::testing::synthetic_sessions;
use lapse_store::{PostgresStore, SqliteStore};

fn t0() -> Timestamp {
    "2026-02-01T12:00:00Z".parse().unwrap()
}

/// Many sessions of two kinds over many hosts, three participants each, and many events.
async fn populate(store: &dyn Store) {
    let config = Config::default();
    for kind in ["study", "reading"] {
        let sessions = synthetic_sessions(&config.kinds[kind], kind, 10_000, 2_000, 2, t0());
        assert_eq!(store.import(&sessions).await.unwrap(), 10_000);
    }
    let events = (0..5_000)
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
            webhooks: Vec::new(),
        })
        .collect();
    store
        .commit(Commit {
            events,
            ..Commit::default()
        })
        .await
        .unwrap();
}

/// The plan lines that read a big table whole.
fn full_scans(plan: &str) -> Vec<&str> {
    plan.lines()
        .filter(|line| {
            let line = line.trim_start_matches([' ', '-', '>']);
            ["sessions", "participants", "events"].iter().any(|table| {
                // SQLite: `SCAN sessions` (with or without an index walked end to end);
                // PostgreSQL: `Seq Scan on sessions`.
                line.starts_with(&format!("SCAN {table}"))
                    || line.starts_with(&format!("Seq Scan on {table}"))
            })
        })
        .collect()
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
        ("due rows", "sessions_next_due"),
        ("due rows of a kind", "sessions_next_due"),
        ("due rows counted", "sessions_next_due"),
        ("due rows of a kind counted", "sessions_next_due"),
        ("events of a session", "events_session"),
        ("was deleted", "events_session"),
    ]
    .into_iter()
    .chain(batch_paths(backend))
    {
        let plan = plans
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, plan)| plan)
            .unwrap_or_else(|| panic!("{backend}: no plan for {name}"));
        assert!(
            plan.contains(index),
            "{backend}: {name} should read {index}:\n{plan}"
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
                "batched session update, stale rows",
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
}
