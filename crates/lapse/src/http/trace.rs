//! One log line per request, and an id that ties a request's lines together.
//!
//! The id is the request's `x-request-id` when it sends a usable one (1-128 visible ASCII
//! characters, as a proxy in front would set), otherwise a new one (this process's random
//! prefix and a counter); the answer echoes it.
//! Every record logged while the request is handled carries it (the `request` span). The line
//! names the route's template (`/v1/sessions/{id}`), never the path or query: ids and
//! `access_token`s stay out of the log, as do headers and bodies.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use lapse_engine::metrics::{Histogram, LATENCY_BUCKETS};
use tracing::Instrument as _;

use super::AppState;

const REQUEST_ID: &str = "x-request-id";

/// The methods told apart in the metrics; any other counts as the last.
const METHODS: [Method; 6] = [
    Method::GET,
    Method::POST,
    Method::PATCH,
    Method::DELETE,
    Method::PUT,
    Method::OPTIONS,
];
const METHOD_NAMES: [&str; 7] = ["GET", "POST", "PATCH", "DELETE", "PUT", "OPTIONS", "OTHER"];

/// Request latencies by route, method and status, for `/metrics`.
#[derive(Default)]
pub struct Requests {
    routes: RwLock<HashMap<String, Arc<Route>>>,
}

/// One route's histograms, made on first use: by method, then by status (100-599).
#[derive(Default)]
struct Route([OnceLock<Box<ByStatus>>; 7]);

struct ByStatus([OnceLock<Histogram>; 500]);

impl Requests {
    fn observe(&self, route: &str, method: &Method, status: u16, seconds: f64) {
        let found = self.read().get(route).cloned();
        let stats = match found {
            Some(stats) => stats,
            None => {
                let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
                routes.entry(route.to_string()).or_default().clone()
            }
        };
        let m = METHODS
            .iter()
            .position(|x| x == method)
            .unwrap_or(METHODS.len());
        let Some(slot) = (status as usize).checked_sub(100).filter(|&i| i < 500) else {
            return;
        };
        let by_status =
            stats.0[m].get_or_init(|| Box::new(ByStatus(std::array::from_fn(|_| OnceLock::new()))));
        by_status.0[slot]
            .get_or_init(|| Histogram::new(LATENCY_BUCKETS))
            .observe(seconds);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Route>>> {
        // Plain counters: a panic elsewhere cannot leave them half-written.
        self.routes.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `name`'s samples, labelled `method`, `route` and `status`, to `out`.
    pub fn render(&self, name: &str, out: &mut String) {
        let routes = self.read();
        let mut names: Vec<&String> = routes.keys().collect();
        names.sort();
        for route in names {
            for (m, by_status) in routes[route].0.iter().enumerate() {
                let Some(by_status) = by_status.get() else {
                    continue;
                };
                for (i, histogram) in by_status.0.iter().enumerate() {
                    if let Some(h) = histogram.get() {
                        let labels = format!(
                            "method=\"{}\",route=\"{}\",status=\"{}\"",
                            METHOD_NAMES[m],
                            route.replace('\\', "\\\\").replace('"', "\\\""),
                            i + 100
                        );
                        h.render(name, &labels, out);
                    }
                }
            }
        }
    }
}

/// The middleware.
pub async fn log_request(
    State(app): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
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
    let elapsed = started.elapsed();
    app.requests
        .observe(route, &method, status, elapsed.as_secs_f64());
    // Whole microseconds, so the number prints short (1.971, not 1.9714300000000002).
    let latency_ms = elapsed.as_micros() as f64 / 1000.0;
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

/// This process's prefix and a counter: unique across instances (the prefix is random) and
/// far cheaper than a UUID per request.
fn new_id() -> HeaderValue {
    static PREFIX: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // The random tail of a UUIDv7: 12 hex digits.
    let prefix = PREFIX.get_or_init(|| uuid::Uuid::now_v7().simple().to_string()[20..].to_string());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // Hex digits and a dash: always a valid header value.
    HeaderValue::from_str(&format!("{prefix}-{n:x}")).expect("hex is a header value")
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
        assert_ne!(new_id(), new_id(), "each request its own");
    }
}
