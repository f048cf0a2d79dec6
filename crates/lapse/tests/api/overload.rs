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

both_stores!(past_the_limit_requests_are_refused_quickly_and_probes_still_answer);
