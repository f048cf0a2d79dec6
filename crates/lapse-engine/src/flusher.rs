//! Writing pending heartbeats: a flush in transactions sized to hold the writer briefly, the
//! rooms a sweep looks at soonest first, and the loop that starts one every second. What is
//! pending, and in which order, is [`crate::heartbeats`]'s.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use lapse_core::SessionId;
use lapse_core::store::Beat;
use tokio_util::sync::CancellationToken;

use crate::{Engine, EngineError};

impl Engine {
    /// Writes every pending heartbeat, in transactions of at most
    /// [`crate::heartbeats::FLUSH_CHUNK`], fewer where beats are slow to write (each holds
    /// the writer about [`crate::heartbeats::FLUSH_HOLD`]). Beats that come while it runs
    /// wait for the next flush, but those of a room near its stored wake-up go in the next
    /// transaction (see [`crate::heartbeats::Heartbeats::urgent_within`]). On failure the
    /// beats not written are kept for the next flush.
    pub async fn flush_heartbeats(&self) -> Result<usize, EngineError> {
        let mut urgent = HashSet::new();
        let mut queue = VecDeque::from(self.beats.drain());
        let mut written = 0;
        loop {
            // Taken since the last transaction, and written before the rest of the drain.
            for beat in self.beats.take_urgent(&mut urgent).into_iter().rev() {
                queue.push_front(beat);
            }
            if queue.is_empty() {
                return Ok(written);
            }
            let chunk: Vec<Beat> = queue.drain(..queue.len().min(self.beats.chunk())).collect();
            let n = chunk.len();
            if let Err(e) = self.write_beats(chunk).await {
                self.beats.restore(queue.into());
                return Err(e);
            }
            written += n;
        }
    }

    /// Writes the pending heartbeats of `sessions` only (a sweep's, before it reads them).
    pub(crate) async fn flush_heartbeats_of(
        &self,
        sessions: &[SessionId],
    ) -> Result<usize, EngineError> {
        let mut beats = self.beats.take(sessions);
        let n = beats.len();
        while !beats.is_empty() {
            let rest = beats.split_off(beats.len().min(self.beats.chunk()));
            if let Err(e) = self.write_beats(beats).await {
                self.beats.restore(rest);
                return Err(e);
            }
            beats = rest;
        }
        Ok(n)
    }

    /// Writes `beats` in one transaction; on failure they are kept for the next flush.
    async fn write_beats(&self, beats: Vec<Beat>) -> Result<(), EngineError> {
        let since = tokio::time::Instant::now();
        match self.store.flush_heartbeats(&beats).await {
            Ok(moved) => {
                self.beats.written(beats.len(), since.elapsed());
                self.sessions.flushed(&beats, &moved, since);
                Ok(())
            }
            Err(e) => {
                self.beats.restore(beats);
                Err(e.into())
            }
        }
    }

    /// Flushes heartbeats every `every` until `shutdown`, each flush starting `every` after
    /// the last one started, or as soon as it ends when it took longer. A beat then waits
    /// for the next flush at most an interval, or the length of a slow flush, and is
    /// committed within that flush: [`crate::heartbeats::IDLE_GRACE`] covers it while a
    /// flush takes less than an interval. (Sleeping an interval after each flush instead, a beat
    /// taken just after a flush began would wait for that flush, the interval, and its own
    /// flush.) The last flush is the caller's, once no request can add a beat any more
    /// ([`Engine::flush_heartbeats`]).
    pub async fn run_heartbeat_flusher(&self, every: Duration, shutdown: CancellationToken) {
        let mut next = tokio::time::Instant::now() + every;
        // Whether the last flush ran over the interval: said once when it starts to.
        let mut over = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = shutdown.cancelled() => return,
            }
            let started = tokio::time::Instant::now();
            next = started + every;
            match self.flush_heartbeats().await {
                Ok(beats) => {
                    let took = started.elapsed();
                    self.beats.flush_took(took);
                    if took > every && !over {
                        tracing::warn!(
                            beats,
                            ms = took.as_millis() as u64,
                            "a heartbeat flush took longer than the flush interval: beats may be \
                             written after their idle grace"
                        );
                    }
                    over = took > every;
                }
                Err(e) if e.is_unavailable() => {}
                Err(e) => {
                    tracing::warn!(error = %e, "heartbeat flush failed; beats kept for the next one")
                }
            }
        }
    }
}
