//! Opening a store: settings from the configuration, a database busy or slow at first, a
//! path that cannot be opened.

use super::*;

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

/// Each SQLite connection keeps the page cache the store gives it. SQLite is compiled without
/// its memory management (`.cargo/config.toml`), which pools the caches of all connections:
/// a reader's cache then grows past its size with what it reads, takes the writer's pages, and
/// costs a walk over all of it at the start of every read that follows a write.
#[tokio::test]
async fn each_sqlite_connection_keeps_a_page_cache_of_its_own() {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:")
        .await
        .unwrap();
    let options: Vec<String> =
        sqlx::query_scalar("select compile_options from pragma_compile_options")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert!(
        options.iter().any(|o| o.starts_with("THREADSAFE=")),
        "SQLite says how it was compiled: {options:?}"
    );
    assert!(
        !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
        "SQLite was compiled with one page cache for all connections: {options:?}"
    );
}

/// An index built online (migration 13, users' notifications by age) lets writes to its table
/// go on while it waits for the transactions before it and builds; begun again after an
/// interruption, it ends valid and recorded.
#[tokio::test]
async fn an_index_built_online_lets_writes_to_its_table_go_on() {
    let Some((store, raw)) = postgres_and_raw().await else {
        return;
    };
    let notify = |id: &'static str| {
        sqlx::query(
            "insert into notifications (id, user_id, type, title, message, session_id, \
             created_at) values ($1, 'bob', 'session.completed', 't', 'm', 's', 0)",
        )
        .bind(id)
    };
    // As if a build had been interrupted before it was recorded.
    sqlx::query("delete from lapse_migrations where version = 13")
        .execute(&raw)
        .await
        .unwrap();
    // A transaction that wrote to the table, still open: the build waits for it.
    let mut open = raw.begin().await.unwrap();
    notify("n1").execute(&mut *open).await.unwrap();
    let migrating = tokio::spawn(async move { store.migrate().await });
    let building = "select count(*) from pg_stat_activity \
                    where query like '%index%notifications_created%' and state = 'active' \
                    and query not like '%pg_stat_activity%'";
    let waited = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while sqlx::query_scalar::<_, i64>(building)
            .fetch_one(&raw)
            .await
            .unwrap()
            == 0
        {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(waited.is_ok(), "the build began, and waits");

    let write = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        notify("n2").execute(&raw),
    )
    .await;
    assert!(
        matches!(write, Ok(Ok(_))),
        "a write to the table goes on while the index builds: {write:?}"
    );
    open.commit().await.unwrap();
    migrating.await.unwrap().unwrap();
    let valid: bool = sqlx::query_scalar(
        "select i.indisvalid from pg_index i join pg_class c on c.oid = i.indexrelid \
         where c.relname = 'notifications_created'",
    )
    .fetch_one(&raw)
    .await
    .unwrap();
    assert!(valid, "the index is built whole");
    let recorded: i64 =
        sqlx::query_scalar("select count(*) from lapse_migrations where version = 13")
            .fetch_one(&raw)
            .await
            .unwrap();
    assert_eq!(recorded, 1);
}

/// `[database] statement_timeout` bounds requests' statements, not the migrations: a fresh
/// database migrates whole under the shortest timeout there is.
#[tokio::test]
async fn migrations_run_whatever_the_statement_timeout() {
    let Some(url) = lapse_store::testing::fresh_postgres_database().await else {
        return;
    };
    let hurried = Some(std::time::Duration::from_millis(1));
    let store = PostgresStore::open(&url, None, hurried).await.unwrap();
    store.migrate().await.unwrap();
    let versions: i64 = sqlx::query_scalar("select count(*) from lapse_migrations")
        .fetch_one(&sqlx::PgPool::connect(&url).await.unwrap())
        .await
        .unwrap();
    assert_eq!(versions, lapse_store::migrate::POSTGRES.len() as i64);
}

/// A database a newer lapse has migrated is refused with what to do, on both stores, and
/// left as it was: this lapse would misread a schema it does not know.
#[tokio::test]
async fn a_database_migrated_by_a_newer_lapse_is_refused() {
    use sqlx::Connection as _;
    let newer = "insert into lapse_migrations (version, name, applied_at) \
                 values (1000, 'from a newer lapse', 0)";
    let refused = |result: Result<(), StoreError>, known: usize| match result {
        Err(StoreError::Backend(why)) => {
            assert!(why.contains("version 1000, from a newer lapse"), "{why}");
            assert!(why.contains(&format!("up to {known}")), "{why}");
        }
        other => panic!("a newer schema was taken: {other:?}"),
    };

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let sqlite = SqliteStore::open(&url, None).await.unwrap();
    sqlite.migrate().await.unwrap();
    let mut raw = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query(newer).execute(&mut raw).await.unwrap();
    refused(sqlite.migrate().await, lapse_store::migrate::SQLITE.len());

    if let Some((postgres, raw)) = postgres_and_raw().await {
        sqlx::query(newer).execute(&raw).await.unwrap();
        refused(
            postgres.migrate().await,
            lapse_store::migrate::POSTGRES.len(),
        );
        let versions: i64 = sqlx::query_scalar("select count(*) from lapse_migrations")
            .fetch_one(&raw)
            .await
            .unwrap();
        assert_eq!(versions, lapse_store::migrate::POSTGRES.len() as i64 + 1);
    }
}
