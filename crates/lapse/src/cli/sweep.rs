//! `lapse sweep`: every due rule applied now, on the database directly, for cron jobs and
//! systemd timers, with its progress on stderr and its report on stdout.

use std::io::IsTerminal as _;
use std::path::Path;

use lapse_engine::{Progress, SweepOptions};
use tokio_util::sync::CancellationToken;

use crate::app::{Rules, open_engine, shutdown_on_signal};
use crate::settings::{Environment, Settings};

/// `lapse sweep [--dry-run] [--verbose] [--kind K] [--json]`: every due rule applied now, on the
/// database directly; exits 1 when a session could not be swept.
pub(super) async fn sweep(
    config: Option<&Path>,
    env: Environment,
    dry_run: bool,
    verbose: bool,
    kind: Option<String>,
    json: bool,
) -> anyhow::Result<i32> {
    let settings = Settings::load(config, env)?;
    if let Some(k) = &kind
        && settings.config.kind(k).is_none()
    {
        anyhow::bail!("unknown kind `{k}`");
    }
    let rules = if dry_run { Rules::Follow } else { Rules::Put };
    let engine = open_engine(&settings, rules).await?;
    // Progress goes to stderr while stdout stays the report. On a terminal, a sweep
    // with more than a batch to do draws a bar over the due rows counted at its start;
    // elsewhere (a log) one line a batch from the second on.
    let on_terminal = std::io::stderr().is_terminal();
    let total = if on_terminal {
        engine.due_count(kind.as_deref()).await?
    } else {
        0
    };
    let bar = on_terminal && total > u64::from(settings.config.sweeper.batch);
    let batches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let told = batches.clone();
    let progress = Progress(std::sync::Arc::new(move |examined, applied| {
        let batch = told.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if bar {
            eprint!("\r\x1b[2K{}", progress_bar(examined as u64, total, applied));
        } else if batch > 0 && !on_terminal {
            eprintln!("sweeping: {examined} due row(s) examined, {applied} rule(s) applied");
        }
    }));
    // Ctrl-C or SIGTERM ends the sweep after its current batch: what it applied is
    // reported, the rest stays due.
    let stop = CancellationToken::new();
    tokio::spawn(shutdown_on_signal(stop.clone()));
    let opts = SweepOptions {
        dry_run,
        due_by: None,
        kind,
        progress: Some(progress),
        stop,
    };
    let report = engine.sweep_once(&opts).await;
    if bar && batches.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        eprintln!();
    }
    let report = report?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        if verbose {
            for a in &report.applied {
                println!(
                    "{} {} [{}] rule {} ({}): {} -> {} at {}",
                    if dry_run { "would apply" } else { "applied" },
                    a.session,
                    a.kind,
                    a.rule,
                    a.action,
                    a.from.as_str(),
                    a.to,
                    a.due_at
                );
            }
            for e in &report.errors {
                println!("error {}: {}", e.session, e.error);
            }
        }
        let counts: Vec<String> = report
            .counts
            .iter()
            .map(|(a, n)| format!("{a}: {n}"))
            .collect();
        println!(
            "{} {} rule(s) in {} ms{}{}",
            if dry_run {
                "dry run: would apply"
            } else {
                "applied"
            },
            report.applied.len(),
            report.duration_ms,
            if counts.is_empty() {
                String::new()
            } else {
                format!(" ({})", counts.join(", "))
            },
            if report.errors.is_empty() {
                String::new()
            } else {
                format!("; {} error(s)", report.errors.len())
            },
        );
    }
    Ok(if report.errors.is_empty() { 0 } else { 1 })
}

/// `[##########----------]  500/1000 due rows, 480 rules applied`: a sweep's progress over
/// the due rows counted at its start (more may come due meanwhile: the bar stays full).
fn progress_bar(examined: u64, total: u64, applied: usize) -> String {
    const WIDTH: u64 = 30;
    let done = (examined.min(total) * WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH);
    format!(
        "[{}{}] {examined}/{total} due rows, {applied} rule(s) applied",
        "#".repeat(done as usize),
        "-".repeat((WIDTH - done) as usize)
    )
}

#[cfg(test)]
mod tests {
    use super::progress_bar;

    #[test]
    fn the_progress_bar_fills_with_the_rows_examined() {
        assert_eq!(
            progress_bar(500, 1000, 480),
            format!(
                "[{}{}] 500/1000 due rows, 480 rule(s) applied",
                "#".repeat(15),
                "-".repeat(15)
            )
        );
        assert!(progress_bar(1200, 1000, 1).starts_with(&format!("[{}]", "#".repeat(30))));
        assert!(progress_bar(0, 0, 0).starts_with(&format!("[{}]", "#".repeat(30))));
    }
}
