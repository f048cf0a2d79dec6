//! Rate limits per actor and operation (SPEC §5, `[rate_limits]`): a generic cell rate
//! algorithm per (actor, operation), in memory. `N/min` lets a burst of N through, then one
//! every minute/N. Checked right after credentials, before anything else.
//!
//! And one limit for everyone ([`in_flight`]): at most `[server] max_in_flight` requests are
//! answered at once, so a flood beyond what lapse can serve is refused within a moment instead
//! of queueing, every request slower than the last.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::Method;
use lapse_core::config::RateLimit;

/// Buckets are forgotten this long after they refilled, so idle actors cost nothing.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// How long a request waits for a place when `max_in_flight` are being answered.
pub const QUEUE_WAIT: Duration = Duration::from_millis(100);

/// Places for requests being answered, `[server] max_in_flight` of them.
pub struct InFlight {
    places: tokio::sync::Semaphore,
    max: u32,
}

impl InFlight {
    /// `max` places; `None` for no limit.
    pub fn new(max: u32) -> Option<InFlight> {
        (max > 0).then(|| InFlight {
            places: tokio::sync::Semaphore::new(max as usize),
            max,
        })
    }
}

/// Holds a place for the request while it is answered (the response's head: an event stream's
/// body goes on without it). Probes never wait: a load balancer must see an overloaded
/// instance alive. Past the limit, 429 `rate_limited` with `Retry-After: 1`.
pub async fn in_flight(
    axum::extract::State(app): axum::extract::State<std::sync::Arc<crate::http::AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(limit) = &app.in_flight else {
        return next.run(request).await;
    };
    if matches!(request.uri().path(), "/livez" | "/readyz") {
        return next.run(request).await;
    }
    let place = match limit.places.try_acquire() {
        Ok(place) => place,
        Err(_) => match tokio::time::timeout(QUEUE_WAIT, limit.places.acquire()).await {
            Ok(Ok(place)) => place,
            _ => {
                return crate::http::error::ApiError::new(
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "lapse is answering as many requests as it takes at once ({}); try again in a moment",
                        limit.max
                    ),
                )
                .retry_after(1)
                .into_response();
            }
        },
    };
    let response = next.run(request).await;
    drop(place);
    response
}

/// The operation a request is, for `[rate_limits]` (its configured names).
pub fn operation(method: &Method, route: &str) -> &'static str {
    let last = route.rsplit('/').next().unwrap_or("");
    match (method.as_str(), route) {
        ("POST", "/v1/sessions") => "create",
        ("PATCH", "/v1/sessions/{id}") => "update",
        ("DELETE", "/v1/sessions/{id}") => "delete",
        ("POST", "/v1/sessions/{id}/participants") => "join",
        ("DELETE", "/v1/sessions/{id}/participants/{user}") => "leave",
        ("POST", "/v1/sessions/{id}/heartbeat" | "/v1/heartbeats") => "heartbeat",
        (_, "/v1/sweep") => "sweep",
        ("POST", _) if route.starts_with("/v1/sessions/{id}/") => match last {
            "start" => "start",
            "end" => "end",
            "cancel" => "cancel",
            "reopen" => "reopen",
            "activity" => "activity",
            _ => "default",
        },
        _ => "default",
    }
}

/// The configured limits and every actor's state.
pub struct Limiter {
    limits: HashMap<String, RateLimit>,
    cells: Mutex<Cells>,
}

/// Each actor's buckets (a few operations each), and how many checks were made.
#[derive(Default)]
struct Cells {
    by_actor: HashMap<String, Vec<(&'static str, Instant)>>,
    checks: u64,
}

impl Limiter {
    /// Limits by operation name (`default` covers the rest).
    pub fn new(limits: impl IntoIterator<Item = (String, RateLimit)>) -> Limiter {
        Limiter {
            limits: limits.into_iter().collect(),
            cells: Mutex::new(Cells::default()),
        }
    }

    /// Admits one request of `actor` for `operation` at `now`, or says how long to wait.
    pub fn check(
        &self,
        actor: &str,
        operation: &'static str,
        now: Instant,
    ) -> Result<(), Duration> {
        let (bucket, limit) = match self.limits.get(operation) {
            Some(limit) => (operation, *limit),
            None => match self.limits.get("default") {
                Some(limit) => ("default", *limit),
                None => return Ok(()),
            },
        };
        let period = Duration::from_millis(limit.per.millis() as u64);
        let interval = period / limit.count;
        let tolerance = period.saturating_sub(interval);
        // The lock guards plain values; a panic elsewhere cannot leave them inconsistent.
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        cells.forget_idle(now);
        // A known actor costs no allocation: its buckets are found by the name as given.
        let buckets = match cells.by_actor.get_mut(actor) {
            Some(b) => b,
            None => cells.by_actor.entry(actor.to_string()).or_default(),
        };
        let slot = match buckets.iter().position(|(b, _)| *b == bucket) {
            Some(i) => i,
            None => {
                buckets.push((bucket, now));
                buckets.len() - 1
            }
        };
        let tat = buckets[slot].1.max(now);
        let wait = tat.saturating_duration_since(now);
        if wait > tolerance {
            return Err(wait - tolerance);
        }
        buckets[slot].1 = tat + interval;
        Ok(())
    }
}

impl Cells {
    /// Every thousand checks, drops the buckets that are full again.
    fn forget_idle(&mut self, now: Instant) {
        self.checks += 1;
        if self.checks.is_multiple_of(1000) {
            self.by_actor.retain(|_, buckets| {
                buckets.retain(|(_, tat)| now.saturating_duration_since(*tat) < FORGET_AFTER);
                !buckets.is_empty()
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapse_core::Span;

    fn limiter() -> Limiter {
        Limiter::new([
            (
                "end".to_string(),
                RateLimit {
                    count: 20,
                    per: Span::from_secs(60),
                },
            ),
            (
                "default".to_string(),
                RateLimit {
                    count: 2,
                    per: Span::from_secs(1),
                },
            ),
        ])
    }

    #[test]
    fn a_burst_of_n_passes_then_one_every_period_over_n() {
        let l = limiter();
        let t = Instant::now();
        for _ in 0..20 {
            assert!(l.check("alice", "end", t).is_ok());
        }
        let wait = l.check("alice", "end", t).unwrap_err();
        assert_eq!(wait, Duration::from_secs(3));
        assert!(l.check("bob", "end", t).is_ok(), "per actor");
        assert!(l.check("alice", "end", t + Duration::from_secs(3)).is_ok());
    }

    #[test]
    fn operations_without_their_own_limit_share_the_default() {
        let l = limiter();
        let t = Instant::now();
        assert!(l.check("alice", "join", t).is_ok());
        assert!(l.check("alice", "start", t).is_ok());
        assert!(l.check("alice", "leave", t).is_err());
        assert_eq!(operation(&Method::POST, "/v1/sessions/{id}/end"), "end");
        assert_eq!(operation(&Method::GET, "/v1/sessions/{id}"), "default");
        assert_eq!(operation(&Method::POST, "/v1/heartbeats"), "heartbeat");
    }
}
