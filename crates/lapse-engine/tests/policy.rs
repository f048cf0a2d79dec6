//! Rules reloaded while sessions are busy (heartbeats, activity, flushes, sweeps): once the
//! reloads are over, no session's stored deadline is later than the one the rules in force
//! give it (the sweep would find it late), and a session nobody touched has exactly that
//! deadline. On SQLite, and on PostgreSQL when a test server is set.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use lapse_core::store::SessionQuery;
use lapse_core::{Config, SessionId, Span, Store, UserId};
use lapse_engine::ops::CreateRequest;
use lapse_engine::{Caller, Clock, Engine, EngineError, SweepOptions};
use lapse_store::{PostgresStore, SqliteStore};

mod common;
use common::{admin, create, t0};

const ROOMS: usize = 300;

fn rules(idle: &str) -> Config {
    let text = format!(
        "[kinds.coding]\npresence_timeout = \"10d\"\n[[kinds.coding.rules]]\n\
         name = \"expire-inactive\"\non = \"idle\"\nafter = \"{idle}\"\ndo = \"expire\"\n\
         warn_before = \"1h\"\n"
    );
    Config::parse(&text, "test.toml").unwrap()
}

async fn stores() -> Vec<(Arc<dyn Store>, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("lapse.db").display());
    let mut out: Vec<(Arc<dyn Store>, tempfile::TempDir)> =
        vec![(Arc::new(SqliteStore::open(&url, None).await.unwrap()), dir)];
    if let Some(url) = lapse_store::testing::fresh_postgres_database().await {
        let pg = PostgresStore::open(&url, None, None).await.unwrap();
        out.push((Arc::new(pg), tempfile::tempdir().unwrap()));
    }
    for (s, _) in &out {
        s.migrate().await.unwrap();
    }
    out
}

fn room(n: usize) -> SessionId {
    SessionId::parse(&format!("room{n}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_deadlines_follow_rules_reloaded_under_load() {
    for (store, _dir) in stores().await {
        let engine = Engine::new(store.clone(), Arc::new(rules("7d")), Clock::manual(t0()));
        engine.put_rules_in_force().await.unwrap();
        let host = UserId::parse("host").unwrap();
        for n in 0..ROOMS {
            let req = create("coding", room(n).as_str(), host.as_str());
            engine.create(&admin(), req).await.unwrap();
        }
        engine.clock().advance(Span::from_secs(3600)).unwrap();

        // Busy: heartbeats on the even rooms (flushed all the time: they move a row's activity
        // and version but not its stored deadline, so a re-arm read before a flush loses),
        // activity on every fourth, and sweeps.
        let done = Arc::new(AtomicBool::new(false));
        let mut busy = Vec::new();
        for worker in 0..2 {
            let (engine, done, host) = (engine.clone(), done.clone(), host.clone());
            busy.push(tokio::spawn(async move {
                let mut n = worker * 2;
                while !done.load(Ordering::Relaxed) {
                    let id = room(n % ROOMS);
                    engine.heartbeat(&admin(), &id, &host).await.unwrap();
                    if n.is_multiple_of(4) {
                        engine
                            .activity(&admin(), &id, None, "edits", 1)
                            .await
                            .unwrap();
                    }
                    n += 4;
                    // As a request's task does between requests: a beat answered from memory
                    // awaits nothing, and a task that never yields would keep the tasks woken
                    // on its thread (a write holding the writer, say) from running.
                    tokio::task::yield_now().await;
                }
            }));
        }
        {
            let (engine, done) = (engine.clone(), done.clone());
            busy.push(tokio::spawn(async move {
                let mut rounds = 0u64;
                while !done.load(Ordering::Relaxed) {
                    engine.flush_heartbeats().await.unwrap();
                    rounds += 1;
                    if rounds.is_multiple_of(20) {
                        let report = engine.sweep_once(&SweepOptions::default()).await.unwrap();
                        assert!(report.applied.is_empty(), "nothing is due: {report:?}");
                    }
                    tokio::task::yield_now().await;
                }
            }));
        }
        // Ending on a shorter rule: a deadline left from the one before would be late.
        for idle in ["10d", "3d", "14d", "2d"] {
            let reloaded = engine.reload(&admin(), &rules(idle), false).await.unwrap();
            assert!(reloaded.rearmed > 0, "{idle}: {reloaded:?}");
        }
        done.store(true, Ordering::Relaxed);
        for task in busy {
            task.await.unwrap();
        }
        engine.flush_heartbeats().await.unwrap();

        let now = engine.now();
        let mut kind = rules("2d").kinds["coding"].clone();
        kind.idle_grace = lapse_engine::heartbeats::IDLE_GRACE;
        let sessions = store
            .list(&SessionQuery {
                kind: Some("coding".into()),
                limit: 1000,
                ..SessionQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(sessions.len(), ROOMS);
        for stored in sessions {
            assert!(
                stored.status.is_open(),
                "{}: {:?}",
                stored.id,
                stored.status
            );
            let mut truth = stored.clone();
            truth.observe(&kind, now);
            let (have, want) = (stored.wake_at.unwrap(), truth.wake_at.unwrap());
            assert!(
                have <= want,
                "{}: stored {have}, later than {want} under the rules in force",
                stored.id
            );
            let touched = stored.participants.iter().any(|p| p.last_seen_at > t0());
            if !touched {
                assert_eq!(have, want, "{}: untouched, so exactly", stored.id);
            }
        }
    }
}

/// A reload that stopped after putting its rules in force but before storing every deadline
/// under them (the process was killed) is finished by the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_reload_is_finished_by_the_next_start() {
    for (store, _dir) in stores().await {
        let first = Engine::new(store.clone(), Arc::new(rules("7d")), Clock::manual(t0()));
        first.put_rules_in_force().await.unwrap();
        let req = create("coding", room(1).as_str(), "host");
        first.create(&admin(), req).await.unwrap();
        // What the killed reload left: the new rules in force, the deadlines of the old.
        let three_days = rules("3d");
        store
            .publish_rules(1, &three_days.kinds_toml, &[], t0(), None)
            .await
            .unwrap();
        assert!(!store.rules_in_force().await.unwrap().unwrap().rearmed);
        drop(first);

        let clock = Clock::manual(t0());
        let next = Engine::new(store.clone(), Arc::new(three_days), clock);
        next.put_rules_in_force().await.unwrap();
        assert!(store.rules_in_force().await.unwrap().unwrap().rearmed);
        next.clock()
            .advance(Span::from_secs(3 * 86_400 + 60))
            .unwrap();
        let report = next.sweep_once(&SweepOptions::default()).await.unwrap();
        let applied: Vec<&str> = report.applied.iter().map(|a| a.rule.as_str()).collect();
        assert_eq!(applied, ["expire-inactive"], "{report:?}");
    }
}

/// `kind = "repair"`, with `max_open_per_host` when given; its host may reopen within 5 min.
fn repairs(max_open_per_host: Option<u32>) -> Config {
    let limit = max_open_per_host.map_or(String::new(), |n| format!("max_open_per_host = {n}\n"));
    let text = format!("[kinds.repair]\nreopen_window = \"5m\"\n{limit}");
    Config::parse(&text, "test.toml").unwrap()
}

fn repair(n: usize, host: &UserId) -> CreateRequest {
    create("repair", &format!("repair{n}"), host.as_str())
}

/// A kind given a host limit counts the sessions already open, those created while it had
/// none: when a start puts the new rules in force, and when a reload does.
#[tokio::test]
async fn a_host_limit_put_in_force_counts_the_sessions_already_open() {
    for (store, _dir) in stores().await {
        let ana = UserId::parse("ana").unwrap();
        let bo = UserId::parse("bo").unwrap();
        let unlimited = Engine::new(store.clone(), Arc::new(repairs(None)), Clock::manual(t0()));
        unlimited.put_rules_in_force().await.unwrap();
        unlimited.create(&admin(), repair(1, &ana)).await.unwrap();
        unlimited.create(&admin(), repair(2, &bo)).await.unwrap();
        drop(unlimited);

        // Started with the limit.
        let limited = Engine::new(
            store.clone(),
            Arc::new(repairs(Some(1))),
            Clock::manual(t0()),
        );
        limited.put_rules_in_force().await.unwrap();
        let refused = limited.create(&admin(), repair(3, &ana)).await;
        assert!(
            matches!(refused, Err(EngineError::HostHasOpenSession { .. })),
            "{refused:?}"
        );

        // Reloaded without it, a session more, then with it again.
        limited
            .reload(&admin(), &repairs(None), false)
            .await
            .unwrap();
        limited.create(&admin(), repair(4, &bo)).await.unwrap();
        limited
            .reload(&admin(), &repairs(Some(2)), false)
            .await
            .unwrap();
        let refused = limited.create(&admin(), repair(5, &bo)).await;
        assert!(
            matches!(refused, Err(EngineError::HostHasOpenSession { .. })),
            "{refused:?}"
        );
        // Ana has one open: a second is within two.
        limited.create(&admin(), repair(6, &ana)).await.unwrap();
    }
}

/// A session ended before its kind was given a host limit, and reopened after, counts
/// against it again.
#[tokio::test]
async fn a_session_reopened_after_its_kind_was_given_a_host_limit_counts_against_it() {
    for (store, _dir) in stores().await {
        let ana = UserId::parse("ana").unwrap();
        let as_ana = Caller::Admin {
            name: "test".into(),
            actor: Some(ana.clone()),
        };
        let engine = Engine::new(store.clone(), Arc::new(repairs(None)), Clock::manual(t0()));
        engine.put_rules_in_force().await.unwrap();
        let first = engine.create(&admin(), repair(1, &ana)).await.unwrap();
        engine.start(&as_ana, &first.id).await.unwrap();
        engine.end(&as_ana, &first.id).await.unwrap();

        engine
            .reload(&admin(), &repairs(Some(1)), false)
            .await
            .unwrap();
        engine.reopen(&as_ana, &first.id).await.unwrap();
        let refused = engine.create(&admin(), repair(2, &ana)).await;
        assert!(
            matches!(refused, Err(EngineError::HostHasOpenSession { .. })),
            "{refused:?}"
        );
    }
}
