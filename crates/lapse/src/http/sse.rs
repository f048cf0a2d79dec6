//! `GET /v1/events` as a server-sent event stream: every event as it commits, `id:` its `seq`,
//! resumable from `Last-Event-ID` (or `?after=`) without gaps or duplicates.
//!
//! A stream first catches up from the events table, after the last `seq` it sent, then follows
//! the engine's fan-out (`lapse_engine::feed`): one reader per instance hands it the events
//! that match its filters, so an open stream costs no query per commit. It subscribes before
//! it catches up, and tells events seen both ways apart by `seq`. If it falls behind the
//! fan-out's small queue (a slow client), it is dropped from it and catches up from the table
//! again: a slow client only lags, holds no unbounded buffer and slows nobody.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};
use lapse_core::event::Event;
use lapse_core::store::EventQuery;
use lapse_engine::feed::Subscription;
use lapse_engine::{Caller, Engine};
use tokio_util::sync::CancellationToken;

use crate::http::error::ApiError;

/// Events read per query.
const PAGE: u32 = 200;
/// A comment line this often keeps proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Where a stream takes its next events from.
enum Source {
    /// The events table, until it is caught up; subscribed already.
    Table(Subscription),
    /// The fan-out.
    Live(Subscription),
}

struct Cursor {
    engine: Arc<Engine>,
    query: EventQuery,
    ready: VecDeque<Arc<Event>>,
    source: Option<Source>,
}

/// The stream for `query`, after checking `caller` may read it.
/// It ends when `shutdown` is cancelled; the client resumes from its last `seq` elsewhere.
pub async fn stream(
    engine: Arc<Engine>,
    caller: Caller,
    mut query: EventQuery,
    shutdown: CancellationToken,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    engine.authorize_events(&caller, &query).await?;
    query.limit = PAGE;
    let cursor = Cursor {
        engine,
        query,
        ready: VecDeque::new(),
        source: None,
    };
    let events = futures_util::stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some(e) = c.ready.pop_front() {
                let data = serde_json::to_string(&*e).unwrap_or_default();
                let item = SseEvent::default().id(e.seq.to_string()).data(data);
                return Some((Ok(item), c));
            }
            c.source = Some(match c.source.take() {
                // Subscribe first: from here on the fan-out keeps what the table read misses.
                None => Source::Table(c.engine.subscribe_events(&c.query)),
                Some(Source::Table(sub)) => match c.engine.events_page(&c.query).await {
                    Ok(page) if !page.is_empty() => {
                        c.query.after = page.last().map_or(c.query.after, |e| e.seq);
                        c.ready.extend(page.into_iter().map(Arc::new));
                        Source::Table(sub)
                    }
                    Ok(_) => Source::Live(sub),
                    Err(e) => {
                        tracing::warn!(error = %e, "event stream could not read; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        Source::Table(sub)
                    }
                },
                Some(Source::Live(mut sub)) => match sub.events.recv().await {
                    Some(e) => {
                        if e.seq > c.query.after {
                            c.query.after = e.seq;
                            c.ready.push_back(e);
                        }
                        Source::Live(sub)
                    }
                    // Fell behind the fan-out: catch up from the table again.
                    None => continue,
                },
            });
        }
    });
    let events = events.take_until(shutdown.cancelled_owned());
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive")))
}
