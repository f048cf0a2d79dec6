//! Overload: creates from far more connections than lapse answers at once, each sending its
//! next request as soon as the last is answered (or, refused, after the second `Retry-After`
//! asks for, as HTTP client libraries do). With `[server] max_in_flight` (the default,
//! 256) the requests past it are refused with 429 within a moment; without it (`= 0`, a second
//! server on the same database) every request queues and waits. Meanwhile a burst of sessions
//! comes due: the sweeper must keep its pace under the flood. And a few event streams follow
//! rooms updated meanwhile: their events must not wait behind the flood either.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::measure::percentile;
use crate::report::{Row, Verdict};
use crate::server::{Conn, Request, Requests, Server, paced, send_all};
use crate::streams::{Streams, timed_update};

/// Streams open during the flood, each following a room updated meanwhile.
const WATCHED: usize = 10;
/// Updates a second to those rooms during the flood.
const WATCHED_RATE: u64 = 20;

/// What a flood saw: each answer's status and how long it took.
#[derive(Default)]
struct Answers {
    ok: Vec<f64>,
    refused: Vec<f64>,
    /// Any other answer, counted by its status.
    other: std::collections::BTreeMap<u16, u64>,
}

impl Answers {
    /// The other answers: `0`, or their number and statuses (`512: 503 ×512`).
    fn others(&self) -> String {
        let n: u64 = self.other.values().sum();
        if n == 0 {
            return "0".into();
        }
        let each: Vec<String> = self
            .other
            .iter()
            .map(|(s, k)| format!("{s} ×{k}"))
            .collect();
        format!("{n} ({})", each.join(", "))
    }
}

/// `connections` connections sending creates for `secs` seconds.
async fn flood(addr: &str, connections: usize, secs: f64, tag: &str) -> Answers {
    let answers = Arc::new(Mutex::new(Answers::default()));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (answers, addr, tag) = (answers.clone(), addr.to_string(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            let Some(mut conn) = Conn::open(&addr).await else {
                return;
            };
            let mut mine = Answers::default();
            let mut n = 0;
            while Instant::now() < deadline {
                n += 1;
                let req = Request::post(
                    "/v1/sessions",
                    &format!(
                        r#"{{"kind":"room","host":"f{tag}{c}-{n}","id":"flood{tag}{c}-{n}"}}"#
                    ),
                );
                let sent = Instant::now();
                let status = conn.send(&req).await;
                let ms = sent.elapsed().as_secs_f64() * 1000.0;
                match status {
                    Some(s) if (200..300).contains(&s) => mine.ok.push(ms),
                    Some(429) => {
                        mine.refused.push(ms);
                        // As a client honouring `Retry-After: 1` does.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Some(s) => *mine.other.entry(s).or_default() += 1,
                    None => return,
                }
            }
            let mut all = answers.lock().unwrap();
            all.ok.extend(mine.ok);
            all.refused.extend(mine.refused);
            for (s, k) in mine.other {
                *all.other.entry(s).or_default() += k;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Arc::try_unwrap(answers)
        .ok()
        .map(|m| m.into_inner().unwrap())
        .unwrap_or_default()
}

/// The flood against `limited` (the default limit), the same against a server without one,
/// and the lag of a burst coming due during the first.
#[allow(clippy::too_many_arguments)]
pub async fn figures(
    limited: &Server,
    url: &str,
    dir: &Path,
    connections: usize,
    secs: f64,
    burst: u64,
    kind: &str,
    due_after: Duration,
) -> Vec<Row> {
    let store = lapse_store::open(url, None, None)
        .await
        .expect("the database opens");
    let after = store.last_event_seq().await.expect("the events' end");

    // A burst that comes due `due_after` after it is created, in the middle of the flood.
    let started = Instant::now();
    let create: Requests = {
        let kind = kind.to_string();
        Arc::new(move |n| {
            Request::post(
                "/v1/sessions",
                &format!(r#"{{"kind":"{kind}","host":"oh{n}","id":"overload-burst{n}"}}"#),
            )
        })
    };
    send_all(&limited.addr, 16, burst, create).await;
    let due_in = due_after.saturating_sub(started.elapsed());
    tokio::time::sleep(due_in.saturating_sub(Duration::from_secs_f64(secs / 3.0))).await;
    eprintln!(
        "  flood of creates from {connections} connections, with a burst of {burst} coming due"
    );
    let epoch = Instant::now();
    let watched = Streams::open(&limited.addr, WATCHED, epoch).await;
    let (with_limit, updates) = tokio::join!(
        flood(&limited.addr, connections, secs, "a"),
        paced(
            &limited.addr,
            WATCHED_RATE,
            secs,
            timed_update(WATCHED as u64, epoch)
        ),
    );
    // The last updates' events may still be on their way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered = watched.received.load(std::sync::atomic::Ordering::Relaxed);
    let taken = |v: &Mutex<Vec<f64>>| v.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let (delays, after_commit) = (taken(&watched.delays), taken(&watched.after_commit));
    watched.close();
    let burst_lags = crate::served::expiry_lags(store.as_ref(), kind, after, burst).await;

    let config = dir.join("unlimited.toml");
    std::fs::write(
        &config,
        format!("{}\n[server]\nmax_in_flight = 0\n", crate::world::CONFIG),
    )
    .expect("write the config without a limit");
    let unlimited = Server::start(url, &config).await;
    eprintln!("  the same flood without a limit");
    let without = flood(&unlimited.addr, connections, secs, "b").await;
    unlimited.stop();

    let p = |v: &[f64], q: f64| percentile(v, q);
    let all = |a: &Answers| [a.ok.as_slice(), a.refused.as_slice()].concat();
    let rate = |n: usize| n as f64 / secs;
    let limited_p99 = p(&all(&with_limit), 0.99);
    let unlimited_p99 = p(&all(&without), 0.99);
    let burst_p99 = p(&burst_lags, 0.99);
    vec![
        Row {
            figure: format!(
                "flood of creates from {connections} connections: latency of every answer, \
                 `max_in_flight` 256 (default) vs none"
            ),
            target: "refused quickly, not queued".into(),
            measured: format!("p99 {limited_p99:.0} ms vs {unlimited_p99:.0} ms"),
            spread: format!(
                "max {:.0} ms vs {:.0} ms; refusals p99 {:.0} ms",
                p(&all(&with_limit), 1.0),
                p(&all(&without), 1.0),
                p(&with_limit.refused, 0.99)
            ),
            detail: format!(
                "with the limit {:.0} created/s and {:.0} refused/s (429); without, {:.0} \
                 created/s, {} refused; other answers {} / {}",
                rate(with_limit.ok.len()),
                rate(with_limit.refused.len()),
                rate(without.ok.len()),
                without.refused.len(),
                with_limit.others(),
                without.others()
            ),
            verdict: if limited_p99 <= 1000.0 && limited_p99 < unlimited_p99 {
                Verdict::Met
            } else {
                Verdict::Missed
            },
        },
        Row {
            figure: format!(
                "lag `applied_at - at` of a burst of {} coming due during the flood (SQLite)",
                burst_lags.len()
            ),
            target: "p99 ≤ 250 ms".into(),
            measured: format!("p99 {burst_p99:.0} ms"),
            spread: format!(
                "p50 {:.0} ms, max {:.0} ms",
                p(&burst_lags, 0.5),
                p(&burst_lags, 1.0)
            ),
            detail: format!("{connections} connections flooding meanwhile"),
            verdict: if burst_p99 <= 250.0 && burst_lags.len() as u64 >= burst {
                Verdict::Met
            } else {
                Verdict::Missed
            },
        },
        Row {
            figure: format!(
                "event delivery to {WATCHED} streams during the flood, {WATCHED_RATE} updates/s \
                 to their rooms (SQLite)"
            ),
            target: "none: what the flood costs a stream's events".into(),
            measured: format!("p99 {:.0} ms from commit", p(&after_commit, 0.99)),
            spread: format!(
                "p50 {:.0} ms, max {:.0} ms from commit",
                p(&after_commit, 0.5),
                p(&after_commit, 1.0)
            ),
            detail: format!(
                "from the update's request sent: p50 {:.0} ms, p99 {:.0} ms; {delivered} of \
                 {updates} updates delivered to their stream (the others refused with 429)",
                p(&delays, 0.5),
                p(&delays, 0.99)
            ),
            verdict: Verdict::Shown,
        },
    ]
}
