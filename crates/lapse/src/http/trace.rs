//! One log line per request, and an id that ties a request's lines together.
//!
//! The id is the request's `x-request-id` when it sends a usable one (1-128 visible ASCII
//! characters, as a proxy in front would set), otherwise a new UUIDv7; the answer echoes it.
//! Every record logged while the request is handled carries it (the `request` span). The line
//! names the route's template (`/v1/sessions/{id}`), never the path or query: ids and
//! `access_token`s stay out of the log, as do headers and bodies.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;

const REQUEST_ID: &str = "x-request-id";

/// The middleware.
pub async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request
        .headers()
        .get(REQUEST_ID)
        .filter(|v| usable(v.as_bytes()))
        .cloned()
        .unwrap_or_else(new_id);
    let method = request.method().clone();
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("(no route)", MatchedPath::as_str);
    // Visible ASCII (see `usable`), so never the empty fallback.
    let span = tracing::info_span!("request", request_id = %id.to_str().unwrap_or_default());
    let mut response = next.run(request).instrument(span.clone()).await;
    response.headers_mut().insert(REQUEST_ID, id);
    let status = response.status().as_u16();
    // Whole microseconds, so the number prints short (1.971, not 1.9714300000000002).
    let latency_ms = started.elapsed().as_micros() as f64 / 1000.0;
    span.in_scope(|| {
        // Probes come every few seconds from load balancers: kept out of the info log.
        if matches!(route, "/livez" | "/readyz" | "/metrics") && status < 400 {
            tracing::debug!(%method, %route, status, latency_ms, "request");
        } else {
            tracing::info!(%method, %route, status, latency_ms, "request");
        }
    });
    response
}

fn usable(id: &[u8]) -> bool {
    (1..=128).contains(&id.len()) && id.iter().all(|b| b.is_ascii_graphic())
}

fn new_id() -> HeaderValue {
    // A UUID is visible ASCII: always a valid header value.
    HeaderValue::from_str(&uuid::Uuid::now_v7().to_string()).expect("a UUID is a header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_id_is_kept_only_when_it_is_short_visible_text() {
        assert!(usable(b"req-42"));
        assert!(usable(b"0f0e9c1e-6b7a-4b8e-9d1f-1f2e3d4c5b6a"));
        assert!(!usable(b""));
        assert!(!usable(b"has space"));
        assert!(!usable(&[b'a'; 129]));
        assert!(usable(new_id().as_bytes()));
    }
}
