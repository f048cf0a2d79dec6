//! The sweep: apply every due rule, at `now`, reading only due rows.
//!
//! [`Engine::sweep_once`] is one pass, public so tests and `/v1/sweep` drive it directly;
//! [`Engine::run_sweeper`] is the loop around it that sleeps until the next deadline or until
//! a change moves one earlier. A dry run takes exactly the same path but writes to an
//! in-memory overlay instead of the store, so it reports what a real sweep would apply,
//! cascades included, and changes nothing.
//!
//! - here: a pass, page by page of due rows, each page's transitions in one transaction; on a
//!   shared database, two lanes of such pages at once.
//! - `decide`: one session's turn (its rules, its cascade, a re-arm), and a session swept
//!   alone when its batch could not take it.
//! - `sweeper`: the loop that sleeps until the next deadline, and the sweeps' figures.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Instant;

use lapse_core::lifecycle::{Applied, Effects};
use lapse_core::store::{Commit, DueRow, Rearm, SessionWrite};
use lapse_core::{Session, SessionId, StoreError, Timestamp};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::{Engine, EngineError};

mod decide;
mod sweeper;

pub use sweeper::{SweeperFigures, SweeperStats, WakePlan};

/// A sweep retries a session this often after losing a compare-and-set.
const SWEEP_ATTEMPTS: usize = 3;

/// What to sweep.
#[derive(Clone, Debug, Default)]
pub struct SweepOptions {
    /// Report what would be applied, change nothing.
    pub dry_run: bool,
    /// Decide as of this earlier instant instead of now: what a dry run at that instant
    /// listed, and nothing that came due since (a console applying what it previewed).
    pub due_by: Option<Timestamp>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Told after each batch: due rows examined and rules applied so far.
    pub progress: Option<Progress>,
    /// Once cancelled (lapse is shutting down), the sweep ends after the batch in hand; what
    /// it has not reached stays due for the next sweep.
    pub stop: CancellationToken,
}

/// A callback for long sweeps: (due rows examined, rules applied) so far.
#[derive(Clone)]
pub struct Progress(pub std::sync::Arc<dyn Fn(usize, usize) + Send + Sync>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

/// A session the sweep could not process; it stays due and is retried next time.
#[derive(Clone, Debug, Serialize)]
pub struct SweepError {
    /// The session.
    pub session: String,
    /// What went wrong.
    pub error: String,
}

/// What one sweep did (or, dry, would do).
#[derive(Clone, Debug, Serialize)]
pub struct SweepReport {
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// The instant swept at.
    pub now: Timestamp,
    /// Every rule applied, in order.
    pub applied: Vec<Applied>,
    /// Applied rules by action.
    pub counts: BTreeMap<String, u64>,
    /// Sessions that failed.
    pub errors: Vec<SweepError>,
    /// Wall time taken.
    pub duration_ms: u64,
}

/// Where a pass reads and writes: the sessions it has changed (not yet committed, or in a dry
/// run never), in front of the store.
#[derive(Default)]
struct Pass {
    dry: bool,
    overlay: HashMap<SessionId, Option<Session>>,
    /// Re-arms waiting to be written at the end of the batch.
    rearms: Vec<Rearm>,
    /// The version of the rules in force read before this batch's decisions.
    rules_version: Option<i64>,
}

/// A page of due rows and their sessions as read (a session the pass has changed since is
/// taken from the pass's overlay instead).
struct Page {
    rows: Vec<DueRow>,
    loaded: HashMap<SessionId, Session>,
}

/// What one lane of a sweep applied, and the sessions it could not.
#[derive(Default)]
struct Lane {
    applied: Vec<Applied>,
    errors: Vec<SweepError>,
}

/// A sweep's progress over all its lanes, told as each batch ends: never going back.
#[derive(Default)]
struct Told(std::sync::Mutex<(usize, usize)>);

impl Told {
    /// Counts a batch of `examined` due rows that applied `applied` rules, and tells the
    /// sweep's totals.
    fn add(&self, opts: &SweepOptions, examined: usize, applied: usize) {
        // Poisoned only if a progress callback panicked; its counts are still whole.
        let mut totals = self.0.lock().unwrap_or_else(|e| e.into_inner());
        totals.0 += examined;
        totals.1 += applied;
        if let Some(Progress(tell)) = &opts.progress {
            tell(totals.0, totals.1);
        }
    }
}

/// One session's transition in a batch, waiting for the batch's transaction.
struct Decided {
    id: SessionId,
    commit: Commit,
    applied: Vec<Applied>,
}

impl Engine {
    /// One sweep at the current time; see the module docs.
    pub async fn sweep_once(&self, opts: &SweepOptions) -> Result<SweepReport, EngineError> {
        let started = Instant::now();
        // A sweep `due_by` an earlier instant decides as of that instant: exactly what a
        // preview then listed (its events say they were applied then).
        let now = opts.due_by.map_or(self.now(), |by| by.min(self.now()));
        let told = Told::default();
        let lane = || async {
            let mut lane = Lane::default();
            let outcome = self.sweep_lane(opts, now, &told, &mut lane).await;
            (lane, outcome)
        };
        // Where instances share the database, a sweep works two lanes of pages at once: its
        // due rows are leased as they are read, so the lanes take disjoint pages as two
        // instances do, and their batches are written together (see `Commit::leased`). A dry
        // run leases nothing: one lane.
        let lanes = if self.store.is_shared() && !opts.dry_run {
            let (a, b) = tokio::join!(lane(), lane());
            vec![a, b]
        } else {
            vec![lane().await]
        };
        let mut report = SweepReport {
            dry_run: opts.dry_run,
            now,
            applied: Vec::new(),
            counts: BTreeMap::new(),
            errors: Vec::new(),
            duration_ms: 0,
        };
        let merged = lanes.len() > 1;
        let mut failed = None;
        for (lane, outcome) in lanes {
            report.applied.extend(lane.applied);
            report.errors.extend(lane.errors);
            if let Err(e) = outcome {
                failed.get_or_insert(e);
            }
        }
        if merged {
            // Each lane's in deadline order; the two merged by it.
            report.applied.sort_by_key(|a| a.due_at);
        }
        for a in &report.applied {
            *report.counts.entry(a.action.clone()).or_default() += 1;
        }
        report.duration_ms = started.elapsed().as_millis() as u64;
        if !opts.dry_run {
            match failed {
                // What a failed sweep committed before it failed stands: the figures count it.
                Some(_) => self.stats.count(&report, now),
                None => self.stats.record(&report, now),
            }
        }
        failed.map_or(Ok(report), Err)
    }

    /// One lane of a sweep: page after page of due rows, each decided and committed in one
    /// transaction while the next is read. What it applied and could not goes into `report`,
    /// as each page commits, so a lane that fails still tells what it committed before.
    async fn sweep_lane(
        &self,
        opts: &SweepOptions,
        now: Timestamp,
        told: &Told,
        report: &mut Lane,
    ) -> Result<(), EngineError> {
        let mut pass = Pass {
            dry: opts.dry_run,
            ..Pass::default()
        };
        let batch = self.config().sweeper.batch;
        let page = |cursor: Option<DueRow>| self.due_page(now, opts, cursor, batch);
        let mut next = page(None).await?;
        loop {
            let Page { rows, loaded } = next;
            let exhausted = rows.len() < batch as usize;
            let cursor = rows.last().cloned();
            let ids: Vec<SessionId> = rows.iter().map(|r| r.id.clone()).collect();
            let (examined, applied_before) = (ids.len(), report.applied.len());
            // The next page is read while this one is decided and committed. A session of it
            // that this page changes (a cascaded child) was read before the change: its write
            // loses its compare-and-set and it is retried alone, from a fresh read.
            let (done, read) = if exhausted {
                (
                    self.sweep_batch(&mut pass, ids, loaded, now, report).await,
                    None,
                )
            } else {
                let (done, read) = tokio::join!(
                    self.sweep_batch(&mut pass, ids, loaded, now, report),
                    page(cursor)
                );
                (done, Some(read))
            };
            // This page's re-arms, in one statement (the next page was read after this page's
            // rows by deadline, so none of them is in it).
            let rearms = std::mem::take(&mut pass.rearms);
            let written = match done {
                Ok(()) => self.rearm(&rearms, pass.rules_version).await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                let mut claimed: Vec<SessionId> = rows.iter().map(|r| r.id.clone()).collect();
                if let Some(Ok(ahead)) = &read {
                    claimed.extend(ahead.rows.iter().map(|r| r.id.clone()));
                }
                self.give_back(opts, &claimed).await;
                return Err(e);
            }
            told.add(
                opts,
                examined,
                report.applied.len().saturating_sub(applied_before),
            );
            if opts.stop.is_cancelled() && read.is_some() {
                // The page read ahead is left as it is: its leases (PostgreSQL) end with this
                // instance's, and nothing of it was written.
                tracing::info!(
                    applied = report.applied.len(),
                    "sweep stopped after its current batch; the rest stays due"
                );
                break;
            }
            match read {
                Some(read) => next = read?,
                None => break,
            }
        }
        Ok(())
    }

    /// Decides every session of one page of due rows (and the cascades they cause) against
    /// the pass's overlay, then commits all the transitions in one transaction. A session
    /// whose write loses its compare-and-set is set aside and retried alone from a fresh
    /// read; if the batch's transaction fails outright, each is retried alone.
    async fn sweep_batch(
        &self,
        pass: &mut Pass,
        ids: Vec<SessionId>,
        mut loaded: HashMap<SessionId, Session>,
        now: Timestamp,
        report: &mut Lane,
    ) -> Result<(), EngineError> {
        // What the pass has changed (a dry run's earlier pages) is taken from its overlay.
        loaded.retain(|id, _| !pass.overlay.contains_key(id));
        pass.rules_version = self.rules_version();
        let mut due = self.apply_loaded(&loaded, now);
        let mut children = self.children_of_closing(&due).await?;

        let mut decided: Vec<Decided> = Vec::new();
        // The page's rows are leased to this sweep where the store leases them (a shared
        // database, not a dry run); elsewhere nothing reads the flag.
        let leased: HashSet<SessionId> = if self.store.is_shared() && !pass.dry {
            ids.iter().cloned().collect()
        } else {
            HashSet::new()
        };
        let mut queue: VecDeque<SessionId> = ids.into();
        while let Some(id) = queue.pop_front() {
            // A session the pass changed already is decided again from its new state; one
            // as loaded, from what its due rules were found to do.
            let current = match pass.overlay.get(&id) {
                Some(s) => s.clone().map(|s| (s, None)),
                None => loaded.remove(&id).map(|s| (s, due.remove(&id))),
            };
            let Some((s, applied)) = current else {
                continue;
            };
            let kids = children.remove(&id);
            match self.decide(pass, s, applied, kids, now).await {
                Ok(Some((mut d, cascade))) => {
                    d.commit.leased = leased.contains(&d.id)
                        && matches!(d.commit.sessions.as_slice(),
                            [SessionWrite::Update { session, .. }] if session.id == d.id);
                    queue.extend(cascade);
                    decided.push(d);
                }
                Ok(None) => {}
                // The rest would fail the same way: the sweep ends and is tried again.
                Err(e) if e.is_unavailable() => return Err(e),
                Err(e) => {
                    tracing::warn!(session = %id, error = %e, "sweep could not decide; it stays due");
                    report.errors.push(SweepError {
                        session: id.to_string(),
                        error: e.to_string(),
                    });
                }
            }
        }

        if pass.dry {
            report
                .applied
                .extend(decided.into_iter().flat_map(|d| d.applied));
            return Ok(());
        }
        // Committed (or not), the batch's changes are in the store now: later batches read
        // from there again.
        pass.overlay.clear();
        let (commits, rest): (Vec<Commit>, Vec<(SessionId, Vec<Applied>)>) = decided
            .into_iter()
            .map(|d| (d.commit, (d.id, d.applied)))
            .unzip();
        let outcomes = match self.apply_commits(&commits).await {
            Ok(outcomes) => outcomes,
            Err(e) if e.is_unavailable() => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "a sweep batch failed; applying its sessions one by one");
                rest.iter().map(|_| Err(StoreError::Conflict)).collect()
            }
        };
        let mut alone = Vec::new();
        for ((id, applied), outcome) in rest.into_iter().zip(outcomes) {
            match outcome {
                Ok(()) => report.applied.extend(applied),
                Err(_) => alone.push(id),
            }
        }
        for id in alone {
            self.sweep_alone(&id, now, report).await?;
        }
        Ok(())
    }

    /// A page of due rows after `cursor`, with their sessions as stored.
    async fn due_page(
        &self,
        now: Timestamp,
        opts: &SweepOptions,
        cursor: Option<DueRow>,
        batch: u32,
    ) -> Result<Page, EngineError> {
        let rows = self
            .store
            .due(
                now,
                opts.kind.as_deref(),
                cursor.as_ref(),
                batch,
                !opts.dry_run,
            )
            .await?;
        if rows.is_empty() {
            return Ok(Page {
                rows,
                loaded: HashMap::new(),
            });
        }
        let ids: Vec<SessionId> = rows.iter().map(|r| r.id.clone()).collect();
        let read = async {
            if !opts.dry_run {
                // An idle rule must never be decided on a row older than the beats this
                // instance has already accepted: those of these sessions are written before
                // they are read. Only theirs, so a sweep does not wait for every room's beats.
                self.flush_heartbeats_of(&ids).await?;
            }
            self.store.load_many(&ids).await.map_err(EngineError::from)
        };
        match read.await {
            Ok(sessions) => {
                let loaded = sessions.into_iter().map(|s| (s.id.clone(), s)).collect();
                Ok(Page { rows, loaded })
            }
            Err(e) => {
                self.give_back(opts, &ids).await;
                Err(e)
            }
        }
    }

    /// Gives back the leases of rows this sweep claimed and will not write (it failed), so the
    /// next sweep, this instance's or another's, takes them at once rather than when the lease
    /// runs out. If the database is out of reach for that too, the lease runs out by itself.
    async fn give_back(&self, opts: &SweepOptions, ids: &[SessionId]) {
        if opts.dry_run || ids.is_empty() {
            return;
        }
        if let Err(e) = self.store.release(ids).await {
            tracing::warn!(error = %e, rows = ids.len(), "a failed sweep's leases were not given back; they run out by themselves");
        }
    }

    /// Every loaded session with its due rules applied at `now`, and what they did: worked
    /// out once a page, both to know which sessions close and to decide them.
    fn apply_loaded(
        &self,
        loaded: &HashMap<SessionId, Session>,
        now: Timestamp,
    ) -> HashMap<SessionId, (Session, Effects)> {
        loaded
            .iter()
            .map(|(id, s)| {
                let mut after = s.clone();
                let fx = self.apply_due(&mut after, now);
                (id.clone(), (after, fx))
            })
            .collect()
    }

    /// How many sessions have a stored deadline due now (of `kind`): what a sweep has ahead
    /// of it, for a progress bar. An upper bound: a stored deadline may be early.
    pub async fn due_count(&self, kind: Option<&str>) -> Result<u64, EngineError> {
        Ok(self.store.count_due(self.now(), kind).await?)
    }

    /// The sequence number of the latest event, 0 before any.
    pub async fn last_event_seq(&self, caller: &crate::Caller) -> Result<i64, EngineError> {
        // Who may read the stats may read this.
        caller.require_sweep()?;
        Ok(self.store.last_event_seq().await?)
    }
}
