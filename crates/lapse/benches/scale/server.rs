//! Figures measured from outside: `lapse serve` as its own process, pinned to one core, and a
//! load generator here, pinned to the other, speaking plain HTTP/1.1 over kept-alive
//! connections.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The admin key the server is started with.
pub const KEY: &str = "bench-admin-key";

/// A running `lapse serve`.
pub struct Server {
    child: Child,
    pub addr: String,
}

impl Server {
    /// Starts the server on the database at `url` (already filled) with the bench config, on
    /// core 0 when `taskset` is there, and waits until it answers.
    pub async fn start(url: &str, config: &Path) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        // `LAPSE_BENCH_EXE` measures another build of lapse (an older one, side by side).
        let exe = std::env::var("LAPSE_BENCH_EXE")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_lapse").to_string());
        // `LAPSE_BENCH_SERVER_LOG=path` keeps the server's log (info and up) there.
        let log = std::env::var("LAPSE_BENCH_SERVER_LOG").ok().map(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("the server log opens")
        });
        let mut cmd = if has_taskset() {
            let mut c = Command::new("taskset");
            c.args(["-c", "0", &exe]);
            c
        } else {
            Command::new(&exe)
        };
        let child = cmd
            .args(["serve", "--config"])
            .arg(config)
            .env("LAPSE_LISTEN", &addr)
            .env("DATABASE_URL", url)
            .env("LAPSE_ADMIN_KEY", KEY)
            .env("LAPSE_BENCH_WEBHOOK_SECRET", "whsec_YmVuY2gtc2VjcmV0")
            .env("RUST_LOG", if log.is_some() { "info" } else { "warn" })
            .stdout(Stdio::null())
            .stderr(log.map_or_else(Stdio::null, Stdio::from))
            .spawn()
            .expect("lapse serve starts");
        let server = Server { child, addr };
        // Asked often: the kill -9 figure counts an instance as up from its first answer.
        for _ in 0..2_400 {
            if get(&server.addr, "/livez").await == Some(200) {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("lapse serve did not answer within a minute");
    }

    /// Its resident memory, in MB.
    pub fn rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(f64::NAN);
        kb / 1024.0
    }

    /// Its threads' context switches so far, voluntary or not (`/proc`): how often work is
    /// handed from one of its threads to another.
    pub fn switches(&self) -> u64 {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.child.id()));
        tasks
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
            .map(|status| {
                status
                    .lines()
                    .filter_map(|l| {
                        l.strip_prefix("voluntary_ctxt_switches:")
                            .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                    })
                    .filter_map(|v| v.trim().parse::<u64>().ok())
                    .sum::<u64>()
            })
            .sum()
    }

    /// Kills it with SIGKILL (`kill -9`): no drain, no last flush.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it (SIGTERM through `kill`, then waits).
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn has_taskset() -> bool {
    Command::new("taskset")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Pins this process (the load generator) to core 1, so the two never share a core.
pub fn pin_self_to_core_1() -> bool {
    has_taskset()
        && Command::new("taskset")
            .args(["-a", "-p", "-c", "1", &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// One request on a fresh connection; the status, if any came back.
pub async fn get(addr: &str, path: &str) -> Option<u16> {
    let mut conn = Conn::open(addr).await?;
    conn.send(&Request::get(path)).await
}

/// A request, already serialized.
#[derive(Clone)]
pub struct Request(Arc<Vec<u8>>);

/// What a load sends: its `n`th request.
pub type Requests = Arc<dyn Fn(u64) -> Request + Send + Sync>;

impl Request {
    pub fn get(path: &str) -> Request {
        Request(Arc::new(
            format!("GET {path} HTTP/1.1\r\nHost: lapse\r\n\r\n").into_bytes(),
        ))
    }

    pub fn post(path: &str, body: &str) -> Request {
        Request::with_body("POST", path, body)
    }

    pub fn patch(path: &str, body: &str) -> Request {
        Request::with_body("PATCH", path, body)
    }

    fn with_body(method: &str, path: &str, body: &str) -> Request {
        Request(Arc::new(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: lapse\r\nAuthorization: Bearer {KEY}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        ))
    }

    /// An event stream (`Accept: text/event-stream`).
    pub fn stream(path: &str) -> Request {
        Request(Arc::new(
            format!(
                "GET {path} HTTP/1.1\r\nHost: lapse\r\nAuthorization: Bearer {KEY}\r\n\
                 Accept: text/event-stream\r\n\r\n"
            )
            .into_bytes(),
        ))
    }
}

/// A kept-alive connection.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// The connection itself, for a response that never ends (an event stream).
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// Sends a request and reads only its head; the status.
    pub async fn send_head(&mut self, req: &Request) -> Option<u16> {
        self.stream.write_all(&req.0).await.ok()?;
        self.buf.clear();
        let mut chunk = [0u8; 1024];
        while find(&self.buf, b"\r\n\r\n").is_none() {
            let n = self.stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let head = std::str::from_utf8(&self.buf).ok()?;
        head.split(' ').nth(1)?.parse().ok()
    }

    pub async fn open(addr: &str) -> Option<Conn> {
        let stream = TcpStream::connect(addr).await.ok()?;
        stream.set_nodelay(true).ok()?;
        Some(Conn {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends one request and reads its whole response; the status.
    pub async fn send(&mut self, req: &Request) -> Option<u16> {
        self.stream.write_all(&req.0).await.ok()?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).ok()?;
                let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
                let length = content_length(head);
                while self.buf.len() < end + 4 + length {
                    let n = self.stream.read(&mut chunk).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                return Some(status);
            }
            let n = self.stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The `Content-Length` a message's head gives, or 0.
pub fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Successful responses per second over `duration`, from `connections` connections each
/// sending `make(n)` in a loop. Counts 2xx only; anything else is a failed request.
pub async fn throughput(
    addr: &str,
    connections: usize,
    duration: Duration,
    make: Requests,
) -> (f64, u64) {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let started = Instant::now();
    for _ in 0..connections {
        let (ok, failed, stop, counter, make) = (
            ok.clone(),
            failed.clone(),
            stop.clone(),
            counter.clone(),
            make.clone(),
        );
        let addr = addr.to_string();
        tasks.push(tokio::spawn(async move {
            let Some(mut conn) = Conn::open(&addr).await else {
                return;
            };
            while !stop.load(Ordering::Relaxed) {
                let req = make(counter.fetch_add(1, Ordering::Relaxed));
                match conn.send(&req).await {
                    Some(s) if (200..300).contains(&s) => ok.fetch_add(1, Ordering::Relaxed),
                    Some(_) => failed.fetch_add(1, Ordering::Relaxed),
                    None => return,
                };
            }
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    (
        ok.load(Ordering::Relaxed) as f64 / elapsed,
        failed.load(Ordering::Relaxed),
    )
}

/// Sends `rate` requests a second for `secs` over 20 connections, whatever their answers;
/// how many were sent (fewer if the server fell behind).
pub async fn paced(addr: &str, rate: u64, secs: f64, make: Requests) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let timer = {
        let stop = stop.clone();
        async move {
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            stop.store(true, Ordering::Relaxed);
        }
    };
    tokio::join!(timer, paced_until(addr, rate, &stop, make)).1
}

/// Sends `rate` requests a second over 20 connections until `stop` is set, whatever their
/// answers; how many were sent (fewer than asked if the server fell behind).
pub async fn paced_until(addr: &str, rate: u64, stop: &Arc<AtomicBool>, make: Requests) -> u64 {
    const CONNECTIONS: u64 = 20;
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let (counter, make, stop) = (counter.clone(), make.clone(), stop.clone());
        let addr = addr.to_string();
        tasks.push(tokio::spawn(async move {
            let Some(mut conn) = Conn::open(&addr).await else {
                return;
            };
            // A connection that fell behind catches up to its schedule, never beyond it.
            let mut tick =
                tokio::time::interval(Duration::from_micros(1_000_000 * CONNECTIONS / rate));
            loop {
                tick.tick().await;
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let n = counter.fetch_add(1, Ordering::Relaxed);
                if conn.send(&make(n)).await.is_none() {
                    return;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    counter.load(Ordering::Relaxed)
}

/// Sends `make(0..count)` once each over `connections` connections; returns the seconds it
/// took and how many were refused.
pub async fn send_all(addr: &str, connections: usize, count: u64, make: Requests) -> (f64, u64) {
    let failed = Arc::new(AtomicU64::new(0));
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (failed, counter, make) = (failed.clone(), counter.clone(), make.clone());
        let addr = addr.to_string();
        tasks.push(tokio::spawn(async move {
            let Some(mut conn) = Conn::open(&addr).await else {
                return;
            };
            loop {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return;
                }
                match conn.send(&make(n)).await {
                    Some(s) if (200..300).contains(&s) => {}
                    Some(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    None => return,
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (
        started.elapsed().as_secs_f64(),
        failed.load(Ordering::Relaxed),
    )
}

/// Where the bench keeps the server's files.
pub fn files(dir: &Path) -> (PathBuf, PathBuf) {
    let config = dir.join("bench.toml");
    std::fs::write(&config, crate::world::CONFIG).expect("write the bench config");
    (dir.join("served.db"), config)
}
