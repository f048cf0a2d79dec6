//! Event streams fan out from memory. One reader per instance tails the events table once per
//! commit (this instance's, or another's announced by the store) and hands each new event to
//! the streams whose filters match, through a small bounded queue per stream. So the cost of
//! an event does not grow with the number of open streams, and idle streams cost no queries.
//!
//! A stream joins in two steps, without gap or duplicate: it subscribes first (from then on
//! the reader hands it every event past the reader's position), then catches up from the
//! table up to the present; events that arrive both ways are told apart by `seq`. A stream
//! that falls [`QUEUE`] events behind is dropped from the fan-out and catches up from the
//! table again, as does one resuming from an old `Last-Event-ID`; resume semantics are the
//! table's.
//!
//! The reader also tells the session cache which sessions its events touched, and when it
//! last read everything committed: a held copy no event has touched since it was checked is
//! still as stored (every change writes an event), which lets heartbeats be answered from
//! memory however long ago the copy was read (see `cache`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapse_core::SessionId;
use lapse_core::event::Event;
use lapse_core::store::EventQuery;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Engine;

/// Events a stream may have waiting before it is dropped to catch up from the table.
pub const QUEUE: usize = 512;
/// Events the reader takes from the table per query.
const PAGE: u32 = 1000;
/// The reader also looks by itself this often: for a change notification that was lost, for
/// changes no notification announces (`lapse sweep` next to a server on SQLite), and so that
/// on a quiet instance its last read stays recent enough to vouch for held copies (under
/// `cache::FRESH_FOR`). While commits come it reads on each of them anyway.
const POLL: Duration = Duration::from_secs(4);

struct Subscriber {
    query: EventQuery,
    tx: mpsc::Sender<Arc<Event>>,
}

#[derive(Default)]
struct Subscribers {
    next: u64,
    all: HashMap<u64, Subscriber>,
    /// Streams of one session, by that session: an event reaches only its session's streams
    /// and the streams with no session filter.
    by_session: HashMap<SessionId, Vec<u64>>,
    unfiltered: Vec<u64>,
    /// At this many subscribers, the next subscribe first drops those whose stream is gone
    /// without having been sent anything (the rest are dropped when a send finds them
    /// gone): so no step walks every stream, and the gone ones never outnumber the rest.
    sweep_at: usize,
}

impl Subscribers {
    fn remove(&mut self, id: u64) {
        let Some(sub) = self.all.remove(&id) else {
            return;
        };
        match &sub.query.session {
            Some(session) => {
                if let Some(ids) = self.by_session.get_mut(session) {
                    ids.retain(|x| *x != id);
                    if ids.is_empty() {
                        self.by_session.remove(session);
                    }
                }
            }
            None => self.unfiltered.retain(|x| *x != id),
        }
    }

    /// Drops the subscribers whose stream is gone, once their number has doubled since the
    /// last time: amortized O(1) per subscribe.
    fn sweep_if_due(&mut self) {
        if self.all.len() < self.sweep_at {
            return;
        }
        let gone: Vec<u64> = self
            .all
            .iter()
            .filter(|(_, s)| s.tx.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.remove(id);
        }
        self.sweep_at = (2 * self.all.len()).max(64);
    }
}

/// The fan-out; see the module docs.
#[derive(Default)]
pub struct Feed {
    subscribers: Mutex<Subscribers>,
    /// The last `seq` the reader has handed out (`None` until it first reads).
    position: Mutex<Option<i64>>,
}

/// A stream's subscription: events past the reader's position, in order, until the stream
/// falls behind (then the receiver ends).
pub struct Subscription {
    /// The events.
    pub events: mpsc::Receiver<Arc<Event>>,
}

impl Feed {
    fn lock(&self) -> std::sync::MutexGuard<'_, Subscribers> {
        // Only maps of channels: a panic elsewhere cannot leave them half-updated.
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn subscribe(&self, query: &EventQuery) -> Subscription {
        let (tx, events) = mpsc::channel(QUEUE);
        let mut subs = self.lock();
        subs.sweep_if_due();
        subs.next += 1;
        let id = subs.next;
        match &query.session {
            Some(s) => subs.by_session.entry(s.clone()).or_default().push(id),
            None => subs.unfiltered.push(id),
        }
        let query = EventQuery {
            types: query.types.clone(),
            kind: query.kind.clone(),
            session: query.session.clone(),
            ..EventQuery::default()
        };
        subs.all.insert(id, Subscriber { query, tx });
        Subscription { events }
    }

    /// Hands `events` (in `seq` order) to the streams that want them; drops streams that are
    /// gone or full. Costs what the events' own streams cost, whatever the number of others.
    fn dispatch(&self, events: &[Event]) {
        let mut subs = self.lock();
        let mut dropped = Vec::new();
        for e in events {
            // Made once an event has a stream that wants it, and shared by all that do.
            let mut event: Option<Arc<Event>> = None;
            let targets = subs
                .by_session
                .get(&e.session_id)
                .into_iter()
                .flatten()
                .chain(&subs.unfiltered);
            for id in targets {
                let Some(sub) = subs.all.get(id) else {
                    continue;
                };
                if !wants(&sub.query, e) {
                    continue;
                }
                let event = event.get_or_insert_with(|| Arc::new(e.clone()));
                if sub.tx.try_send(event.clone()).is_err() {
                    dropped.push(*id);
                }
            }
        }
        for id in dropped {
            subs.remove(id);
        }
    }

    /// Streams currently fed from memory (gone ones included until a send or a sweep finds
    /// them).
    pub fn len(&self) -> usize {
        self.lock().all.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether an event passes a stream's filters (its session was matched already).
fn wants(q: &EventQuery, e: &Event) -> bool {
    q.kind.as_ref().is_none_or(|k| k == &e.kind)
        && (q.types.is_empty() || q.types.iter().any(|t| t.as_str() == e.event_type.as_str()))
}

impl Engine {
    /// Subscribes a stream with `query`'s filters to the fan-out (already authorized).
    pub fn subscribe_events(&self, query: &EventQuery) -> Subscription {
        self.feed.subscribe(query)
    }

    /// The event reader: on every signal (and every few seconds regardless) reads the events
    /// past its position and hands them out. Returns when `shutdown` is cancelled.
    pub async fn run_event_feed(self: Arc<Self>, shutdown: CancellationToken) {
        let mut signal = self.event_signal();
        loop {
            signal.borrow_and_update();
            if let Err(e) = self.feed_once().await
                && !e.is_unavailable()
            {
                tracing::warn!(error = %e, "event feed could not read; retrying");
            }
            tokio::select! {
                _ = signal.changed() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One step of the reader: everything past its position, handed out. The first step only
    /// takes the table's end as its position (streams catch up from the table themselves).
    pub async fn feed_once(&self) -> Result<usize, crate::EngineError> {
        let position = *self.feed.position.lock().unwrap_or_else(|p| p.into_inner());
        let mut after = match position {
            Some(p) => p,
            None => {
                // What was committed before the end is never read: no held copy is vouched
                // for until it is checked again.
                self.sessions.feed_restarted();
                let end = self.store.last_event_seq().await?;
                *self.feed.position.lock().unwrap_or_else(|p| p.into_inner()) = Some(end);
                // A stream that caught up before this position was taken may have missed an
                // event committed in between: send every such stream back to the table.
                *self.feed.lock() = Subscribers::default();
                return Ok(0);
            }
        };
        let mut handed = 0;
        loop {
            let read_at = tokio::time::Instant::now();
            let page = self
                .store
                .events(&EventQuery {
                    after,
                    limit: PAGE,
                    ..EventQuery::default()
                })
                .await?;
            let Some(last) = page.last() else {
                self.sessions.fed(read_at);
                break;
            };
            after = last.seq;
            handed += page.len();
            self.sessions
                .touched(page.iter().map(|e| &e.session_id), read_at);
            self.feed.dispatch(&page);
            *self.feed.position.lock().unwrap_or_else(|p| p.into_inner()) = Some(after);
            if page.len() < PAGE as usize {
                self.sessions.fed(read_at);
                break;
            }
        }
        Ok(handed)
    }
}

#[cfg(test)]
mod tests {
    use lapse_core::EventType;

    use super::*;

    fn event(seq: i64, session: &str, kind: &str) -> Event {
        Event {
            seq,
            id: format!("e{seq}"),
            event_type: EventType::SessionUpdated,
            at: lapse_core::Timestamp::from_millis(0),
            applied_at: lapse_core::Timestamp::from_millis(0),
            session_id: SessionId::parse(session).unwrap(),
            kind: kind.into(),
            actor: "system".into(),
            rule: None,
            data: serde_json::json!({}).into(),
        }
    }

    #[tokio::test]
    async fn an_event_reaches_only_the_streams_whose_filters_match() {
        let feed = Feed::default();
        let follow = |session: Option<&str>, kind: Option<&str>| {
            feed.subscribe(&EventQuery {
                session: session.map(|s| SessionId::parse(s).unwrap()),
                kind: kind.map(String::from),
                ..EventQuery::default()
            })
        };
        let mut room_a = follow(Some("a"), None);
        let mut room_b = follow(Some("b"), None);
        let mut studies = follow(None, Some("study"));
        feed.dispatch(&[event(1, "a", "study"), event(2, "b", "reading")]);
        assert_eq!(room_a.events.recv().await.unwrap().seq, 1);
        assert_eq!(room_b.events.recv().await.unwrap().seq, 2);
        assert_eq!(studies.events.recv().await.unwrap().seq, 1);
        assert!(room_a.events.try_recv().is_err());
        assert!(
            studies.events.try_recv().is_err(),
            "the reading event is not a study's"
        );
    }

    #[tokio::test]
    async fn a_stream_that_falls_behind_keeps_what_it_had_and_is_then_cut_off() {
        let feed = Feed::default();
        let mut slow = feed.subscribe(&EventQuery::default());
        let events: Vec<Event> = (1..=QUEUE as i64 + 10)
            .map(|n| event(n, "a", "study"))
            .collect();
        feed.dispatch(&events);
        assert!(feed.is_empty(), "dropped from the fan-out");
        let mut got = Vec::new();
        while let Some(e) = slow.events.recv().await {
            got.push(e.seq);
        }
        // It catches up from the table after seq QUEUE: nothing it received is lost.
        assert_eq!(got, (1..=QUEUE as i64).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn streams_that_are_gone_do_not_pile_up() {
        let feed = Feed::default();
        let room = |id: &str| EventQuery {
            session: Some(SessionId::parse(id).unwrap()),
            ..EventQuery::default()
        };
        // A stream that closes is dropped by the next event for it...
        drop(feed.subscribe(&room("a")));
        feed.dispatch(&[event(1, "a", "study")]);
        assert!(feed.is_empty());
        // ...and streams that close without ever being sent anything by a later subscribe.
        for n in 0..1_000 {
            drop(feed.subscribe(&room(&format!("r{n}"))));
        }
        let mut open = feed.subscribe(&room("b"));
        assert!(feed.len() <= 64, "{} held", feed.len());
        feed.dispatch(&[event(2, "b", "study")]);
        assert_eq!(open.events.recv().await.unwrap().seq, 2);
    }
}
