//! A database outage, injected between the engine and a real store: calls fail fast with
//! `database_unavailable`, readiness says so at once, heartbeats for sessions the engine
//! knows to be open are kept in memory and written when the database is back, and the
//! engine recovers by itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lapse_core::intercept::{Call, Hook, Intercepted};
use lapse_core::{Config, SessionId, Store, StoreError, UserId};
use lapse_engine::ops::CreateRequest;
use lapse_engine::{Clock, Engine};
use lapse_store::SqliteStore;

mod common;
use common::{admin, create, t0};

/// A database that can be switched off: every call fails as an unreachable server's would
/// while it is off. Counts the calls that reached it while off.
#[derive(Default)]
struct Switch {
    off: AtomicBool,
    tried_while_off: AtomicUsize,
}

impl Hook for Switch {
    type Ticket = ();

    fn before(&self, _call: Call) -> Result<(), StoreError> {
        if self.off.load(Ordering::SeqCst) {
            self.tried_while_off.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Unavailable("connection refused".into()));
        }
        Ok(())
    }
}

fn room(id: &str) -> CreateRequest {
    create("reading", id, "mira")
}

#[tokio::test]
async fn an_outage_fails_fast_keeps_known_heartbeats_and_ends_by_itself() {
    let store = SqliteStore::open("sqlite::memory:", None).await.unwrap();
    store.migrate().await.unwrap();
    let store: Arc<dyn Store> = Arc::new(store);
    let switch = Arc::new(Switch::default());
    let engine = Engine::new(
        Arc::new(Intercepted::new(store.clone(), switch.clone())),
        Arc::new(Config::default()),
        Clock::manual(t0()),
    );
    let (known, unknown) = (
        SessionId::parse("known").unwrap(),
        SessionId::parse("unknown").unwrap(),
    );
    let mira = UserId::parse("mira").unwrap();
    engine.create(&admin(), room("known")).await.unwrap();
    engine.create(&admin(), room("unknown")).await.unwrap();
    engine.flush_heartbeats().await.unwrap();
    assert!(engine.ready().await.is_ok());

    switch.off.store(true, Ordering::SeqCst);
    let asked = Instant::now();
    let err = engine.get(&admin(), &unknown).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert_eq!(lapse_engine::ops::error_code(&err), "database_unavailable");
    let err = engine.ready().await.unwrap_err();
    assert!(err.is_unavailable(), "ready says so at once: {err}");
    let tried = switch.tried_while_off.load(Ordering::SeqCst);
    for _ in 0..100 {
        assert!(
            engine
                .get(&admin(), &unknown)
                .await
                .unwrap_err()
                .is_unavailable()
        );
    }
    assert_eq!(
        switch.tried_while_off.load(Ordering::SeqCst),
        tried,
        "during the outage calls fail without reaching for the database"
    );
    assert!(asked.elapsed() < Duration::from_millis(500));

    // A heartbeat for the session this instance holds is taken into memory; one for a
    // session it would need the database to check is refused with the outage.
    let later = engine.clock().advance("30s".parse().unwrap()).unwrap();
    engine.heartbeat(&admin(), &known, &mira).await.unwrap();
    let err = engine
        .heartbeat(&admin(), &SessionId::parse("elsewhere").unwrap(), &mira)
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(
        engine.flush_heartbeats().await.is_err(),
        "nothing to write to"
    );

    // Back: the probe finds it so, and the beat kept is written.
    assert!(!engine.probe_database().await, "still out");
    switch.off.store(false, Ordering::SeqCst);
    assert!(engine.probe_database().await);
    engine.flush_heartbeats().await.unwrap();
    assert!(engine.ready().await.is_ok());
    let stored = store.load(&known).await.unwrap().unwrap();
    assert_eq!(
        stored.last_activity_at, later,
        "the beat accepted during the outage"
    );
}
