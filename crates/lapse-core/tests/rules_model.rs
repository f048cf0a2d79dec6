//! Property tests of the rule evaluator: random operations and clock moves, checked against a
//! small reference model written here from the spec's tables, and against itself with the
//! sweeps at different moments (results must not depend on sweep timing).

use lapse_core::lifecycle::{self, By, Effects, NewSession};
use lapse_core::{Config, Kind, Session, SessionId, Span, Status, Timestamp, UserId};
use proptest::prelude::*;

const KIND: &str = r#"
[kinds.room]
[[kinds.room.rules]]
name = "delete-unused"
on = "unused"
after = "30m"
do = "delete"
[[kinds.room.rules]]
name = "end-long"
on = "active_for"
after = "6h"
do = "complete"
[[kinds.room.rules]]
name = "expire-idle"
on = "idle"
after = "2h"
do = "expire"
"#;

fn kind() -> Kind {
    Config::parse(KIND, "model.toml").unwrap().kinds["room"].clone()
}

#[derive(Clone, Debug)]
enum Op {
    Advance(i64),
    Start,
    Activity,
    End,
    Sweep,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1i64..400).prop_map(Op::Advance),
        1 => Just(Op::Start),
        2 => Just(Op::Activity),
        1 => Just(Op::End),
        2 => Just(Op::Sweep),
    ]
}

fn minutes(m: i64) -> Span {
    Span::from_secs(m * 60)
}

/// The reference: the spec's triggers for this kind, written out by hand.
#[derive(Clone, Debug, PartialEq)]
struct Model {
    status: Option<Status>, // None: deleted
    created: i64,
    started: Option<i64>,
    ended: Option<i64>,
    last_activity: i64,
    used: bool,
}

impl Model {
    /// A deleted session: nothing of it is left to compare.
    fn gone() -> Model {
        Model {
            status: None,
            created: 0,
            started: None,
            ended: None,
            last_activity: 0,
            used: false,
        }
    }

    fn settle(&mut self, now: i64) {
        loop {
            let Some(status) = self.status else { return };
            let mut due: Vec<(i64, usize)> = Vec::new();
            if status == Status::Pending && !self.used {
                due.push((self.created + 30, 0));
            }
            if status == Status::Active {
                due.push((self.started.unwrap() + 360, 1));
            }
            if status.is_open() {
                due.push((self.last_activity + 120, 2));
            }
            let Some(&(at, rule)) = due.iter().min() else {
                return;
            };
            if at > now {
                return;
            }
            match rule {
                0 => self.status = None,
                1 => {
                    self.status = Some(Status::Completed);
                    self.ended = Some(at);
                }
                _ => {
                    self.status = Some(Status::Expired);
                    self.ended = Some(at);
                }
            }
        }
    }

    fn apply(&mut self, op: &Op, now: i64) {
        self.settle(now);
        match (op, self.status) {
            (Op::Start, Some(Status::Pending)) => {
                self.status = Some(Status::Active);
                self.started = Some(now);
                self.used = true;
                self.last_activity = now;
            }
            (Op::Activity, Some(s)) if s.is_open() => {
                self.used = true;
                self.last_activity = now;
            }
            (Op::End, Some(Status::Active)) => {
                self.status = Some(Status::Completed);
                self.ended = Some(now);
            }
            _ => {}
        }
    }
}

/// The real thing: lifecycle functions with passive expiry before each operation.
struct Real {
    kind: Kind,
    session: Option<Session>,
}

impl Real {
    fn new(kind: Kind, now: Timestamp) -> Real {
        let input = NewSession {
            title: None,
            metadata: None,
            host: UserId::parse("host").unwrap(),
            parent: None,
            scheduled_start: None,
            scheduled_end: None,
        };
        let id = SessionId::parse("s").unwrap();
        let mut fx = Effects::default();
        let session =
            lifecycle::create(&kind, id, input, None, now, &By::system(), &mut fx).unwrap();
        Real {
            kind,
            session: Some(session),
        }
    }

    fn settle(&mut self, now: Timestamp) {
        self.settle_told(now);
    }

    /// Applies what is due at `now`; the events it wrote, with their stamps.
    fn settle_told(&mut self, now: Timestamp) -> Vec<(&'static str, Timestamp)> {
        let Some(s) = &mut self.session else {
            return Vec::new();
        };
        let mut fx = Effects::default();
        lifecycle::apply_due(&self.kind, s, now, &mut fx);
        if fx.deleted_at.is_some() {
            self.session = None;
        }
        fx.events
            .iter()
            .map(|e| (e.event_type.as_str(), e.at))
            .collect()
    }

    fn apply(&mut self, op: &Op, now: Timestamp) {
        self.settle(now);
        let Some(s) = &mut self.session else { return };
        let host = UserId::parse("host").unwrap();
        let by = By::user(&host);
        let mut fx = Effects::default();
        // Refusals are part of the model: they must leave the session as it was.
        let before = s.clone();
        let result = match op {
            Op::Start => lifecycle::start(&self.kind, s, now, &by, &mut fx),
            Op::Activity => lifecycle::activity(s, Some(&host), "notes", 1, now),
            Op::End => lifecycle::end(&self.kind, s, now, &by, &mut fx),
            Op::Advance(_) | Op::Sweep => Ok(()),
        };
        if result.is_err() {
            assert_eq!(s, &before, "a refused operation changed the session");
        }
    }

    fn view(&self, base: Timestamp) -> Model {
        let mins = |t: Timestamp| (t.millis() - base.millis()) / 60_000;
        match &self.session {
            None => Model::gone(),
            Some(s) => Model {
                status: Some(s.status),
                created: mins(s.created_at),
                started: s.started_at.map(mins),
                ended: s.ended_at.map(mins),
                last_activity: mins(s.last_activity_at),
                used: s.used,
            },
        }
    }
}

fn normalize(mut m: Model) -> Model {
    if m.status.is_none() {
        m = Model::gone();
    }
    m
}

fn run(ops: &[Op], sweeps: bool) -> Model {
    let base: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let mut now = base;
    let mut real = Real::new(kind(), now);
    for op in ops {
        match op {
            Op::Advance(m) => now = now + minutes(*m),
            Op::Sweep if sweeps => real.settle(now),
            _ => real.apply(op, now),
        }
    }
    real.settle(now);
    normalize(real.view(base))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn the_evaluator_agrees_with_the_reference_model(ops in prop::collection::vec(op(), 1..40)) {
        let base: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut now = 0i64;
        let mut model = Model { status: Some(Status::Pending), created: 0, started: None, ended: None, last_activity: 0, used: false };
        let mut real = Real::new(kind(), base);
        for op in &ops {
            match op {
                Op::Advance(m) => now += m,
                Op::Sweep => {
                    model.settle(now);
                    real.settle(base + minutes(now));
                }
                _ => {
                    model.apply(op, now);
                    real.apply(op, base + minutes(now));
                }
            }
            prop_assert_eq!(normalize(real.view(base)), normalize(model.clone()), "after {:?} at minute {}", op, now);
        }
    }

    #[test]
    fn results_do_not_depend_on_when_sweeps_run(ops in prop::collection::vec(op(), 1..40)) {
        prop_assert_eq!(run(&ops, true), run(&ops, false));
    }
}

/// Idle for 10 minutes expires; active for 11 warns 59 s before it completes, so the warning
/// comes a second after an idle session expired.
const WARNED: &str = r#"
[kinds.room]
presence_timeout = "1h"
[[kinds.room.rules]]
name = "expire-idle"
on = "idle"
after = "10m"
do = "expire"
[[kinds.room.rules]]
name = "end-long"
on = "active_for"
after = "11m"
do = "complete"
warn_before = "59s"
"#;

/// An idle rule waits out its grace past its deadline (the engine gives it 2 s); a warning
/// stamped within that grace is not told first because a sweep came in between.
#[test]
fn nothing_stamped_after_an_idle_rule_in_its_grace_goes_first() {
    let mut kind = Config::parse(WARNED, "warned.toml").unwrap().kinds["room"].clone();
    kind.idle_grace = Span::from_secs(2);
    let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let expired = t0 + Span::from_secs(600);
    let (in_grace, after) = (
        expired + Span::from_millis(1_500),
        expired + Span::from_secs(3),
    );
    let started = || {
        let mut real = Real::new(kind.clone(), t0);
        real.apply(&Op::Start, t0);
        real
    };

    let mut swept_in_grace = started();
    let session = swept_in_grace.session.as_ref().unwrap();
    assert_eq!(
        lapse_core::agenda::wake_at(&kind, session, t0),
        Some(expired + kind.idle_grace),
        "the sweeper wakes when the idle rule is ready, not for the warning behind it"
    );
    let mut twice = swept_in_grace.settle_told(in_grace);
    twice.extend(swept_in_grace.settle_told(after));
    let once = started().settle_told(after);

    assert_eq!(twice, once, "the same whenever the sweeps came");
    assert_eq!(once, vec![("session.expired", expired)]);
}
