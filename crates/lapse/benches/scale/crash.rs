//! SPEC §7's last row at full size: `lapse serve` killed with `kill -9` again and again while
//! a storm of sessions comes due (sweeps) and heartbeats pour in (flushes), each time started
//! again at once on the same database. Judged afterwards from the database alone, as the crash
//! suite (`tests/process/crash.rs`) judges its smaller runs: no transition early, lost or
//! doubled, and every one applied within 2 s of an instance being up to sweep it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapse_core::{Event, Span, Store, Timestamp};

use crate::measure::percentile;
use crate::report::{Row, Verdict};
use crate::served::{BEATS_PER_SEC, expiries, heartbeats};
use crate::server::{Conn, Request, Requests, Server, paced_until};

// When to kill, and when an instance was up: the crash suite's own.
#[path = "../../tests/process/kills.rs"]
mod kills;
use kills::{Dice, Uptime};

/// SPEC §7: every transition applied this long after an instance could sweep it, at most.
const BOUND_MS: i64 = 2_000;
/// Rooms kept open by heartbeats through the storm (kind `kept`: idle 5 s): the first half
/// beaten every 200 ms, the rest every 3 s, more than the idle grace (2 s) apart.
const KEPT: usize = 100;
const KEPT_IDLE_MS: i64 = 5_000;

/// How often kept room `n` is beaten.
fn every(n: usize) -> Duration {
    if n < KEPT / 2 {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(3)
    }
}

/// The storm: how many sessions come due, over how long, and how far apart the kills fall.
pub struct Storm {
    pub sessions: usize,
    pub window: Duration,
    pub gaps: (Duration, Duration),
}

fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Stops `server`, adds the storm and the kept rooms to its database, then serves it through
/// the kills. Returns the row and the instance left running.
pub async fn kill_9(
    server: Server,
    url: &str,
    config: &Path,
    storm: &Storm,
    live: usize,
) -> (Row, Server) {
    server.stop();
    let store = lapse_store::open(url, None, None)
        .await
        .expect("the database opens");
    let after = store.last_event_seq().await.expect("the events' end");
    // The storm's deadlines run evenly from 2 s after the import over the window; the kept
    // rooms' idle time runs from now, so their beats must start within 5 s.
    let begin = wall_ms() + 2_000;
    let window = storm.window.as_millis() as i64;
    let deadline = |n: usize| begin + n as i64 * window / storm.sessions.max(1) as i64;
    import(store.as_ref(), "storm", storm.sessions, |n| {
        Timestamp::from_millis(deadline(n)) - Span::from_secs(1)
    })
    .await;
    import(store.as_ref(), "kept", KEPT, |_| {
        Timestamp::from_millis(wall_ms())
    })
    .await;

    let seed = wall_ms() as u64 | 1;
    let mut dice = Dice(seed);
    let mut up = Up::start(url, config).await;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let load = tokio::spawn(beat_through_kills(
        up.addr.clone(),
        stop.clone(),
        heartbeats(live, true),
    ));
    let kept = tokio::spawn(keep_alive(up.addr.clone(), stop.clone()));

    // Kill at random moments, start again at once, until the last deadline has passed.
    loop {
        let gap = dice.between(
            storm.gaps.0.as_millis() as u64,
            storm.gaps.1.as_millis() as u64,
        );
        tokio::time::sleep(Duration::from_millis(gap)).await;
        up.kill_and_restart().await;
        if wall_ms() >= begin + window {
            break;
        }
    }
    // Then stop the heartbeats and kill once more within a flush interval of their last: the
    // last beats acknowledged may be lost before they are written.
    stop.store(true, Ordering::Relaxed);
    let beats_sent = load.await.expect("the heartbeats ran");
    let beat_rate = beats_sent as f64 / started.elapsed().as_secs_f64();
    let (last_beat, acked) = kept.await.expect("the kept rooms' beats ran");
    tokio::time::sleep(Duration::from_millis(dice.between(0, 900))).await;
    up.kill_and_restart().await;
    let Up {
        server,
        since,
        mut uptime,
        mut restarts,
        ..
    } = up;
    uptime.0.push((since, i64::MAX));

    // Everything comes due now: the storm is over and the kept rooms go idle.
    let waited = Instant::now();
    let (mut storm_expired, mut kept_expired) = (Vec::new(), Vec::new());
    while waited.elapsed() < Duration::from_secs(60) {
        storm_expired = expiries(store.as_ref(), "storm", after).await;
        kept_expired = expiries(store.as_ref(), "kept", after).await;
        if storm_expired.len() >= storm.sessions && kept_expired.len() >= KEPT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let per_session = |events: &[Event]| {
        let mut n: HashMap<String, usize> = HashMap::new();
        for e in events {
            *n.entry(e.session_id.to_string()).or_default() += 1;
        }
        n
    };
    let (storm_by, kept_by) = (per_session(&storm_expired), per_session(&kept_expired));
    let doubled = storm_by
        .values()
        .chain(kept_by.values())
        .filter(|&&n| n > 1)
        .count();
    let lost =
        (storm.sessions - storm_by.len().min(storm.sessions)) + (KEPT - kept_by.len().min(KEPT));
    // Early: a storm session applied before its deadline, or a kept room before its idle
    // time had passed since its last acknowledged heartbeat.
    let early_storm = storm_expired.iter().filter(|e| e.applied_at < e.at).count();
    // How much earlier than the idle time after its last acknowledged beat each kept room
    // expired, by how often it was beaten: (rooms early, the most).
    let mut kept_early = [(0, 0); 2];
    for e in &kept_expired {
        let n: usize = e.session_id.as_str()["kept".len()..]
            .trim_end_matches("-0")
            .parse()
            .unwrap_or(0);
        let ms = last_beat[n] + KEPT_IDLE_MS - e.applied_at.millis();
        if ms > 0 {
            let half = &mut kept_early[usize::from(n >= KEPT / 2)];
            *half = (half.0 + 1, half.1.max(ms));
        }
    }
    let early = early_storm + kept_early[0].0 + kept_early[1].0;
    let early_by = |(rooms, ms): (usize, i64), every: &str| {
        (rooms > 0).then(|| format!("{rooms} of the rooms beaten every {every} by up to {ms} ms"))
    };
    let early_rooms: Vec<String> = early_by(kept_early[0], "200 ms")
        .into_iter()
        .chain(early_by(kept_early[1], "3 s"))
        .collect();
    // Late: applied more than the bound after an instance could sweep it.
    let lags: Vec<f64> = storm_expired
        .iter()
        .map(|e| (e.applied_at.millis() - uptime.available(e.at.millis())) as f64)
        .collect();
    let worst = percentile(&lags, 1.0);
    let late = lags.iter().filter(|&&l| l > BOUND_MS as f64).count();
    restarts.sort_unstable();
    eprintln!(
        "  kill -9 ×{} (seed {seed}): {} storm and {} kept expiries; {early} early, {lost} lost, {doubled} doubled, {late} late",
        restarts.len(),
        storm_expired.len(),
        kept_expired.len()
    );
    let row = Row {
        figure: format!(
            "kill -9 during flushes and sweeps, {} live: {} sessions coming due over {} s, heartbeats meanwhile (SQLite)",
            crate::engine::human(live),
            storm.sessions,
            storm.window.as_secs()
        ),
        target: "0 early, 0 lost, 0 doubled; all applied ≤ 2 s after restart".into(),
        measured: format!(
            "{early} early{}, {lost} lost, {doubled} doubled; max {worst:.0} ms",
            if early_rooms.is_empty() {
                String::new()
            } else {
                format!(" ({})", early_rooms.join("; "))
            }
        ),
        spread: format!(
            "p50 {:.0} ms, p99 {:.0} ms after an instance could apply it",
            percentile(&lags, 0.5),
            percentile(&lags, 0.99)
        ),
        detail: format!(
            "{} kills, each started again at once (answering in {}–{} ms), the last within 0.9 s of the last heartbeat; {KEPT} rooms kept open by {acked} acknowledged heartbeats (half every 200 ms, half every 3 s), then left to expire {} s after their last; heartbeats meanwhile: {beat_rate:.0}/s",
            restarts.len(),
            restarts.first().unwrap_or(&0),
            restarts.last().unwrap_or(&0),
            KEPT_IDLE_MS / 1000
        ),
        verdict: if early == 0 && lost == 0 && doubled == 0 && late == 0 {
            Verdict::Met
        } else {
            Verdict::Missed
        },
    };
    (row, server)
}

/// The instance, and when it was up.
struct Up {
    server: Server,
    url: String,
    config: std::path::PathBuf,
    /// Where it listens, for the loads (a new port each start).
    addr: Arc<Mutex<String>>,
    since: i64,
    uptime: Uptime,
    /// How long each start took to answer, ms.
    restarts: Vec<i64>,
}

impl Up {
    async fn start(url: &str, config: &Path) -> Up {
        let server = Server::start(url, config).await;
        Up {
            addr: Arc::new(Mutex::new(server.addr.clone())),
            server,
            url: url.into(),
            config: config.into(),
            since: wall_ms(),
            uptime: Uptime::default(),
            restarts: Vec::new(),
        }
    }

    /// `kill -9`, then starts it again at once.
    async fn kill_and_restart(&mut self) {
        self.server.kill9();
        self.uptime.0.push((self.since, wall_ms()));
        let restart = Instant::now();
        self.server = Server::start(&self.url, &self.config).await;
        self.restarts.push(restart.elapsed().as_millis() as i64);
        self.since = wall_ms();
        *self.addr.lock().unwrap_or_else(|p| p.into_inner()) = self.server.addr.clone();
    }
}

/// `count` sessions of `kind` named `{kind}{n}-0`, with their host `h0` alone, the `n`th made
/// at `made(n)`.
async fn import(store: &dyn Store, kind: &str, count: usize, made: impl Fn(usize) -> Timestamp) {
    let config = crate::world::config();
    let kind_config = &config.kinds[kind];
    let sessions: Vec<_> = (0..count)
        .flat_map(|n| {
            lapse_store::testing::synthetic_sessions(
                kind_config,
                &format!("{kind}{n}-"),
                1,
                1,
                0,
                made(n),
            )
        })
        .collect();
    for chunk in sessions.chunks(5_000) {
        store.import(chunk).await.expect("import");
    }
}

/// Heartbeats over 10k of the live rooms at SPEC §7's rate through whichever instance is up,
/// until `stop`; how many were sent.
async fn beat_through_kills(
    addr: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    make: Requests,
) -> u64 {
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) {
        let now = addr.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // Returns once its connections are cut by a kill (or at `stop`).
        sent += paced_until(&now, BEATS_PER_SEC, &stop, make.clone()).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sent
}

/// Beats each kept room as often as [`every`] says through whichever instance is up, until
/// `stop`; when each room's last acknowledged beat was sent (wall ms), and how many were
/// acknowledged.
async fn keep_alive(addr: Arc<Mutex<String>>, stop: Arc<AtomicBool>) -> (Vec<i64>, u64) {
    let beats: Vec<Request> = (0..KEPT)
        .map(|n| {
            Request::post(
                &format!("/v1/sessions/kept{n}-0/heartbeat"),
                r#"{"user":"h0"}"#,
            )
        })
        .collect();
    // The rooms beaten seldom are spread over their period.
    let start = Instant::now();
    let mut next: Vec<Instant> = (0..KEPT)
        .map(|n| start + every(n).mul_f64(n as f64 / KEPT as f64))
        .collect();
    let mut last = vec![0; KEPT];
    let mut acked = 0;
    let mut conn: Option<Conn> = None;
    while !stop.load(Ordering::Relaxed) {
        for (n, beat) in beats.iter().enumerate() {
            if next[n] > Instant::now() {
                continue;
            }
            if conn.is_none() {
                let now = addr.lock().unwrap_or_else(|p| p.into_inner()).clone();
                conn = Conn::open(&now).await;
            }
            let Some(c) = conn.as_mut() else { break };
            let sent = wall_ms();
            match c.send(beat).await {
                Some(204) => {
                    last[n] = sent;
                    acked += 1;
                    next[n] += every(n);
                }
                Some(_) => next[n] += every(n),
                // Cut by a kill: beaten again through the next instance.
                None => conn = None,
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (last, acked)
}
