//! Retention: events and finished webhook deliveries past `[retention] events`, users'
//! notifications past `[retention] notifications`, and idempotency keys past their window,
//! deleted a page at a time by a loop of their own.
//!
//! The loop runs whatever the sweeper's mode, and goes on until nothing past its period is
//! left, however fast history grows: each page is a few short writes, so sweeps and requests'
//! commits pass between them. Events go from the oldest; one a pending delivery still needs
//! stays, and holds back none after it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapse_core::store::PruneBefore;
use tokio_util::sync::CancellationToken;

use crate::{Engine, EngineError};

/// How long retention waits, once it has caught up, before it looks again.
pub const EVERY: Duration = Duration::from_secs(60);

/// Rows of each kind a page deletes at most.
pub const PAGE: u32 = 1_000;

/// How often a long catch-up says how far it has come.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

impl Engine {
    /// Deletes everything past its period, a page at a time, until none is left; returns how
    /// many rows went.
    pub async fn prune_once(&self) -> Result<u64, EngineError> {
        self.prune_until(&CancellationToken::new()).await
    }

    /// [`Engine::prune_once`], stopping early once `stop` is cancelled.
    async fn prune_until(&self, stop: &CancellationToken) -> Result<u64, EngineError> {
        let now = self.now();
        let retention = &self.config().retention;
        let before = PruneBefore {
            events: now - retention.events,
            notifications: now - retention.notifications,
            keys: now - crate::idempotency::WINDOW,
        };
        let started = Instant::now();
        let mut told = started;
        let mut total = 0;
        // Events are numbered from 1.
        let mut after = 0;
        while !stop.is_cancelled() {
            let page = self.store.prune(&before, after, PAGE).await?;
            total += page.rows;
            match page.events_after {
                Some(seq) if seq > after => after = seq,
                _ if page.rows == 0 => break,
                _ => {}
            }
            if told.elapsed() >= PROGRESS_EVERY {
                told = Instant::now();
                tracing::info!(rows = total, "pruning history past retention");
            }
        }
        if total > 0 {
            let ms = started.elapsed().as_millis() as u64;
            let before = before.events;
            tracing::info!(rows = total, %before, ms, "pruned history past retention");
        }
        Ok(total)
    }

    /// Prunes at once, then again [`EVERY`] after each time it caught up, until `shutdown`.
    /// Not under a manual clock, where time moves only when told (tests, demonstrations):
    /// there [`Engine::prune_once`] is called by hand.
    pub async fn run_retention(self: Arc<Self>, shutdown: CancellationToken) {
        if self.clock.is_manual() {
            return;
        }
        loop {
            if let Err(e) = self.prune_until(&shutdown).await
                && !e.is_unavailable()
            {
                tracing::warn!(error = %e, "pruning old history failed; will retry");
            }
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}
