//! The continuous sweeper: a sweep, then a sleep until the next stored deadline, or until a
//! change moves one earlier (mini-redis's purge-then-sleep); and the sweeps' running figures.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lapse_core::Timestamp;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{SweepOptions, SweepReport};
use crate::{Engine, EngineError};

/// Longest the continuous sweeper sleeps without looking at the database again.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// Running figures of the sweeper, for `/v1/stats` and `/metrics`.
pub struct SweeperStats {
    sweeps: AtomicU64,
    applied: AtomicU64,
    errors: AtomicU64,
    rearmed: AtomicU64,
    last: Mutex<Option<(Timestamp, u64)>>,
    /// How late each rule was applied: the sweep's instant minus its deadline.
    lag: crate::metrics::Histogram,
}

impl Default for SweeperStats {
    fn default() -> Self {
        SweeperStats {
            sweeps: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            rearmed: AtomicU64::new(0),
            last: Mutex::new(None),
            lag: crate::metrics::Histogram::new(crate::metrics::LAG_BUCKETS),
        }
    }
}

/// A snapshot of [`SweeperStats`].
#[derive(Clone, Debug, Serialize)]
pub struct SweeperFigures {
    /// Real sweeps run since start.
    pub sweeps: u64,
    /// Rules applied by them.
    pub applied: u64,
    /// Sessions that failed in them.
    pub errors: u64,
    /// Due rows re-armed instead of transitioned (their activity had moved).
    pub rearmed: u64,
    /// When the last sweep ran.
    pub last_sweep_at: Option<Timestamp>,
    /// How long it took.
    pub last_duration_ms: Option<u64>,
    /// Heartbeats waiting to be flushed.
    pub pending_heartbeats: usize,
    /// How long the heartbeat flusher's last flush took (see
    /// [`crate::heartbeats::Heartbeats::last_flush`]).
    pub last_flush_duration_ms: Option<u64>,
    /// The earliest stored deadline.
    pub next_deadline: Option<Timestamp>,
}

/// What the continuous sweeper will do next.
#[derive(Clone, Debug, PartialEq)]
pub struct WakePlan {
    /// The earliest stored deadline, if any.
    pub next_deadline: Option<Timestamp>,
    /// How long it sleeps unless woken.
    pub sleep: Duration,
}
impl SweeperStats {
    /// Counts a real sweep that ended at `now` (a dry run counts nothing).
    pub(super) fn record(&self, report: &SweepReport, now: Timestamp) {
        self.sweeps.fetch_add(1, Ordering::Relaxed);
        self.count(report, now);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((now, report.duration_ms));
    }

    /// Counts what a real sweep at `now` applied and could not: all of a finished one's, or
    /// what one that failed (the database out of reach, or failing) committed before it failed.
    pub(super) fn count(&self, report: &SweepReport, now: Timestamp) {
        self.applied
            .fetch_add(report.applied.len() as u64, Ordering::Relaxed);
        self.errors
            .fetch_add(report.errors.len() as u64, Ordering::Relaxed);
        for a in &report.applied {
            self.lag
                .observe(now.since(a.due_at).millis() as f64 / 1000.0);
        }
    }

    /// Counts due rows re-armed instead of transitioned.
    pub(super) fn rearmed(&self, n: u64) {
        self.rearmed.fetch_add(n, Ordering::Relaxed);
    }
}

impl Engine {
    /// How late the sweeps of this instance applied their rules, in seconds.
    pub fn expiry_lag(&self) -> &crate::metrics::Histogram {
        &self.stats.lag
    }

    /// Sweeper figures for `/v1/stats`.
    pub async fn sweeper_figures(&self) -> Result<SweeperFigures, EngineError> {
        let s = &self.stats;
        let last = *s.last.lock().unwrap_or_else(|p| p.into_inner());
        Ok(SweeperFigures {
            sweeps: s.sweeps.load(Ordering::Relaxed),
            applied: s.applied.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            rearmed: s.rearmed.load(Ordering::Relaxed),
            last_sweep_at: last.map(|(at, _)| at),
            last_duration_ms: last.map(|(_, d)| d),
            pending_heartbeats: self.beats.len(),
            last_flush_duration_ms: self.beats.last_flush().map(|d| d.as_millis() as u64),
            next_deadline: self.store.next_deadline().await?,
        })
    }

    /// One step of the continuous sweeper: sweep what is due, then plan the sleep until the
    /// next stored deadline (at most a minute; at least a second while a row keeps failing or
    /// another instance holds what is due).
    /// From here until the sleep ends, a change that moves a deadline before the planned
    /// wake-up wakes the sweeper.
    /// `stop` ends a sweep under way after its current batch.
    pub async fn sweep_and_plan(&self, stop: &CancellationToken) -> WakePlan {
        self.planned_wake.store(i64::MAX, Ordering::Release);
        let opts = SweepOptions {
            stop: stop.clone(),
            ..SweepOptions::default()
        };
        let (failing, applied, swept_at) = match self.sweep_once(&opts).await {
            Ok(report) => {
                if !report.applied.is_empty() {
                    tracing::info!(
                        applied = report.applied.len(),
                        ms = report.duration_ms,
                        "sweep"
                    );
                }
                (!report.errors.is_empty(), report.applied.len(), report.now)
            }
            Err(e) => {
                if !e.is_unavailable() {
                    tracing::error!(error = %e, "sweep failed");
                }
                (true, 0, self.now())
            }
        };
        let now = self.now();
        // Not knowing the next deadline (the database is out of reach) is not knowing there
        // is none: look again in a second.
        let (next_deadline, unknown) = match self.store.next_deadline().await {
            Ok(at) => (at, false),
            Err(_) => (None, true),
        };
        let swept = SweepOutcome {
            swept_at,
            applied,
            failing,
        };
        let sleep = plan_sleep(swept, next_deadline, unknown, now);
        self.planned_wake.store(
            now.millis().saturating_add(sleep.as_millis() as i64),
            Ordering::Release,
        );
        WakePlan {
            next_deadline,
            sleep,
        }
    }

    /// The continuous sweeper: [`Engine::sweep_and_plan`], then sleep until the plan says or
    /// until woken by a change that moved a deadline earlier. Returns when `shutdown` is
    /// cancelled. With a manual clock it returns at once: rules then apply on `/v1/sweep` and
    /// on access.
    pub async fn run_sweeper(&self, shutdown: CancellationToken) {
        if self.clock.is_manual() {
            return;
        }
        loop {
            let plan = self.sweep_and_plan(&shutdown).await;
            tokio::select! {
                _ = tokio::time::sleep(plan.sleep) => {}
                _ = self.woken() => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Resolves when a change has moved a deadline before the sweeper's planned wake-up
    /// (immediately if that happened since the last wait).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// How many times a change has woken (or would have woken) the sweeper.
    pub fn wake_ups(&self) -> u64 {
        self.wake_ups.load(Ordering::Relaxed)
    }
}

/// What a sweep did, as the sweeper plans its sleep after it.
#[derive(Debug, Clone, Copy)]
struct SweepOutcome {
    /// The instant the sweep decided as of: what was due then, it looked at.
    swept_at: Timestamp,
    /// How many rules it applied.
    applied: usize,
    /// Whether a session failed, or the sweep as a whole.
    failing: bool,
}

/// How long the sweeper sleeps after `swept`, at `now`, with `next` the earliest stored
/// deadline (`unknown` when it could not be read).
///
/// Until that deadline, at most [`MAX_SLEEP`]; a second at most when the deadline is
/// unknown. A row that keeps failing stays due, and so does one another instance holds (it
/// is sweeping it, or it died and its lease has yet to run out): a sweep that applied
/// nothing while a deadline it looked at had passed waits at least a second, not none. A
/// deadline that came due only while the sweep ran (a sweep slowed by a flood of writes) was
/// never looked at, so it is swept at once.
fn plan_sleep(
    swept: SweepOutcome,
    next: Option<Timestamp>,
    unknown: bool,
    now: Timestamp,
) -> Duration {
    let mut sleep = next
        .map_or(MAX_SLEEP, |at| {
            Duration::from_millis(at.since(now).millis() as u64)
        })
        .min(MAX_SLEEP);
    if unknown {
        sleep = sleep.min(Duration::from_secs(1));
    }
    let held_elsewhere = swept.applied == 0 && next.is_some_and(|at| at <= swept.swept_at);
    if swept.failing || held_elsewhere {
        sleep = sleep.max(Duration::from_secs(1));
    }
    sleep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    fn swept(swept_at: i64, applied: usize, failing: bool) -> SweepOutcome {
        SweepOutcome {
            swept_at: at(swept_at),
            applied,
            failing,
        }
    }

    #[test]
    fn the_sweeper_sleeps_until_the_next_deadline_at_most_a_minute() {
        let plan = plan_sleep(swept(1_000, 3, false), Some(at(1_500)), false, at(1_100));
        assert_eq!(plan, Duration::from_millis(400));
        assert_eq!(
            plan_sleep(swept(1_000, 0, false), None, false, at(1_100)),
            MAX_SLEEP
        );
        let far = Some(at(10_000_000));
        assert_eq!(
            plan_sleep(swept(1_000, 0, false), far, false, at(1_100)),
            MAX_SLEEP
        );
    }

    #[test]
    fn a_deadline_that_came_due_while_a_slow_sweep_ran_is_swept_at_once() {
        // The sweep looked at 1,000 and found nothing due; a burst came due at 1,200, while
        // it waited on a busy database until 1,900.
        let plan = plan_sleep(swept(1_000, 0, false), Some(at(1_200)), false, at(1_900));
        assert_eq!(plan, Duration::ZERO);
    }

    #[test]
    fn a_due_row_the_sweep_could_not_apply_is_looked_at_again_in_a_second() {
        // Held by another instance: due when the sweep looked, and nothing applied.
        let held = plan_sleep(swept(1_000, 0, false), Some(at(900)), false, at(1_050));
        assert_eq!(held, Duration::from_secs(1));
        // A row that failed.
        let failing = plan_sleep(swept(1_000, 5, true), Some(at(900)), false, at(1_050));
        assert_eq!(failing, Duration::from_secs(1));
        // Applied some: what is left is swept at once.
        let more = plan_sleep(swept(1_000, 5, false), Some(at(900)), false, at(1_050));
        assert_eq!(more, Duration::ZERO);
    }

    #[test]
    fn an_unknown_next_deadline_is_looked_for_again_in_a_second() {
        let plan = plan_sleep(swept(1_000, 0, true), None, true, at(1_050));
        assert_eq!(plan, Duration::from_secs(1));
    }
}
