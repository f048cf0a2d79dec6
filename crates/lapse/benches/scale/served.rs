//! Figures of a running `lapse serve` at full size: heartbeats against a no-op endpoint, the
//! lag of a burst of expiries under heartbeat load, and resident memory after it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapse_core::store::EventQuery;
use lapse_core::{EventType, Timestamp};
use lapse_store::testing::synthetic_sessions;

use crate::measure::{interleave, percentile};
use crate::report::{self, Row};
use crate::server::{Request, Server, paced, send_all, throughput};

/// Heartbeats a second while a burst comes due.
const BEATS_PER_SEC: u64 = 10_000;

/// How long each load run lasts, and how many rounds.
pub struct Load {
    pub rounds: usize,
    pub seconds: f64,
    pub burst: usize,
    /// Event streams held open at once.
    pub streams: usize,
}

/// Fills `db` with `live` rooms created now (real time: the server runs on the system clock),
/// each with a host and two members.
pub async fn fill(db: &Path, live: usize) {
    let store = lapse_store::open(&format!("sqlite://{}", db.display()), None, None)
        .await
        .expect("the database opens");
    store.migrate().await.expect("migrate");
    let config = crate::world::config();
    let now = Timestamp::from_millis(chrono::Utc::now().timestamp_millis());
    let started = Instant::now();
    for chunk in 0..live.div_ceil(10_000) {
        let n = 10_000.min(live - chunk * 10_000);
        let sessions = synthetic_sessions(
            &config.kinds["room"],
            &format!("live{chunk}-"),
            n,
            n,
            2,
            now,
        );
        store.import(&sessions).await.expect("import");
    }
    eprintln!(
        "  served database: {live} live sessions in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Heartbeats spread over the first 10k live rooms (all in the first import chunk).
fn heartbeats(live: usize) -> Arc<dyn Fn(u64) -> Request + Send + Sync> {
    let rooms = live.clamp(1, 10_000) as u64;
    Arc::new(move |n| {
        let i = n % rooms;
        Request::post(
            &format!("/v1/sessions/live0-{i}/heartbeat"),
            &format!(r#"{{"user":"h{i}"}}"#),
        )
    })
}

/// Heartbeat endpoint vs `GET /livez`, side by side.
pub async fn heartbeat_vs_noop(server: &Server, load: &Load, live: usize) -> Row {
    let run = Duration::from_secs_f64(load.seconds);
    let livez: Arc<dyn Fn(u64) -> Request + Send + Sync> = {
        let req = Request::get("/livez");
        Arc::new(move |_| req.clone())
    };
    let beats = heartbeats(live);
    let pair = interleave(
        load.rounds,
        || async { throughput(&server.addr, 32, run, beats.clone()).await.0 },
        || async { throughput(&server.addr, 32, run, livez.clone()).await.0 },
    )
    .await;
    report::ratio(
        "heartbeat endpoint vs no-op endpoint (`/livez`), HTTP, over 10k sessions",
        "≥ 0.80",
        &pair,
        ["heartbeat", "/livez"],
        "req/s",
        |x| x >= 0.8,
    )
}

/// Creates a burst of sessions that expire 20 s later, under heartbeat load, and measures
/// `applied_at - at` of their expiries; then the server's memory.
pub async fn burst_lag(server: &Server, db: &Path, load: &Load, live: usize) -> Vec<Row> {
    let create: Arc<dyn Fn(u64) -> Request + Send + Sync> = Arc::new(|n| {
        Request::post(
            "/v1/sessions",
            &format!(r#"{{"kind":"burst","host":"bh{n}","id":"burst-{n}"}}"#),
        )
    });
    // The burst goes in as fast as the server takes it.
    let started = Instant::now();
    let (secs, refused) = send_all(&server.addr, 16, load.burst as u64, create).await;
    let made = load.burst as u64 - refused;
    eprintln!(
        "  burst of {made} created in {secs:.1} s ({refused} refused); heartbeats until they expire"
    );
    // Heartbeats keep coming, at a steady rate, while the burst comes due.
    let until = Duration::from_secs(22).saturating_sub(started.elapsed()) + Duration::from_secs(3);
    let beats = paced(
        &server.addr,
        BEATS_PER_SEC,
        until.as_secs_f64(),
        heartbeats(live),
    )
    .await;
    let beat_rate = beats as f64 / until.as_secs_f64();

    let store = lapse_store::open(&format!("sqlite://{}", db.display()), None, None)
        .await
        .expect("the database opens");
    let mut lags = Vec::new();
    for _ in 0..120 {
        lags.clear();
        let mut after = 0;
        loop {
            let page = store
                .events(&EventQuery {
                    after,
                    limit: 1000,
                    kind: Some("burst".into()),
                    types: vec![EventType::SessionExpired],
                    session: None,
                })
                .await
                .expect("events");
            let Some(last) = page.last() else { break };
            after = last.seq;
            lags.extend(
                page.iter()
                    .map(|e| e.applied_at.since(e.at).millis() as f64),
            );
        }
        if lags.len() as u64 >= made {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let rss = server.rss_mb();
    let p99 = percentile(&lags, 0.99);
    vec![
        Row {
            figure: format!(
                "lag `applied_at - at`, {} live, burst of {} under heartbeat load (SQLite)",
                crate::engine::human(live),
                lags.len()
            ),
            target: "p99 ≤ 250 ms".into(),
            measured: format!("p99 {p99:.0} ms"),
            spread: format!(
                "p50 {:.0} ms, max {:.0} ms",
                percentile(&lags, 0.5),
                percentile(&lags, 1.0)
            ),
            detail: format!("heartbeats meanwhile: {beat_rate:.0}/s"),
            verdict: if p99 <= 250.0 {
                report::Verdict::Met
            } else {
                report::Verdict::Missed
            },
        },
        report::value(
            &format!(
                "resident memory of `lapse serve`, {} live, after the burst and heartbeats",
                crate::engine::human(live)
            ),
            "RSS ≤ 300 MB",
            &[rss],
            "MB",
            |v| v <= 300.0,
        ),
    ]
}
