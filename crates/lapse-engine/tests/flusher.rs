//! The heartbeat flusher: beats taken in memory are written in transactions of their own, a
//! sweep writes first the beats of the sessions it is about to decide, and a beat that comes
//! while a flush runs waits for the next one unless its room is about to be looked at. Driven
//! with a manual clock; one test watches the flusher's loop run, in real time.

use std::sync::Arc;
use std::time::Duration;

use lapse_core::intercept::{Call, Hook, Intercepted};
use lapse_core::{SessionId, Span, StoreError, UserId};
use tokio_util::sync::CancellationToken;

mod common;
use common::{admin, engine, engine_and_store, engine_over, memory_store, open_study, request, t0};

#[tokio::test]
async fn a_sweep_writes_the_beats_of_the_sessions_it_decides_and_leaves_the_rest_to_the_flusher() {
    let (engine, store) = engine_and_store().await;
    let admin = admin();
    let id = |s: &str| SessionId::parse(s).unwrap();
    let host = UserId::parse("host").unwrap();
    engine
        .create(&admin, request("study", "early", None))
        .await
        .unwrap();
    // The first beat after a silence is written before it is answered; the next, a second
    // later, waits in memory.
    engine.clock().advance(Span::from_secs(79)).unwrap();
    engine.heartbeat(&admin, &id("early"), &host).await.unwrap();
    assert_eq!(engine.pending_heartbeats(), 0, "written at once");
    engine.clock().advance(Span::from_millis(500)).unwrap();
    engine
        .create(&admin, request("study", "later", None))
        .await
        .unwrap();
    engine.clock().advance(Span::from_millis(500)).unwrap();
    for room in ["early", "later"] {
        engine.heartbeat(&admin, &id(room), &host).await.unwrap();
    }
    assert_eq!(engine.pending_heartbeats(), 2);

    // The host of `early` would lapse at +169 s without the beat of +80 s; `later`'s host at
    // +169.5 s.
    engine.clock().advance(Span::from_millis(89_200)).unwrap();
    let report = engine
        .sweep_once(&lapse_engine::SweepOptions::default())
        .await
        .unwrap();
    assert!(
        report.applied.is_empty(),
        "the beat counted: {:?}",
        report.applied
    );
    let seen = |s: lapse_core::Session| s.participants[0].last_seen_at;
    let stored = |room: &'static str| {
        let store = store.clone();
        async move {
            seen(
                lapse_core::Store::load(store.as_ref(), &id(room))
                    .await
                    .unwrap()
                    .unwrap(),
            )
        }
    };
    assert_eq!(stored("early").await, t0() + Span::from_secs(80));
    assert_eq!(
        engine.pending_heartbeats(),
        1,
        "the sweep did not wait to write beats of sessions it does not decide"
    );
    assert_eq!(stored("later").await, t0() + Span::from_millis(79_500));

    assert_eq!(engine.flush_heartbeats().await.unwrap(), 1);
    assert_eq!(stored("later").await, t0() + Span::from_secs(80));
}

#[tokio::test]
async fn a_flush_of_more_beats_than_one_transaction_takes_writes_every_one() {
    let (engine, store) = engine_and_store().await;
    let admin = admin();
    let hall = open_study(&engine, "hall").await;
    let many = lapse_engine::heartbeats::FLUSH_CHUNK * 2 + 1;
    let users: Vec<UserId> = (0..many)
        .map(|n| UserId::parse(&format!("u{n}")).unwrap())
        .collect();
    for u in &users {
        engine
            .join(&admin, &hall, u, None, lapse_core::lifecycle::Via::Direct)
            .await
            .unwrap();
    }
    // Within the idle grace of their joins: each beat waits in memory.
    engine.clock().advance(Span::from_secs(1)).unwrap();
    for u in &users {
        engine.heartbeat(&admin, &hall, u).await.unwrap();
    }

    assert_eq!(engine.flush_heartbeats().await.unwrap(), many);
    assert_eq!(engine.pending_heartbeats(), 0);
    let stored = lapse_core::Store::load(store.as_ref(), &hall)
        .await
        .unwrap()
        .unwrap();
    let beaten = stored
        .participants
        .iter()
        .filter(|p| p.last_seen_at == t0() + Span::from_secs(1))
        .count();
    assert_eq!(beaten, many, "every beat written, in every transaction");
}

#[tokio::test]
async fn the_flusher_reports_how_long_its_last_flush_took() {
    let engine = engine().await;
    let admin = admin();
    let hall = open_study(&engine, "hall").await;
    engine
        .heartbeat(&admin, &hall, &UserId::parse("host").unwrap())
        .await
        .unwrap();
    let figures = engine.sweeper_figures().await.unwrap();
    assert_eq!(figures.last_flush_duration_ms, None, "no flush yet");
    assert_eq!(figures.pending_heartbeats, 1);

    // The flusher at a short interval, in real time: it is the flusher's loop under test.
    let stop = CancellationToken::new();
    let flusher = {
        let (engine, stop) = (engine.clone(), stop.clone());
        tokio::spawn(async move {
            engine
                .run_heartbeat_flusher(Duration::from_millis(10), stop)
                .await
        })
    };
    let figures = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let f = engine.sweeper_figures().await.unwrap();
            if f.last_flush_duration_ms.is_some() {
                return f;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the flusher flushes within its interval");
    stop.cancel();
    flusher.await.unwrap();
    assert_eq!(figures.pending_heartbeats, 0, "the beat was written");
    assert!(figures.last_flush_duration_ms.unwrap() < 10_000);
}

/// Holds the first heartbeat flush transaction until the test lets it go, so that beats can
/// come while a flush runs.
struct HoldFirstFlush {
    entered: std::sync::Mutex<Option<std::sync::mpsc::Sender<()>>>,
    go: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl Hook for HoldFirstFlush {
    type Ticket = ();

    fn before(&self, call: Call) -> Result<(), StoreError> {
        if call.name == "flush_heartbeats"
            && let Some(entered) = self.entered.lock().unwrap().take()
        {
            entered.send(()).unwrap();
            // Blocks this worker thread only; the test runs on the other one.
            let go = self
                .go
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(10));
            go.expect("the test lets the flush go");
        }
        Ok(())
    }
}

/// A beat that comes while a flush is writing waits for the next flush, a second later,
/// unless its room's stored wake-up is too near for that: then the running flush writes it
/// in its next transaction, before a sweep (perhaps another instance's) reads the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_flush_takes_the_beats_of_rooms_about_to_be_looked_at() {
    let store = memory_store().await;
    let (entered, entered_rx) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel();
    let hold = Arc::new(HoldFirstFlush {
        entered: std::sync::Mutex::new(Some(entered)),
        go: std::sync::Mutex::new(go_rx),
    });
    let engine = engine_over(Arc::new(Intercepted::new(store.clone(), hold)));
    let (admin, host) = (admin(), UserId::parse("host").unwrap());
    // The host's presence in `near` is looked at 90 s after it opened; `far` and `later`
    // opened 89 s after it, so theirs is 90 s away. A guest joined `near` a second before,
    // so its stored activity covers a beat of the guest in memory. (The host's own beat
    // there, so close to its lapse, would be written before it is answered.)
    let near = open_study(&engine, "near").await;
    engine.clock().advance(Span::from_secs(88)).unwrap();
    let guest = UserId::parse("guest").unwrap();
    engine
        .join(
            &admin,
            &near,
            &guest,
            None,
            lapse_core::lifecycle::Via::Direct,
        )
        .await
        .unwrap();
    engine.clock().advance(Span::from_secs(1)).unwrap();
    let far = open_study(&engine, "far").await;
    let later = open_study(&engine, "later").await;
    engine.heartbeat(&admin, &far, &host).await.unwrap();

    let flush = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.flush_heartbeats().await })
    };
    tokio::task::spawn_blocking(move || entered_rx.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the flush starts writing");
    // While it writes `far`: a beat half a second before `near` is looked at, and one in
    // `later`.
    engine.clock().advance(Span::from_millis(500)).unwrap();
    engine.heartbeat(&admin, &near, &guest).await.unwrap();
    engine.heartbeat(&admin, &later, &host).await.unwrap();
    go.send(()).unwrap();

    assert_eq!(flush.await.unwrap().unwrap(), 2, "far's beat and near's");
    let figures = engine.sweeper_figures().await.unwrap();
    assert_eq!(
        figures.pending_heartbeats, 1,
        "later's waits for the next flush"
    );
    let stored = |id: SessionId, user: UserId| {
        let store = store.clone();
        async move {
            let s = lapse_core::Store::load(store.as_ref(), &id)
                .await
                .unwrap()
                .unwrap();
            s.participant(&user).unwrap().last_seen_at
        }
    };
    assert_eq!(stored(near, guest).await, t0() + Span::from_millis(89_500));
    assert_eq!(
        stored(later, host).await,
        t0() + Span::from_secs(89),
        "as it joined"
    );
}
