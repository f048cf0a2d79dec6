//! Webhooks end to end: a local receiver that answers as each test scripts it, signatures
//! checked with the Standard Webhooks scheme, retries with the same `webhook-id`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::helpers::*;

#[derive(Clone, Debug)]
struct Received {
    headers: HeaderMap,
    body: String,
}

#[derive(Default)]
struct Script {
    answers: VecDeque<(u16, Option<&'static str>)>,
    received: Vec<Received>,
    /// How long to wait before answering the first requests, one each.
    delays: VecDeque<Duration>,
    /// How long to wait before answering the others.
    delay: Duration,
    /// Requests taken and not yet answered, and the most there were at once.
    open: usize,
    most_open: usize,
}

/// A webhook receiver on a free port; answers with the scripted statuses, then 200.
async fn receiver(answers: &[(u16, Option<&'static str>)]) -> (String, Arc<Mutex<Script>>) {
    let script = Arc::new(Mutex::new(Script {
        answers: answers.iter().copied().collect(),
        ..Script::default()
    }));
    // Each answer is a status and, for a redirect its Location, otherwise a Retry-After.
    async fn hook(
        State(s): State<Arc<Mutex<Script>>>,
        headers: HeaderMap,
        body: String,
    ) -> impl IntoResponse {
        let (status, header, delay) = {
            let mut s = s.lock().unwrap();
            s.received.push(Received { headers, body });
            let (status, header) = s.answers.pop_front().unwrap_or((200, None));
            let delay = s.delays.pop_front().unwrap_or(s.delay);
            s.open += 1;
            s.most_open = s.most_open.max(s.open);
            (status, header, delay)
        };
        // Answered, or dropped when lapse gives up waiting: no longer open either way.
        struct Open(Arc<Mutex<Script>>);
        impl Drop for Open {
            fn drop(&mut self) {
                self.0.lock().unwrap().open -= 1;
            }
        }
        let _open = Open(s.clone());
        tokio::time::sleep(delay).await;
        let mut h = HeaderMap::new();
        match (status, header) {
            (300..=399, Some(to)) => {
                h.insert("location", to.parse().unwrap());
            }
            (_, Some(r)) => {
                h.insert("retry-after", r.parse().unwrap());
            }
            _ => {}
        }
        (StatusCode::from_u16(status).unwrap(), h, "")
    }
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(script.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, script)
}

fn config(url: &str, extra: &str) -> String {
    format!(
        "[[webhooks]]\nurl = \"{url}\"\nsecret_env = \"LAPSE_WEBHOOK_SECRET\"\nevents = [\"session.*\"]\n{extra}"
    )
}

/// Creates `n` study rooms one after another: an event each for the endpoints.
async fn create_rooms(app: &TestApp, n: usize) {
    for i in 0..n {
        app.create("study", &format!("room-{i}"), "alice", json!({}))
            .await;
    }
}

/// Waits (boundedly) until the delivery log satisfies `done`.
async fn deliveries_until(app: &TestApp, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    for _ in 0..200 {
        let page = app
            .get(As::Admin, "/v1/webhooks/deliveries?limit=1000")
            .await
            .expect(200);
        let list = page["deliveries"].as_array().unwrap().clone();
        if done(&list) {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("deliveries never reached the expected state");
}

fn verify(r: &Received) {
    let id = r.headers["webhook-id"].to_str().unwrap();
    let ts = r.headers["webhook-timestamp"].to_str().unwrap();
    let key = BASE64
        .decode(WEBHOOK_SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = <Hmac<Sha256>>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.{}", r.body).as_bytes());
    let expected = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
    let header = r.headers["webhook-signature"].to_str().unwrap();
    assert!(
        header.split(' ').any(|s| s == expected),
        "{header} lacks {expected}"
    );
    let now = chrono::Utc::now().timestamp();
    assert!(
        (now - ts.parse::<i64>().unwrap()).abs() < 60,
        "the timestamp is this attempt's"
    );
}

async fn a_failed_delivery_is_retried_with_the_same_webhook_id(backend: Backend) {
    let (url, script) = receiver(&[(500, None)]).await;
    let app = spawn_app_with(backend, Some(&config(&url, ""))).await;
    app.create("study", "hooked", "alice", json!({})).await;

    let list = deliveries_until(&app, |l| l.len() == 1 && l[0]["attempts"] == 1).await;
    assert_eq!(list[0]["status"], "pending");
    assert_eq!(
        list[0]["event_type"], "session.created",
        "participant.* is not subscribed"
    );
    assert_eq!(list[0]["last_status"], 500);
    assert_eq!(
        list[0]["next_attempt_at"],
        at(START, "5s"),
        "the second try waits 5 s"
    );

    app.advance("5s").await;
    let list = deliveries_until(&app, |l| l[0]["status"] == "delivered").await;
    assert_eq!(list[0]["attempts"], 2);
    let received = script.lock().unwrap().received.clone();
    assert_eq!(received.len(), 2);
    assert_eq!(
        received[0].headers["webhook-id"],
        received[1].headers["webhook-id"]
    );
    assert_eq!(
        received[0].body, received[1].body,
        "every attempt sends the same bytes"
    );
    let event: Value = serde_json::from_str(&received[1].body).unwrap();
    assert_eq!(event["type"], "session.created");
    assert_eq!(
        received[1].headers["webhook-id"].to_str().unwrap(),
        event["id"]
    );
    received.iter().for_each(verify);
}

async fn retry_after_is_honoured_and_the_last_failure_is_dead(backend: Backend) {
    let (url, _script) = receiver(&[(503, Some("120")), (500, None), (200, None)]).await;
    let app = spawn_app_with(
        backend,
        Some(&config(&url, "[delivery]\nretry = [\"0s\", \"5s\"]\n")),
    )
    .await;
    app.create("study", "busy", "alice", json!({})).await;
    let list = deliveries_until(&app, |l| l.len() == 1 && l[0]["attempts"] == 1).await;
    assert_eq!(
        list[0]["next_attempt_at"],
        at(START, "120s"),
        "Retry-After beats the 5 s plan"
    );

    app.advance("2m").await;
    let list = deliveries_until(&app, |l| l[0]["status"] == "dead").await;
    assert_eq!(list[0]["attempts"], 2);
    let id = list[0]["id"].as_str().unwrap();
    let dead = app
        .get(As::Admin, "/v1/webhooks/deliveries?status=dead")
        .await
        .expect(200);
    assert_eq!(dead["deliveries"].as_array().unwrap().len(), 1);

    let retried = app
        .post_empty(As::Admin, &format!("/v1/webhooks/deliveries/{id}/retry"))
        .await
        .expect(200);
    assert_eq!(retried["status"], "pending");
    deliveries_until(&app, |l| l[0]["status"] == "delivered").await;
    app.post_empty(As::Admin, "/v1/webhooks/deliveries/nope/retry")
        .await
        .problem(404, "not_found");
    let alice = As::Bearer(crate::identity::jwt("alice", 3600));
    app.get(alice, "/v1/webhooks/deliveries")
        .await
        .problem(403, "forbidden");
}

async fn an_endpoint_that_answers_gone_is_disabled(backend: Backend) {
    let (url, script) = receiver(&[(410, None)]).await;
    let app = spawn_app_with(backend, Some(&config(&url, ""))).await;
    let endpoints = app
        .get(As::Admin, "/v1/webhooks/endpoints")
        .await
        .expect(200);
    assert_eq!(endpoints["endpoints"][0]["url"], url.as_str());
    assert_eq!(endpoints["endpoints"][0]["state"], "active");
    app.create("study", "gone-1", "alice", json!({})).await;
    let list = deliveries_until(&app, |l| l.len() == 1 && l[0]["status"] == "dead").await;
    assert_eq!(list[0]["last_status"], 410);
    app.create("study", "gone-2", "alice", json!({})).await;
    app.start("gone-2", "alice").await;
    let page = app
        .get(As::Admin, "/v1/webhooks/deliveries")
        .await
        .expect(200);
    assert_eq!(
        page["deliveries"].as_array().unwrap().len(),
        1,
        "nothing more is queued for it"
    );
    assert_eq!(script.lock().unwrap().received.len(), 1);
    let endpoints = app
        .get(As::Admin, "/v1/webhooks/endpoints")
        .await
        .expect(200);
    let gone = &endpoints["endpoints"][0];
    assert_eq!(gone["state"], "disabled");
    assert!(
        gone["disabled_at"].is_string() && gone["reason"].is_string(),
        "{gone}"
    );

    // An operator's retry is refused with the reason; the delivery stays dead.
    let id = list[0]["id"].as_str().unwrap();
    let refused = app
        .post_empty(As::Admin, &format!("/v1/webhooks/deliveries/{id}/retry"))
        .await
        .problem(409, "conflict");
    assert!(
        refused["detail"].as_str().unwrap().contains("410 Gone"),
        "{refused}"
    );
    let dead = app
        .get(As::Admin, "/v1/webhooks/deliveries?status=dead")
        .await
        .expect(200);
    assert_eq!(dead["deliveries"][0]["id"], id);
    assert_eq!(script.lock().unwrap().received.len(), 1);
}

async fn a_delivery_queued_before_a_restart_is_still_delivered(backend: Backend) {
    let (url, script) = receiver(&[(500, None)]).await;
    let mut app = spawn_app_with(backend, Some(&config(&url, ""))).await;
    app.create("study", "durable", "alice", json!({})).await;
    deliveries_until(&app, |l| l.len() == 1 && l[0]["attempts"] == 1).await;

    app.restart().await;
    app.advance("5s").await;
    let list = deliveries_until(&app, |l| l[0]["status"] == "delivered").await;
    assert_eq!(list[0]["attempts"], 2);
    let received = script.lock().unwrap().received.clone();
    assert_eq!(
        received[0].headers["webhook-id"],
        received[1].headers["webhook-id"]
    );
}

async fn a_delivery_to_an_endpoint_no_longer_configured_ends_dead(backend: Backend) {
    let (old, old_script) = receiver(&[(500, None)]).await;
    let mut app = spawn_app_with(backend, Some(&config(&old, ""))).await;
    app.create("study", "before", "alice", json!({})).await;
    deliveries_until(&app, |l| l.len() == 1 && l[0]["attempts"] == 1).await;

    // Started again with another endpoint in its place; the retry comes due 5 s later.
    let (new, new_script) = receiver(&[]).await;
    app.restart_with(Some(config(&new, ""))).await;
    app.create("study", "after", "alice", json!({})).await;
    app.advance("5s").await;
    let list = deliveries_until(&app, |l| {
        l.len() == 2 && l.iter().all(|d| d["status"] != "pending")
    })
    .await;
    let to = |url: &str| {
        list.iter()
            .find(|d| d["endpoint"] == url)
            .unwrap_or_else(|| panic!("a delivery to {url} in {list:?}"))
    };
    assert_eq!(to(&old)["status"], "dead");
    assert_eq!(
        to(&old)["last_error"],
        "the endpoint is no longer configured"
    );
    assert_eq!(to(&new)["status"], "delivered");
    assert_eq!(
        old_script.lock().unwrap().received.len(),
        1,
        "not tried again"
    );
    assert_eq!(new_script.lock().unwrap().received.len(), 1);
}

async fn redirects_are_not_followed_and_slow_endpoints_time_out(backend: Backend) {
    let (target, target_script) = receiver(&[]).await;
    let redirect: &'static str = Box::leak(target.clone().into_boxed_str());
    let (url, script) = receiver(&[(307, Some(redirect))]).await;
    let app = spawn_app_with(
        backend,
        Some(&config(&url, "[delivery]\ntimeout = \"500ms\"\n")),
    )
    .await;
    app.create("study", "moved", "alice", json!({})).await;
    let list = deliveries_until(&app, |l| l.len() == 1 && l[0]["attempts"] == 1).await;
    assert_eq!(list[0]["status"], "pending");
    assert_eq!(
        list[0]["last_status"], 307,
        "a redirect is a failed attempt"
    );
    assert!(
        target_script.lock().unwrap().received.is_empty(),
        "and is not followed"
    );

    script.lock().unwrap().delay = Duration::from_secs(2);
    app.advance("5s").await;
    let list = deliveries_until(&app, |l| l[0]["attempts"] == 2).await;
    assert_eq!(list[0]["status"], "pending");
    assert!(list[0]["last_status"].is_null());
    assert_eq!(list[0]["last_error"], "no answer in time");
}

async fn an_endpoint_gets_only_the_kinds_it_asked_for(backend: Backend) {
    let (url, script) = receiver(&[]).await;
    let app = spawn_app_with(backend, Some(&config(&url, "kinds = [\"coding\"]\n"))).await;
    app.create("study", "not-mine", "alice", json!({})).await;
    app.create("coding", "mine", "alice", json!({})).await;
    let list = deliveries_until(&app, |l| l.len() == 1 && l[0]["status"] == "delivered").await;
    let event: Value = serde_json::from_str(&script.lock().unwrap().received[0].body).unwrap();
    assert_eq!(event["session_id"], "mine");
    assert_eq!(list.len(), 1);
}

async fn an_endpoint_that_does_not_answer_holds_back_no_other(backend: Backend) {
    // One endpoint takes longer than the test to answer (within the timeout); the other
    // answers at once. Each event goes to both.
    let (stuck, stuck_script) = receiver(&[]).await;
    stuck_script.lock().unwrap().delay = Duration::from_secs(120);
    let (quick, quick_script) = receiver(&[]).await;
    let config = format!(
        "{}{}[delivery]\ntimeout = \"60s\"\n",
        config(&stuck, ""),
        config(&quick, "")
    );
    let app = spawn_app_with(backend, Some(&config)).await;
    let sessions = 100;
    create_rooms(&app, sessions).await;
    let events = app
        .get(As::Admin, "/v1/events?limit=1000")
        .await
        .expect(200);
    let events = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"].as_str().unwrap().starts_with("session."))
        .count();
    assert!(events >= sessions, "every create is a `session.` event");
    // Every event reaches the endpoint that answers, while the other has not answered one.
    for _ in 0..200 {
        if quick_script.lock().unwrap().received.len() >= events {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let quick_got = quick_script.lock().unwrap().received.len();
    assert_eq!(
        quick_got, events,
        "the endpoint that answers got every event while the other kept its attempts waiting"
    );
    let stuck_got = stuck_script.lock().unwrap().received.len();
    assert!(stuck_got > 0, "the other was tried too");
    let stuck_delivered = app
        .get(
            As::Admin,
            "/v1/webhooks/deliveries?status=delivered&limit=1000",
        )
        .await
        .expect(200)["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["endpoint"] == stuck.as_str())
        .count();
    assert_eq!(stuck_delivered, 0, "and has answered none yet");
}

async fn slow_answers_hold_back_no_other_delivery_to_their_endpoint(backend: Backend) {
    // The endpoint answers its first 20 requests after two minutes (within the timeout),
    // more than half the places an endpoint has, and every other one at once.
    let slow = 20;
    let (url, script) = receiver(&[]).await;
    script
        .lock()
        .unwrap()
        .delays
        .extend(std::iter::repeat_n(Duration::from_secs(120), slow));
    let app = spawn_app_with(
        backend,
        Some(&config(&url, "[delivery]\ntimeout = \"180s\"\n")),
    )
    .await;
    let sessions = 100;
    create_rooms(&app, sessions).await;
    // Every delivery but those awaiting their answers is delivered meanwhile.
    let list = deliveries_until(&app, |l| {
        l.len() >= sessions
            && l.iter().filter(|d| d["status"] == "delivered").count() == l.len() - slow
    })
    .await;
    let waiting: Vec<&Value> = list.iter().filter(|d| d["status"] != "delivered").collect();
    assert_eq!(waiting.len(), slow);
    for d in waiting {
        assert_eq!(d["status"], "pending");
        assert_eq!(d["attempts"], 0, "its answer is still awaited");
    }
    assert_eq!(script.lock().unwrap().received.len(), list.len());
}

async fn an_endpoint_has_no_more_attempts_under_way_than_configured(backend: Backend) {
    // Every answer takes 250 ms and the 30 sessions are created a few ms apart, so their
    // deliveries would nearly all be under way at once but for `max_in_flight`; and all of
    // its places are used.
    let (url, script) = receiver(&[]).await;
    script.lock().unwrap().delay = Duration::from_millis(250);
    let app = spawn_app_with(
        backend,
        Some(&config(&url, "[delivery]\nmax_in_flight = 3\n")),
    )
    .await;
    let sessions = 30;
    create_rooms(&app, sessions).await;
    deliveries_until(&app, |l| {
        l.len() >= sessions && l.iter().all(|d| d["status"] == "delivered")
    })
    .await;
    let script = script.lock().unwrap();
    assert_eq!(script.received.len(), sessions);
    assert_eq!(script.most_open, 3, "attempts under way at once, at most");
}

both_stores!(
    an_endpoint_has_no_more_attempts_under_way_than_configured,
    slow_answers_hold_back_no_other_delivery_to_their_endpoint,
    an_endpoint_that_does_not_answer_holds_back_no_other,
    a_delivery_to_an_endpoint_no_longer_configured_ends_dead,
    redirects_are_not_followed_and_slow_endpoints_time_out,
    an_endpoint_gets_only_the_kinds_it_asked_for,
    a_delivery_queued_before_a_restart_is_still_delivered,
    a_failed_delivery_is_retried_with_the_same_webhook_id,
    retry_after_is_honoured_and_the_last_failure_is_dead,
    an_endpoint_that_answers_gone_is_disabled,
);
