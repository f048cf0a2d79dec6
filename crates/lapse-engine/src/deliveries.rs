//! Webhooks out (SPEC §6, Standard Webhooks). Each committed event is queued for every
//! endpoint that wants it in the same transaction (the outbox); [`Engine::run_deliveries`]
//! sends what is due, on a loop for each endpoint. Deliveries retry
//! on the configured schedule, honour `Retry-After`, follow no redirects, and end `dead` after
//! the last attempt; a 410 disables the endpoint. Nothing here can block or fail a transition.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use lapse_core::config::{Delivery as Sending, Webhook};
use lapse_core::event::{Event, NewEvent};
use lapse_core::store::{Attempt, Delivery, DeliveryStatus};
use lapse_core::{Span, Timestamp};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::{Caller, Engine, EngineError};

/// How long after a claim, while some of its attempts are under way, the places the others
/// freed are claimed again: an endpoint that answers within it is claimed from a batch at a
/// time, and an answer slower than it holds back none of the others.
const REFILL_AFTER: Duration = Duration::from_millis(10);

/// What an attempt's task gives back: the claim it came from, the delivery, its endpoint,
/// and the attempt.
type Sent = (u64, String, String, Attempt);

/// How much longer than the slowest answer a claim's deliveries stay leased to this instance
/// (where instances share the store): time to record the outcomes. A lease that ran out
/// before then would let another instance send the same delivery again.
const LEASE_MARGIN: Span = Span::from_secs(60);

/// One configured endpoint with its signing keys.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Its configuration (URL, event globs, kinds).
    pub config: Webhook,
    /// HMAC keys, newest first; several while a secret is being rotated.
    pub keys: Vec<Vec<u8>>,
}

/// Reads Standard Webhooks secrets (`whsec_<base64>`, several separated by spaces).
pub fn parse_secrets(text: &str) -> Result<Vec<Vec<u8>>, String> {
    text.split_whitespace()
        .map(|s| {
            let b64 = s.strip_prefix("whsec_").unwrap_or(s);
            BASE64
                .decode(b64)
                .map_err(|_| "a webhook secret must be `whsec_` followed by base64".to_string())
        })
        .collect()
}

/// The `webhook-signature` header: `v1,<base64 HMAC-SHA256(key, "id.timestamp.body")>` for
/// each key, separated by spaces.
pub fn signature(keys: &[Vec<u8>], id: &str, timestamp: i64, body: &str) -> String {
    keys.iter()
        .map(|key| {
            // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
            let mut mac = <Hmac<Sha256>>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
            format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A configured endpoint and whether lapse delivers to it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EndpointState {
    /// Where deliveries go.
    pub url: String,
    /// Event-type globs it takes.
    pub events: Vec<String>,
    /// Kinds it takes (all when absent).
    pub kinds: Option<Vec<String>>,
    /// `active`, or `disabled` once it answered 410 Gone.
    pub state: &'static str,
    /// When it was disabled.
    pub disabled_at: Option<lapse_core::Timestamp>,
    /// Why.
    pub reason: Option<String>,
}

/// The endpoints and how to reach them.
pub struct Webhooks {
    endpoints: Vec<Endpoint>,
    retry: Vec<Span>,
    client: reqwest::Client,
    /// How long claimed deliveries are leased: every answer has come, or timed out, and been
    /// recorded before it runs out.
    lease: Span,
    /// Attempts under way to one endpoint at most (`[delivery] max_in_flight`).
    in_flight: u32,
}

impl Webhooks {
    /// Endpoints, sent to as `[delivery]` says: the retry schedule, the per-request timeout
    /// and the attempts under way to each at most.
    pub fn new(endpoints: Vec<Endpoint>, sending: &Sending) -> Webhooks {
        let timeout = sending.timeout;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(timeout.millis() as u64))
            .user_agent(concat!("lapse/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Webhooks {
            endpoints,
            retry: sending.retry.clone(),
            client,
            lease: Span::from_millis(timeout.millis().saturating_add(LEASE_MARGIN.millis())),
            in_flight: sending.max_in_flight,
        }
    }

    /// The URLs an event goes to.
    pub fn targets(&self, event: &NewEvent) -> Vec<String> {
        self.endpoints
            .iter()
            .filter(|e| e.config.wants(event.event_type.as_str(), &event.kind))
            .map(|e| e.config.url.clone())
            .collect()
    }
}

fn wall_seconds() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Engine {
    /// Delivers until `shutdown`: each endpoint on a loop of its own, so an endpoint slow to
    /// answer holds back its own deliveries and no other's. Deliveries still pending to an
    /// endpoint no longer configured get a loop too, which ends them `dead` as they come due
    /// and stops when none is left.
    pub async fn run_deliveries(self: Arc<Self>, shutdown: CancellationToken) {
        if self.webhooks.endpoints.is_empty() {
            return;
        }
        let mut loops = tokio::task::JoinSet::new();
        let configured: Vec<String> = self
            .webhooks
            .endpoints
            .iter()
            .map(|e| e.config.url.clone())
            .collect();
        for url in &configured {
            loops.spawn(self.clone().deliver_to(url.clone(), true, shutdown.clone()));
        }
        // The endpoints of pending deliveries, read once (again each second until it can be).
        let pending = loop {
            match self.store.pending_endpoints().await {
                Ok(pending) => break pending,
                Err(e) => {
                    if !e.is_unavailable() {
                        tracing::warn!(error = %e, "could not read the endpoints of pending deliveries");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => break Vec::new(),
                    }
                }
            }
        };
        for url in pending.into_iter().filter(|url| !configured.contains(url)) {
            loops.spawn(self.clone().deliver_to(url, false, shutdown.clone()));
        }
        while loops.join_next().await.is_some() {}
    }

    /// Delivers to `url` until `shutdown` (or, for an endpoint no longer `configured`, until
    /// nothing is pending to it), with up to `[delivery] max_in_flight` attempts under way at
    /// once. Each answer is recorded as it comes (those that come together in one statement).
    ///
    /// Due deliveries are claimed into the free places once every attempt of the last claim
    /// has its answer, as an endpoint that answers quickly has them a batch at a time, or
    /// [`REFILL_AFTER`] after the last claim: answers slower than that hold back none of the
    /// others, however many places they hold, and claims stay batched. Once a claim has
    /// taken all that was due, the loop waits for the next delivery due (at most a second,
    /// since another instance's events may queue more) or for events appended before it
    /// claims again. On `shutdown` it claims nothing more and records the answers under
    /// way.
    async fn deliver_to(
        self: Arc<Self>,
        url: String,
        configured: bool,
        shutdown: CancellationToken,
    ) {
        use tokio::time::{Instant, sleep_until};
        let mut signal = self.event_signal();
        let mut sends = tokio::task::JoinSet::new();
        // When more may come due, once a claim took all that was due; until then, none.
        let mut next: Option<Instant> = None;
        let mut refill_at = Instant::now();
        // The last claim, numbered, and how many of its attempts still await their answers.
        let (mut claim, mut awaited) = (0u64, 0u32);
        let places = self.webhooks.in_flight;
        loop {
            let stopping = shutdown.is_cancelled();
            let room = places - sends.len() as u32;
            let answered = sends.is_empty() || awaited == 0;
            let refill = room > 0 && (answered || Instant::now() >= refill_at);
            if next.is_none() && !stopping && refill {
                signal.borrow_and_update();
                refill_at = Instant::now() + REFILL_AFTER;
                claim += 1;
                // One instant for the claim and what comes after it: a delivery due between
                // two readings of the clock would be neither sent nor waited for.
                let now = self.now();
                let sent = self
                    .claim_and_send(claim, &url, now, room, &mut sends)
                    .await;
                let claimed = match sent {
                    Ok(n) => n,
                    Err(e) => {
                        if !e.is_unavailable() {
                            tracing::warn!(error = %e, %url, "webhook delivery claim failed");
                        }
                        0
                    }
                };
                awaited = claimed;
                // A claim that took every place may have left more due.
                if claimed < room {
                    let wait = match self.store.next_delivery_at(&url, now).await {
                        Ok(Some(at)) => Duration::from_millis(at.since(self.now()).millis() as u64),
                        Ok(None) if !configured && sends.is_empty() => return,
                        _ => Duration::from_secs(1),
                    };
                    let wait = wait.clamp(Duration::from_millis(20), Duration::from_secs(1));
                    next = Some(Instant::now() + wait);
                }
            }
            if sends.is_empty() {
                if stopping {
                    return;
                }
                if next.is_none() {
                    // Nothing under way and more may be due: claim at once.
                    continue;
                }
            }
            // Waiting for more to come due; or, with more due and places free, to claim again.
            let listen = next.is_some() && !stopping;
            let room = places - sends.len() as u32;
            let around = next.is_none() && !stopping && !sends.is_empty() && room > 0;
            tokio::select! {
                biased;
                Some(first) = sends.join_next(), if !sends.is_empty() => {
                    let mut done = vec![first];
                    while let Some(more) = sends.try_join_next() {
                        done.push(more);
                    }
                    let of_last = done.iter().filter(|d| matches!(d, Ok((c, ..)) if *c == claim));
                    awaited = awaited.saturating_sub(of_last.count() as u32);
                    self.record_done(done).await;
                }
                _ = shutdown.cancelled(), if !stopping => {}
                _ = signal.changed(), if listen => next = None,
                _ = sleep_until(next.unwrap_or(refill_at)), if listen => next = None,
                _ = sleep_until(refill_at), if around => {}
            }
        }
    }

    /// Claims up to `limit` deliveries to `url` due at `now` and starts an attempt of each
    /// in `sends`, marked as of `claim`; returns how many.
    async fn claim_and_send(
        self: &Arc<Self>,
        claim: u64,
        url: &str,
        now: Timestamp,
        limit: u32,
        sends: &mut tokio::task::JoinSet<Sent>,
    ) -> Result<u32, EngineError> {
        let lease = Some(self.webhooks.lease);
        let due = self.store.due_deliveries(url, now, limit, lease).await?;
        let n = due.len() as u32;
        for (delivery, event) in due {
            let engine = self.clone();
            sends.spawn(async move {
                let (id, url) = (delivery.id.clone(), delivery.endpoint.clone());
                let attempt = engine.attempt(delivery, event, now).await;
                (claim, id, url, attempt)
            });
        }
        Ok(n)
    }

    /// Records the attempts that ended, in one statement.
    async fn record_done(&self, done: Vec<Result<Sent, tokio::task::JoinError>>) {
        let mut attempts = Vec::with_capacity(done.len());
        for result in done {
            match result {
                Ok((_, id, url, attempt)) => attempts.push((id, url, attempt)),
                Err(e) => tracing::error!(error = %e, "webhook task failed"),
            }
        }
        match self.record(&attempts).await {
            Err(e) if e.is_unavailable() => {}
            Err(e) => tracing::warn!(error = %e, "could not record webhook attempts"),
            Ok(()) => {}
        }
    }

    /// Records `attempts`, each `(delivery, endpoint, attempt)`. The endpoints that answered
    /// 410 Gone are disabled first, which ends their other pending deliveries, and then each
    /// attempt is recorded with the answer that ended it. In that order a delivery never
    /// shows its 410 while its endpoint still takes new events, and never shows as dead
    /// before its answer is on it.
    async fn record(&self, attempts: &[(String, String, Attempt)]) -> Result<(), EngineError> {
        let attempted: Vec<String> = attempts.iter().map(|(id, ..)| id.clone()).collect();
        for (_, url, attempt) in attempts {
            if attempt.http_status == Some(410) {
                let reason = "the endpoint answered 410 Gone";
                self.store
                    .disable_endpoint(url, attempt.at, reason, &attempted)
                    .await?;
            }
        }
        let rows: Vec<(String, Attempt)> = attempted
            .into_iter()
            .zip(attempts)
            .map(|(id, (_, _, attempt))| (id, attempt.clone()))
            .collect();
        self.store.record_attempts(&rows).await?;
        Ok(())
    }

    /// Sends `d` and tells how it went.
    async fn attempt(&self, d: Delivery, event: Event, now: Timestamp) -> Attempt {
        let attempt_no = d.attempts + 1;
        let Some(endpoint) = self
            .webhooks
            .endpoints
            .iter()
            .find(|e| e.config.url == d.endpoint)
        else {
            return Attempt {
                at: now,
                http_status: None,
                error: Some("the endpoint is no longer configured".into()),
                status: DeliveryStatus::Dead,
                next_attempt_at: None,
            };
        };
        // Serializing a stored event cannot fail; the body is the event as the API shows it.
        let body = serde_json::to_string(&event).unwrap_or_default();
        let timestamp = wall_seconds();
        let mut request = self
            .webhooks
            .client
            .post(&d.endpoint)
            .header("content-type", "application/json")
            .header("webhook-id", &event.id)
            .header("webhook-timestamp", timestamp.to_string());
        if !endpoint.keys.is_empty() {
            request = request.header(
                "webhook-signature",
                signature(&endpoint.keys, &event.id, timestamp, &body),
            );
        }
        let retry_at = |after: Option<Span>| {
            let planned = self.webhooks.retry.get(attempt_no as usize).copied();
            planned.map(|p| now + p.max(after.unwrap_or(Span::ZERO)))
        };
        match request.body(body).send().await {
            Ok(response) if response.status().is_success() => Attempt {
                at: now,
                http_status: Some(response.status().as_u16()),
                error: None,
                status: DeliveryStatus::Delivered,
                next_attempt_at: None,
            },
            Ok(response) if response.status() == reqwest::StatusCode::GONE => {
                tracing::warn!(url = %d.endpoint, "webhook endpoint answered 410 Gone; disabled");
                Attempt {
                    at: now,
                    http_status: Some(410),
                    error: Some("the endpoint answered 410 Gone and was disabled".into()),
                    status: DeliveryStatus::Dead,
                    next_attempt_at: None,
                }
            }
            Ok(response) => {
                let status = response.status();
                let after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<i64>().ok())
                    .map(Span::from_secs);
                let next = retry_at(after);
                Attempt {
                    at: now,
                    http_status: Some(status.as_u16()),
                    error: Some(format!("the endpoint answered {status}")),
                    status: if next.is_some() {
                        DeliveryStatus::Pending
                    } else {
                        DeliveryStatus::Dead
                    },
                    next_attempt_at: next,
                }
            }
            Err(e) => {
                let next = retry_at(None);
                Attempt {
                    at: now,
                    http_status: None,
                    error: Some(if e.is_timeout() {
                        "no answer in time".into()
                    } else {
                        e.to_string()
                    }),
                    status: if next.is_some() {
                        DeliveryStatus::Pending
                    } else {
                        DeliveryStatus::Dead
                    },
                    next_attempt_at: next,
                }
            }
        }
    }

    /// `GET /v1/webhooks/deliveries?status=`
    pub async fn deliveries(
        &self,
        caller: &Caller,
        status: Option<DeliveryStatus>,
        limit: u32,
    ) -> Result<Vec<Delivery>, EngineError> {
        caller.require_backend()?;
        Ok(self.store.deliveries(status, limit).await?)
    }

    /// `GET /v1/webhooks/endpoints`: each configured endpoint, and whether lapse still
    /// delivers to it (an endpoint that answered 410 Gone is disabled for good).
    pub async fn webhook_endpoints(
        &self,
        caller: &Caller,
    ) -> Result<Vec<EndpointState>, EngineError> {
        caller.require_backend()?;
        let disabled = self.store.disabled_endpoints().await?;
        Ok(self
            .webhooks
            .endpoints
            .iter()
            .map(|e| {
                let off = disabled.iter().find(|d| d.url == e.config.url);
                EndpointState {
                    url: e.config.url.clone(),
                    events: e.config.events.clone(),
                    kinds: e.config.kinds.clone(),
                    state: if off.is_some() { "disabled" } else { "active" },
                    disabled_at: off.map(|d| d.at),
                    reason: off.map(|d| d.reason.clone()),
                }
            })
            .collect())
    }

    /// `POST /v1/webhooks/deliveries/{id}/retry`: due again now, unless its endpoint answered
    /// 410 Gone: nothing is sent to it any more, and the retry is refused with the reason.
    pub async fn retry_delivery(&self, caller: &Caller, id: &str) -> Result<Delivery, EngineError> {
        caller.require_backend()?;
        let d = self
            .store
            .retry_delivery(id, self.now())
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("delivery `{id}` not found")))?;
        if d.status != DeliveryStatus::Pending {
            // The store leaves as it is only a delivery to a disabled endpoint.
            let disabled = self.store.disabled_endpoints().await?;
            let why = disabled
                .iter()
                .find(|e| e.url == d.endpoint)
                .map_or(String::new(), |e| format!(" since {} ({})", e.at, e.reason));
            return Err(EngineError::Conflict(format!(
                "delivery `{id}` goes to {}, disabled{why}: nothing is sent to it any more",
                d.endpoint
            )));
        }
        self.events_appended(); // wakes the delivery loop
        Ok(d)
    }
}

#[cfg(test)]
mod tests;
