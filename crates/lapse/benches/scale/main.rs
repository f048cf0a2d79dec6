//! lapse's scale benchmark: every figure of SPEC §7 in one run, each a ratio of two
//! measurements taken side by side (or a value against its target), written to
//! `docs/PERFORMANCE.md`.
//!
//! ```text
//! scripts/with-postgres cargo bench -p lapse --bench scale            # the full run (1M live)
//! cargo bench -p lapse --bench scale -- --smoke                        # seconds; asserts nothing
//! ```
//! Options: `--live N` (default 1,000,000), `--small N` (10,000), `--rounds N` (5),
//! `--skip engine,served,streams,overload,crash,webhooks,postgres` (or parts of `engine`:
//! `sweeps,flat,rooms,flush,retention`;
//! of `postgres`: `pgsweeps` or `instances`, the two instances' burst),
//! `--out FILE`. PostgreSQL figures run when `LAPSE_TEST_POSTGRES_URL` names a server (as
//! `scripts/with-postgres` sets it). `LAPSE_BENCH_EXE=path` serves with another build of
//! `lapse` (an older one, to compare); `LAPSE_BENCH_SERVER_LOG=path` keeps its log there.
//! `LAPSE_BENCH_PERF_CTL=fifo` and `LAPSE_BENCH_PERF_ACK=fifo` turn a `perf record -D -1
//! --control fifo:ctl,ack` on only while an in-process figure's work is timed.
//!
//! - `measure`: interleaved pairs, medians, spreads. `report`: the table.
//! - `world`: a filled database and an engine over it (in-process figures).
//! - `engine`: operation costs by population, sweeps, retention. `rooms`: by room size, and
//!   flushes.
//! - `server` and `served`: `lapse serve` as a process, loaded over HTTP from another core.
//! - `streams`: thousands of event streams open on it: delivery, throughput, memory.
//! - `crash`: `kill -9` again and again during a storm of due sessions and heartbeats.
//! - `webhooks`: a backlog of deliveries to one endpoint, with slow answers and without.
//! - `postgres`: sweeps on PostgreSQL, seed 001's cleanup next to lapse and next to the least
//!   a sweep writes, two instances.

// The allocator `lapse serve` runs with (src/main.rs), so the in-process figures measure the
// engine as it runs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod crash;
mod engine;
mod measure;
mod overload;
mod postgres;
mod report;
mod rooms;
mod served;
mod server;
mod streams;
mod webhooks;
mod world;

use std::path::PathBuf;
use std::time::Duration;

use report::{Row, Verdict};

struct Options {
    smoke: bool,
    live: usize,
    small: usize,
    rounds: usize,
    skip: Vec<String>,
    out: Option<PathBuf>,
}

fn options() -> Options {
    let mut o = Options {
        smoke: false,
        live: 1_000_000,
        small: 10_000,
        rounds: 5,
        skip: Vec::new(),
        out: Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/PERFORMANCE.md")),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> usize {
            args.next()
                .and_then(|v| v.replace('_', "").parse().ok())
                .unwrap_or_else(|| panic!("{name} takes a number"))
        };
        match arg.as_str() {
            "--smoke" => o.smoke = true,
            "--live" => o.live = number("--live"),
            "--small" => o.small = number("--small"),
            "--rounds" => o.rounds = number("--rounds"),
            "--skip" => {
                o.skip = args
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(String::from)
                    .collect()
            }
            "--out" => o.out = args.next().map(PathBuf::from),
            // cargo bench passes `--bench` to harness-less benches.
            "--bench" => {}
            other => panic!("unknown option `{other}` (see benches/scale/main.rs)"),
        }
    }
    if o.smoke {
        // Every figure, tiny: keeps the harness working; the numbers mean nothing.
        (o.live, o.small, o.rounds, o.out) = (4_000, 1_000, 1, None);
    }
    o
}

fn main() {
    let o = options();
    let pinned = server::pin_self_to_core_1();
    // Before `lapse serve` is started, so it inherits the limit.
    let fd_limit = streams::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let rows = runtime.block_on(run(&o, fd_limit));
    let table = report::table(&rows);
    println!("\n{table}");
    if let Some(out) = &o.out {
        write_report(out, &o, &table, pinned);
        println!("written to {}", out.display());
    }
    let count = |v: Verdict| rows.iter().filter(|r| r.verdict == v).count();
    println!(
        "{} figures: {} met, {} missed, {} not run; {} shown without a target",
        rows.len(),
        count(Verdict::Met),
        count(Verdict::Missed),
        count(Verdict::NotRun),
        count(Verdict::Shown),
    );
}

async fn run(o: &Options, fd_limit: u64) -> Vec<Row> {
    let sizes = engine::Sizes {
        rounds: o.rounds,
        ops: if o.smoke { 20 } else { 500 },
        writes: if o.smoke { 20 } else { 2_000 },
        burst: if o.smoke { 200 } else { 10_000 },
    };
    let load = served::Load {
        rounds: o.rounds,
        seconds: if o.smoke { 0.3 } else { 3.0 },
        burst: sizes.burst,
        streams: if o.smoke { 100 } else { 10_000 },
        burst_kind: if o.smoke { "flash" } else { "burst" },
        burst_after: Duration::from_secs(if o.smoke { 2 } else { 20 }),
    };
    let mut rows = Vec::new();
    let runs = |section: &str| !o.skip.iter().any(|s| s == section);

    if runs("engine") {
        eprintln!("in-process figures (SQLite)");
        let big = world::World::sqlite("big", o.live, 2).await;
        let small = world::World::sqlite("small", o.small, 2).await;
        if runs("sweeps") {
            rows.extend(engine::sweep_costs(&big, &small, &sizes).await);
        }
        if runs("flat") {
            rows.extend(engine::flat_costs(&big, &small, &sizes).await);
        }
        if runs("rooms") {
            rows.extend(rooms::room_size(&small, &sizes).await);
        }
        if runs("flush") {
            rows.push(rooms::flush_batching(&small, &sizes).await);
        }
        if runs("retention") {
            rows.push(engine::retention(&small).await);
        }
    }
    if runs("served") {
        eprintln!("lapse serve, loaded over HTTP");
        let dir = tempfile::tempdir().expect("a temp dir");
        let (db, config) = server::files(dir.path());
        let url = format!("sqlite://{}", db.display());
        served::fill(&url, o.live).await;
        let server = server::Server::start(&url, &config).await;
        rows.extend(served::heartbeat_vs_noop(&server, &load, o.live).await);
        rows.extend(served::burst_lag(&server, &url, &load, o.live).await);
        rows.push(served::metrics_vs_noop(&server, &load, o.live).await);
        if runs("streams") {
            // One socket per stream on each side, and room for everything else.
            let streams = load
                .streams
                .min(o.live)
                .min(fd_limit.saturating_sub(500) as usize);
            rows.extend(streams::figures(&server, o.rounds, load.seconds, streams).await);
        }
        if runs("overload") {
            let connections = if o.smoke { 50 } else { 2_000 };
            rows.extend(
                overload::figures(
                    &server,
                    &url,
                    dir.path(),
                    connections,
                    load.seconds * 3.0,
                    (sizes.burst / 2) as u64,
                    load.burst_kind,
                    load.burst_after,
                )
                .await,
            );
        }
        let server = if runs("crash") {
            let storm = crash::Storm {
                sessions: sizes.burst,
                window: Duration::from_secs(if o.smoke { 3 } else { 12 }),
                gaps: if o.smoke {
                    (Duration::from_millis(300), Duration::from_millis(1_000))
                } else {
                    (Duration::from_millis(500), Duration::from_millis(2_500))
                },
            };
            let (row, server) = crash::kill_9(server, &url, &config, &storm, o.live).await;
            rows.push(row);
            server
        } else {
            server
        };
        server.stop();
    }
    if runs("webhooks") {
        eprintln!("webhook deliveries");
        let backlog = if o.smoke { 200 } else { 5_000 };
        rows.push(webhooks::figure(o.rounds, backlog).await);
    }
    if runs("postgres") {
        match lapse_store::testing::fresh_postgres_database().await {
            Some(url) => {
                eprintln!("PostgreSQL");
                if runs("pgsweeps") {
                    let world = world::World::open(&url, None, "postgres", o.live, 2).await;
                    rows.extend(postgres::figures(&url, &world, o.rounds, sizes.burst).await);
                }
                if runs("instances") {
                    rows.push(postgres::two_instances(o.live, &load).await);
                }
            }
            None => rows.push(report::not_run(
                "PostgreSQL figures",
                "≥ 10k/s; seed 001 ≥ 50×",
                "no server: run under scripts/with-postgres",
            )),
        }
    }
    rows
}

/// The table with the machine, the command and the date; the hand-written analysis below the
/// `<!-- notes -->` line of the existing file is kept.
fn write_report(out: &PathBuf, o: &Options, table: &str, pinned: bool) {
    let notes = std::fs::read_to_string(out)
        .ok()
        .and_then(|old| old.split_once("<!-- notes -->").map(|(_, n)| n.to_string()))
        .unwrap_or_else(|| "\n".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    // The machine's cores, not this process's (it is pinned to one).
    let cores = std::fs::read_to_string("/proc/cpuinfo").map_or(0, |c| {
        c.lines().filter(|l| l.starts_with("processor")).count()
    });
    let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC");
    let text = format!(
        "# lapse performance\n\n\
         Measured {date} on {cores} cores ({cpu}), release build. `lapse serve` ran pinned to \
         core 0 and the load generator to core 1{pin}; in-process figures ran on core 1.\n\n\
         ```\nscripts/with-postgres cargo bench -p lapse --bench scale -- --live {} --small {} --rounds {}\n```\n\n\
         Ratios are medians of per-round ratios, the two sides measured in turn (A B A B ...); \
         the spread is the lowest and highest round. \"Time\" ratios compare time per \
         operation (big / small), so 1.0× is perfectly flat.\n\n{table}\n<!-- notes -->{notes}",
        o.live,
        o.small,
        o.rounds,
        pin = if pinned {
            ""
        } else {
            " (taskset missing: not pinned)"
        },
    );
    if let Some(dir) = out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(out, text).expect("write the report");
}
