//! `GET /v1/events` as a server-sent event stream: every event as it commits, `id:` its `seq`,
//! resumable from `Last-Event-ID` (or `?after=`) without gaps or duplicates.
//!
//! Each stream reads the events table at its own pace, starting after the last `seq` it sent,
//! and sleeps on the engine's event signal between reads. So a slow client only falls behind:
//! it holds no buffer in the engine, no database connection while waiting, and never slows a
//! writer or another stream. If it goes away, it resumes from its last id.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use lapse_core::event::Event;
use lapse_core::store::EventQuery;
use lapse_engine::{Caller, Engine};

use crate::http::error::ApiError;

/// Events read per query.
const PAGE: u32 = 200;
/// A stream also looks by itself this often, in case a change notification was lost.
const POLL: Duration = Duration::from_secs(5);
/// A comment line this often keeps proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

struct Cursor {
    engine: Arc<Engine>,
    query: EventQuery,
    ready: VecDeque<Event>,
    signal: tokio::sync::watch::Receiver<u64>,
}

/// The stream for `query`, after checking `caller` may read it.
pub async fn stream(
    engine: Arc<Engine>,
    caller: Caller,
    mut query: EventQuery,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    engine.authorize_events(&caller, &query).await?;
    query.limit = PAGE;
    let signal = engine.event_signal();
    let cursor = Cursor {
        engine,
        query,
        ready: VecDeque::new(),
        signal,
    };
    let events = futures_util::stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some(e) = c.ready.pop_front() {
                let data = serde_json::to_string(&e).unwrap_or_default();
                let item = SseEvent::default().id(e.seq.to_string()).data(data);
                return Some((Ok(item), c));
            }
            // Mark the signal seen before reading, so an append during the read wakes us.
            c.signal.borrow_and_update();
            match c.engine.events_page(&c.query).await {
                Ok(page) if !page.is_empty() => {
                    c.query.after = page.last().map_or(c.query.after, |e| e.seq);
                    c.ready.extend(page);
                }
                Ok(_) => {
                    tokio::select! {
                        changed = c.signal.changed() => {
                            if changed.is_err() {
                                return None; // the engine is shutting down
                            }
                        }
                        _ = tokio::time::sleep(POLL) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "event stream could not read; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive")))
}
