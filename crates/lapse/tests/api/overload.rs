//! `[server] max_in_flight`: past that many requests answered at once, a request waits a
//! moment for a place and is then refused with 429 and `Retry-After`, quickly, rather than
//! queueing; probes are never refused.

use std::time::{Duration, Instant};

use lapse_core::{Config, Timestamp};

use crate::helpers::*;

const CONFIG: &str = "[server]\nmax_in_flight = 1\n";

async fn past_the_limit_requests_are_refused_quickly_and_probes_still_answer(backend: Backend) {
    let app = spawn_app_with(backend, Some(CONFIG)).await;
    // A sweep of thousands of due rooms holds the one place for a while.
    let store = lapse_store::open(&app.db_url, None, None).await.unwrap();
    let start: Timestamp = START.parse().unwrap();
    let config = Config::default();
    for chunk in 0..4 {
        let rooms = lapse_store::testing::synthetic_sessions(
            &config.kinds["study"],
            &format!("r{chunk}-"),
            1_000,
            1_000,
            0,
            start,
        );
        store.import(&rooms).await.unwrap();
    }
    app.advance("1h").await;

    let sweep = {
        let (client, base) = (app.client.clone(), app.base.clone());
        tokio::spawn(async move {
            client
                .post(format!("{base}/v1/sweep"))
                .bearer_auth(CRON_SECRET)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let asked = Instant::now();
    let refused = app.get(As::Admin, "/v1/stats").await;
    let took = asked.elapsed();
    let livez = app.get(As::Nobody, "/livez").await;
    assert_eq!(
        sweep.await.unwrap(),
        200,
        "the request holding the place is answered"
    );

    assert_eq!(
        refused
            .headers
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    let body = refused.problem(429, "rate_limited");
    assert!(
        body["detail"].as_str().unwrap().contains("at once (1)"),
        "{body}"
    );
    assert!(took < Duration::from_secs(1), "refused after {took:?}");
    assert_eq!(livez.status, 200, "probes are never refused");
    // Once the place is free, requests go through again.
    app.get(As::Admin, "/v1/stats").await.expect(200);
}

/// 3,000 unused study rooms come due (an hour on), and a sweep is asked for whose client
/// gives up 20 ms later, long before the sweep is done.
async fn sweep_abandoned_among_due_rooms(app: &TestApp) {
    let store = lapse_store::open(&app.db_url, None, None).await.unwrap();
    let start: Timestamp = START.parse().unwrap();
    let config = Config::default();
    let rooms = lapse_store::testing::synthetic_sessions(
        &config.kinds["study"],
        "r-",
        3_000,
        1_000,
        0,
        start,
    );
    store.import(&rooms).await.unwrap();
    app.advance("1h").await;

    let gave_up = app
        .client
        .post(format!("{}/v1/sweep", app.base))
        .bearer_auth(CRON_SECRET)
        .timeout(Duration::from_millis(20))
        .send()
        .await;
    assert!(
        gave_up.as_ref().is_err_and(reqwest::Error::is_timeout),
        "the client gave up before the answer: {gave_up:?}"
    );
}

/// A sweep asked for runs to its end even when the client stops waiting for the answer (a
/// cron job's `curl --max-time`): what it claimed is applied, not left half done and, on
/// PostgreSQL, leased to no one for a minute.
async fn a_sweep_whose_client_stops_waiting_still_applies_everything(backend: Backend) {
    let app = spawn_app(backend).await;
    sweep_abandoned_among_due_rooms(&app).await;
    // Unused study rooms are deleted. A manual clock runs no sweeper of its own: only the
    // abandoned sweep can delete them.
    let left = || async {
        let stats = app.get(As::Admin, "/v1/stats").await.expect(200);
        stats["sessions"]["total"].as_i64().unwrap()
    };
    let waited = Instant::now();
    loop {
        let left = left().await;
        if left == 0 {
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "{left} of 3000 rooms left due"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A sweep asked for while another is under way (a cron job trying again after its time
/// limit) waits for it: its answer comes once everything due is swept, and the two never
/// load the database at once.
async fn a_sweep_asked_for_while_another_runs_answers_once_that_one_is_done(backend: Backend) {
    let app = spawn_app(backend).await;
    sweep_abandoned_among_due_rooms(&app).await;
    let again = app.post_empty(As::Cron, "/v1/sweep").await.expect(200);
    let stats = app.get(As::Admin, "/v1/stats").await.expect(200);
    assert_eq!(
        stats["sessions"]["total"], 0,
        "every due room was swept when the second answer came"
    );
    assert_eq!(
        again["applied"].as_array().map(Vec::len),
        Some(0),
        "the first sweep applied them all, the second found nothing left: {}",
        again["counts"]
    );
}

both_stores!(
    past_the_limit_requests_are_refused_quickly_and_probes_still_answer,
    a_sweep_whose_client_stops_waiting_still_applies_everything,
    a_sweep_asked_for_while_another_runs_answers_once_that_one_is_done
);
