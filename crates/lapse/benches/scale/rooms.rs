//! Figures of a room's size and of its beats, measured through the engine in this process:
//! joins and heartbeats in a room of 1,000 against rooms of 2, and the batched heartbeat
//! flush against a write for each beat.

use lapse_core::lifecycle::Via;
use lapse_core::store::Beat;
use lapse_core::{SessionId, Span};

use crate::engine::{Sizes, user};
use crate::measure::{interleave, rate};
use crate::report::{self, Row};
use crate::world::{World, admin};

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
        join_round(w, s.ops, "jb", |i| hall(i % BIG_ROOMS)).await
    };
    let join_small = || join_round(w, s.ops, "js", small);
    // As many beats a round as the flat figure's (`HEARTBEATS_PER_OP`), for the same reason.
    let per_round = s.ops * crate::engine::HEARTBEATS_PER_OP;
    let beat_big = || {
        rate(per_round, |i| {
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
        rate(per_round, |i| {
            let u = user(format!("m{}-0", i % s.ops));
            let room = small(i % s.ops);
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

/// A round of `ops` joins, timed as writes: each a new user (named after a fresh `salt`)
/// into the room `room` picks for it.
async fn join_round(w: &World, ops: usize, salt: &str, room: impl Fn(usize) -> SessionId) -> f64 {
    let salt = w.fresh(salt);
    w.write_rate(ops, |i| {
        let u = user(format!("{salt}-{i}"));
        let room = room(i);
        async move {
            w.engine
                .join(&admin(), &room, &u, None, Via::Direct)
                .await
                .expect("join");
        }
    })
    .await
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
