//! Sessions as stored: listed in byte order of their ids, ids unique, the host's open limit,
//! updates that write only what they name, and a migration that keeps every participant.

use super::*;

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
async fn an_update_writes_only_the_participants_it_names() {
    for (store, _dir) in stores().await {
        let store = store.as_ref();
        let s = with_joined(session("study", "room", t0()), &["ana", "ben"]);
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

/// A SQLite database made before participants were stored by room (schema version 3) keeps
/// every participant when it is migrated.
#[tokio::test]
async fn a_sqlite_database_from_before_participants_were_stored_by_room_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let url = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
    let s = with_joined(session("study", "room", t0()), &["ana", "ben"]);
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
