//! Figures of a running `lapse serve` at full size: heartbeats against a no-op endpoint, the
//! lag of a burst of expiries under heartbeat load, and resident memory after it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lapse_core::store::EventQuery;
use lapse_core::{Event, EventType, Store, Timestamp};
use lapse_store::testing::synthetic_sessions;

use crate::measure::{interleave, percentile};
use crate::report::{self, Row};
use crate::server::{Request, Requests, Server, paced_until, send_all, throughput};

/// Heartbeats a second while a burst comes due (SPEC §7: 20k heartbeats/s).
pub const BEATS_PER_SEC: u64 = 20_000;

/// How long each load run lasts, and how many rounds.
pub struct Load {
    pub rounds: usize,
    pub seconds: f64,
    pub burst: usize,
    /// Event streams held open at once.
    pub streams: usize,
    /// The kind of a burst's sessions, and how long after creation they expire unused.
    pub burst_kind: &'static str,
    pub burst_after: Duration,
}

/// Fills the database at `url` with `live` rooms created now (real time: the server runs on
/// the system clock), each with a host and two members.
pub async fn fill(url: &str, live: usize) {
    let store = lapse_store::open(url, None, None)
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
    drop(store);
    // SQLite's write-ahead log of the filling is copied into the database now, as part of
    // the setup: otherwise the server's first write copies it, inside the first figure.
    if url.starts_with("sqlite:") {
        let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(url)
            .await
            .expect("the database opens");
        sqlx::raw_sql("pragma wal_checkpoint(truncate)")
            .execute(&mut conn)
            .await
            .expect("the log is copied");
    }
    eprintln!(
        "  served database: {live} live sessions in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Heartbeats over 10k live rooms, written out once, so the load generator spends nothing on
/// them while it measures: the first 10k (one import chunk, neighbours in the tables), or, with
/// `spread`, every `live / 10k`th, so that at a million each room beaten lies on pages of its
/// own, as rooms that happen to be busy at once do.
pub fn heartbeats(live: usize, spread: bool) -> Requests {
    let rooms = live.clamp(1, 10_000);
    let step = if spread { live / rooms } else { 1 };
    let requests: Vec<Request> = (0..rooms)
        .map(|i| {
            // Rooms are named by import chunk of 10k, hosts by place in it (`fill`).
            let n = i * step;
            Request::post(
                &format!("/v1/sessions/live{}-{}/heartbeat", n / 10_000, n % 10_000),
                &format!(r#"{{"user":"h{}"}}"#, n % 10_000),
            )
        })
        .collect();
    Arc::new(move |n| requests[(n % rooms as u64) as usize].clone())
}

/// Heartbeats over all `live` rooms, spread, each once in `live` requests, as from clients
/// that beat every 15-30 s: a room is not held in memory, and its activity as stored is older
/// than the idle grace, so each beat is written before it is answered; its room is not read
/// first, the write itself checks that the room lets the beat stand.
fn seldom_heartbeats(live: usize) -> Requests {
    let live = live.max(1);
    // Counted across runs, so no round beats a room an earlier round held in memory.
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    Arc::new(move |_| {
        let n = sent.fetch_add(1, Ordering::Relaxed);
        // 7,919 is prime and divides no population the bench fills: every room once.
        let n = n.wrapping_mul(7_919) % live;
        Request::post(
            &format!("/v1/sessions/live{}-{}/heartbeat", n / 10_000, n % 10_000),
            &format!(r#"{{"user":"h{}"}}"#, n % 10_000),
        )
    })
}

/// Heartbeat endpoint vs `GET /livez`, side by side; then vs an empty heartbeat batch, whose
/// HTTP is a heartbeat's without the beat, shown to tell lapse's part of the ratio from HTTP's;
/// and beats as clients that beat seldom send them, against those answered from memory.
pub async fn heartbeat_vs_noop(server: &Server, load: &Load, live: usize) -> Vec<Row> {
    let run = Duration::from_secs_f64(load.seconds);
    let fixed = |req: Request| -> Requests { Arc::new(move |_| req.clone()) };
    let livez = fixed(Request::get("/livez"));
    // HTTP's part of a heartbeat without lapse's: a request with a JSON body and
    // credentials, through the same routes and limits, that takes no beat.
    let empty = fixed(Request::post("/v1/heartbeats", r#"{"beats":[]}"#));
    let beats = heartbeats(live, false);
    // Once over every room and the no-ops first, unmeasured: the first round would otherwise
    // count the server taking each room into memory, which the common case has done.
    let rooms = live.clamp(1, 10_000) as u64;
    send_all(&server.addr, 32, rooms, beats.clone()).await;
    send_all(&server.addr, 32, rooms, livez.clone()).await;
    send_all(&server.addr, 32, rooms, empty.clone()).await;
    let rate = |make: &Requests| {
        let make = make.clone();
        async move { throughput(&server.addr, 32, run, make).await.0 }
    };
    // Beats answered from memory. Their rooms went quiet while the other side ran, longer
    // than the idle grace: the first beat of each is written before it is answered (the
    // `seldom` figure's cost), so an unmeasured pass over them comes first, and the round
    // measures rooms beaten several times a second, as a steady load keeps them.
    let from_memory = || async {
        send_all(&server.addr, 32, rooms, beats.clone()).await;
        rate(&beats).await
    };
    let by_round = |what: &str, pair: &crate::measure::Pair| {
        let rounds: Vec<String> = pair.ratios().iter().map(|r| format!("{r:.2}")).collect();
        eprintln!("  heartbeat / {what} by round: {}", rounds.join(" "));
    };
    let pair = interleave(load.rounds, from_memory, || rate(&livez)).await;
    by_round("livez", &pair);
    let bound = interleave(load.rounds, from_memory, || rate(&empty)).await;
    by_round("empty batch", &bound);
    let seldom = seldom_heartbeats(live);
    let written = interleave(load.rounds, || rate(&seldom), from_memory).await;
    vec![
        report::ratio(
            "heartbeat endpoint vs no-op endpoint (`/livez`), HTTP, over 10k sessions",
            "≥ 0.80",
            &pair,
            ["heartbeat", "/livez"],
            "req/s",
            |x| x >= 0.8,
        ),
        report::shown_ratio(
            "heartbeat endpoint vs an empty batch (`POST /v1/heartbeats`, no beat: the same HTTP, body and credentials), over 10k sessions",
            "none: what of the row above is lapse's",
            &bound,
            ["heartbeat", "empty batch"],
            "req/s",
        ),
        report::shown_ratio(
            &format!(
                "heartbeats each a room's first in a while (over all {} rooms, none held: written before the answer) vs heartbeats over 10k rooms (from memory)",
                crate::engine::human(live)
            ),
            "none: what a beat costs that lapse must write before answering",
            &written,
            ["seldom", "from memory"],
            "req/s",
        ),
    ]
}

/// `/metrics` scraped from 8 connections at once, against `/livez`, over `live` sessions:
/// what a scrape costs once counting every session takes a while (it takes no credentials).
pub async fn metrics_vs_noop(server: &Server, load: &Load, live: usize) -> Row {
    let run = Duration::from_secs_f64(load.seconds);
    let fixed = |req: Request| -> Requests { Arc::new(move |_| req.clone()) };
    let (metrics, livez) = (
        fixed(Request::get("/metrics")),
        fixed(Request::get("/livez")),
    );
    let rate = |make: &Requests| {
        let make = make.clone();
        async move { throughput(&server.addr, 8, run, make).await.0 }
    };
    let pair = interleave(load.rounds, || rate(&metrics), || rate(&livez)).await;
    report::shown_ratio(
        &format!(
            "`/metrics` scrapes vs `/livez`, 8 connections, {} live",
            crate::engine::human(live)
        ),
        "none: what a scrape costs where counting sessions reads a million",
        &pair,
        ["/metrics", "/livez"],
        "req/s",
    )
}

/// Lags `applied_at - at` of a burst of sessions that expire unused soon after they are created,
/// created through `servers` in turn as fast as they take them, with heartbeats at a steady
/// rate while they come due; and the heartbeats' rate. The heartbeats start once the burst is
/// created, or when its first sessions come due if creating it takes longer, and go on until
/// its last has been due for a second. With several servers, each takes the beats of its own
/// share of the rooms, as behind a load balancer that routes by session (the README says
/// why: each instance writes the beats it took, so a room beaten through both is written
/// twice as often).
pub async fn burst(servers: &[&Server], url: &str, load: &Load, live: usize) -> (Vec<f64>, f64) {
    let store = lapse_store::open(url, None, None)
        .await
        .expect("the database opens");
    let of = servers.len() as u64;
    let beats: Vec<_> = (0..of)
        .map(|i| {
            let all = heartbeats(live, true);
            // Server `i` of `of` beats rooms `i`, `i + of`, ...
            let mine: Requests = Arc::new(move |n| all(n * of + i));
            mine
        })
        .collect();
    // Each server takes one beat of each of its rooms first, unmeasured: a room beaten every
    // second is held in memory, and the figure's load is the heartbeats of held rooms.
    let rooms = live.clamp(1, 10_000) as u64 / of;
    let warm = servers
        .iter()
        .zip(&beats)
        .map(|(server, mine)| send_all(&server.addr, 32, rooms, mine.clone()));
    futures::future::join_all(warm).await;

    let after = store.last_event_seq().await.expect("the events' end");
    let started = Instant::now();
    let share = (load.burst / servers.len()) as u64;
    let created = tokio::sync::Notify::new();
    let stop = Arc::new(AtomicBool::new(false));
    let creating = async {
        let creates = servers.iter().enumerate().map(|(i, server)| {
            let kind = load.burst_kind;
            let create: Requests = Arc::new(move |n| {
                Request::post(
                    "/v1/sessions",
                    &format!(r#"{{"kind":"{kind}","host":"bh{i}-{n}","id":"burst{i}-{n}"}}"#),
                )
            });
            send_all(&server.addr, 16, share, create)
        });
        let sent = futures::future::join_all(creates).await;
        created.notify_one();
        let refused: u64 = sent.iter().map(|(_, r)| r).sum();
        eprintln!(
            "  burst of {} created in {:.1} s ({refused} refused)",
            share * servers.len() as u64 - refused,
            started.elapsed().as_secs_f64()
        );
        // The last session created comes due `burst_after` from now.
        tokio::time::sleep(load.burst_after + Duration::from_secs(1)).await;
        stop.store(true, Ordering::Relaxed);
        refused
    };
    let beating = async {
        tokio::select! {
            _ = created.notified() => {}
            _ = tokio::time::sleep(load.burst_after) => {}
        }
        let from = Instant::now();
        let rate = BEATS_PER_SEC / of;
        let sent = servers
            .iter()
            .zip(&beats)
            .map(|(server, mine)| paced_until(&server.addr, rate, &stop, mine.clone()));
        let sent: u64 = futures::future::join_all(sent).await.into_iter().sum();
        let secs = from.elapsed().as_secs_f64();
        eprintln!("  heartbeats for {secs:.1} s while the burst came due");
        sent as f64 / secs
    };
    let (refused, beat_rate) = tokio::join!(creating, beating);
    let made = share * servers.len() as u64 - refused;
    let lags = expiry_lags(store.as_ref(), load.burst_kind, after, made).await;
    (lags, beat_rate)
}

/// Lags `applied_at - at` of the `session.expired` events of `kind` after `after`, once there
/// are `count` of them (or a minute has passed).
pub async fn expiry_lags(store: &dyn Store, kind: &str, after: i64, count: u64) -> Vec<f64> {
    let mut expired = Vec::new();
    for _ in 0..120 {
        expired = expiries(store, kind, after).await;
        if expired.len() as u64 >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    expired
        .iter()
        .map(|e| e.applied_at.since(e.at).millis() as f64)
        .collect()
}

/// The `session.expired` events of `kind` after `after`, read a page at a time.
pub async fn expiries(store: &dyn Store, kind: &str, mut after: i64) -> Vec<Event> {
    let mut all = Vec::new();
    loop {
        let page = store
            .events(&EventQuery {
                after,
                limit: 1000,
                kind: Some(kind.into()),
                types: vec![EventType::SessionExpired],
                session: None,
            })
            .await
            .expect("events");
        let Some(last) = page.last() else {
            return all;
        };
        after = last.seq;
        all.extend(page);
    }
}

/// The row of a burst's lags.
pub fn lag_row(figure: String, target_ms: f64, lags: &[f64], beat_rate: f64) -> Row {
    let p99 = percentile(lags, 0.99);
    Row {
        figure,
        target: format!("p99 ≤ {}", short_ms(target_ms)),
        measured: format!("p99 {p99:.0} ms"),
        spread: format!(
            "p50 {:.0} ms, max {:.0} ms",
            percentile(lags, 0.5),
            percentile(lags, 1.0)
        ),
        detail: format!("heartbeats meanwhile: {beat_rate:.0}/s"),
        verdict: if p99 <= target_ms {
            report::Verdict::Met
        } else {
            report::Verdict::Missed
        },
    }
}

fn short_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.0} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

/// A burst's lag on one instance over SQLite, then the server's memory.
pub async fn burst_lag(server: &Server, url: &str, load: &Load, live: usize) -> Vec<Row> {
    let (lags, beat_rate) = burst(&[server], url, load, live).await;
    let rss = server.rss_mb();
    vec![
        lag_row(
            format!(
                "lag `applied_at - at`, {} live, burst of {} under heartbeat load (SQLite)",
                crate::engine::human(live),
                lags.len()
            ),
            250.0,
            &lags,
            beat_rate,
        ),
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
