//! Database outages under load: PostgreSQL stopped and started again, and a SQLite database
//! whose disk fills up and is freed. While the database is out of reach, requests that need
//! it fail within a second with 503 `database_unavailable` and `Retry-After`, `/readyz` says
//! 503 at once, `/livez` stays 200, heartbeats for sessions lapse knows to be open are
//! accepted; when it is back, lapse recovers without a restart and nothing acknowledged is
//! lost: every session created, every heartbeat accepted, every rule due meanwhile applied.
//!
//! Ignored by default: they stop the shared test server and mount a small disk (as root).
//! `.ci/run` runs them with the crash suite, one test at a time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapse_core::{Span, Timestamp};
use reqwest::Method;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::ledger::{Ledger, by_session, config_file, fresh_database, import, kinds};
use crate::running::{Answer, Lapse, wall_ms};

/// Sessions kept alive by heartbeats through the outage.
const KEPT: usize = 20;
/// Sessions coming due while the database is out of reach.
const STORM: usize = 500;
/// How long the database stays out of reach.
const OUTAGE: Duration = Duration::from_secs(4);

/// How an outage is made and ended.
trait Outage {
    fn begin(&mut self);
    fn end(&mut self);
    /// Whether reads still work during it (a full disk still reads).
    fn reads_work(&self) -> bool;
}

/// The test PostgreSQL server, stopped and started with `scripts/with-postgres`'s script.
struct Server(String);

impl Outage for Server {
    fn begin(&mut self) {
        let ok = Command::new(&self.0).arg("stop").status().unwrap();
        assert!(ok.success(), "the server stops");
    }
    fn end(&mut self) {
        let ok = Command::new(&self.0).arg("start").status().unwrap();
        assert!(ok.success(), "the server starts");
    }
    fn reads_work(&self) -> bool {
        false
    }
}

/// A small disk of its own (tmpfs), filled up to the last byte and freed again.
struct Disk {
    at: PathBuf,
    filler: PathBuf,
}

impl Disk {
    fn mount(at: &Path) -> Disk {
        std::fs::create_dir_all(at).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(
            mounted.success(),
            "the full-disk test mounts a 16 MB tmpfs: run it as root (CI does)"
        );
        Disk {
            at: at.to_path_buf(),
            filler: at.join("filler"),
        }
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

impl Outage for Disk {
    fn begin(&mut self) {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&self.filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    fn end(&mut self) {
        std::fs::remove_file(&self.filler).unwrap();
    }
    fn reads_work(&self) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stops and starts the test PostgreSQL server; .ci/run runs it with --ignored, alone"]
async fn postgres_stopped_and_started_under_load() {
    let Ok(ctl) = std::env::var("LAPSE_TEST_POSTGRES_CTL") else {
        assert!(
            std::env::var("LAPSE_TEST_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "LAPSE_TEST_POSTGRES_CTL is not set: run under scripts/with-postgres"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = fresh_database(dir.path(), true).await else {
        return;
    };
    outage_under_load(&url, dir.path(), Server(ctl), "PostgreSQL stopped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "mounts a small tmpfs (root); .ci/run runs it with --ignored"]
async fn sqlite_on_a_full_disk_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Disk::mount(&dir.path().join("disk"));
    let url = format!("sqlite://{}", disk.at.join("lapse.db").display());
    outage_under_load(&url, dir.path(), disk, "SQLite disk full").await;
}

/// What the load saw.
#[derive(Default)]
struct Seen {
    /// Sessions whose creation was acknowledged.
    created: Vec<String>,
    /// Answers to requests sent while the database was out of reach.
    during: Vec<(&'static str, Answer)>,
    /// Send time of the last acknowledged heartbeat of every kept session.
    last_beat: i64,
    beats_during: usize,
}

async fn outage_under_load(url: &str, dir: &Path, mut outage: impl Outage, what: &str) {
    let (config_path, config) = config_file(dir, &kinds("1h"));
    let now = Timestamp::from_millis(wall_ms());
    import(url, &config, "kept", "kept", KEPT, |_| now).await;
    // Due from 2 s to 3 s after the outage begins (about 2 s from now).
    import(url, &config, "storm", "storm", STORM, |n| {
        now + Span::from_millis(3_000 + (n * 1_000 / STORM) as i64)
    })
    .await;
    let lapse = Arc::new(Lapse::start(url, &config_path, dir.join("lapse.log")).await);

    let seen = Arc::new(Mutex::new(Seen::default()));
    let out = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = CancellationToken::new();
    let load = {
        let (lapse, seen, out, stop) = (lapse.clone(), seen.clone(), out.clone(), stop.clone());
        tokio::spawn(async move {
            let beats: Vec<_> = (0..KEPT)
                .map(|n| json!({"session": format!("kept{n}-0"), "user": "h0"}))
                .collect();
            let beats = json!({ "beats": beats });
            let mut n = 0;
            while !stop.is_cancelled() {
                n += 1;
                let id = format!("c{n}");
                let body = json!({"id": id, "kind": "kept", "host": format!("u{n}"),
                    "metadata": {"notes": "x".repeat(2_000)}});
                let during = out.load(std::sync::atomic::Ordering::SeqCst);
                let sent = wall_ms();
                let requests = [
                    (
                        "create",
                        Method::POST,
                        "/v1/sessions".to_string(),
                        Some(body),
                    ),
                    (
                        "heartbeats",
                        Method::POST,
                        "/v1/heartbeats".into(),
                        Some(beats.clone()),
                    ),
                    ("read", Method::GET, "/v1/sessions/kept0-0".into(), None),
                    ("readyz", Method::GET, "/readyz".into(), None),
                    ("livez", Method::GET, "/livez".into(), None),
                ];
                for (name, method, path, body) in requests {
                    let Some(answer) = lapse.send(method, &path, body.as_ref()).await else {
                        panic!("{name}: lapse did not answer");
                    };
                    let mut seen = seen.lock().unwrap();
                    match name {
                        "create" if answer.status == 201 => seen.created.push(id.clone()),
                        "heartbeats" if answer.status == 200 => {
                            assert_eq!(answer.body["accepted"], KEPT, "{:?}", answer.body);
                            seen.last_beat = sent;
                            seen.beats_during += usize::from(during);
                        }
                        _ => {}
                    }
                    if during {
                        seen.during.push((name, answer));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // Warm: every kept session has been beaten for and is held in memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    outage.begin();
    out.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(OUTAGE).await;
    out.store(false, std::sync::atomic::Ordering::SeqCst);
    outage.end();
    let back = Instant::now();
    let recovered = loop {
        if lapse
            .send(Method::GET, "/readyz", None)
            .await
            .is_some_and(|a| a.status == 200)
        {
            break back.elapsed();
        }
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "lapse did not recover by itself:\n{}",
            lapse.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    load.await.unwrap();

    let ledger = Ledger::open(url).await;
    let waited = Instant::now();
    while ledger.expiries().await.len() < STORM {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "the rules due during the outage were not applied after it:\n{}",
            lapse.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lapse.terminate();
    let Ok(mut lapse) = Arc::try_unwrap(lapse) else {
        panic!("the load has stopped");
    };
    assert!(lapse.exited_within(Duration::from_secs(10)).await.is_some());
    let log = lapse.log_text();
    let seen = std::mem::take(&mut *seen.lock().unwrap());

    // During the outage.
    let answers = |name: &'static str| {
        seen.during
            .iter()
            .filter(move |(n, _)| *n == name)
            .map(|(_, a)| a)
    };
    let refused: Vec<&Answer> = answers("create").filter(|a| a.status != 201).collect();
    assert!(
        !refused.is_empty(),
        "no create was refused: no outage was seen"
    );
    for a in &refused {
        assert_eq!(a.status, 503, "{:?}", a.body);
        assert_eq!(a.body["code"], "database_unavailable", "{:?}", a.body);
        assert!(a.retry_after.is_some(), "Retry-After on every 503");
    }
    let slowest = seen
        .during
        .iter()
        .map(|(_, a)| a.took)
        .max()
        .unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(1),
        "an answer took {slowest:?} during the outage"
    );
    assert!(
        answers("livez").all(|a| a.status == 200),
        "/livez stays 200"
    );
    let not_ready = answers("readyz").filter(|a| a.status == 503).count();
    assert!(not_ready > 0, "/readyz said 503");
    let reads_ok = answers("read").filter(|a| a.status == 200).count();
    if outage.reads_work() {
        assert_eq!(reads_ok, answers("read").count(), "reads go on");
    }
    assert!(
        seen.beats_during > 0,
        "heartbeats for known sessions were accepted"
    );
    assert!(
        answers("heartbeats").all(|a| a.status == 200),
        "every heartbeat for a session lapse knows was accepted"
    );

    // After it: nothing acknowledged lost.
    let statuses = ledger.statuses().await;
    let lost: Vec<&String> = seen
        .created
        .iter()
        .filter(|id| !statuses.contains_key(*id))
        .collect();
    assert!(lost.is_empty(), "acknowledged creates lost: {lost:?}");
    let activity = ledger.activity().await;
    for n in 0..KEPT {
        let at = activity[&format!("kept{n}-0")];
        assert!(
            at >= seen.last_beat,
            "kept{n}-0: an acknowledged heartbeat was lost"
        );
    }
    let expiries = ledger.expiries().await;
    assert!(
        by_session(&expiries).values().all(|&n| n == 1),
        "no rule applied twice"
    );
    let told = log.matches("database unavailable for").count();
    assert!(
        (1..=2).contains(&told),
        "the outage is logged once (per reads and writes), not once per try: {told}\n{log}"
    );
    assert!(!log.contains("sweep failed"), "{log}");
    eprintln!(
        "{what} for {} s under load: {} requests answered during it, slowest {} ms; {} creates \
         refused with 503 database_unavailable, {} heartbeat batches accepted, /readyz 503 {} \
         times; ready again {} ms after; {} sessions created in all, none lost; {STORM} rules \
         due meanwhile applied once each",
        OUTAGE.as_secs(),
        seen.during.len(),
        slowest.as_millis(),
        refused.len(),
        seen.beats_during,
        not_ready,
        recovered.as_millis(),
        seen.created.len(),
    );
    ledger.close().await;
}
