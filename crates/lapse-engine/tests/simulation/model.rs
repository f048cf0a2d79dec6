//! The reference model: the pure lifecycle of `lapse_core` applied to a map of sessions, and
//! what of a session the simulation compares with the store.

use std::collections::{BTreeMap, HashMap};

use lapse_core::lifecycle::{self, By, Effects, NewSession, OpError, ParentInfo, Via};
use lapse_core::store::{EventQuery, SessionQuery};
use lapse_core::{
    Config, EventType, ParticipantState, Role, Session, SessionId, Span, Status, Store, Timestamp,
    UserId,
};
use lapse_engine::EngineError;
use lapse_engine::ops::error_code;

use crate::ops::Op;

/// What a compared session is made of: everything but what heartbeats and versions move.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Shape {
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

pub(crate) fn shape(s: &Session) -> Shape {
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
pub(crate) struct World {
    pub(crate) sessions: BTreeMap<SessionId, Session>,
    pub(crate) deleted: BTreeMap<SessionId, Timestamp>,
}

impl World {
    /// Applies every rule due at `now`, parents before their children, cascades included,
    /// as the engine's sweeps and passive expiry would (with effects at the deadlines).
    pub(crate) fn settle(&mut self, config: &Config, now: Timestamp) {
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

    pub(crate) fn shapes(&self) -> BTreeMap<SessionId, Shape> {
        self.sessions
            .iter()
            .map(|(id, s)| (id.clone(), shape(s)))
            .collect()
    }
}

/// The model's answer to a session operation: the changed world, or the error's code.
pub(crate) fn model_op(
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

/// The store's sessions, as stored.
pub(crate) async fn stored(store: &dyn Store) -> World {
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
pub(crate) async fn settled(
    store: &dyn Store,
    config: &Config,
    model: &World,
    now: Timestamp,
) -> World {
    let mut w = stored(store).await;
    w.deleted = model.deleted.clone();
    w.settle(config, now);
    w
}

pub(crate) fn differences(
    a: &BTreeMap<SessionId, Shape>,
    b: &BTreeMap<SessionId, Shape>,
) -> String {
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
pub(crate) async fn check_events(store: &dyn Store) -> Result<usize, String> {
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
