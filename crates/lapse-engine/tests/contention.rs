//! Other clients of a shared PostgreSQL database holding rows lapse needs.

use std::sync::Arc;

use lapse_core::{Config, SessionId};
use lapse_engine::ops::CreateRequest;
use lapse_engine::{Clock, Engine};

mod common;
use common::{admin, create, t0};

/// A change PostgreSQL rolls back to break a deadlock is decided again and written, not
/// answered with an error: the rollback wrote nothing, as after a lost compare-and-set. Here
/// another client holds a repair's row and then asks for its request's, while cancelling
/// the request (which writes the request, then the repair) waits for the repair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_picked_as_a_deadlocks_victim_is_decided_again() {
    let Some(url) = lapse_store::testing::fresh_postgres_database().await else {
        return;
    };
    let store = lapse_store::PostgresStore::open(&url, None, None)
        .await
        .unwrap();
    lapse_core::Store::migrate(&store).await.unwrap();
    let engine = Engine::new(
        Arc::new(store),
        Arc::new(Config::default()),
        Clock::manual(t0()),
    );
    engine
        .create(&admin(), create("request", "job", "host"))
        .await
        .unwrap();
    engine
        .create(
            &admin(),
            CreateRequest {
                parent: Some(SessionId::parse("job").unwrap()),
                ..create("repair", "fix", "host")
            },
        )
        .await
        .unwrap();

    let raw = sqlx::PgPool::connect(&url).await.unwrap();
    let mut other = raw.begin().await.unwrap();
    sqlx::query("update sessions set title = 'held' where id = 'fix'")
        .execute(&mut *other)
        .await
        .unwrap();
    let ending = {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine
                .cancel(&admin(), &SessionId::parse("job").unwrap())
                .await
        })
    };
    lapse_store::testing::until_waiting(&raw, 1, || {}).await;
    // Each now waits for the other, until PostgreSQL's deadlock check fails the one that
    // waited first (the cancel) a second later.
    sqlx::query("update sessions set title = 'held' where id = 'job'")
        .execute(&mut *other)
        .await
        .expect("the other client goes on once the cancel is rolled back");
    other.commit().await.unwrap();

    let job = ending
        .await
        .unwrap()
        .expect("the cancel is decided again and written");
    assert!(!job.status.is_open(), "{:?}", job.status);
    let fix = engine
        .get(&admin(), &SessionId::parse("fix").unwrap())
        .await
        .unwrap();
    assert!(
        !fix.status.is_open(),
        "the repair went with its request: {:?}",
        fix.status
    );
}
