//! The preview's promise (SPEC §10), over random rules and sessions: at one instant, the
//! sessions a preview of new rules says fire at once are exactly those the sweep right after
//! the reload applies (session, rule, deadline), and nothing else.
//!
//! Each seed draws a kind's rules (the rules in force and a candidate, each rule present or
//! not with a random delay), then sessions created, started and touched at random moments.
//! A sweep under the rules in force clears what was due already; then preview, reload, sweep.
//! `LAPSE_PROMISE_SEEDS=N` runs more seeds; a failure prints its seed.

use std::collections::BTreeSet;
use std::sync::Arc;

use lapse_core::{Config, SessionId, Span, Timestamp, UserId};
use lapse_engine::ops::CreateRequest;
use lapse_engine::{Caller, Clock, Engine, SweepOptions};
use lapse_store::SqliteStore;

mod common;
use common::Rng;

/// The rules a kind may have: name, trigger, action.
const PALETTE: [(&str, &str, &str); 4] = [
    ("stale", "pending", "cancel"),
    ("quiet", "idle", "expire"),
    ("long", "active_for", "complete"),
    ("unused", "unused", "delete"),
];

/// A random set of the palette's rules, each with a delay of 1 to 600 minutes.
fn rules(rng: &mut Rng) -> String {
    let mut text = String::from("[kinds.room]\n");
    for (name, on, action) in PALETTE {
        if rng.chance(60) {
            let after = 1 + rng.below(600);
            text.push_str(&format!(
                "[[kinds.room.rules]]\nname = \"{name}\"\non = \"{on}\"\nafter = \"{after}m\"\n\
                 do = \"{action}\"\n"
            ));
        }
    }
    text
}

fn admin() -> Caller {
    Caller::Admin {
        name: "test".into(),
        actor: None,
    }
}

fn t0() -> Timestamp {
    "2026-06-01T00:00:00Z".parse().unwrap()
}

/// What happens to the sessions, in time order: (minute, session, what).
fn history(rng: &mut Rng) -> Vec<(u64, usize, &'static str)> {
    let mut steps = Vec::new();
    for n in 0..24 {
        let created = rng.below(900);
        steps.push((created, n, "create"));
        if rng.chance(50) {
            steps.push((created + rng.below(300), n, "start"));
        }
        if rng.chance(50) {
            steps.push((created + rng.below(600), n, "touch"));
        }
    }
    steps.sort();
    steps
}

/// Runs one seed; returns how many sessions the preview said fire at once.
async fn one(seed: u64) -> usize {
    let mut rng = Rng(seed);
    let current = rules(&mut rng);
    let candidate = rules(&mut rng);
    let store = SqliteStore::open("sqlite::memory:", None).await.unwrap();
    lapse_core::Store::migrate(&store).await.unwrap();
    let config = Config::parse(&current, "current.toml").unwrap();
    let engine = Engine::new(Arc::new(store), Arc::new(config), Clock::manual(t0()));
    engine.put_rules_in_force().await.unwrap();

    let id = |n: usize| SessionId::parse(&format!("s{n}")).unwrap();
    let host = UserId::parse("host").unwrap();
    for (minute, n, what) in history(&mut rng) {
        let at = t0() + Span::from_secs(minute as i64 * 60);
        if at > engine.now() {
            engine.clock().set(at).unwrap();
        }
        // A rule may have ended the session already: then the step is refused, as a
        // client's would be.
        let _ = match what {
            "create" => engine
                .create(
                    &admin(),
                    CreateRequest {
                        id: Some(id(n)),
                        kind: "room".into(),
                        title: None,
                        metadata: None,
                        host: Some(host.clone()),
                        parent: None,
                        scheduled_start: None,
                        scheduled_end: None,
                    },
                )
                .await
                .map(|_| ()),
            "start" => engine.start(&admin(), &id(n)).await.map(|_| ()),
            _ => engine.activity(&admin(), &id(n), None, "edits", 1).await,
        };
    }
    let later = Span::from_secs(rng.below(600) as i64 * 60);
    engine.clock().advance(later).unwrap();
    engine.sweep_once(&SweepOptions::default()).await.unwrap();

    let candidate_config = Config::parse(&candidate, "candidate.toml").unwrap();
    let preview = engine
        .preview(&admin(), &candidate_config, None, None)
        .await
        .unwrap();
    let promised: BTreeSet<(String, String, Timestamp)> = preview
        .changes
        .iter()
        .flat_map(|c| &c.fire_now)
        .map(|f| (f.session.to_string(), f.new.rule.clone(), f.new.at))
        .collect();
    assert_eq!(promised.len() as u64, preview.fire_now_total);

    engine
        .reload(&admin(), &candidate_config, true)
        .await
        .unwrap();
    let report = engine.sweep_once(&SweepOptions::default()).await.unwrap();
    let mut seen = BTreeSet::new();
    let applied: BTreeSet<(String, String, Timestamp)> = report
        .applied
        .iter()
        .filter(|a| seen.insert(a.session.clone()))
        .map(|a| (a.session.to_string(), a.rule.clone(), a.due_at))
        .collect();
    assert_eq!(
        promised, applied,
        "seed {seed}: the preview's fire_now, then what the sweep applied\n\
         in force:\n{current}\ncandidate:\n{candidate}"
    );
    promised.len()
}

#[tokio::test]
async fn a_sweep_after_a_reload_applies_exactly_what_the_preview_promised() {
    let seeds: u64 = std::env::var("LAPSE_PROMISE_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(60);
    let mut fired = 0;
    for seed in 0..seeds {
        fired += one(seed).await;
    }
    // The seeds exercise the promise, not only empty previews.
    assert!(
        fired as u64 > seeds,
        "{fired} sessions fired over {seeds} seeds"
    );
}
