//! Figures measured through the engine in this process: the cost of each operation at two
//! population sizes, sweeps of a burst of due sessions, and retention catching up with the
//! history they left. (Rooms of two sizes and the batched flush: `rooms`.)

use lapse_core::lifecycle::Via;
use lapse_core::store::EventQuery;
use lapse_core::{Span, UserId};
use lapse_engine::SweepOptions;
use lapse_engine::ops::CreateRequest;

use crate::measure::{interleave, rate};
use crate::report::{self, Row};
use crate::world::{World, admin};

/// Operations timed per round.
pub struct Sizes {
    pub rounds: usize,
    pub ops: usize,
    /// Single-session writes a round at each population (about half a second's worth).
    pub writes: usize,
    pub burst: usize,
}

fn create(kind: &str, host: UserId) -> CreateRequest {
    CreateRequest {
        id: None,
        kind: kind.into(),
        title: None,
        metadata: None,
        host: Some(host),
        parent: None,
        scheduled_start: None,
        scheduled_end: None,
    }
}

pub fn user(name: String) -> UserId {
    UserId::parse(&name).expect("a valid user")
}

async fn creates(w: &World, kind: &str, n: usize) -> f64 {
    w.write_rate(n, |_| async {
        let host = user(w.fresh("ch"));
        w.engine
            .create(&admin(), create(kind, host))
            .await
            .expect("create");
    })
    .await
}

async fn joins(w: &World, n: usize) -> f64 {
    let salt = w.fresh("j");
    w.write_rate(n, |i| join_fresh(w, &salt, i)).await
}

/// The `i`th join of a round named `salt`: a new user into a room spread over the population.
async fn join_fresh(w: &World, salt: &str, i: usize) {
    let room = w.room(i * 7919 + salt.len());
    let u = user(format!("{salt}-{i}"));
    w.engine
        .join(&admin(), &room, &u, None, Via::Direct)
        .await
        .expect("join");
}

/// Requests in flight at once in the group-commit figure.
const IN_FLIGHT: usize = 32;

/// As [`joins`], but [`IN_FLIGHT`] at a time through the group committer, as `lapse serve`
/// writes concurrent requests' changes on SQLite: many to a transaction.
async fn concurrent_joins(w: &World, n: usize) -> f64 {
    use futures::StreamExt as _;
    let salt = w.fresh("cj");
    let took = w
        .timed(async {
            futures::stream::iter((0..n).map(|i| join_fresh(w, &salt, i)))
                .buffer_unordered(IN_FLIGHT)
                .collect::<()>()
                .await;
        })
        .await;
    n as f64 / took.as_secs_f64()
}

/// Heartbeats answered from memory are so cheap that a round of them is timed over many
/// more (`HEARTBEATS_PER_OP` to each other operation), so it lasts long enough to measure:
/// about a tenth of a second. At 20 (10,000 beats, about 14 ms a round), one scheduler
/// hiccup moved a round by half, and the 1M-vs-10k median crossed its line both ways.
pub const HEARTBEATS_PER_OP: usize = 200;

async fn heartbeats(w: &World, n: usize) -> f64 {
    rate(n * HEARTBEATS_PER_OP, |i| async move {
        let n = (i % n) * 104_729;
        w.engine
            .heartbeat(&admin(), &w.room(n), &w.host(n))
            .await
            .expect("heartbeat");
    })
    .await
}

/// Starts `n` fresh rooms, then times ending them.
async fn ends(w: &World, n: usize) -> f64 {
    let mut ids = Vec::new();
    for _ in 0..n {
        let s = w
            .engine
            .create(&admin(), create("room", user(w.fresh("eh"))))
            .await
            .expect("create");
        w.engine.start(&admin(), &s.id).await.expect("start");
        ids.push(s.id);
    }
    w.write_rate(n, |i| {
        let id = ids[i].clone();
        async move {
            w.engine.end(&admin(), &id).await.expect("end");
        }
    })
    .await
}

/// Imports a burst of sessions already due, sweeps, and returns transitions per second.
async fn burst(w: &World, n: usize) -> f64 {
    let prefix = w.fresh("burst");
    w.import("burst", &format!("{prefix}-"), n, 0, Span::from_secs(21))
        .await;
    let mut applied = 0;
    let took = w
        .timed(async {
            let report = w
                .engine
                .sweep_once(&SweepOptions::default())
                .await
                .expect("sweep");
            applied = report.applied.len();
        })
        .await;
    assert_eq!(applied, n, "every burst session expires");
    n as f64 / took.as_secs_f64()
}

/// A sweep's cost at a big population vs a small one, and transitions per second.
pub async fn sweep_costs(big: &World, small: &World, s: &Sizes) -> Vec<Row> {
    let live = |w: &World| human(w.live);
    let name = |op: &str| format!("{op} at {} live vs at {} live", live(big), live(small));
    let sweep = format!("sweep of {} due", human(s.burst));
    let flat = |x: f64| x <= 1.3;
    let sides = [live(big), live(small)];
    let sides = [sides[0].as_str(), sides[1].as_str()];
    let mut rows = Vec::new();

    let p = interleave(s.rounds, || burst(big, s.burst), || burst(small, s.burst)).await;
    rows.push(report::time_ratio(
        &name(&sweep),
        "≤ 1.3× (time)",
        &p,
        sides,
        "transitions/s",
        flat,
    ));
    let all: Vec<f64> = p.a.iter().chain(&p.b).copied().collect();
    rows.push(report::value(
        "transitions applied by a sweep, with events and webhook rows (SQLite)",
        "≥ 20k/s",
        &all,
        "/s",
        |v| v >= 20_000.0,
    ));
    rows
}

/// Cost at a big population vs a small one: the A/B pairs for each operation.
pub async fn flat_costs(big: &World, small: &World, s: &Sizes) -> Vec<Row> {
    let live = |w: &World| human(w.live);
    let name = |op: &str| format!("{op} at {} live vs at {} live", live(big), live(small));
    let flat = |x: f64| x <= 1.3;
    let sides = [live(big), live(small)];
    let sides = [sides[0].as_str(), sides[1].as_str()];
    let mut rows = Vec::new();
    // Heartbeats are measured in steady state: the rooms beaten are held in memory, as a room
    // that keeps beating is (its first beat reads it like any other operation).
    heartbeats(big, s.ops).await;
    heartbeats(small, s.ops).await;
    for (op, pair) in [
        (
            "create",
            interleave(
                s.rounds,
                || creates(big, "room", s.writes),
                || creates(small, "room", s.writes),
            )
            .await,
        ),
        (
            "create with max_open_per_host",
            interleave(
                s.rounds,
                || creates(big, "repair", s.writes),
                || creates(small, "repair", s.writes),
            )
            .await,
        ),
        (
            "join",
            interleave(s.rounds, || joins(big, s.writes), || joins(small, s.writes)).await,
        ),
        (
            &*format!("join, {IN_FLIGHT} requests at a time,"),
            group_committed(&[big, small], async {
                interleave(
                    s.rounds,
                    || concurrent_joins(big, s.writes),
                    || concurrent_joins(small, s.writes),
                )
                .await
            })
            .await,
        ),
        (
            "end",
            interleave(s.rounds, || ends(big, s.writes), || ends(small, s.writes)).await,
        ),
        (
            "heartbeat",
            interleave(
                s.rounds,
                || heartbeats(big, s.ops),
                || heartbeats(small, s.ops),
            )
            .await,
        ),
    ] {
        rows.push(report::time_ratio(
            &name(op),
            "≤ 1.3× (time)",
            &pair,
            sides,
            "ops/s",
            flat,
        ));
    }
    rows
}

/// `work`, with the group committer of each world running (it is not otherwise: the other
/// figures write one change at a time).
async fn group_committed<T>(worlds: &[&World], work: impl Future<Output = T>) -> T {
    let stop = tokio_util::sync::CancellationToken::new();
    let committers: Vec<_> = worlds
        .iter()
        .map(|w| {
            let (engine, stop) = (w.engine.clone(), stop.clone());
            tokio::spawn(async move { engine.run_committer(stop).await })
        })
        .collect();
    // Each committer takes its place before the first change is sent.
    tokio::task::yield_now().await;
    let out = work.await;
    stop.cancel();
    for c in committers {
        c.await.expect("the committer stops");
    }
    out
}

/// `1000000` as `1M`, `10000` as `10k`.
pub fn human(n: usize) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000 && n.is_multiple_of(1_000) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

/// Retention catching up: the history the figures before it left in `w` (the joins' and
/// ends' events, the bursts' swept sessions with their webhook rows, never delivered here)
/// put past its period, then pruned in one run. Shown: the pace at which a run deletes, with
/// the events it keeps for their pending deliveries stepped over. `w`'s clock moves on by the
/// period, so this figure comes last on `w`.
pub async fn retention(w: &World) -> Row {
    let period = w.engine.config().retention.events;
    w.engine
        .clock()
        .advance(Span::from_millis(period.millis() + 86_400_000))
        .expect("a manual clock");
    let mut pruned = 0;
    let took = w
        .timed(async {
            pruned = w.engine.prune_once().await.expect("prune");
        })
        .await;
    // What stayed: events a pending delivery still needs.
    let mut query = EventQuery {
        limit: 1_000,
        ..Default::default()
    };
    let mut kept = 0;
    loop {
        let page = w.store.events(&query).await.expect("events");
        let Some(last) = page.last() else { break };
        kept += page.len();
        query.after = last.seq;
    }
    let per_second = pruned as f64 / took.as_secs_f64();
    Row {
        verdict: report::Verdict::Shown,
        detail: format!(
            "{pruned} rows (events, finished deliveries) in {:.2} s; {kept} events kept for \
             their pending deliveries, stepped over",
            took.as_secs_f64()
        ),
        ..report::value(
            &format!(
                "retention, one run over the history of the figures above ({} live, SQLite)",
                human(w.live)
            ),
            "none: how fast history past its period goes, and that none is left behind",
            &[per_second],
            "rows/s",
            |_| true,
        )
    }
}
