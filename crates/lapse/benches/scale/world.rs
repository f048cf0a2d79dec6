//! A database filled with live sessions, and an engine over it on a manual clock: the
//! setting every in-process figure is measured in. Populations go in through the store's
//! bulk import; measuring starts after.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection;

use lapse_core::{Config, Session, SessionId, Span, Store, Timestamp, UserId};
use lapse_engine::deliveries::Endpoint;
use lapse_engine::{Caller, Clock, Engine};
use lapse_store::testing::synthetic_sessions;

/// The kinds and webhook every figure uses. The load generator acts as one admin, so the
/// per-actor rate limits are lifted.
pub const CONFIG: &str = r#"
[rate_limits]
default = "1000000/sec"

# Live rooms stay quiet while figures are taken: their participants' presence lapses and idle
# rules lie hours ahead, so what comes due is only what a figure puts there.
[kinds.room]
presence_timeout = "12h"
[[kinds.room.rules]]
name = "expire-idle"
on = "idle"
after = "1h"
do = "expire"

[kinds.burst]
[[kinds.burst.rules]]
name = "expire-unused"
on = "unused"
after = "20s"
do = "expire"

# The same, sooner: the smoke run's bursts.
[kinds.flash]
[[kinds.flash.rules]]
name = "expire-unused"
on = "unused"
after = "2s"
do = "expire"

# The kill -9 figure's: sessions that expire a second after they are made unless used, and
# rooms kept open by heartbeats that expire 5 s after their last.
[kinds.storm]
[[kinds.storm.rules]]
name = "expire-unused"
on = "unused"
after = "1s"
do = "expire"

[kinds.kept]
[[kinds.kept.rules]]
name = "expire-idle"
on = "idle"
after = "5s"
do = "expire"

[kinds.repair]
max_open_per_host = 1
[[kinds.repair.rules]]
name = "cancel-waiting"
on = "pending"
after = "15m"
do = "cancel"

# The endpoint refuses connections, so every delivery fails. Its retry comes after the run:
# with the default schedule, retries 5 s and 5 min after each burst or update run land on
# whichever figure is running then, on one side of its pair only.
[delivery]
retry = ["0s", "1h"]

[[webhooks]]
url = "http://127.0.0.1:9/lapse"
secret_env = "LAPSE_BENCH_WEBHOOK_SECRET"
events = ["session.*"]
"#;

/// The clock's start.
pub fn t0() -> Timestamp {
    "2026-03-02T09:00:00Z".parse().expect("a valid instant")
}

/// The parsed [`CONFIG`].
pub fn config() -> Config {
    Config::parse(CONFIG, "bench.toml").expect("the bench configuration is valid")
}

/// A database with `live` open room sessions and an engine over it.
pub struct World {
    pub engine: Arc<Engine>,
    pub store: Arc<dyn Store>,
    pub live: usize,
    next: AtomicUsize,
    /// A connection of the bench's own to a SQLite database, to copy its log (see `timed`).
    log: Option<tokio::sync::Mutex<sqlx::SqliteConnection>>,
    _dir: Option<tempfile::TempDir>,
}

/// Sessions per import call, so a million never sit in memory at once.
const CHUNK: usize = 10_000;

impl World {
    /// A fresh SQLite database in a temp directory.
    pub async fn sqlite(name: &str, live: usize, members: usize) -> World {
        let dir = tempfile::tempdir().expect("a temp dir");
        let url = format!(
            "sqlite://{}",
            dir.path().join(format!("{name}.db")).display()
        );
        World::open(&url, Some(dir), name, live, members).await
    }

    /// `url`'s database (already empty), filled with `live` rooms of 1 host + `members`.
    pub async fn open(
        url: &str,
        dir: Option<tempfile::TempDir>,
        name: &str,
        live: usize,
        members: usize,
    ) -> World {
        let store = lapse_store::open(url, None, None)
            .await
            .expect("the database opens");
        store.migrate().await.expect("the schema migrates");
        let started = Instant::now();
        fill(store.as_ref(), "room", "live", live, members).await;
        eprintln!(
            "  {name}: {live} live sessions with {} participants each in {:.1} s",
            members + 1,
            started.elapsed().as_secs_f64()
        );
        let config = Arc::new(config());
        let endpoint = Endpoint {
            config: config.webhooks[0].clone(),
            keys: vec![b"bench-secret".to_vec()],
        };
        let engine =
            Engine::with_webhooks(store.clone(), config, Clock::manual(t0()), vec![endpoint]);
        // As `lapse serve` does: every commit then names the rules version it was decided
        // under, and the store checks it.
        engine
            .put_rules_in_force()
            .await
            .expect("the rules are put in force");
        let log = match url.starts_with("sqlite:") {
            true => Some(tokio::sync::Mutex::new(
                sqlx::SqliteConnection::connect(url)
                    .await
                    .expect("a connection to copy the log"),
            )),
            false => None,
        };
        World {
            engine,
            store,
            live,
            next: AtomicUsize::new(0),
            log,
            _dir: dir,
        }
    }

    /// How long `work` takes, counted as its writes cost in service. SQLite copies its
    /// write-ahead log into the database file every 1,000 log pages (its default), a cost of
    /// every write since the last copy that lands on whichever write crosses the line. So a
    /// timed piece of work starts with the log copied (it does not pay for the setup before
    /// it) and ends by copying it, on the clock (it pays for its own writes, whether or not a
    /// copy fell inside it).
    pub async fn timed(&self, work: impl Future<Output = ()>) -> Duration {
        self.copy_log().await;
        perf_ctl("enable");
        let started = Instant::now();
        work.await;
        self.copy_log().await;
        let took = started.elapsed();
        perf_ctl("disable");
        took
    }

    /// Operations per second of `n` runs of `op`, one after another, timed as [`World::timed`].
    pub async fn write_rate<F, Fut>(&self, n: usize, mut op: F) -> f64
    where
        F: FnMut(usize) -> Fut,
        Fut: Future<Output = ()>,
    {
        let took = self
            .timed(async {
                for i in 0..n {
                    op(i).await;
                }
            })
            .await;
        n as f64 / took.as_secs_f64()
    }

    async fn copy_log(&self) {
        if let Some(log) = &self.log {
            sqlx::raw_sql("pragma wal_checkpoint(restart)")
                .execute(&mut *log.lock().await)
                .await
                .expect("the log is copied");
        }
    }

    /// A name never used before in this world.
    pub fn fresh(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// The id of the `n`th live room (wrapping).
    pub fn room(&self, n: usize) -> SessionId {
        let n = n % self.live.max(1);
        SessionId::parse(&format!("live{}-{}", n / CHUNK, n % CHUNK)).expect("a valid id")
    }

    /// The host of the `n`th live room.
    pub fn host(&self, n: usize) -> UserId {
        let n = n % self.live.max(1);
        UserId::parse(&format!("h{}", n % CHUNK)).expect("a valid user")
    }

    /// Imports `count` sessions of `kind`, created `ago` before now, named `{prefix}…`.
    pub async fn import(&self, kind: &str, prefix: &str, count: usize, members: usize, ago: Span) {
        let config = self.engine.config();
        let at = self.engine.now() - ago;
        for start in (0..count).step_by(CHUNK) {
            let n = CHUNK.min(count - start);
            let sessions = synthetic_sessions(
                &config.kinds[kind],
                &format!("{prefix}{start}-"),
                n,
                n,
                members,
                at,
            );
            self.store.import(&sessions).await.expect("import");
        }
    }
}

async fn fill(store: &dyn Store, kind: &str, prefix: &str, count: usize, members: usize) {
    let config = config();
    for chunk in 0..count.div_ceil(CHUNK) {
        let n = CHUNK.min(count - chunk * CHUNK);
        let sessions: Vec<Session> = synthetic_sessions(
            &config.kinds[kind],
            &format!("{prefix}{chunk}-"),
            n,
            n,
            members,
            t0(),
        );
        store.import(&sessions).await.expect("import");
    }
}

/// The caller every in-process operation runs as.
pub fn admin() -> Caller {
    Caller::Admin {
        name: "bench".into(),
        actor: None,
    }
}

/// Turns `perf record` on or off around timed work, when the run asks for it: with
/// `LAPSE_BENCH_PERF_CTL=fifo` (and `LAPSE_BENCH_PERF_ACK=fifo`, perf's answer) a profile
/// started disabled (`perf record -D -1 --control fifo:ctl,ack`) samples only what the
/// figures time, not the imports and setup between them.
fn perf_ctl(command: &str) {
    use std::io::{Read, Write};
    let Ok(control) = std::env::var("LAPSE_BENCH_PERF_CTL") else {
        return;
    };
    let told = std::fs::OpenOptions::new()
        .write(true)
        .open(&control)
        .and_then(|mut f| writeln!(f, "{command}"));
    if let Err(e) = told {
        panic!("LAPSE_BENCH_PERF_CTL={control}: {e}");
    }
    if let Ok(ack) = std::env::var("LAPSE_BENCH_PERF_ACK") {
        // perf answers `ack` once the command has taken effect.
        let mut answer = [0u8; 4];
        let _ = std::fs::File::open(ack).and_then(|mut f| f.read(&mut answer));
    }
}
