//! The continuous sweeper's plan: it sleeps until the next deadline, and a change that moves
//! a deadline earlier wakes it; sweeps over pages and across instances. Driven step by step
//! with a manual clock; nothing sleeps to wait for a rule. The heartbeat flusher's tests are
//! in `flusher.rs`, retention's in `retention.rs`.

use std::sync::Arc;
use std::time::Duration;

use lapse_core::intercept::{Call, Hook, Intercepted};
use lapse_core::{Config, SessionId, Span, StoreError, UserId};
use lapse_engine::{Caller, Clock, Engine};
use lapse_store::SqliteStore;
use tokio_util::sync::CancellationToken;

mod common;
use common::{admin, engine, engine_over, memory_store, postgres_instance, request, t0};

/// An engine whose sweeps read `batch` due rows a page, over a database file in `dir`.
async fn paged_engine(batch: u32, dir: &std::path::Path) -> Arc<Engine> {
    paged_engine_over(batch, file_store(dir).await)
}

/// A migrated SQLite database in a file in `dir`.
async fn file_store(dir: &std::path::Path) -> Arc<SqliteStore> {
    let url = format!("sqlite://{}", dir.join("pages.db").display());
    let store = Arc::new(SqliteStore::open(&url, None).await.unwrap());
    lapse_core::Store::migrate(store.as_ref()).await.unwrap();
    store
}

/// `count` requests (`r0`, `r1`, ...) no one takes up, then the clock past the 15 minutes
/// after which they are cancelled: all of them due.
async fn requests_due(engine: &Engine, count: usize) {
    for n in 0..count {
        engine
            .create(&admin(), request("request", &format!("r{n}"), None))
            .await
            .unwrap();
    }
    engine.clock().advance(Span::from_secs(16 * 60)).unwrap();
}

/// An engine over `store` whose sweeps read `batch` due rows a page.
fn paged_engine_over(batch: u32, store: Arc<dyn lapse_core::Store>) -> Arc<Engine> {
    let config = Config::parse(&format!("[sweeper]\nbatch = {batch}\n"), "test.toml").unwrap();
    Engine::new(store, Arc::new(config), Clock::manual(t0()))
}

#[tokio::test]
async fn the_sweeper_sleeps_until_the_next_deadline_and_an_earlier_one_wakes_it() {
    let engine = engine().await;
    let admin = Caller::Admin {
        name: "test".into(),
        actor: None,
    };
    engine
        .create(&admin, request("study", "room", None))
        .await
        .unwrap();

    let plan = engine.sweep_and_plan(&CancellationToken::new()).await;
    // First due: the host's presence lapsing after 90 s without a heartbeat.
    assert_eq!(plan.next_deadline, Some(t0() + Span::from_secs(90)));
    assert_eq!(
        plan.sleep,
        Duration::from_secs(60),
        "capped, so a lost wake-up costs a minute at most"
    );

    let before = engine.wake_ups();
    engine
        .create(&admin, request("coding", "later", None))
        .await
        .unwrap();
    assert_eq!(
        engine.wake_ups(),
        before,
        "a later deadline leaves the sweeper asleep"
    );

    engine
        .create(
            &admin,
            request("mentoring", "soon", Some(Span::from_secs(20))),
        )
        .await
        .unwrap();
    assert_eq!(
        engine.wake_ups(),
        before + 1,
        "an earlier deadline wakes it"
    );
    tokio::time::timeout(Duration::from_secs(5), engine.woken())
        .await
        .expect("the wake-up is kept for the sweeper's next wait");

    let plan = engine.sweep_and_plan(&CancellationToken::new()).await;
    assert_eq!(plan.next_deadline, Some(t0() + Span::from_secs(20)));
    assert_eq!(plan.sleep, Duration::from_secs(20));

    engine.clock().advance(Span::from_secs(20)).unwrap();
    let plan = engine.sweep_and_plan(&CancellationToken::new()).await;
    assert_eq!(
        plan.next_deadline,
        Some(t0() + Span::from_secs(90)),
        "the booking started"
    );
    let soon = engine
        .get(&admin, &SessionId::parse("soon").unwrap())
        .await
        .unwrap();
    assert!(soon.delayed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_stored_by_one_instance_wakes_the_others() {
    let Some(url) = lapse_store::testing::fresh_postgres_database().await else {
        return;
    };
    let open = || async { engine_over(postgres_instance(&url).await) };
    let (a, b) = (open().await, open().await);
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(b.clone().run_change_watch(shutdown.clone()));
    let admin = Caller::Admin {
        name: "test".into(),
        actor: None,
    };

    // B has nothing to do and plans to sleep its full minute.
    assert_eq!(
        b.sweep_and_plan(&CancellationToken::new())
            .await
            .next_deadline,
        None
    );
    let before = b.wake_ups();
    // Keep creating until B's listener is surely connected: each create announces a deadline.
    let mut woken = false;
    for i in 0..100 {
        let id = format!("room-{i}");
        a.create(&admin, request("mentoring", &id, Some(Span::from_secs(20))))
            .await
            .unwrap();
        if tokio::time::timeout(Duration::from_millis(100), b.woken())
            .await
            .is_ok()
        {
            woken = true;
            break;
        }
    }
    shutdown.cancel();
    assert!(woken, "B's sweeper was woken by A's commit");
    assert!(b.wake_ups() > before);
    assert!(a.wake_ups() > 0, "A wakes its own sweeper too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweeper_waits_a_second_while_another_instance_holds_what_is_due() {
    let Some(url) = lapse_store::testing::fresh_postgres_database().await else {
        return;
    };
    let open = || async {
        let store = postgres_instance(&url).await;
        (store.clone(), engine_over(store))
    };
    let ((a_store, a), (_, b)) = (open().await, open().await);
    let admin = Caller::Admin {
        name: "test".into(),
        actor: None,
    };
    a.create(&admin, request("study", "room", None))
        .await
        .unwrap();
    // The host's presence lapses at 90 s; A takes the due row as its sweep would.
    for engine in [&a, &b] {
        engine.clock().advance(Span::from_secs(120)).unwrap();
    }
    let held = lapse_core::Store::due(a_store.as_ref(), a.now(), None, None, 100, true)
        .await
        .unwrap();
    assert_eq!(held.len(), 1);

    let plan = b.sweep_and_plan(&CancellationToken::new()).await;
    assert_eq!(plan.next_deadline, Some(t0() + Span::from_secs(90)));
    assert!(
        plan.sleep >= Duration::from_secs(1),
        "B cannot take the row and does not spin on it: {:?}",
        plan.sleep
    );
}

#[tokio::test]
async fn a_sweep_over_many_pages_changes_each_session_once() {
    let dir = tempfile::tempdir().unwrap();
    sweep_over_many_pages(paged_engine(3, dir.path()).await).await;
}

/// The same on PostgreSQL, where each page's rows are leased as they are read, and a request
/// cancels its repair from the page before the repair's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_over_many_pages_on_postgresql_changes_each_session_once() {
    let Some(url) = lapse_store::testing::fresh_postgres_database().await else {
        return;
    };
    sweep_over_many_pages(paged_engine_over(3, postgres_instance(&url).await)).await;
}

/// Two instances sweeping one PostgreSQL database at once write their batches at the same
/// time, yet their events take numbers in commit order: a reader paging `after` the last
/// event it saw, as SSE resumes and `after=` paging do, never misses one committed later
/// with a lower number.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_of_two_instances_sweeping_at_once_are_numbered_in_commit_order() {
    let Some(url) = lapse_store::testing::fresh_postgres_database().await else {
        return;
    };
    let a = paged_engine_over(20, postgres_instance(&url).await);
    let b = paged_engine_over(20, postgres_instance(&url).await);
    const REQUESTS: usize = 600;
    for n in 0..REQUESTS {
        a.create(&admin(), request("request", &format!("r{n:03}"), None))
            .await
            .unwrap();
    }
    // Every request has gone unanswered long enough to be cancelled.
    for engine in [&a, &b] {
        engine.clock().advance(Span::from_secs(16 * 60)).unwrap();
    }
    let page = |after: i64| lapse_core::store::EventQuery {
        after,
        limit: 500,
        ..Default::default()
    };
    let swept = CancellationToken::new();
    let reader = tokio::spawn({
        let (a, swept) = (a.clone(), swept.clone());
        async move {
            let (mut seen, mut after) = (Vec::new(), 0);
            loop {
                let last_look = swept.is_cancelled();
                let events = a.events_page(&page(after)).await.unwrap();
                after = events.last().map_or(after, |e| e.seq);
                seen.extend(events.iter().map(|e| e.seq));
                if last_look && events.is_empty() {
                    return seen;
                }
            }
        }
    });
    let options = lapse_engine::SweepOptions::default();
    let (by_a, by_b) = tokio::join!(a.sweep_once(&options), b.sweep_once(&options));
    swept.cancel();
    let seen = reader.await.unwrap();

    let (by_a, by_b) = (by_a.unwrap(), by_b.unwrap());
    assert!(by_a.errors.is_empty() && by_b.errors.is_empty());
    assert!(
        !by_a.applied.is_empty() && !by_b.applied.is_empty(),
        "both instances swept: {} and {} rules",
        by_a.applied.len(),
        by_b.applied.len()
    );
    let mut all = Vec::new();
    loop {
        let events = a
            .events_page(&page(all.last().copied().unwrap_or(0)))
            .await
            .unwrap();
        if events.is_empty() {
            break;
        }
        all.extend(events.iter().map(|e| e.seq));
    }
    let missed: Vec<&i64> = all.iter().filter(|seq| !seen.contains(seq)).collect();
    assert!(missed.is_empty(), "the reader missed events {missed:?}");
    assert_eq!(seen, all);
}

/// Ten requests, each with a repair, swept three due rows a page: every session is cancelled
/// once, by one event, and the sweep's report and its progress count each once.
async fn sweep_over_many_pages(engine: Arc<Engine>) {
    let admin = Caller::Admin {
        name: "test".into(),
        actor: None,
    };
    const PAIRS: usize = 10;
    for n in 0..PAIRS {
        // Ids sort each repair right after its request: `p3`, `p3-rep`, `p4`, ...
        engine
            .create(&admin, request("request", &format!("p{n}"), None))
            .await
            .unwrap();
        let mut repair = request("repair", &format!("p{n}-rep"), None);
        repair.parent = Some(SessionId::parse(&format!("p{n}")).unwrap());
        repair.host = Some(UserId::parse(&format!("mechanic{n}")).unwrap());
        engine.create(&admin, repair).await.unwrap();
    }

    engine.clock().advance(Span::from_secs(16 * 60)).unwrap();
    let told = Arc::new(std::sync::Mutex::new(Vec::new()));
    let progress = {
        let told = told.clone();
        lapse_engine::Progress(Arc::new(move |examined, applied| {
            told.lock().unwrap().push((examined, applied));
        }))
    };
    let report = engine
        .sweep_once(&lapse_engine::SweepOptions {
            progress: Some(progress),
            ..Default::default()
        })
        .await
        .unwrap();

    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.applied.len(), 2 * PAIRS, "{:?}", report.applied);
    let told = told.lock().unwrap().clone();
    let last = told.iter().max().copied();
    assert_eq!(
        last.map(|(_, applied)| applied),
        Some(2 * PAIRS),
        "progress counts every rule applied: {told:?}"
    );
    assert!(
        told.windows(2).all(|w| w[0].0 <= w[1].0),
        "progress never goes back: {told:?}"
    );
    let cancelled = engine
        .events_page(&lapse_core::store::EventQuery {
            limit: 1000,
            types: vec![lapse_core::EventType::SessionCancelled],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut ids: Vec<&str> = cancelled.iter().map(|e| e.session_id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(cancelled.len(), 2 * PAIRS, "one cancellation each");
    assert_eq!(ids.len(), 2 * PAIRS);
    for n in 0..PAIRS {
        let repair = engine
            .get(&admin, &SessionId::parse(&format!("p{n}-rep")).unwrap())
            .await
            .unwrap();
        assert_eq!(repair.status, lapse_core::Status::Cancelled);
    }
}

/// A sweep asked to stop (lapse shutting down) commits the page it has decided, though the
/// next one is already read, and leaves the rest due for the next sweep.
#[tokio::test]
async fn a_stopped_sweep_commits_the_page_in_hand_and_leaves_the_rest_due() {
    let dir = tempfile::tempdir().unwrap();
    let engine = paged_engine(3, dir.path()).await;
    requests_due(&engine, 10).await;

    let stop = CancellationToken::new();
    stop.cancel();
    let stopped = lapse_engine::SweepOptions {
        stop,
        ..Default::default()
    };
    let report = engine.sweep_once(&stopped).await.unwrap();
    assert_eq!(report.applied.len(), 3, "one page: {:?}", report.applied);
    assert_eq!(engine.due_count(None).await.unwrap(), 7);

    let rest = engine
        .sweep_once(&lapse_engine::SweepOptions::default())
        .await
        .unwrap();
    assert_eq!(rest.applied.len(), 7, "{:?}", rest.applied);
    assert_eq!(engine.due_count(None).await.unwrap(), 0);
}

/// While on, fails every read of sessions by id: the read a sweep makes of the rows it has
/// just leased, as when the pool has no connection free in time.
#[derive(Default)]
struct FailLoads(std::sync::atomic::AtomicBool);

impl Hook for FailLoads {
    type Ticket = ();

    fn before(&self, call: Call) -> Result<(), StoreError> {
        if call.name == "load_many" && self.0.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Busy);
        }
        Ok(())
    }
}

/// A sweep that fails after leasing its rows gives them back: this instance's next sweep and
/// every other instance take them at once, not when the lease's minute runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_that_fails_gives_back_the_rows_it_leased() {
    let Some(url) = lapse_store::testing::fresh_postgres_database().await else {
        return;
    };
    let (store, other) = (postgres_instance(&url).await, postgres_instance(&url).await);
    let faults = Arc::new(FailLoads::default());
    let engine = engine_over(Arc::new(Intercepted::new(store, faults.clone())));
    requests_due(&engine, 3).await;
    let sweep = lapse_engine::SweepOptions::default;

    faults.0.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(engine.sweep_once(&sweep()).await.is_err());
    faults.0.store(false, std::sync::atomic::Ordering::SeqCst);
    let free = lapse_core::Store::due(other.as_ref(), engine.now(), None, None, 100, false)
        .await
        .unwrap();
    assert_eq!(free.len(), 3, "the rows are still due");
    let claimed = lapse_core::Store::due(other.as_ref(), engine.now(), None, None, 100, true)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3, "and no lease keeps another instance away");

    // What the other instance leased it gives back the same way; then this one sweeps them.
    lapse_core::Store::release(
        other.as_ref(),
        &claimed.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let report = engine.sweep_once(&sweep()).await.unwrap();
    assert_eq!(report.applied.len(), 3, "{report:?}");
}

#[tokio::test]
async fn a_change_that_only_puts_a_deadline_off_leaves_the_stored_one_for_the_sweep_to_re_arm() {
    let store = memory_store().await;
    let config = Config::parse(
        "[kinds.room]\npresence_timeout = \"12h\"\n\
         [[kinds.room.rules]]\nname = \"expire-idle\"\non = \"idle\"\nafter = \"1h\"\ndo = \"expire\"\n",
        "test.toml",
    )
    .unwrap();
    let engine = Engine::new(store.clone(), Arc::new(config), Clock::manual(t0()));
    let admin = admin();
    let room = SessionId::parse("room").unwrap();
    engine
        .create(&admin, request("room", "room", None))
        .await
        .unwrap();
    let stored = || async {
        lapse_core::Store::next_deadline(store.as_ref())
            .await
            .unwrap()
    };
    // An idle rule is looked at once its grace for late heartbeats has passed too.
    let grace = lapse_engine::heartbeats::IDLE_GRACE;
    let looked_at = |deadline: lapse_core::Timestamp| Some(deadline + grace);
    let first = t0() + Span::from_secs(3600);
    assert_eq!(stored().await, looked_at(first));

    // A join ten minutes in puts the idle deadline off by ten minutes: the session shows the
    // new one, the stored wake-up stays where it was.
    engine.clock().advance(Span::from_secs(600)).unwrap();
    let guest = UserId::parse("guest").unwrap();
    engine
        .join(
            &admin,
            &room,
            &guest,
            None,
            lapse_core::lifecycle::Via::Direct,
        )
        .await
        .unwrap();
    let deadline = t0() + Span::from_secs(4200);
    let shown = engine.get(&admin, &room).await.unwrap();
    assert_eq!(shown.next_due.map(|d| d.at), Some(deadline));
    assert_eq!(stored().await, looked_at(first));

    // At the old wake-up the sweep looks, applies nothing and re-arms it to the true one.
    engine.clock().set(first + grace).unwrap();
    let options = lapse_engine::SweepOptions::default();
    let sweep = || engine.sweep_once(&options);
    let report = sweep().await.unwrap();
    assert!(report.applied.is_empty(), "{:?}", report.applied);
    assert_eq!(stored().await, looked_at(deadline));

    // And the rule fires at the deadline the join set, stamped with it.
    engine.clock().set(deadline + grace).unwrap();
    let report = sweep().await.unwrap();
    assert_eq!(report.applied.len(), 1);
    assert_eq!(report.applied[0].due_at, deadline);
    assert_eq!(stored().await, None);
}

/// Once on, fails every read of sessions by id after the first `spared` ones: a sweep's
/// later pages, as when the database fails in the middle of a sweep (an I/O error).
struct FailLaterLoads {
    on: std::sync::atomic::AtomicBool,
    spared: usize,
    seen: std::sync::atomic::AtomicUsize,
}

impl Hook for FailLaterLoads {
    type Ticket = ();

    fn before(&self, call: Call) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        if call.name == "load_many"
            && self.on.load(SeqCst)
            && self.seen.fetch_add(1, SeqCst) >= self.spared
        {
            return Err(StoreError::Backend("disk I/O error".into()));
        }
        Ok(())
    }
}

/// A sweep that fails part way (its later pages cannot be read) has committed its first
/// pages: the sweeper's figures, which `/metrics` and `/v1/stats` show, count their
/// rules, and the next sweep applies only the rest.
async fn a_sweep_that_fails_part_way_counts_what_it_committed(
    store: Arc<dyn lapse_core::Store>,
    lanes: usize,
) {
    let faults = Arc::new(FailLaterLoads {
        on: false.into(),
        spared: lanes,
        seen: 0.into(),
    });
    let engine = paged_engine_over(3, Arc::new(Intercepted::new(store, faults.clone())));
    requests_due(&engine, 10).await;

    faults.on.store(true, std::sync::atomic::Ordering::SeqCst);
    let sweep = lapse_engine::SweepOptions::default;
    let err = engine.sweep_once(&sweep()).await.unwrap_err();
    assert!(err.to_string().contains("disk I/O error"), "{err}");
    faults.on.store(false, std::sync::atomic::Ordering::SeqCst);

    // A lane committed its first page of three while its next read failed; with two lanes,
    // the second's first read may have been one of those that failed.
    let committed = 10 - engine.due_count(None).await.unwrap() as usize;
    assert!(
        (3..=3 * lanes).contains(&committed),
        "{committed} committed by {lanes} lane(s)"
    );
    let figures = engine.sweeper_figures().await.unwrap();
    assert_eq!(figures.applied, committed as u64, "{figures:?}");
    assert_eq!(figures.sweeps, 0, "a sweep that failed is not one that ran");
    assert_eq!(figures.last_sweep_at, None);

    let rest = engine.sweep_once(&sweep()).await.unwrap();
    assert_eq!(rest.applied.len(), 10 - committed, "{:?}", rest.applied);
    let figures = engine.sweeper_figures().await.unwrap();
    assert_eq!(figures.applied, 10, "{figures:?}");
    assert_eq!(figures.sweeps, 1);
}

#[tokio::test]
async fn a_sweep_that_fails_part_way_counts_what_it_committed_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    a_sweep_that_fails_part_way_counts_what_it_committed(file_store(dir.path()).await, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_that_fails_part_way_counts_what_it_committed_on_postgresql() {
    let Some(url) = lapse_store::testing::fresh_postgres_database().await else {
        return;
    };
    // Two lanes: each commits its first page.
    a_sweep_that_fails_part_way_counts_what_it_committed(postgres_instance(&url).await, 2).await;
}
