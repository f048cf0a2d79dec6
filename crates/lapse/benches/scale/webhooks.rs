//! Webhook deliveries to one endpoint, measured from the endpoint: a backlog of deliveries
//! sent to an endpoint that answers every request at once, and to one that answers one
//! request in a hundred after a second. What the slow answers cost the others.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::measure::interleave;
use crate::report::{self, Row};
use crate::server::{Request, Requests, Server, content_length, send_all};

/// One answer in this many is slow, on the slow side.
const SLOW_EVERY: u64 = 100;
/// How long a slow answer takes.
const SLOW: Duration = Duration::from_secs(1);

/// The endpoint: counts the requests it answered; holds every answer while paused, and on
/// the slow side answers one request in [`SLOW_EVERY`] after [`SLOW`].
struct Endpoint {
    url: String,
    received: AtomicU64,
    answered: AtomicU64,
    slow: std::sync::atomic::AtomicBool,
    paused: tokio::sync::watch::Sender<bool>,
}

impl Endpoint {
    async fn start() -> Arc<Endpoint> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port for the endpoint");
        let addr = listener.local_addr().expect("the endpoint's address");
        let endpoint = Arc::new(Endpoint {
            url: format!("http://{addr}/hook"),
            received: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            slow: false.into(),
            paused: tokio::sync::watch::channel(false).0,
        });
        let serving = endpoint.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serving.clone().answer(conn));
            }
        });
        endpoint
    }

    /// Answers the requests of one kept-alive connection, one at a time.
    async fn answer(self: Arc<Self>, mut conn: TcpStream) {
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        loop {
            // A request: its head, then as many bytes of body as it says.
            let (end, length) = loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]);
                    break (end, content_length(&head));
                }
                match conn.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            while buf.len() < end + 4 + length {
                match conn.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            buf.drain(..end + 4 + length);
            let n = self.received.fetch_add(1, Ordering::Relaxed);
            let mut paused = self.paused.subscribe();
            let _ = paused.wait_for(|p| !*p).await;
            if self.slow.load(Ordering::Relaxed) && n % SLOW_EVERY == SLOW_EVERY - 1 {
                tokio::time::sleep(SLOW).await;
            }
            let answer = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n";
            if conn.write_all(answer).await.is_err() {
                return;
            }
            self.answered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Deliveries a second to the endpoint, not counting its slow answers: `count` sessions are
/// created while it holds its answers (so a backlog waits), then it answers, and the time is
/// taken until it has answered all but the slow ones. It then waits for those too.
async fn delivery_rate(server: &Server, endpoint: &Endpoint, count: u64, slow: bool) -> f64 {
    endpoint.slow.store(slow, Ordering::Relaxed);
    endpoint.paused.send_replace(true);
    // Every request of the rounds before has been answered.
    let before = endpoint.answered.load(Ordering::Relaxed);
    let create: Requests = Arc::new(move |n| {
        Request::post(
            "/v1/sessions",
            &format!(r#"{{"kind":"room","host":"wh{before}-{n}"}}"#),
        )
    });
    let (_, refused) = send_all(&server.addr, 16, count, create).await;
    let all = before + count - refused;
    // The requests numbered `n` with `n % SLOW_EVERY == SLOW_EVERY - 1` are slow.
    let slow_ones = if slow {
        all / SLOW_EVERY - before / SLOW_EVERY
    } else {
        0
    };
    let started = Instant::now();
    endpoint.paused.send_replace(false);
    // When all but the slow ones had their answers.
    let mut others_took = None;
    loop {
        let answered = endpoint.answered.load(Ordering::Relaxed);
        if answered >= all - slow_ones && others_took.is_none() {
            others_took = Some(started.elapsed());
        }
        if answered >= all {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            eprintln!(
                "  webhooks: {} of {} answered in two minutes",
                endpoint.answered.load(Ordering::Relaxed) - before,
                all - before
            );
            return f64::NAN;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = others_took.unwrap_or_else(|| started.elapsed());
    (all - before - slow_ones) as f64 / took.as_secs_f64()
}

/// The figure: `lapse serve` on a database of its own, its one endpoint the one here.
pub async fn figure(rounds: usize, count: u64) -> Row {
    let endpoint = Endpoint::start().await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = dir.path().join("webhooks.toml");
    // The bench's kinds and limits, with this endpoint instead of the refusing one, and a
    // timeout no held answer reaches.
    let mut text = crate::world::CONFIG.to_string();
    for (from, to) in [
        ("http://127.0.0.1:9/lapse", endpoint.url.as_str()),
        (
            r#"events = ["session.*"]"#,
            r#"events = ["session.created"]"#,
        ),
        ("[delivery]\n", "[delivery]\ntimeout = \"60s\"\n"),
    ] {
        assert!(text.contains(from), "the bench config has `{from}`");
        text = text.replacen(from, to, 1);
    }
    std::fs::write(&config, text).expect("write the webhook figure's config");
    let url = format!("sqlite://{}", dir.path().join("webhooks.db").display());
    let server = Server::start(&url, &config).await;
    let pair = interleave(
        rounds,
        || delivery_rate(&server, &endpoint, count, true),
        || delivery_rate(&server, &endpoint, count, false),
    )
    .await;
    server.stop();
    report::shown_ratio(
        &format!(
            "webhook deliveries to one endpoint, a backlog of {count}: the others' rate where 1 \
             answer in {SLOW_EVERY} takes {} s vs every answer at once",
            SLOW.as_secs()
        ),
        "none: what slow answers cost the others (`[delivery] max_in_flight` at its default, 32)",
        &pair,
        ["slow answers", "all at once"],
        "deliveries/s",
    )
}
