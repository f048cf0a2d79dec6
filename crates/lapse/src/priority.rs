//! Who gets the processor first when there is not enough of it: the sweeper.
//!
//! A flood of requests keeps every thread busy; the sweeper's work (read the due rows, decide,
//! commit) then waits its turn behind hundreds of request tasks at each of its awaits, and its
//! expiries come late. So on SQLite the sweeper, the heartbeat flusher, the group committer
//! and the event reader each run on a thread of their own ([`spawn_housekeeping`]; on
//! PostgreSQL they stay on the runtime whose threads drive its sockets), and the threads that
//! answer requests run at a lower scheduling priority ([`lower_this_thread`], `nice`
//! [`REQUEST_NICENESS`] above the process's) so the operating system runs the sweeper first
//! whenever both are ready. With processor to spare nothing changes: a priority only decides
//! who waits when someone must.

use std::future::Future;

/// How much lower than the process the request threads run (Linux `nice` steps: each step is
/// about 1.25× less processor when both want it; 5 steps leave the request threads about a
/// quarter of a busy core against a busy sweeper, and all of it otherwise).
pub const REQUEST_NICENESS: i32 = 5;

/// Lowers the calling thread's scheduling priority by [`REQUEST_NICENESS`]: the runtime's
/// request threads call it as they start. Where the system has no per-thread priority, or
/// refuses, nothing changes (a debug line says so).
pub fn lower_this_thread() {
    if let Err(e) = lower_by(REQUEST_NICENESS) {
        tracing::debug!(error = %e, "request threads keep the process's priority");
    }
}

#[cfg(target_os = "linux")]
fn lower_by(steps: i32) -> std::io::Result<()> {
    use rustix::process::{getpriority_process, setpriority_process};
    // On Linux a priority is per thread, and PRIO_PROCESS with a thread id names that thread.
    let me = Some(rustix::thread::gettid());
    let now = getpriority_process(me)?;
    setpriority_process(me, (now + steps).min(19))?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn lower_by(_steps: i32) -> std::io::Result<()> {
    Err(std::io::Error::other(
        "per-thread priorities are Linux only",
    ))
}

/// The calling thread's `nice` value (Linux), for tests and logs.
#[cfg(target_os = "linux")]
pub fn this_thread_niceness() -> Option<i32> {
    rustix::process::getpriority_process(Some(rustix::thread::gettid())).ok()
}

/// The calling thread's `nice` value (Linux), for tests and logs.
#[cfg(not(target_os = "linux"))]
pub fn this_thread_niceness() -> Option<i32> {
    None
}

/// Runs `work` to its end on a thread of its own (named `name`) with a runtime of its own, at
/// the process's priority. The returned task ends when `work` has.
pub fn spawn_housekeeping<F>(name: &str, work: F) -> std::io::Result<tokio::task::JoinHandle<()>>
where
    F: Future<Output = ()> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            runtime.block_on(work);
            let _ = done.send(());
        })?;
    Ok(tokio::spawn(async move {
        // The sender goes away with the thread, however `work` ended.
        let _ = finished.await;
    }))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_request_thread_runs_below_the_process_and_housekeeping_does_not() {
        let process = this_thread_niceness().expect("Linux reports a thread's priority");
        let lowered = std::thread::spawn(|| {
            lower_this_thread();
            this_thread_niceness()
        })
        .join()
        .expect("the thread ends");
        assert_eq!(lowered, Some((process + REQUEST_NICENESS).min(19)));

        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        let housekeeping = runtime.block_on(async {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let done = spawn_housekeeping("test-housekeeping", async move {
                let _ = tx.send((
                    std::thread::current().name().map(str::to_string),
                    this_thread_niceness(),
                ));
            })
            .expect("the thread starts");
            done.await.expect("the work ends");
            rx.await.expect("the work ran")
        });
        assert_eq!(
            housekeeping,
            (Some("test-housekeeping".to_string()), Some(process))
        );
    }

    /// The threads SQLite's connections run their statements on, with their `nice` values.
    fn database_threads() -> Vec<(String, Option<i32>)> {
        let tasks = std::fs::read_dir("/proc/self/task").expect("Linux lists a process's threads");
        tasks
            .filter_map(|task| {
                let task = task.ok()?;
                let name = std::fs::read_to_string(task.path().join("comm")).ok()?;
                let tid = task.file_name().to_str()?.parse().ok()?;
                let thread = rustix::process::Pid::from_raw(tid);
                let nice = rustix::process::getpriority_process(thread).ok();
                name.starts_with("sqlx-sqlite")
                    .then(|| (format!("{tid}"), nice))
            })
            .collect()
    }

    #[test]
    fn reads_asked_for_by_request_threads_run_at_the_process_priority() {
        let process = this_thread_niceness().expect("Linux reports a thread's priority");
        let dir = tempfile::tempdir().expect("a temp dir");
        let url = format!("sqlite://{}", dir.path().join("lapse.db").display());
        // As `lapse serve` runs: the store opened at start, reads asked for by request threads
        // at once, more of them than the store has readers.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(lower_this_thread)
            .build()
            .expect("a runtime");
        let threads = runtime.block_on(async {
            let store = lapse_store::open(&url, Some(4), None)
                .await
                .expect("the store opens");
            store.migrate().await.expect("migrate");
            let reads = (0..32).map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    assert!(this_thread_niceness() > Some(process));
                    for _ in 0..20 {
                        store.last_event_seq().await.expect("a read");
                    }
                })
            });
            for read in futures_util::future::join_all(reads).await {
                read.expect("the reads end");
            }
            database_threads()
        });
        assert!(threads.len() >= 5, "a writer and four readers: {threads:?}");
        for (tid, nice) in threads {
            assert_eq!(nice, Some(process), "database thread {tid}");
        }
    }
}
