//! A deterministic simulation of the engine against a reference model.
//!
//! Random operations from many actors (create, join, leave, start, end, cancel, heartbeat,
//! read), clock moves, sweeps and heartbeat flushes run against a real store, through a
//! fault-injecting wrapper that can crash the engine before or after any store call. A crash
//! drops the engine with everything it held in memory (pending heartbeats, cached sessions)
//! and a new one starts on the same database, as a restarted process would.
//!
//! The reference model is the pure lifecycle of `lapse_core` applied to a map of sessions:
//! what the engine acknowledged happens there too. Sweeps and passive expiry are invisible to
//! the model, because a rule's effect is stamped at its deadline: both sides are compared
//! after settling every due rule at the same instant, and at the end the store must already be
//! settled by the sweeps alone. An operation cut short by a crash may or may not have
//! committed; the store must then hold exactly one of the two. Also checked: at most one end
//! per session, and no rule applied before its deadline. The kinds' rules do not depend on
//! heartbeats (which a crash may lose by design), so every compared field is exact.
//!
//! Everything follows from the seed: the same seed gives the same history, and a failing seed
//! prints itself. `cargo test -p lapse-engine --test simulation` runs a few dozen seeds; a
//! longer run: `LAPSE_SIM_SEEDS=2000 cargo test --release -p lapse-engine --test simulation`;
//! one seed again: `LAPSE_SIM_SEED=N ...`; `LAPSE_SIM_TRACE=1` prints each step as it runs,
//! `LAPSE_SIM_PRINT=1` each run's history.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use lapse_core::intercept::{Call, Hook, Intercepted};
use lapse_core::lifecycle::{self, By, Effects, NewSession, OpError, ParentInfo, Via};
use lapse_core::store::{EventQuery, SessionQuery};
use lapse_core::{
    Config, EventType, ParticipantState, Role, Session, SessionId, Span, Status, Store, StoreError,
    Timestamp, UserId,
};
use lapse_engine::ops::{CreateRequest, error_code};
use lapse_engine::{Caller, Clock, Engine, EngineError, SweepOptions};
use lapse_store::SqliteStore;

mod common;
use common::Rng;

const CONFIG: &str = r#"
[kinds.booking]
presence_timeout = "90s"
max_participants = 3

[[kinds.booking.rules]]
name = "start-late"
on = "start_missed"
after = "5m"
do = "start_delayed"

[[kinds.booking.rules]]
name = "finish"
on = "active_for"
after = "40m"
do = "complete"
warn_before = "5m"

[[kinds.booking.rules]]
name = "forgotten"
on = "pending"
after = "2h"
do = "cancel"

[[kinds.booking.rules]]
name = "purge"
on = "ended"
after = "3h"
do = "purge"

[kinds.task]
presence_timeout = "90s"
parent_kind = "booking"

[[kinds.task.rules]]
name = "follow-parent"
on = "parent_ended"
after = "10m"
do = "expire"

[[kinds.task.rules]]
name = "orphan"
on = "orphaned"
after = "1h"
do = "delete"
"#;

const USERS: [&str; 5] = ["ana", "ben", "cy", "dee", "eli"];

fn t0() -> Timestamp {
    "2026-05-04T08:00:00Z".parse().unwrap()
}

/// Crashes the engine before or after a store call, at random (one call in `rate` each);
/// once crashed, every call fails until a new engine takes over.
struct Faults {
    state: Mutex<(Rng, bool)>,
    rate: u64,
}

impl Faults {
    fn crashed(&self) -> bool {
        self.state.lock().unwrap().1
    }
}

impl Hook for Faults {
    type Ticket = bool;

    fn before(&self, call: Call) -> Result<bool, StoreError> {
        let mut state = self.state.lock().unwrap();
        if state.1 {
            return Err(StoreError::Unavailable("the process is gone".into()));
        }
        match state.0.below(2 * self.rate) {
            0 => {
                state.1 = true;
                Err(StoreError::Unavailable(format!(
                    "crashed before {}",
                    call.name
                )))
            }
            1 => Ok(true),
            _ => Ok(false),
        }
    }

    fn after(&self, _call: Call, crash_after: bool, _outcome: Result<(), &StoreError>) {
        if crash_after {
            self.state.lock().unwrap().1 = true;
        }
    }
}

/// What a compared session is made of: everything but what heartbeats and versions move.
#[derive(Clone, Debug, PartialEq)]
struct Shape {
    kind: String,
    status: Status,
    delayed: bool,
    started_at: Option<Timestamp>,
    ended_at: Option<Timestamp>,
    end_reason: Option<String>,
    parent: Option<SessionId>,
    parent_ended_at: Option<Timestamp>,
    participants: Vec<(UserId, Role, bool)>,
}

fn shape(s: &Session) -> Shape {
    let mut participants: Vec<_> = s
        .participants
        .iter()
        .map(|p| (p.user.clone(), p.role, p.state == ParticipantState::Joined))
        .collect();
    participants.sort_by(|a, b| a.0.cmp(&b.0));
    Shape {
        kind: s.kind.clone(),
        status: s.status,
        delayed: s.delayed,
        started_at: s.started_at,
        ended_at: s.ended_at,
        end_reason: s.end_reason.clone(),
        parent: s.parent.clone(),
        parent_ended_at: s.parent_ended_at,
        participants,
    }
}

/// Sessions by id, with the instants deleted ones went.
#[derive(Clone, Default)]
struct World {
    sessions: BTreeMap<SessionId, Session>,
    deleted: BTreeMap<SessionId, Timestamp>,
}

impl World {
    /// Applies every rule due at `now`, parents before their children, cascades included,
    /// as the engine's sweeps and passive expiry would (with effects at the deadlines).
    fn settle(&mut self, config: &Config, now: Timestamp) {
        loop {
            let mut changed = false;
            let ids: Vec<SessionId> = self.sessions.keys().cloned().collect();
            for id in ids {
                let Some(mut s) = self.sessions.get(&id).cloned() else {
                    continue;
                };
                if s.status.is_open()
                    && let Some(parent) = &s.parent
                    && let Some(at) = self.closed_at(parent)
                {
                    changed |= lifecycle::parent_closed(&mut s, at);
                }
                let mut fx = Effects::default();
                lifecycle::apply_due(&config.kinds[&s.kind], &mut s, now, &mut fx);
                changed |= !fx.is_empty();
                match fx.deleted_at {
                    Some(at) => {
                        // A parent that ended and went in one go closed for its children
                        // when it ended.
                        self.sessions.remove(&id);
                        self.deleted.insert(id, fx.closed_at.unwrap_or(at));
                    }
                    None => {
                        self.sessions.insert(id, s);
                    }
                }
            }
            if !changed {
                return;
            }
        }
    }

    /// When `id` stopped being an open parent: its end, or its deletion.
    fn closed_at(&self, id: &SessionId) -> Option<Timestamp> {
        match self.sessions.get(id) {
            Some(p) if !p.status.is_open() => p.ended_at,
            Some(_) => None,
            None => self.deleted.get(id).copied(),
        }
    }

    fn shapes(&self) -> BTreeMap<SessionId, Shape> {
        self.sessions
            .iter()
            .map(|(id, s)| (id.clone(), shape(s)))
            .collect()
    }
}

/// One step of a run.
#[derive(Clone, Debug)]
enum Op {
    Create {
        id: SessionId,
        kind: &'static str,
        host: UserId,
        parent: Option<SessionId>,
        start_in: Option<Span>,
    },
    Join(SessionId, UserId),
    Leave(SessionId, UserId),
    Start(SessionId),
    End(SessionId),
    Cancel(SessionId),
    Heartbeat(SessionId, UserId),
    Read(SessionId),
    Advance(Span),
    Sweep,
    Flush,
}

fn caller() -> Caller {
    Caller::Admin {
        name: "simulation".into(),
        actor: None,
    }
}

fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}

fn choose(rng: &mut Rng, world: &World, made: &mut u32) -> Op {
    let ids: Vec<SessionId> = world.sessions.keys().cloned().collect();
    let bookings: Vec<SessionId> = world
        .sessions
        .values()
        .filter(|s| s.kind == "booking")
        .map(|s| s.id.clone())
        .collect();
    let someone = |rng: &mut Rng| user(rng.pick(&USERS).unwrap());
    let roll = rng.below(100);
    let Some(id) = rng.pick(&ids).cloned().filter(|_| roll >= 22) else {
        *made += 1;
        let task = rng.below(3) == 0;
        return Op::Create {
            id: SessionId::parse(&format!("s{made}")).unwrap(),
            kind: if task { "task" } else { "booking" },
            host: someone(rng),
            parent: if task && rng.below(4) > 0 {
                rng.pick(&bookings).cloned()
            } else {
                None
            },
            start_in: (!task && rng.below(2) == 0)
                .then(|| Span::from_secs(60 * rng.below(90) as i64)),
        };
    };
    match roll {
        22..=39 => Op::Join(id, someone(rng)),
        40..=46 => Op::Leave(id, someone(rng)),
        47..=56 => Op::Start(id),
        57..=61 => Op::End(id),
        62..=64 => Op::Cancel(id),
        65..=74 => Op::Heartbeat(id, someone(rng)),
        75..=78 => Op::Read(id),
        79..=90 => Op::Advance(Span::from_secs(if rng.below(8) == 0 {
            3600 * (1 + rng.below(4) as i64)
        } else {
            60 * (1 + rng.below(30) as i64)
        })),
        91..=96 => Op::Sweep,
        _ => Op::Flush,
    }
}

/// The model's answer to a session operation: the changed world, or the error's code.
fn model_op(
    config: &Config,
    world: &World,
    op: &Op,
    now: Timestamp,
) -> Result<World, &'static str> {
    // Passive expiry first: the operation meets the session as its rules left it.
    let mut next = world.clone();
    next.settle(config, now);
    let code = |e: OpError| error_code(&EngineError::Op(e));
    let by = By::system();
    let mut fx = Effects::default();
    match op {
        Op::Create {
            id,
            kind,
            host,
            parent,
            start_in,
        } => {
            let parent_info = match parent {
                None => None,
                Some(p) => {
                    let Some(ps) = next.sessions.get(p) else {
                        return Err("not_found");
                    };
                    Some(ParentInfo {
                        kind: ps.kind.clone(),
                        ended_at: if ps.status.is_open() {
                            None
                        } else {
                            ps.ended_at
                        },
                    })
                }
            };
            let start = start_in.map(|d| now + d);
            let input = NewSession {
                title: None,
                metadata: None,
                host: host.clone(),
                parent: parent.clone(),
                scheduled_start: start,
                scheduled_end: start.map(|s| s + Span::from_secs(3600)),
            };
            let mut s = lifecycle::create(
                &config.kinds[*kind],
                id.clone(),
                input,
                parent_info,
                now,
                &by,
                &mut fx,
            )
            .map_err(code)?;
            s.observe(&config.kinds[*kind], now);
            next.sessions.insert(id.clone(), s);
        }
        Op::Join(id, u) | Op::Leave(id, u) | Op::Heartbeat(id, u) => {
            let s = next.sessions.get_mut(id).ok_or("not_found")?;
            let kind = &config.kinds[&s.kind];
            match op {
                Op::Join(..) => {
                    lifecycle::join(kind, s, u, None, Via::Direct, now, &by, &mut fx)
                        .map(|_| ())
                        .map_err(code)?;
                }
                Op::Leave(..) => lifecycle::leave(s, u, now, &by, &mut fx).map_err(code)?,
                _ => lifecycle::check_heartbeat(s, u).map_err(code)?,
            }
        }
        Op::Start(id) | Op::End(id) | Op::Cancel(id) => {
            let s = next.sessions.get_mut(id).ok_or("not_found")?;
            let kind = &config.kinds[&s.kind];
            match op {
                Op::Start(_) => lifecycle::start(kind, s, now, &by, &mut fx),
                Op::End(_) => lifecycle::end(kind, s, now, &by, &mut fx),
                _ => lifecycle::cancel(kind, s, now, &by, &mut fx),
            }
            .map_err(code)?;
        }
        Op::Read(id) => {
            next.sessions.get(id).ok_or("not_found")?;
        }
        Op::Advance(_) | Op::Sweep | Op::Flush => {}
    }
    // A transition that ends a parent moves its children's deadlines.
    next.settle(config, now);
    Ok(next)
}

/// The engine's answer: "ok" or the error's code.
async fn engine_op(engine: &Engine, op: &Op) -> Result<(), EngineError> {
    let c = caller();
    match op {
        Op::Create {
            id,
            kind,
            host,
            parent,
            start_in,
        } => {
            let now = engine.now();
            let start = start_in.map(|d| now + d);
            engine
                .create(
                    &c,
                    CreateRequest {
                        id: Some(id.clone()),
                        kind: kind.to_string(),
                        title: None,
                        metadata: None,
                        host: Some(host.clone()),
                        parent: parent.clone(),
                        scheduled_start: start,
                        scheduled_end: start.map(|s| s + Span::from_secs(3600)),
                    },
                )
                .await
                .map(|_| ())
        }
        Op::Join(id, u) => engine.join(&c, id, u, None, Via::Direct).await.map(|_| ()),
        Op::Leave(id, u) => engine.leave(&c, id, u).await,
        Op::Start(id) => engine.start(&c, id).await.map(|_| ()),
        Op::End(id) => engine.end(&c, id).await.map(|_| ()),
        Op::Cancel(id) => engine.cancel(&c, id).await.map(|_| ()),
        Op::Heartbeat(id, u) => engine.heartbeat(&c, id, u).await,
        Op::Read(id) => engine.get(&c, id).await.map(|_| ()),
        Op::Advance(by) => engine.clock().advance(*by).map(|_| ()).map_err(Into::into),
        Op::Sweep => engine
            .sweep_once(&SweepOptions::default())
            .await
            .map(|_| ()),
        Op::Flush => engine.flush_heartbeats().await.map(|_| ()),
    }
}

/// The store's sessions, as stored.
async fn stored(store: &dyn Store) -> World {
    let sessions = store
        .list(&SessionQuery {
            limit: 100_000,
            ..SessionQuery::default()
        })
        .await
        .expect("the store reads");
    World {
        sessions: sessions.into_iter().map(|s| (s.id.clone(), s)).collect(),
        deleted: BTreeMap::new(),
    }
}

/// The store's sessions with every rule due at `now` applied (deletion times from the model,
/// which the store keeps only in its events).
async fn settled(store: &dyn Store, config: &Config, model: &World, now: Timestamp) -> World {
    let mut w = stored(store).await;
    w.deleted = model.deleted.clone();
    w.settle(config, now);
    w
}

fn differences(a: &BTreeMap<SessionId, Shape>, b: &BTreeMap<SessionId, Shape>) -> String {
    let mut out = Vec::new();
    for id in a
        .keys()
        .chain(b.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        if a.get(id) != b.get(id) {
            out.push(format!(
                "  {id}:\n    store {:?}\n    model {:?}",
                a.get(id),
                b.get(id)
            ));
        }
    }
    out.join("\n")
}

/// Every end and every rule, once, and never early.
async fn check_events(store: &dyn Store) -> Result<usize, String> {
    let mut after = 0;
    let mut ends: HashMap<String, usize> = HashMap::new();
    let mut count = 0;
    loop {
        let page = store
            .events(&EventQuery {
                after,
                limit: 1000,
                ..EventQuery::default()
            })
            .await
            .expect("events read");
        let Some(last) = page.last() else {
            return Ok(count);
        };
        after = last.seq;
        for e in &page {
            count += 1;
            if matches!(
                e.event_type,
                EventType::SessionCompleted
                    | EventType::SessionCancelled
                    | EventType::SessionExpired
                    | EventType::SessionDeleted
                    | EventType::SessionPurged
            ) {
                let n = ends.entry(e.session_id.to_string()).or_default();
                *n += 1;
                if *n > 1 && e.event_type != EventType::SessionPurged {
                    return Err(format!("{} ended twice (event {})", e.session_id, e.seq));
                }
            }
            if e.rule.is_some() && e.at > e.applied_at {
                return Err(format!(
                    "rule {:?} applied to {} at {} before its deadline {}",
                    e.rule, e.session_id, e.applied_at, e.at
                ));
            }
        }
    }
}

struct Run {
    history: Vec<String>,
}

async fn simulate(seed: u64, steps: usize) -> Result<Run, String> {
    let config = Config::parse(CONFIG, "simulation.toml").expect("the simulation's config");
    let config = Arc::new(config);
    let inner: Arc<dyn Store> = {
        let store = SqliteStore::open("sqlite::memory:", None).await.unwrap();
        store.migrate().await.unwrap();
        Arc::new(store)
    };
    let mut rng = Rng(seed);
    let mut lives = 0u64;
    let boot = |now: Timestamp, lives: u64| {
        let faults = Arc::new(Faults {
            state: Mutex::new((Rng(seed ^ lives.wrapping_mul(0x2545_f491_4f6c_dd1d)), false)),
            rate: 60,
        });
        let engine = Engine::new(
            Arc::new(Intercepted::new(inner.clone(), faults.clone())),
            config.clone(),
            Clock::manual(now),
        );
        (engine, faults)
    };
    let (mut engine, mut faults) = boot(t0(), lives);
    let mut model = World::default();
    let mut made = 0;
    let mut history = Vec::new();

    for step in 0..steps {
        let op = choose(&mut rng, &model, &mut made);
        if std::env::var("LAPSE_SIM_TRACE").is_ok() {
            eprintln!("seed {seed} step {step}: {op:?}");
        }
        let now = engine.now();
        let expected = model_op(&config, &model, &op, now);
        let got = engine_op(&engine, &op).await;
        let line = format!(
            "{step} {op:?} -> {}",
            match &got {
                Ok(()) => "ok",
                Err(e) => error_code(e),
            }
        );
        if faults.crashed() {
            // The process is gone: whatever this operation committed stays, nothing it held
            // in memory does. The store must hold the model before it or after it.
            let later = engine.now();
            let store = settled(inner.as_ref(), &config, &model, later).await;
            let mut before = model.clone();
            before.settle(&config, later);
            let after = expected.clone().map(|mut w| {
                w.settle(&config, later);
                w
            });
            model = match after {
                Ok(after) if store.shapes() == after.shapes() => after,
                _ if store.shapes() == before.shapes() => before,
                _ => {
                    return Err(format!(
                        "step {step}: after a crash during {op:?} the store matches neither \
                         the model before it nor after it:\n{}",
                        differences(&store.shapes(), &before.shapes())
                    ));
                }
            };
            history.push(format!("{line} (crashed)"));
            lives += 1;
            (engine, faults) = boot(later, lives);
            continue;
        }
        let expected_code = match &expected {
            Ok(_) => "ok",
            Err(code) => code,
        };
        let got_code = match &got {
            Ok(()) => "ok",
            Err(e) => error_code(e),
        };
        if expected_code != got_code {
            let store = settled(inner.as_ref(), &config, &model, now).await;
            let mut before = model.clone();
            before.settle(&config, now);
            return Err(format!(
                "step {step}: {op:?} at {now}: the engine answered {got_code} ({got:?}), the \
                 model {expected_code}; before it:\n{}\nhistory:\n{}",
                differences(&store.shapes(), &before.shapes()),
                tail(&history)
            ));
        }
        if let Ok(next) = expected {
            model = next;
        }
        history.push(line);
        if step % 20 == 19 {
            let now = engine.now();
            model.settle(&config, now);
            let store = settled(inner.as_ref(), &config, &model, now).await;
            if store.shapes() != model.shapes() {
                return Err(format!(
                    "step {step}: the store and the model differ at {now}:\n{}\nhistory:\n{}",
                    differences(&store.shapes(), &model.shapes()),
                    tail(&history)
                ));
            }
        }
    }

    // The end: a last sweep (and another, should the first be cut short) leaves the store
    // settled by itself, exactly as the model.
    let now = engine.now();
    model.settle(&config, now);
    let mut swept = false;
    for _ in 0..5 {
        if engine.sweep_once(&SweepOptions::default()).await.is_ok() {
            swept = true;
            break;
        }
        lives += 1;
        (engine, faults) = boot(now, lives);
    }
    drop(faults);
    if !swept {
        return Err("the final sweep never completed".into());
    }
    let store = stored(inner.as_ref()).await;
    if store.shapes() != model.shapes() {
        return Err(format!(
            "after the final sweep at {now} the store is not what the model says:\n{}",
            differences(&store.shapes(), &model.shapes())
        ));
    }
    let events = check_events(inner.as_ref()).await?;
    history.push(format!(
        "end at {now}: {} sessions, {} deleted, {events} events, {lives} crashes",
        model.sessions.len(),
        model.deleted.len()
    ));
    Ok(Run { history })
}

/// The last steps of a run, for a failure's report.
fn tail(history: &[String]) -> String {
    history[history.len().saturating_sub(25)..].join("\n")
}

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_agrees_with_the_model_through_crashes() {
    let steps = env("LAPSE_SIM_STEPS").unwrap_or(300) as usize;
    let seeds: Vec<u64> = match env("LAPSE_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (1..=env("LAPSE_SIM_SEEDS").unwrap_or(40)).collect(),
    };
    let mut crashes = 0;
    for &seed in &seeds {
        match simulate(seed, steps).await {
            Ok(run) => {
                if std::env::var("LAPSE_SIM_PRINT").is_ok() {
                    eprintln!("{}", run.history.join("\n"));
                }
                crashes += run
                    .history
                    .iter()
                    .filter(|l| l.ends_with("(crashed)"))
                    .count();
            }
            Err(e) => panic!(
                "LAPSE_SIM_SEED={seed} fails ({steps} steps): {e}\n\
                 replay: LAPSE_SIM_SEED={seed} cargo test -p lapse-engine --test simulation -- --nocapture"
            ),
        }
    }
    eprintln!(
        "simulation: {} seeds x {steps} steps, {crashes} crashes injected, engine and model agree",
        seeds.len()
    );
    assert!(crashes > 0, "the runs crashed somewhere");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_gives_the_same_history() {
    for seed in [7, 8, 9] {
        let run = || async move {
            match simulate(seed, 200).await {
                Ok(run) => run.history,
                Err(e) => panic!("LAPSE_SIM_SEED={seed} fails (200 steps): {e}"),
            }
        };
        let (first, again) = (run().await, run().await);
        assert_eq!(first, again, "LAPSE_SIM_SEED={seed}");
    }
}
