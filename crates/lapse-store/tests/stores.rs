//! Each store's promises to the engine, on SQLite and on PostgreSQL: compare-and-set on every write, heartbeat
//! flushes that beat stale decisions without touching the deadline column, and due rows read
//! in deadline order behind a cursor.

use lapse_core::lifecycle::{self, By, Effects, NewSession};
use lapse_core::store::{
    Beat, Commit, DueRow, HostLimit, Rearm, RearmOnly, SessionQuery, SessionWrite,
};
use lapse_core::{Config, Session, SessionId, Span, Store, StoreError, Timestamp, UserId};
use lapse_store::{PostgresStore, SqliteStore};

fn t0() -> Timestamp {
    "2026-02-01T12:00:00Z".parse().unwrap()
}

/// Every store this machine can test: SQLite always, PostgreSQL when a test server is set.
async fn stores() -> Vec<(Box<dyn Store>, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let mut stores: Vec<(Box<dyn Store>, tempfile::TempDir)> =
        vec![(Box::new(SqliteStore::open(&url, None).await.unwrap()), dir)];
    if let Some(url) = lapse_store::testing::fresh_postgres_database().await {
        let pg = PostgresStore::open(&url, None, None).await.unwrap();
        stores.push((Box::new(pg), tempfile::tempdir().unwrap()));
    }
    for (s, _) in &stores {
        s.migrate().await.unwrap();
        s.migrate().await.unwrap(); // twice: migrating is idempotent
    }
    stores
}

fn session(kind: &str, id: &str, at: Timestamp) -> Session {
    let config = Config::default();
    let kind = &config.kinds[kind];
    let input = NewSession {
        title: None,
        metadata: None,
        host: UserId::parse("host").unwrap(),
        parent: None,
        scheduled_start: None,
        scheduled_end: None,
    };
    let mut fx = Effects::default();
    let mut s = lifecycle::create(
        kind,
        SessionId::parse(id).unwrap(),
        input,
        None,
        at,
        &By::system(),
        &mut fx,
    )
    .unwrap();
    s.observe(kind, at);
    s
}

/// The stored session `id`, which must exist.
async fn loaded(store: &dyn Store, id: &str) -> Session {
    store
        .load(&SessionId::parse(id).unwrap())
        .await
        .unwrap()
        .unwrap()
}

async fn insert(store: &dyn Store, s: &Session) {
    store
        .commit(Commit {
            sessions: vec![SessionWrite::Insert(s.clone())],
            ..Commit::default()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_heartbeat_flush_beats_a_decision_taken_on_the_older_row() {
    for (store, _dir) in stores().await {
        let store = store.as_ref();
        let s = session("reading", "r", t0());
        insert(store, &s).await;
        let stale = store.load(&s.id).await.unwrap().unwrap();

        let beat_at = t0() + Span::from_secs(600);
        let host = UserId::parse("host").unwrap();
        let beat = Beat {
            session: s.id.clone(),
            user: host,
            at: beat_at,
        };
        // Two beats of one participant, and one of a stranger: the session moves once.
        let stranger = Beat {
            user: UserId::parse("stranger").unwrap(),
            ..beat.clone()
        };
        let earlier = Beat {
            at: t0() + Span::from_secs(60),
            ..beat.clone()
        };
        let moved = store
            .flush_heartbeats(&[earlier, beat, stranger])
            .await
            .unwrap();

        let fresh = store.load(&s.id).await.unwrap().unwrap();
        assert_eq!(
            moved,
            [lapse_core::store::Moved {
                id: s.id.clone(),
                version: stale.version + 1
            }],
            "the flush reports the version it wrote"
        );
        assert_eq!(fresh.version, stale.version + 1);
        assert_eq!(fresh.last_activity_at, beat_at);
        assert_eq!(fresh.participants[0].last_seen_at, beat_at);
        assert!(fresh.used);
        assert_eq!(
            fresh.next_due, stale.next_due,
            "the deadline column is re-armed lazily"
        );

        let mut decided = stale.clone();
        decided.status = lapse_core::Status::Expired;
        let update = Commit {
            sessions: vec![SessionWrite::Update {
                session: decided,
                changed: None,
            }],
            ..Commit::default()
        };
        let lost = store.commit(update).await;
        assert!(matches!(lost, Err(StoreError::Conflict)), "{lost:?}");
        let rearm = |version| Rearm {
            id: s.id.clone(),
            version,
            wake_at: None,
            rule: None,
        };
        assert_eq!(
            store
                .rearm(&[rearm(stale.version)], None, RearmOnly::Unchanged)
                .await
                .unwrap(),
            0,
            "a stale re-arm loses too"
        );
        assert_eq!(
            store
                .rearm(&[rearm(fresh.version)], None, RearmOnly::Unchanged)
                .await
                .unwrap(),
            1
        );
    }
}

#[tokio::test]
async fn each_flush_writes_its_own_beats_and_moves_no_closed_session() {
    for (store, _dir) in stores().await {
        let store = store.as_ref();
        for id in ["a", "b", "closed"] {
            insert(store, &session("reading", id, t0())).await;
        }
        let mut closed = loaded(store, "closed").await;
        closed.status = lapse_core::Status::Expired;
        store
            .commit(Commit {
                sessions: vec![SessionWrite::Update {
                    session: closed,
                    changed: None,
                }],
                ..Commit::default()
            })
            .await
            .unwrap();
        let load = |id: &str| {
            let id = SessionId::parse(id).unwrap();
            async move { store.load(&id).await.unwrap().unwrap() }
        };
        let before = [load("a").await, load("b").await, load("closed").await];
        let beat = |id: &str, secs| Beat {
            session: SessionId::parse(id).unwrap(),
            user: UserId::parse("host").unwrap(),
            at: t0() + Span::from_secs(secs),
        };

        let first = store
            .flush_heartbeats(&[beat("a", 60), beat("closed", 60)])
            .await
            .unwrap();
        let ids = |moved: &[lapse_core::store::Moved]| {
            moved.iter().map(|m| m.id.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(ids(&first), ["a"], "a closed session is not moved");
        let second = store.flush_heartbeats(&[beat("b", 120)]).await.unwrap();
        assert_eq!(
            ids(&second),
            ["b"],
            "the second flush writes its beats only"
        );

        let [a, b, closed] = [load("a").await, load("b").await, load("closed").await];
        assert_eq!(
            a.version,
            before[0].version + 1,
            "moved once, by its own flush"
        );
        assert_eq!(a.last_activity_at, t0() + Span::from_secs(60));
        assert_eq!(b.version, before[1].version + 1);
        assert_eq!(b.participants[0].last_seen_at, t0() + Span::from_secs(120));
        assert_eq!(closed.version, before[2].version);
        assert_eq!(closed.last_activity_at, before[2].last_activity_at);
    }
}

#[tokio::test]
async fn due_rows_come_in_deadline_order_behind_a_cursor_and_only_when_due() {
    for (store, _dir) in stores().await {
        let store = store.as_ref();
        // Created a minute apart, so each comes due (its host's presence lapsing at 90 s) a
        // minute apart: at 1.5, 2.5 and 3.5 minutes.
        for (i, id) in ["c", "a", "b"].iter().enumerate() {
            insert(
                store,
                &session("study", id, t0() + Span::from_secs(60 * i as i64)),
            )
            .await;
        }
        let at = |m: i64| t0() + Span::from_secs(60 * m);
        assert!(
            store
                .due(at(1), None, None, 10, false)
                .await
                .unwrap()
                .is_empty()
        );
        let due = store.due(at(3), None, None, 10, false).await.unwrap();
        let ids: Vec<_> = due.iter().map(|d| d.id.to_string()).collect();
        assert_eq!(ids, ["c", "a"]);
        let cursor = DueRow {
            id: due[0].id.clone(),
            at: due[0].at,
        };
        let rest = store
            .due(at(40), None, Some(&cursor), 10, false)
            .await
            .unwrap();
        let ids: Vec<_> = rest.iter().map(|d| d.id.to_string()).collect();
        assert_eq!(ids, ["a", "b"]);
        let reading = store
            .due(at(40), Some("reading"), None, 10, false)
            .await
            .unwrap();
        assert!(reading.is_empty());
        assert_eq!(
            store.next_deadline().await.unwrap(),
            Some(t0() + Span::from_secs(90))
        );
    }
}

/// A PostgreSQL database whose default collation is a language's orders text its own way
/// (`a`, `B`, `c`); session ids compare byte by byte on both backends (`B`, `a`, `c`), so a
/// list pages through sessions in one order everywhere, and no index probe pays for the
/// locale's comparison.
#[tokio::test]
async fn sessions_list_in_byte_order_of_their_ids_whatever_the_database_locale() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let mut stores: Vec<Box<dyn Store>> =
        vec![Box::new(SqliteStore::open(&url, None).await.unwrap())];
    let icu = "template template0 locale_provider icu icu_locale 'en-US'";
    if let Some(url) = lapse_store::testing::fresh_postgres_database_with(icu).await {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        let by_locale: Vec<String> =
            sqlx::query_scalar("select x from unnest(array['c', 'B', 'a']) x order by x")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        assert_eq!(
            by_locale,
            ["a", "B", "c"],
            "the database orders text by its locale"
        );
        stores.push(Box::new(
            PostgresStore::open(&url, None, None).await.unwrap(),
        ));
    }
    for store in stores {
        let store = store.as_ref();
        store.migrate().await.unwrap();
        for id in ["c", "a", "B"] {
            insert(store, &session("study", id, t0())).await;
        }
        let page = |after: Option<&str>| SessionQuery {
            after: after.map(|a| SessionId::parse(a).unwrap()),
            limit: 2,
            ..SessionQuery::default()
        };
        let ids =
            |list: Vec<Session>| -> Vec<String> { list.iter().map(|s| s.id.to_string()).collect() };
        assert_eq!(ids(store.list(&page(None)).await.unwrap()), ["B", "a"]);
        assert_eq!(ids(store.list(&page(Some("a"))).await.unwrap()), ["c"]);
    }
}

#[tokio::test]
async fn concurrent_sweepers_of_a_shared_database_claim_disjoint_rows() {
    for (store, _dir) in stores().await {
        if !store.is_shared() {
            continue;
        }
        let store = store.as_ref();
        for i in 0..40 {
            insert(store, &session("study", &format!("s{i:02}"), t0())).await;
        }
        let now = t0() + Span::from_secs(3600);
        let (a, b) = tokio::join!(
            store.due(now, None, None, 25, true),
            store.due(now, None, None, 25, true)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(
            a.len() + b.len(),
            40,
            "between them they take every due row"
        );
        assert!(a.iter().all(|r| !b.contains(r)), "and no row twice");
        assert!(
            store
                .due(now, None, None, 25, true)
                .await
                .unwrap()
                .is_empty(),
            "all leased"
        );
        // A dry look ignores leases.
        assert_eq!(
            store.due(now, None, None, 100, false).await.unwrap().len(),
            40
        );
        // Writing the row ends its lease.
        let row = &a[0];
        let s = store.load(&row.id).await.unwrap().unwrap();
        let rearm = Rearm {
            id: row.id.clone(),
            version: s.version,
            wake_at: Some(row.at),
            rule: Some("delete-unused".into()),
        };
        assert_eq!(
            store
                .rearm(&[rearm], None, RearmOnly::Unchanged)
                .await
                .unwrap(),
            1
        );
        let again = store.due(now, None, None, 25, true).await.unwrap();
        assert_eq!(again, vec![row.clone()]);
    }
}

#[tokio::test]
async fn inserting_a_taken_id_is_a_duplicate() {
    for (store, _dir) in stores().await {
        let store = store.as_ref();
        let s = session("study", "dup", t0());
        insert(store, &s).await;
        let again = Commit {
            sessions: vec![SessionWrite::Insert(s)],
            ..Commit::default()
        };
        assert!(matches!(
            store.commit(again).await,
            Err(StoreError::Duplicate)
        ));
    }
}

#[tokio::test]
async fn a_commit_over_the_hosts_open_limit_is_refused_whole() {
    for (store, _dir) in stores().await {
        let store = store.as_ref();
        let limit = || lapse_core::store::HostLimit {
            kind: "repair".into(),
            host: UserId::parse("host").unwrap(),
            max: 1,
        };
        let first = Commit {
            host_limit: Some(limit()),
            sessions: vec![SessionWrite::Insert(session("repair", "one", t0()))],
            ..Commit::default()
        };
        store.commit(first).await.unwrap();
        let second = Commit {
            host_limit: Some(limit()),
            sessions: vec![SessionWrite::Insert(session("repair", "two", t0()))],
            ..Commit::default()
        };
        assert!(matches!(
            store.commit(second).await,
            Err(StoreError::LimitReached)
        ));
        let two = SessionId::parse("two").unwrap();
        assert!(
            store.load(&two).await.unwrap().is_none(),
            "nothing of it was written"
        );
    }
}

#[tokio::test]
async fn the_postgres_pool_size_and_statement_timeout_come_from_the_config() {
    let Some(url) = lapse_store::testing::fresh_postgres_database().await else {
        return;
    };
    let timeout = Some(std::time::Duration::from_millis(2500));
    let store = PostgresStore::open(&url, Some(7), timeout).await.unwrap();
    assert_eq!(store.max_connections(), 7);
    assert_eq!(
        store.server_setting("statement_timeout").await.unwrap(),
        "2500ms"
    );
    let default = PostgresStore::open(&url, None, None).await.unwrap();
    assert_eq!(
        default.server_setting("statement_timeout").await.unwrap(),
        "0"
    );
}

#[tokio::test]
async fn an_update_writes_only_the_participants_it_names() {
    for (store, _dir) in stores().await {
        let store = store.as_ref();
        let mut s = session("study", "room", t0());
        let config = Config::default();
        let by = lapse_core::lifecycle::By::system();
        for u in ["ana", "ben"] {
            let user = UserId::parse(u).unwrap();
            let mut fx = Effects::default();
            lifecycle::join(
                &config.kinds["study"],
                &mut s,
                &user,
                None,
                lifecycle::Via::Direct,
                t0(),
                &by,
                &mut fx,
            )
            .unwrap();
        }
        insert(store, &s).await;
        let mut changed = store.load(&s.id).await.unwrap().unwrap();
        let later = t0() + Span::from_secs(60);
        for p in &mut changed.participants {
            p.last_seen_at = later;
        }
        let ana = UserId::parse("ana").unwrap();
        store
            .commit(Commit {
                sessions: vec![SessionWrite::Update {
                    session: changed,
                    changed: Some(vec![ana.clone()]),
                }],
                ..Commit::default()
            })
            .await
            .unwrap();
        let stored = store.load(&s.id).await.unwrap().unwrap();
        for p in &stored.participants {
            let expected = if p.user == ana { later } else { t0() };
            assert_eq!(p.last_seen_at, expected, "{}", p.user);
        }
    }
}

#[tokio::test]
async fn in_a_batch_a_lost_compare_and_set_writes_nothing_for_its_change_and_the_rest_commit() {
    use lapse_core::event::NewEvent;
    use lapse_core::store::{EventQuery, EventRecord};
    for (store, _dir) in stores().await {
        let store = store.as_ref();
        let ids = ["a", "b", "c"];
        for id in ids {
            insert(store, &session("study", id, t0())).await;
        }
        let mut commits = Vec::new();
        for id in ids {
            let mut s = loaded(store, id).await;
            if id == "b" {
                s.version -= 1; // decided on a row that has changed since
            }
            s.status = lapse_core::Status::Expired;
            commits.push(Commit {
                events: vec![EventRecord {
                    id: format!("ev-{id}"),
                    applied_at: t0(),
                    event: NewEvent {
                        event_type: lapse_core::EventType::SessionExpired,
                        at: t0(),
                        session_id: s.id.clone(),
                        kind: "study".into(),
                        actor: "rule:test".into(),
                        rule: Some("test".into()),
                        data: serde_json::json!({}).into(),
                    },
                    webhooks: vec!["http://127.0.0.1:9/hook".into()],
                }],
                sessions: vec![SessionWrite::Update {
                    session: s,
                    changed: None,
                }],
                ..Commit::default()
            });
        }
        let outcomes = store.commit_many(&commits).await.unwrap();
        assert!(outcomes[0].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
        assert!(
            matches!(outcomes[1], Err(StoreError::Conflict)),
            "{outcomes:?}"
        );
        for (id, expired) in [("a", true), ("b", false), ("c", true)] {
            let s = loaded(store, id).await;
            assert_eq!(s.status == lapse_core::Status::Expired, expired, "{id}");
        }
        let events = store
            .events(&EventQuery {
                limit: 10,
                ..EventQuery::default()
            })
            .await
            .unwrap();
        let written: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(written, ["ev-a", "ev-c"], "in order, none for the loser");
        let queued = store.deliveries(None, 10).await.unwrap();
        assert_eq!(queued.len(), 2, "a webhook row for each written event");
    }
}

/// An event's details come back as the text they were made as, in their own key order, on
/// every path that reads events (a page of them, a webhook's delivery); a row whose details
/// are not JSON is reported as unreadable, not passed on.
#[tokio::test]
async fn an_events_details_read_back_as_written() {
    use sqlx::Connection as _;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let sqlite = SqliteStore::open(&url, None).await.unwrap();
    sqlite.migrate().await.unwrap();
    details_read_back_as_written(&sqlite).await;
    let mut raw = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query(BREAK_DETAILS).execute(&mut raw).await.unwrap();
    details_that_are_not_json_are_refused(&sqlite).await;

    if let Some((postgres, raw)) = postgres_and_raw().await {
        details_read_back_as_written(&postgres).await;
        sqlx::query(BREAK_DETAILS).execute(&raw).await.unwrap();
        details_that_are_not_json_are_refused(&postgres).await;
    }
}

const BREAK_DETAILS: &str = "update events set data = '{\"to\":' where id = 'ev-a'";

fn all_events() -> lapse_core::store::EventQuery {
    lapse_core::store::EventQuery {
        limit: 10,
        ..Default::default()
    }
}

async fn details_read_back_as_written(store: &dyn Store) {
    use lapse_core::event::{EventData, NewEvent};
    use lapse_core::store::EventRecord;
    #[derive(serde::Serialize)]
    struct Details {
        to: &'static str,
        from: &'static str,
        by: Vec<u32>,
        note: &'static str,
    }
    let details = EventData::of(&Details {
        to: "expired",
        from: "active",
        by: vec![3, 1, 2],
        note: "ünïcode \"quoted\"",
    });
    let written = r#"{"to":"expired","from":"active","by":[3,1,2],"note":"ünïcode \"quoted\""}"#;
    assert_eq!(details.as_str(), written);
    insert(store, &session("study", "a", t0())).await;
    store
        .commit(Commit {
            events: vec![EventRecord {
                id: "ev-a".into(),
                applied_at: t0(),
                event: NewEvent {
                    event_type: lapse_core::EventType::SessionExpired,
                    at: t0(),
                    session_id: SessionId::parse("a").unwrap(),
                    kind: "study".into(),
                    actor: "rule:test".into(),
                    rule: Some("test".into()),
                    data: details,
                },
                webhooks: vec!["http://127.0.0.1:9/hook".into()],
            }],
            ..Commit::default()
        })
        .await
        .unwrap();
    let events = store.events(&all_events()).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].data.as_str(), written, "a page of events");
    let due = store.due_deliveries(t0(), 10, true).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].1.data.as_str(), written, "a webhook's delivery");
    let shown = serde_json::to_string(&events[0]).unwrap();
    assert!(shown.contains(&format!(r#""data":{written}"#)), "{shown}");
}

async fn details_that_are_not_json_are_refused(store: &dyn Store) {
    match store.events(&all_events()).await {
        Err(StoreError::Backend(why)) => assert!(why.contains("data"), "{why}"),
        other => panic!("details that are not JSON were read as {other:?}"),
    }
}

/// A batch mixes changes that keep a session's status and stored wake-up (a join, a title),
/// one that moves the wake-up and one that ends the session: each row stores all it wrote, and
/// the sweep finds what is due by the wake-ups as written.
#[tokio::test]
async fn in_a_batch_each_change_stores_its_status_and_wake_up_whether_or_not_it_moves_them() {
    let wake = |mins: i64| Some(t0() + Span::from_secs(60 * mins));
    for (store, _dir) in stores().await {
        let store = store.as_ref();
        let ids = ["kept", "moved", "ended"];
        for id in ids {
            let mut s = session("study", id, t0());
            s.wake_at = wake(60);
            insert(store, &s).await;
        }
        let mut commits = Vec::new();
        for id in ids {
            let mut s = loaded(store, id).await;
            s.title = format!("{id}, renamed");
            match id {
                "moved" => s.wake_at = wake(10),
                "ended" => {
                    s.status = lapse_core::Status::Expired;
                    s.wake_at = None;
                }
                _ => {}
            }
            commits.push(Commit {
                sessions: vec![SessionWrite::Update {
                    session: s,
                    changed: None,
                }],
                ..Commit::default()
            });
        }
        let outcomes = store.commit_many(&commits).await.unwrap();
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        let open = session("study", "x", t0()).status;
        for (id, status, wake_at) in [
            ("kept", open, wake(60)),
            ("moved", open, wake(10)),
            ("ended", lapse_core::Status::Expired, None),
        ] {
            let s = loaded(store, id).await;
            assert_eq!(s.title, format!("{id}, renamed"));
            assert_eq!((s.status, s.wake_at), (status, wake_at), "{id}");
        }
        let due = |mins: i64| async move {
            let rows = store
                .due(wake(mins).unwrap(), None, None, 10, false)
                .await
                .unwrap();
            rows.into_iter()
                .map(|r| r.id.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(due(10).await, ["moved"]);
        assert_eq!(due(60).await, ["moved", "kept"]);
    }
}

const HOOK: &str = "http://127.0.0.1:9/hook";

/// Commits `n` events on `s` a minute apart from `t0()`, `ev-0` to `ev-{n-1}`, each queueing
/// a delivery to `url`; answers a lookup from an event's id to its delivery's id.
async fn queue_deliveries(
    store: &dyn Store,
    s: &Session,
    n: i64,
    url: &str,
) -> impl Fn(&str) -> String {
    use lapse_core::event::NewEvent;
    use lapse_core::store::EventRecord;
    for i in 0..n {
        let at = t0() + Span::from_secs(60 * i);
        store
            .commit(Commit {
                events: vec![EventRecord {
                    id: format!("ev-{i}"),
                    applied_at: at,
                    event: NewEvent {
                        event_type: lapse_core::EventType::SessionUpdated,
                        at,
                        session_id: s.id.clone(),
                        kind: "study".into(),
                        actor: "user:host".into(),
                        rule: None,
                        data: serde_json::json!({}).into(),
                    },
                    webhooks: vec![url.into()],
                }],
                ..Commit::default()
            })
            .await
            .unwrap();
    }
    let queued = store.deliveries(None, 100).await.unwrap();
    move |event: &str| {
        queued
            .iter()
            .find(|d| d.event_id == event)
            .map(|d| d.id.clone())
            .unwrap() // the event was committed with a delivery just above
    }
}

#[tokio::test]
async fn the_delivery_log_lists_the_newest_first_of_one_status_or_of_all() {
    use lapse_core::store::{Attempt, DeliveryStatus};
    for (store, _dir) in stores().await {
        let store = store.as_ref();
        let s = session("study", "a", t0());
        insert(store, &s).await;
        // Five events a minute apart, each with a delivery.
        let at = |i: i64| t0() + Span::from_secs(60 * i);
        let id_of = queue_deliveries(store, &s, 5, HOOK).await;
        let ended = |status| Attempt {
            at: at(9),
            http_status: None,
            error: None,
            status,
            next_attempt_at: None,
        };
        store
            .record_attempts(&[
                (id_of("ev-0"), ended(DeliveryStatus::Delivered)),
                (id_of("ev-1"), ended(DeliveryStatus::Dead)),
                (id_of("ev-2"), ended(DeliveryStatus::Delivered)),
            ])
            .await
            .unwrap();

        let events = |status, limit| async move {
            let listed = store.deliveries(status, limit).await.unwrap();
            listed.into_iter().map(|d| d.event_id).collect::<Vec<_>>()
        };
        assert_eq!(
            events(None, 4).await,
            ["ev-4", "ev-3", "ev-2", "ev-1"],
            "every status, newest first, at most the limit"
        );
        assert_eq!(events(None, 10).await.len(), 5);
        assert_eq!(
            events(Some(DeliveryStatus::Delivered), 10).await,
            ["ev-2", "ev-0"]
        );
        assert_eq!(events(Some(DeliveryStatus::Dead), 10).await, ["ev-1"]);
        assert_eq!(
            events(Some(DeliveryStatus::Pending), 1).await,
            ["ev-4"],
            "one status, newest first, at most the limit"
        );
    }
}

/// An endpoint disabled for answering 410 ends its pending deliveries, but not those whose
/// attempts are about to be recorded: they never show as dead without the answer that
/// ended them. None of them is retried, whatever it was answered.
#[tokio::test]
async fn disabling_an_endpoint_ends_its_pending_deliveries_but_the_attempted_ones() {
    use lapse_core::store::{Attempt, DeliveryStatus};
    for (store, _dir) in stores().await {
        let store = store.as_ref();
        let s = session("study", "a", t0());
        insert(store, &s).await;
        let id_of = queue_deliveries(store, &s, 3, HOOK).await;
        let (gone, failed, other) = (id_of("ev-0"), id_of("ev-1"), id_of("ev-2"));
        let attempted = [gone.clone(), failed.clone()];
        store
            .disable_endpoint(HOOK, t0(), "gone", &attempted)
            .await
            .unwrap();
        let state = |id: String| async move {
            let all = store.deliveries(None, 10).await.unwrap();
            let d = all.into_iter().find(|d| d.id == id).unwrap(); // queued above
            (d.status, d.last_status, d.next_attempt_at)
        };
        assert_eq!(state(other).await, (DeliveryStatus::Dead, None, None));
        assert_eq!(state(gone.clone()).await.0, DeliveryStatus::Pending);
        let answered = |status: u16, then, next_attempt_at| Attempt {
            at: t0(),
            http_status: Some(status),
            error: Some(format!("answered {status}")),
            status: then,
            next_attempt_at,
        };
        let retry_at = Some(t0() + Span::from_secs(5));
        store
            .record_attempts(&[
                (gone.clone(), answered(410, DeliveryStatus::Dead, None)),
                (
                    failed.clone(),
                    answered(500, DeliveryStatus::Pending, retry_at),
                ),
            ])
            .await
            .unwrap();
        assert_eq!(state(gone).await, (DeliveryStatus::Dead, Some(410), None));
        assert_eq!(
            state(failed).await,
            (DeliveryStatus::Dead, Some(500), None),
            "not retried: its endpoint is disabled"
        );
        let disabled = store.disabled_endpoints().await.unwrap();
        assert_eq!(disabled.len(), 1);
        assert_eq!(disabled[0].url, HOOK);
    }
}

/// A SQLite database made before participants were stored by room (schema version 3) keeps
/// every participant when it is migrated.
#[tokio::test]
async fn a_sqlite_database_from_before_participants_were_stored_by_room_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let url = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
    let config = Config::default();
    let mut s = session("study", "room", t0());
    for u in ["ana", "ben"] {
        lifecycle::join(
            &config.kinds["study"],
            &mut s,
            &UserId::parse(u).unwrap(),
            None,
            lifecycle::Via::Direct,
            t0(),
            &By::system(),
            &mut Effects::default(),
        )
        .unwrap();
    }
    // The rows as today's schema writes them, with the same columns as version 3's.
    let current = SqliteStore::open(&url("current.db"), None).await.unwrap();
    current.migrate().await.unwrap();
    insert(&current, &s).await;
    let written = current.load(&s.id).await.unwrap().unwrap();
    drop(current);

    let old = url("old.db");
    {
        use sqlx::Connection;
        let options: sqlx::sqlite::SqliteConnectOptions = old.parse().unwrap();
        let mut conn = sqlx::SqliteConnection::connect_with(&options.create_if_missing(true))
            .await
            .unwrap();
        sqlx::raw_sql(
            "create table lapse_migrations (version integer primary key, name text not null, \
             applied_at integer not null)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        for script in lapse_store::migrate::SQLITE.iter().take(3) {
            sqlx::raw_sql(script.sql).execute(&mut conn).await.unwrap();
            sqlx::query("insert into lapse_migrations values (?1, ?2, 0)")
                .bind(script.version)
                .bind(script.name)
                .execute(&mut conn)
                .await
                .unwrap();
        }
        // Version 3's columns of `sessions` (later versions add some).
        let copy = format!(
            "attach database '{}' as current; \
             insert into sessions select id, kind, title, metadata, host, parent, \
             scheduled_start, scheduled_end, status, delayed, used, created_at, started_at, \
             ended_at, last_activity_at, end_reason, ended_by, counters, summary, \
             parent_ended_at, warnings, next_due_at, next_due_rule, version \
             from current.sessions; \
             insert into participants select * from current.participants;",
            dir.path().join("current.db").display()
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(copy))
            .execute(&mut conn)
            .await
            .unwrap();
    }

    let store = SqliteStore::open(&old, None).await.unwrap();
    store.migrate().await.unwrap();
    let migrated = store.load(&s.id).await.unwrap().unwrap();
    assert_eq!(migrated.participants.len(), 3, "the host, ana and ben");
    assert_eq!(migrated.participants, written.participants);
    let ana = SessionQuery {
        participant: Some(UserId::parse("ana").unwrap()),
        limit: 10,
        ..SessionQuery::default()
    };
    let found: Vec<SessionId> = store
        .list(&ana)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(found, vec![s.id.clone()], "found by participant, as before");
    // Open before a host limit counted only the sessions of kinds with one, it still counts
    // against a limit of its kind.
    let another = Commit {
        host_limit: Some(HostLimit {
            kind: s.kind.clone(),
            host: s.host.clone(),
            max: 1,
        }),
        ..Commit::default()
    };
    let refused = store.commit(another).await;
    assert!(
        matches!(refused, Err(StoreError::LimitReached)),
        "{refused:?}"
    );
}

/// Two stores on one fresh PostgreSQL database, as two lapse instances; `None` without a
/// test server.
async fn two_postgres_instances() -> Option<(PostgresStore, PostgresStore)> {
    let url = lapse_store::testing::fresh_postgres_database().await?;
    let open = || async {
        let store = PostgresStore::open(&url, None, None).await.unwrap();
        store.migrate().await.unwrap();
        store
    };
    Some((open().await, open().await))
}

/// A lease ends with the instance that held it: rows one PostgreSQL store claimed can be
/// claimed by another as soon as the first is gone (its connections closed, as when its
/// process is killed), not when the lease's minute runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_ends_with_the_instance_that_held_it() {
    let Some((a, b)) = two_postgres_instances().await else {
        return;
    };
    insert(&a, &session("study", "room", t0())).await;
    let now = t0() + Span::from_secs(3600);
    assert_eq!(a.due(now, None, None, 10, true).await.unwrap().len(), 1);
    assert!(
        b.due(now, None, None, 10, true).await.unwrap().is_empty(),
        "held by a live instance"
    );

    drop(a);
    // The server notices the closed connection within moments.
    let started = std::time::Instant::now();
    while b.due(now, None, None, 10, true).await.unwrap().is_empty() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "the lease outlived its holder"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A PostgreSQL store on a fresh database, and a plain connection pool to the same database
/// for a test's own transactions; `None` without a test server.
async fn postgres_and_raw() -> Option<(PostgresStore, sqlx::PgPool)> {
    let url = lapse_store::testing::fresh_postgres_database().await?;
    let store = PostgresStore::open(&url, None, None).await.unwrap();
    store.migrate().await.unwrap();
    Some((store, sqlx::PgPool::connect(&url).await.unwrap()))
}

/// A room ended while its people beat: the end's transaction holds the session row and goes
/// on to write its participants, and a heartbeat flush of one of them comes in between. The
/// flush waits for the session before it touches the participant; had it taken the
/// participant first, each would wait for the other until PostgreSQL's deadlock check failed
/// one of them a second later (the end answered with an error, or the flush failed and was
/// tried again a second late).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_never_holds_a_participant_a_commit_of_its_room_is_about_to_write() {
    let Some((store, raw)) = postgres_and_raw().await else {
        return;
    };
    let s = session("reading", "room", t0());
    insert(&store, &s).await;
    let host = UserId::parse("host").unwrap();

    // The commit, halfway: its session row written, its participants next.
    let mut ending = raw.begin().await.unwrap();
    sqlx::query("set local lock_timeout = '10s'")
        .execute(&mut *ending)
        .await
        .unwrap();
    sqlx::query("update sessions set title = 'ending' where id = 'room'")
        .execute(&mut *ending)
        .await
        .unwrap();

    let beat_at = t0() + Span::from_secs(60);
    let beat = Beat {
        session: s.id.clone(),
        user: host.clone(),
        at: beat_at,
    };
    let flushing = {
        let store = store.clone();
        tokio::spawn(async move { store.flush_heartbeats(&[beat]).await })
    };
    // Until the flush waits for the session row.
    lapse_store::testing::until_waiting(&raw, 1, || {}).await;

    sqlx::query("update participants set state = 'left' where session_id = 'room'")
        .execute(&mut *ending)
        .await
        .expect("the commit writes the room's participants without waiting for the flush");
    ending.commit().await.unwrap();

    let moved = flushing
        .await
        .unwrap()
        .expect("the flush succeeds after it");
    assert_eq!(moved.len(), 1, "the session was open: its activity moved");
    let room = store.load(&s.id).await.unwrap().unwrap();
    assert_eq!(room.title, "ending");
    assert_eq!(room.last_activity_at, beat_at);
    assert_eq!(
        room.participants[0].last_seen_at, s.participants[0].last_seen_at,
        "the beat of a participant who left by then is not written"
    );
}

/// A flush and a commit of several sessions (a sweep's batch, a cascade) each lock their rows
/// in an order of their own: overlapping, each could wait for a row the other holds until
/// PostgreSQL's deadlock check failed one of them a second later. They take turns: a commit of
/// several sessions waits for a flush under way, here one held up by a row it needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_of_several_sessions_waits_for_a_flush_under_way() {
    let Some((store, raw)) = postgres_and_raw().await else {
        return;
    };
    for id in ["beaten", "a", "b"] {
        insert(&store, &session("reading", id, t0())).await;
    }
    let mut holding = raw.begin().await.unwrap();
    sqlx::query("update sessions set title = 'held' where id = 'beaten'")
        .execute(&mut *holding)
        .await
        .unwrap();

    let flushing = {
        let store = store.clone();
        let beat = Beat {
            session: SessionId::parse("beaten").unwrap(),
            user: UserId::parse("host").unwrap(),
            at: t0() + Span::from_secs(60),
        };
        tokio::spawn(async move { store.flush_heartbeats(&[beat]).await })
    };
    lapse_store::testing::until_waiting(&raw, 1, || {}).await;

    let mut commits = Vec::new();
    for id in ["a", "b"] {
        let mut s = loaded(&store, id).await;
        s.title = "ended".into();
        commits.push(Commit {
            sessions: vec![SessionWrite::Update {
                session: s,
                changed: None,
            }],
            ..Commit::default()
        });
    }
    let committing = {
        let store = store.clone();
        tokio::spawn(async move { store.commit_many(&commits).await })
    };
    // Until the commit waits too (for its turn): it must not go ahead of the flush.
    lapse_store::testing::until_waiting(&raw, 2, || {
        assert!(
            !committing.is_finished(),
            "a commit of several sessions went ahead of a flush under way"
        );
    })
    .await;

    holding.commit().await.unwrap();
    assert_eq!(flushing.await.unwrap().unwrap().len(), 1);
    let outcomes = committing.await.unwrap().unwrap();
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
}

/// Two instances delivering webhooks take disjoint deliveries, and each gets back the ones it
/// claimed: the second is handed the rows the first left, not an empty batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_postgres_instances_each_deliver_the_webhooks_they_claimed() {
    use lapse_core::event::NewEvent;
    use lapse_core::store::EventRecord;
    let Some((a, b)) = two_postgres_instances().await else {
        return;
    };
    let s = session("study", "room", t0());
    let events = (0..4)
        .map(|n| EventRecord {
            id: format!("ev-{n}"),
            applied_at: t0(),
            event: NewEvent {
                event_type: lapse_core::EventType::SessionUpdated,
                at: t0(),
                session_id: s.id.clone(),
                kind: "study".into(),
                actor: "test".into(),
                rule: None,
                data: serde_json::json!({}).into(),
            },
            webhooks: vec!["http://127.0.0.1:9/hook".into()],
        })
        .collect();
    a.commit(Commit {
        sessions: vec![SessionWrite::Insert(s)],
        events,
        ..Commit::default()
    })
    .await
    .unwrap();
    let now = t0() + Span::from_secs(1);
    let first = a.due_deliveries(now, 2, true).await.unwrap();
    let second = b.due_deliveries(now, 2, true).await.unwrap();
    let ids = |batch: &[(lapse_core::store::Delivery, lapse_core::event::Event)]| {
        batch.iter().map(|(_, e)| e.id.clone()).collect::<Vec<_>>()
    };
    assert_eq!(ids(&first), ["ev-0", "ev-1"]);
    assert_eq!(ids(&second), ["ev-2", "ev-3"], "the rows the first left");
}

/// Rules put in force are numbered; a commit or re-arm decided under an older number writes
/// nothing, alone or among commits decided under the rules in force, and only the holder of
/// the version in force can put the next one in force.
#[tokio::test]
async fn changes_decided_under_replaced_rules_are_refused() {
    for (store, _dir) in stores().await {
        let store = store.as_ref();
        assert_eq!(store.rules_in_force().await.unwrap(), None);
        assert_eq!(
            store.publish_rules(0, "v1", &[], t0(), None).await.unwrap(),
            1
        );
        let refused = store.publish_rules(0, "again", &[], t0(), None).await;
        assert!(
            matches!(refused, Err(StoreError::PolicyChanged)),
            "{refused:?}"
        );
        assert_eq!(
            store.publish_rules(1, "v2", &[], t0(), None).await.unwrap(),
            2
        );
        let stored = store.rules_in_force().await.unwrap().unwrap();
        assert_eq!((stored.version, stored.kinds.as_str()), (2, "v2"));

        let insert = |id: &str, rules_version| Commit {
            rules_version,
            sessions: vec![SessionWrite::Insert(session("study", id, t0()))],
            ..Commit::default()
        };
        let outcomes = store
            .commit_many(&[
                insert("old", Some(1)),
                insert("new", Some(2)),
                insert("unchecked", None),
            ])
            .await
            .unwrap();
        assert!(
            matches!(outcomes[0], Err(StoreError::PolicyChanged)),
            "{outcomes:?}"
        );
        assert!(outcomes[1].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
        assert!(
            store
                .load(&SessionId::parse("old").unwrap())
                .await
                .unwrap()
                .is_none()
        );
        let alone = store.commit(insert("old", Some(1))).await;
        assert!(matches!(alone, Err(StoreError::PolicyChanged)), "{alone:?}");

        let new = loaded(store, "new").await;
        let rearm = Rearm {
            id: new.id.clone(),
            version: new.version,
            wake_at: None,
            rule: None,
        };
        let stale = store
            .rearm(std::slice::from_ref(&rearm), Some(1), RearmOnly::Unchanged)
            .await;
        assert!(matches!(stale, Err(StoreError::PolicyChanged)), "{stale:?}");
        assert_eq!(
            store
                .rearm(std::slice::from_ref(&rearm), Some(2), RearmOnly::Unchanged)
                .await
                .unwrap(),
            1
        );

        // Moving a stored wake-up earlier ignores the row's version; moving it later does not
        // happen that way.
        let at = |secs| Some(t0() + Span::from_secs(secs));
        let mut moved = Rearm {
            version: 0,
            wake_at: at(600),
            rule: Some("r".into()),
            ..rearm
        };
        store
            .rearm(std::slice::from_ref(&moved), Some(2), RearmOnly::Unchanged)
            .await
            .unwrap();
        let stored = |s: Option<Session>| s.unwrap().wake_at;
        let id = SessionId::parse("new").unwrap();
        assert_eq!(
            stored(store.load(&id).await.unwrap()),
            None,
            "a stale version"
        );
        assert_eq!(
            store
                .rearm(std::slice::from_ref(&moved), Some(2), RearmOnly::Earlier)
                .await
                .unwrap(),
            0,
            "none stored: nothing to move"
        );
        let fresh = store.load(&id).await.unwrap().unwrap();
        moved.version = fresh.version;
        moved.wake_at = at(900);
        store
            .rearm(std::slice::from_ref(&moved), Some(2), RearmOnly::Unchanged)
            .await
            .unwrap();
        moved.version = 0;
        moved.wake_at = at(1200);
        assert_eq!(
            store
                .rearm(std::slice::from_ref(&moved), Some(2), RearmOnly::Earlier)
                .await
                .unwrap(),
            0,
            "later: left alone"
        );
        moved.wake_at = at(300);
        assert_eq!(
            store
                .rearm(std::slice::from_ref(&moved), Some(2), RearmOnly::Earlier)
                .await
                .unwrap(),
            1
        );
        assert_eq!(stored(store.load(&id).await.unwrap()), at(300));
    }
}

/// A store just opened migrates, and keeps and finds a session.
async fn works_as_usual(store: &dyn Store) {
    store.migrate().await.unwrap();
    insert(store, &session("study", "after", t0())).await;
    let id = SessionId::parse("after").unwrap();
    assert!(
        store.load(&id).await.unwrap().is_some(),
        "and works as usual"
    );
}

/// A SQLite database another process holds for a moment (a backup, a second `lapse` at its
/// migrations) still opens: the store waits for its first connection as long as SQLite waits
/// for a lock, not the fraction of a second a call waits for a free connection.
#[tokio::test]
async fn a_sqlite_database_locked_for_a_moment_still_opens() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("held.db").display());
    let options: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
    let mut holder = sqlx::SqliteConnection::connect_with(&options.create_if_missing(true))
        .await
        .unwrap();
    // A database in rollback mode under an exclusive lock: no one may even read its header.
    sqlx::raw_sql("begin exclusive; create table held (x integer)")
        .execute(&mut holder)
        .await
        .unwrap();
    let held_for = std::time::Duration::from_millis(1500);
    assert!(
        held_for > lapse_store::ACQUIRE_TIMEOUT,
        "longer than a call's wait"
    );
    let release = tokio::spawn(async move {
        tokio::time::sleep(held_for).await;
        sqlx::raw_sql("commit").execute(&mut holder).await.unwrap();
        holder.close().await.unwrap();
    });

    let store = SqliteStore::open(&url, None)
        .await
        .expect("opens once the lock is gone");
    release.await.unwrap();
    works_as_usual(&store).await;
}

/// A PostgreSQL server slow to answer its first connection (starting beside lapse, or loaded)
/// still opens: the store waits for that connection longer than a call waits for a free one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_server_slow_to_answer_at_first_still_opens() {
    let Some(url) = lapse_store::testing::fresh_postgres_database().await else {
        return;
    };
    // A proxy in front of the server that holds the first connection a while before passing
    // it on, and passes on the others at once.
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (authority, database) = rest.split_once('/').expect("naming a database");
    let (user, server) = match authority.rsplit_once('@') {
        Some((user, server)) => (format!("{user}@"), server.to_string()),
        None => (String::new(), authority.to_string()),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxied = format!(
        "{scheme}://{user}{}/{database}",
        listener.local_addr().unwrap()
    );
    let held_for = std::time::Duration::from_millis(1500);
    assert!(
        held_for > lapse_store::ACQUIRE_TIMEOUT,
        "longer than a call's wait"
    );
    tokio::spawn(async move {
        let mut hold = Some(held_for);
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let (hold, server) = (hold.take(), server.clone());
            tokio::spawn(async move {
                if let Some(hold) = hold {
                    tokio::time::sleep(hold).await;
                }
                if let Ok(mut upstream) = tokio::net::TcpStream::connect(&server).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });

    let store = PostgresStore::open(&proxied, None, None)
        .await
        .expect("opens once the server answers");
    works_as_usual(&store).await;
}

/// A SQLite path that cannot be opened fails at once, with the path in the message: waiting
/// out a lock is for databases that exist and are merely busy.
#[tokio::test]
async fn a_sqlite_path_that_cannot_be_opened_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("missing/dir/x.db").display());
    let started = std::time::Instant::now();
    let Err(StoreError::Backend(message)) = SqliteStore::open(&url, None).await else {
        panic!("a database in a missing directory opened");
    };
    assert!(message.contains("missing/dir/x.db"), "{message}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "failed only after {:?}",
        started.elapsed()
    );
}
