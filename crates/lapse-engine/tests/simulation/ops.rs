//! The simulation's steps: one chosen at random from the world as the model has it, and the
//! same step sent to the engine.

use lapse_core::lifecycle::Via;
use lapse_core::{SessionId, Span, UserId};
use lapse_engine::ops::CreateRequest;
use lapse_engine::{Caller, Engine, EngineError, SweepOptions};

use crate::common::Rng;
use crate::model::World;

const USERS: [&str; 5] = ["ana", "ben", "cy", "dee", "eli"];

/// One step of a run.
#[derive(Clone, Debug)]
pub(crate) enum Op {
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

pub(crate) fn caller() -> Caller {
    Caller::Admin {
        name: "simulation".into(),
        actor: None,
    }
}

pub(crate) fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}

pub(crate) fn choose(rng: &mut Rng, world: &World, made: &mut u32) -> Op {
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

/// The engine's answer: "ok" or the error's code.
pub(crate) async fn engine_op(engine: &Engine, op: &Op) -> Result<(), EngineError> {
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
