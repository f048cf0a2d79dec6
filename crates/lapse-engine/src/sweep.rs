//! The sweep: apply every due rule, at `now`, reading only due rows.
//!
//! [`Engine::sweep_once`] is one pass, public so tests and `/v1/sweep` drive it directly;
//! [`Engine::run_sweeper`] is the loop around it that sleeps until the next deadline or until
//! a change moves one earlier. A dry run takes exactly the same path but writes to an
//! in-memory overlay instead of the store, so it reports what a real sweep would apply,
//! cascades included, and changes nothing.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lapse_core::lifecycle::{Applied, Effects};
use lapse_core::store::{Commit, DueRow, Rearm, RearmOnly, SessionWrite};
use lapse_core::{Session, SessionId, StoreError, Timestamp};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::{Engine, EngineError};

/// Longest the continuous sweeper sleeps without looking at the database again.
const MAX_SLEEP: Duration = Duration::from_secs(60);
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
        let mut pass = Pass {
            dry: opts.dry_run,
            ..Pass::default()
        };
        let mut report = SweepReport {
            dry_run: opts.dry_run,
            now,
            applied: Vec::new(),
            counts: BTreeMap::new(),
            errors: Vec::new(),
            duration_ms: 0,
        };
        let batch = self.config().sweeper.batch;
        let page = |cursor: Option<DueRow>| self.due_page(now, opts, cursor, batch);
        let mut next = page(None).await?;
        let mut examined = 0;
        loop {
            let Page { rows, loaded } = next;
            let exhausted = rows.len() < batch as usize;
            let cursor = rows.last().cloned();
            let ids: Vec<SessionId> = rows.iter().map(|r| r.id.clone()).collect();
            examined += ids.len();
            // The next page is read while this one is decided and committed. A session of it
            // that this page changes (a cascaded child) was read before the change: its write
            // loses its compare-and-set and it is retried alone, from a fresh read.
            let (done, read) = if exhausted {
                (
                    self.sweep_batch(&mut pass, ids, loaded, now, &mut report)
                        .await,
                    None,
                )
            } else {
                let (done, read) = tokio::join!(
                    self.sweep_batch(&mut pass, ids, loaded, now, &mut report),
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
            if let Some(Progress(tell)) = &opts.progress {
                tell(examined, report.applied.len());
            }
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
        for a in &report.applied {
            *report.counts.entry(a.action.clone()).or_default() += 1;
        }
        report.duration_ms = started.elapsed().as_millis() as u64;
        if !opts.dry_run {
            let s = &self.stats;
            s.sweeps.fetch_add(1, Ordering::Relaxed);
            s.applied
                .fetch_add(report.applied.len() as u64, Ordering::Relaxed);
            s.errors
                .fetch_add(report.errors.len() as u64, Ordering::Relaxed);
            for a in &report.applied {
                s.lag.observe(now.since(a.due_at).millis() as f64 / 1000.0);
            }
            *s.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((now, report.duration_ms));
        }
        Ok(report)
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
        report: &mut SweepReport,
    ) -> Result<(), EngineError> {
        // What the pass has changed (a dry run's earlier pages) is taken from its overlay.
        loaded.retain(|id, _| !pass.overlay.contains_key(id));
        pass.rules_version = self.rules_version();
        let mut due = self.apply_loaded(&loaded, now);
        let mut children = self.children_of_closing(&due).await?;

        let mut decided: Vec<Decided> = Vec::new();
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
                Ok(Some((d, cascade))) => {
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

    /// The open children of every session its due rules close, in one read, keyed by parent.
    async fn children_of_closing(
        &self,
        due: &HashMap<SessionId, (Session, Effects)>,
    ) -> Result<HashMap<SessionId, Vec<Session>>, EngineError> {
        let closing: Vec<SessionId> = due
            .iter()
            .filter(|(_, (_, fx))| fx.closed_at.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        // Every closing session gets an entry, so none asks the store again alone.
        let mut by_parent: HashMap<SessionId, Vec<Session>> =
            closing.iter().map(|id| (id.clone(), Vec::new())).collect();
        for child in self.store.open_children(&closing).await? {
            if let Some(parent) = child.parent.clone() {
                by_parent.entry(parent).or_default().push(child);
            }
        }
        Ok(by_parent)
    }

    /// Applies `s`'s due rules at `now`: a transition ready to commit (with the ids of the
    /// children it made due), a re-arm noted in the pass, or nothing. The pass's overlay takes
    /// the new state, so what is decided next in the batch builds on it.
    async fn decide(
        &self,
        pass: &mut Pass,
        stored: Session,
        applied: Option<(Session, Effects)>,
        children: Option<Vec<Session>>,
        now: Timestamp,
    ) -> Result<Option<(Decided, Vec<SessionId>)>, EngineError> {
        let (mut s, mut fx) = match applied {
            Some(done) => done,
            None => {
                let mut s = stored.clone();
                let fx = self.apply_due(&mut s, now);
                (s, fx)
            }
        };
        if fx.is_empty() {
            // Lazy re-arm: the row was due by its stored deadline, but activity has moved
            // since; store the true one so the index stops offering it.
            s.observe(&self.kind_of(&s.kind), now);
            if !pass.dry && s.wake_at != stored.wake_at {
                // Written with the rest of the batch, in one statement.
                pass.rearms.push(Rearm {
                    id: s.id.clone(),
                    version: s.version,
                    wake_at: s.wake_at,
                    rule: s.next_due.map(|d| d.rule),
                });
            }
            return Ok(None);
        }
        let children = match (fx.closed_at, children) {
            (None, _) => None,
            (Some(_), kids) => {
                let mut kids = match kids {
                    Some(kids) => kids,
                    None => self.open_children(&s).await?,
                };
                // Read before this batch's earlier decisions: theirs is the current state.
                overlay_children(pass, &mut kids);
                Some(kids)
            }
        };
        let (commit, due_children) = self
            .build_commit(
                &mut s,
                Some(&stored),
                &mut fx,
                now,
                children,
                pass.rules_version,
            )
            .await?;
        for w in &commit.sessions {
            match w {
                // Only a child can come up again in this batch (its parent's cascade, or a
                // later page of a dry run): a session without a parent is decided once.
                SessionWrite::Update { session: c, .. } | SessionWrite::Insert(c)
                    if c.parent.is_some() =>
                {
                    let mut c = c.clone();
                    c.version += 1;
                    pass.overlay.insert(c.id.clone(), Some(c));
                }
                SessionWrite::Update { .. } | SessionWrite::Insert(_) => {}
                SessionWrite::Delete { id, .. } => {
                    pass.overlay.insert(id.clone(), None);
                }
            }
        }
        let decided = Decided {
            id: s.id.clone(),
            commit,
            applied: fx.applied,
        };
        Ok(Some((
            decided,
            due_children.into_iter().map(|c| c.id).collect(),
        )))
    }

    /// Sweeps one session by itself, from a fresh read, with its cascade: for a session whose
    /// write lost in a batch. Retries a lost compare-and-set a few times; a session that still
    /// fails stays due and is reported. An outage ends it (and the sweep) at once.
    async fn sweep_alone(
        &self,
        id: &SessionId,
        now: Timestamp,
        report: &mut SweepReport,
    ) -> Result<(), EngineError> {
        let mut queue = VecDeque::from([id.clone()]);
        while let Some(id) = queue.pop_front() {
            let mut last_error = None;
            for _ in 0..SWEEP_ATTEMPTS {
                match self.sweep_one(&id, now).await {
                    Ok((applied, cascade)) => {
                        report.applied.extend(applied);
                        queue.extend(cascade);
                        last_error = None;
                        break;
                    }
                    Err(EngineError::Store(e)) if e.decide_again() => {
                        last_error = Some("lost a concurrent update three times".to_string());
                    }
                    Err(e) if e.is_unavailable() => return Err(e),
                    Err(e) => {
                        last_error = Some(e.to_string());
                        break;
                    }
                }
            }
            if let Some(error) = last_error {
                tracing::warn!(session = %id, %error, "sweep could not apply a due rule; it stays due");
                report.errors.push(SweepError {
                    session: id.to_string(),
                    error,
                });
            }
        }
        Ok(())
    }

    /// One session's due rules, decided and committed on their own.
    async fn sweep_one(
        &self,
        id: &SessionId,
        now: Timestamp,
    ) -> Result<(Vec<Applied>, Vec<SessionId>), EngineError> {
        let rules_version = self.rules_version();
        let Some(s) = self.store.load(id).await? else {
            return Ok((Vec::new(), Vec::new()));
        };
        let mut pass = Pass {
            rules_version,
            ..Pass::default()
        };
        let Some((d, cascade)) = self.decide(&mut pass, s, None, None, now).await? else {
            self.rearm(&pass.rearms, rules_version).await?;
            return Ok((Vec::new(), Vec::new()));
        };
        self.apply_commit(d.commit).await?;
        Ok((d.applied, cascade))
    }

    /// Stores the wake-ups of sessions found due early (lazy re-arm), worked out under the
    /// rules of `rules_version`: not written if other rules came into force since (the rows
    /// stay due and are judged again under the new rules).
    async fn rearm(&self, rearms: &[Rearm], rules_version: Option<i64>) -> Result<(), EngineError> {
        if rearms.is_empty() {
            return Ok(());
        }
        let rearmed = match self
            .store
            .rearm(rearms, rules_version, RearmOnly::Unchanged)
            .await
        {
            Ok(n) => n,
            Err(StoreError::PolicyChanged) => {
                self.follow_rules_in_force().await?;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        self.sessions.rearmed(rearms);
        self.stats.rearmed.fetch_add(rearmed, Ordering::Relaxed);
        Ok(())
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
        // Retention rides along, once a minute of wall time.
        let wall = chrono::Utc::now().timestamp_millis();
        if wall - self.last_prune.load(Ordering::Relaxed) >= 60_000 {
            self.last_prune.store(wall, Ordering::Relaxed);
            if let Err(e) = self.prune_once().await
                && !e.is_unavailable()
            {
                tracing::warn!(error = %e, "pruning old events failed; will retry");
            }
        }
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

/// Replaces children the pass has already changed by their changed state, dropping those it
/// deleted or ended.
fn overlay_children(pass: &Pass, kids: &mut Vec<Session>) {
    kids.retain_mut(|c| match pass.overlay.get(&c.id) {
        Some(Some(over)) if over.status.is_open() => {
            *c = over.clone();
            true
        }
        Some(_) => false,
        None => true,
    });
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
