//! Figures measured through the engine in this process: the cost of each operation at two
//! population sizes, in rooms of two sizes, and sweeps of a burst of due sessions.

use lapse_core::lifecycle::Via;
use lapse_core::store::Beat;
use lapse_core::{SessionId, Span, UserId};
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

fn user(name: String) -> UserId {
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
/// more (`HEARTBEATS_PER_OP` to each other operation), so it lasts long enough to measure.
const HEARTBEATS_PER_OP: usize = 20;

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

/// Big rooms a join round spreads its joins over, so each stays near 1,000 participants.
const BIG_ROOMS: usize = 5;

/// A room of 1,000 participants vs rooms of 2: joins and heartbeats.
pub async fn room_size(w: &World, s: &Sizes) -> Vec<Row> {
    let big_room = w.fresh("lecture");
    w.import("room", &format!("{big_room}-"), 1, 999, Span::ZERO)
        .await;
    let big = SessionId::parse(&format!("{big_room}-0-0")).expect("a valid id");
    let smalls = w.fresh("pair");
    w.import("room", &format!("{smalls}-"), s.ops, 1, Span::ZERO)
        .await;
    let small = |i: usize| SessionId::parse(&format!("{smalls}-0-{i}")).expect("a valid id");

    // Each round joins fresh rooms of 1,000 (held in memory by a first join before the
    // clock starts), so every round measures rooms of the same size.
    let join_big = || async {
        let halls = w.fresh("halls");
        w.import("room", &format!("{halls}-"), BIG_ROOMS, 999, Span::ZERO)
            .await;
        let hall = |i: usize| SessionId::parse(&format!("{halls}-0-{i}")).expect("a valid id");
        for i in 0..BIG_ROOMS {
            w.engine
                .join(
                    &admin(),
                    &hall(i),
                    &user(format!("{halls}-warm")),
                    None,
                    Via::Direct,
                )
                .await
                .expect("join");
        }
        let salt = w.fresh("jb");
        w.write_rate(s.ops, |i| {
            let u = user(format!("{salt}-{i}"));
            let room = hall(i % BIG_ROOMS);
            async move {
                w.engine
                    .join(&admin(), &room, &u, None, Via::Direct)
                    .await
                    .expect("join");
            }
        })
        .await
    };
    let join_small = || async {
        let salt = w.fresh("js");
        w.write_rate(s.ops, |i| {
            let u = user(format!("{salt}-{i}"));
            let room = small(i);
            async move {
                w.engine
                    .join(&admin(), &room, &u, None, Via::Direct)
                    .await
                    .expect("join");
            }
        })
        .await
    };
    let beat_big = || {
        rate(s.ops, |i| {
            let u = user(format!("m0-{}", i % 999));
            let big = big.clone();
            async move {
                w.engine
                    .heartbeat(&admin(), &big, &u)
                    .await
                    .expect("heartbeat");
            }
        })
    };
    let beat_small = || {
        rate(s.ops, |i| {
            let u = user(format!("m{i}-0"));
            let room = small(i);
            async move {
                w.engine
                    .heartbeat(&admin(), &room, &u)
                    .await
                    .expect("heartbeat");
            }
        })
    };
    let joins = interleave(s.rounds, join_big, join_small).await;
    let beats = interleave(s.rounds, beat_big, beat_small).await;
    let flat = |x: f64| x <= 1.3;
    vec![
        report::time_ratio(
            "join, room of 1,000 vs room of 2",
            "≤ 1.3× (time)",
            &joins,
            ["room of 1,000", "rooms of 2"],
            "ops/s",
            flat,
        ),
        report::time_ratio(
            "heartbeat, room of 1,000 vs room of 2",
            "≤ 1.3× (time)",
            &beats,
            ["room of 1,000", "rooms of 2"],
            "ops/s",
            flat,
        ),
    ]
}

/// Flushes of `s.ops` coalesced beats vs a write per beat, over `s.writes` beats a round on
/// each side (each beat a room of its own in the round).
///
/// A round is timed as [`World::timed`]: it ends by copying the log, so its writes pay for
/// the copies they cause. A copy costs about 3 ms whatever it copies, plus a few µs a page,
/// and in service SQLite pays it once every 1,000 log pages. One flush of 500 beats writes
/// about 230 log pages: a round of one flush would pay the whole fixed part for a quarter of
/// what causes it, while 500 single writes cross the 1,000 pages by themselves. Several
/// flushes a round write enough log that both sides pay for copies in proportion.
pub async fn flush_batching(w: &World, s: &Sizes) -> Row {
    let (per_flush, n) = (s.ops, s.writes.max(s.ops));
    let beats = |salt: usize| -> Vec<Beat> {
        (0..n)
            .map(|i| Beat {
                session: w.room(i * 31 + salt),
                user: w.host(i * 31 + salt),
                at: w.engine.now(),
            })
            .collect()
    };
    let batched = || async {
        let b = beats(1);
        let took = w
            .timed(async {
                for flush in b.chunks(per_flush) {
                    w.store.flush_heartbeats(flush).await.expect("flush");
                }
            })
            .await;
        n as f64 / took.as_secs_f64()
    };
    let single = || async {
        let b = beats(2);
        let took = w
            .timed(async {
                for beat in b {
                    w.store.flush_heartbeats(&[beat]).await.expect("flush");
                }
            })
            .await;
        n as f64 / took.as_secs_f64()
    };
    let p = interleave(s.rounds, batched, single).await;
    let flushes = format!("flushes of {per_flush}");
    report::ratio(
        "batched heartbeat flush vs one write per heartbeat",
        "≥ 6×",
        &p,
        [&flushes, "a write each"],
        "beats/s",
        |x| x >= 6.0,
    )
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
