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
//! Here: the run and its checks, and the crashes. `model.rs`: the reference model and what is
//! compared; `ops.rs`: the steps, chosen at random and sent to the engine.
//!
//! Everything follows from the seed: the same seed gives the same history, and a failing seed
//! prints itself. `cargo test -p lapse-engine --test simulation` runs a few dozen seeds; a
//! longer run: `LAPSE_SIM_SEEDS=2000 cargo test --release -p lapse-engine --test simulation`;
//! one seed again: `LAPSE_SIM_SEED=N ...`; `LAPSE_SIM_TRACE=1` prints each step as it runs,
//! `LAPSE_SIM_PRINT=1` each run's history.

mod model;
mod ops;

use std::sync::{Arc, Mutex};

use lapse_core::intercept::{Call, Hook, Intercepted};
use lapse_core::{Config, Store, StoreError, Timestamp};
use lapse_engine::ops::error_code;
use lapse_engine::{Clock, Engine, SweepOptions};
use lapse_store::SqliteStore;

#[path = "../common/mod.rs"]
mod common;
use common::Rng;
use model::{World, check_events, differences, model_op, settled, stored};
use ops::{choose, engine_op};

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
