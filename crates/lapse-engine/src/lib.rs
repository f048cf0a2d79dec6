//! The only door to sessions. Every operation goes through [`Engine`], which applies a
//! session's due rules before anything else (passive expiry), checks the caller's rights,
//! and commits the change with everything it causes in one transaction.
//!
//! A map of the modules:
//! - [`clock`]: system or manual time; the engine passes `now` down.
//! - [`access`]: who the caller is and what they may do.
//! - [`cache`]: recently used sessions in memory, checked against the store before use.
//! - [`ops`]: the session operations (create, join, end, ...).
//! - [`write`]: turning a changed session and its effects into one atomic commit.
//! - [`sweep`]: `sweep_once(now)` and the loop that sleeps until the next deadline.
//! - [`heartbeats`]: in-memory coalescing of heartbeats.
//! - [`flusher`]: writing them in batches, and the loop that does it every second.
//! - [`feed`]: one reader of new events per instance, fanning out to event streams.
//! - [`deliveries`]: signed webhooks out of the event outbox, with retries.
//! - [`retention`]: history past its period deleted, a page at a time, by a loop of its own.
//! - [`health`]: the health report.
//! - [`idempotency`]: remembered responses for `Idempotency-Key`.
//! - [`outage`]: database outages noticed from failing calls, logged once, failed fast.
//! - [`policy`]: the rules in force; previewing and reloading them.

pub mod access;
pub mod cache;
pub mod clock;
pub mod committer;
pub mod deliveries;
pub mod feed;
pub mod flusher;
pub mod health;
pub mod heartbeats;
pub mod idempotency;
pub mod metrics;
pub mod ops;
pub mod outage;
pub mod policy;
pub mod retention;
pub mod sweep;
mod write;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use lapse_core::intercept::Intercepted;
use lapse_core::lifecycle::OpError;
use lapse_core::store::Change;
use lapse_core::{Config, Kind, SessionId, Status, Store, StoreError};
use tokio::sync::Notify;

pub use access::Caller;
pub use clock::Clock;
pub use sweep::{Progress, SweepOptions, SweepReport, SweeperStats, WakePlan};

/// Why an operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No such session (or it was removed).
    #[error("{0}")]
    NotFound(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// Only the host may do this.
    #[error("{0}")]
    NotHost(String),
    /// Only the user themselves may do this.
    #[error("{0}")]
    NotSelf(String),
    /// A state or business rule refused it.
    #[error(transparent)]
    Op(#[from] OpError),
    /// The host already has as many open sessions of the kind as allowed.
    #[error("{detail}")]
    HostHasOpenSession {
        /// Explanation.
        detail: String,
        /// One of the open sessions.
        blocking: (SessionId, Status),
    },
    /// The request collides with existing state (a taken id, say).
    #[error("{0}")]
    Conflict(String),
    /// The manual clock refused a move.
    #[error(transparent)]
    Clock(#[from] clock::ClockError),
    /// The database failed.
    #[error(transparent)]
    Store(StoreError),
}

impl EngineError {
    /// Whether the database was out of reach: the outage watch has logged it already, so the
    /// loops that will try again say nothing more.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, EngineError::Store(e) if e.is_unavailable())
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        EngineError::Store(e)
    }
}

/// The session lifecycle engine.
pub struct Engine {
    /// The store, behind the outage watch.
    store: Arc<dyn Store>,
    outage: Arc<outage::Outage>,
    /// The rules this instance decides by; replaced whole when other rules come into force.
    policy: std::sync::RwLock<Arc<policy::Policy>>,
    /// Held while other rules are put in force, so one reload runs at a time.
    reloading: tokio::sync::Mutex<()>,
    clock: Clock,
    beats: heartbeats::Heartbeats,
    sessions: cache::SessionCache,
    /// Group commit for requests' changes, while it runs.
    committer: committer::Committer,
    /// Wakes the sweeper when a change moves a deadline before its planned wake-up.
    wake: Notify,
    /// When the sleeping sweeper plans to wake (epoch ms); `i64::MAX` while it is busy.
    planned_wake: AtomicI64,
    /// Wake-ups sent, for operators and tests.
    wake_ups: AtomicU64,
    /// Bumped when events are appended; event streams wait on it.
    events: tokio::sync::watch::Sender<u64>,
    stats: SweeperStats,
    feed: feed::Feed,
    webhooks: deliveries::Webhooks,
    /// What `/metrics` last read of the database's counts (see [`Engine::counted`]).
    counted: health::LastCounted,
}

impl Engine {
    /// An engine over `store`, with `config`'s kinds, reading time from `clock`, delivering
    /// no webhooks.
    pub fn new(store: Arc<dyn Store>, config: Arc<Config>, clock: Clock) -> Arc<Engine> {
        Engine::with_webhooks(store, config, clock, Vec::new())
    }

    /// An engine that also delivers events to `endpoints` (their secrets resolved by the
    /// caller). Idle rules wait [`heartbeats::IDLE_GRACE`] past their deadline for heartbeats
    /// accepted but not yet written (by another instance, or by one that was killed).
    pub fn with_webhooks(
        store: Arc<dyn Store>,
        config: Arc<Config>,
        clock: Clock,
        endpoints: Vec<deliveries::Endpoint>,
    ) -> Arc<Engine> {
        let webhooks = deliveries::Webhooks::new(endpoints, &config.delivery);
        let outage = Arc::new(outage::Outage::default());
        Arc::new(Engine {
            store: Arc::new(Intercepted::new(store, outage.clone())),
            outage,
            policy: std::sync::RwLock::new(Arc::new(policy::Policy::new(&config, 0))),
            reloading: tokio::sync::Mutex::new(()),
            clock,
            beats: heartbeats::Heartbeats::default(),
            sessions: cache::SessionCache::default(),
            committer: committer::Committer::default(),
            wake: Notify::new(),
            planned_wake: AtomicI64::new(i64::MAX),
            wake_ups: AtomicU64::new(0),
            events: tokio::sync::watch::Sender::new(0),
            stats: SweeperStats::default(),
            feed: feed::Feed::default(),
            webhooks,
            counted: tokio::sync::Mutex::new(None),
        })
    }

    /// The configuration, its kinds as in force.
    pub fn config(&self) -> Arc<Config> {
        self.policy().config.clone()
    }

    /// The clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The current time.
    pub fn now(&self) -> lapse_core::Timestamp {
        self.clock.now()
    }

    /// The policy of a session's kind. A session whose kind was removed from the config keeps
    /// living under no rules rather than failing every read.
    fn kind_of(&self, name: &str) -> Arc<Kind> {
        self.policy().kind(name)
    }

    /// Tells the sweeper a deadline may have moved before its planned wake-up.
    fn deadline_moved(&self, at: lapse_core::Timestamp) {
        if at.millis() < self.planned_wake.load(Ordering::Acquire) {
            self.wake_ups.fetch_add(1, Ordering::Relaxed);
            self.wake.notify_one();
        }
    }

    /// Listens for changes committed by other instances (PostgreSQL's NOTIFY): wakes this
    /// instance's sweeper for deadlines before its planned wake-up, and its event streams for
    /// new events. Reconnects after a failure; returns when `shutdown` is cancelled, or at
    /// once on a store with one instance.
    pub async fn run_change_watch(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        if !self.store.is_shared() {
            return;
        }
        loop {
            let engine = Arc::downgrade(&self);
            let seen = Box::new(move |change| {
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                match change {
                    Change::Deadline(at) => engine.deadline_moved(at),
                    Change::Events => engine.events_appended(),
                    Change::Rules => {
                        tokio::spawn(async move {
                            if let Err(e) = engine.follow_rules_in_force().await {
                                tracing::warn!(error = %e, "could not take up the new rules in force");
                            }
                        });
                    }
                }
            });
            tokio::select! {
                result = self.store.watch(seen) => {
                    if let Err(e) = result
                        && !e.is_unavailable()
                    {
                        tracing::warn!(error = %e, "change notifications lost; listening again");
                    }
                }
                _ = shutdown.cancelled() => return,
            }
            // Whatever was announced while deaf is caught by the sweeper's capped sleep and
            // the streams' polling.
            self.events_appended();
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Tells event streams that new events may be readable.
    fn events_appended(&self) {
        self.events.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A signal that changes whenever events may have been appended, by this instance or (on a
    /// shared database) any other.
    pub fn event_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.events.subscribe()
    }

    /// Heartbeats waiting for the next flush.
    pub fn pending_heartbeats(&self) -> usize {
        self.beats.len()
    }
}
