//! Writing pending heartbeats: a flush in transactions sized to hold the writer briefly, the
//! rooms a sweep looks at soonest first, and the loop that starts one every second. What is
//! pending, and in which order, is [`crate::heartbeats`]'s.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use lapse_core::store::{Beat, beats_written};
use lapse_core::{SessionId, StoreError, Timestamp};
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
                return Err(e.into());
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
                return Err(e.into());
            }
            beats = rest;
        }
        Ok(n)
    }

    /// Writes `beats` in one transaction; on failure they are kept for the next flush.
    async fn write_beats(&self, beats: Vec<Beat>) -> Result<(), StoreError> {
        let since = tokio::time::Instant::now();
        match self.store.flush_heartbeats(&beats).await {
            Ok(moved) => {
                self.beats.written(beats.len(), since.elapsed());
                self.sessions.flushed(&beats, &moved, since);
                Ok(())
            }
            Err(e) => {
                self.beats.restore(beats);
                Err(e)
            }
        }
    }

    /// Writes beats before they are answered: `read`, beats the stored activity of their
    /// rooms does not cover ([`crate::heartbeats::covered`]), and `unread`, beats of rooms
    /// this instance holds no copy of, each written only where its room lets it stand
    /// without a read ([`lapse_core::Store::write_heartbeats`]). Beats that come while such a
    /// write runs gather and go together in the next transaction, so a flood of them is
    /// written in batches, as the flusher writes the rest. Returns, for each of `unread`, its
    /// room's stored activity before the write, or `None` where it was not written. On
    /// failure the `read` beats are kept for the next flush, as any pending beat, and the
    /// store's error is returned.
    pub(crate) async fn write_through(
        &self,
        read: Vec<Beat>,
        unread: Vec<Beat>,
    ) -> Result<Vec<Option<Timestamp>>, StoreError> {
        let n = unread.len();
        let (outcome, first) = self.beats.queue_through(read, unread);
        let turn = self.beats.through_turn.lock().await;
        if outcome.get().is_none() {
            // Not written while this one waited its turn, so its beats are those gathering:
            // a batch is taken only by the holder of the turn, who sets its outcome.
            let group = self.beats.take_through();
            let written = self.write_group(group.read, group.unread).await;
            let _ = group.outcome.set(written);
        }
        drop(turn);
        match outcome.get() {
            Some(Ok(taken)) => Ok(taken
                .get(first..first + n)
                .map_or(vec![None; n], <[_]>::to_vec)),
            Some(Err(e)) => Err(e.clone()),
            // Set above before the turn was let go, by this call or the one before it.
            None => Err(StoreError::Unavailable(
                "heartbeat write did not finish".into(),
            )),
        }
    }

    /// Writes one write-through group in one transaction; on failure its `read` beats are
    /// kept for the next flush (its unread ones are answered by a read instead).
    async fn write_group(
        &self,
        read: Vec<Beat>,
        unread: Vec<Beat>,
    ) -> Result<std::sync::Arc<[Option<Timestamp>]>, StoreError> {
        let since = tokio::time::Instant::now();
        match self.store.write_heartbeats(&read, &unread).await {
            Ok(written) => {
                let beats = beats_written(&read, &unread, &written.unread);
                self.beats.written(beats.len(), since.elapsed());
                self.sessions.flushed(&beats, &written.moved, since);
                Ok(written.unread.into())
            }
            Err(e) => {
                self.beats.restore(read);
                Err(e)
            }
        }
    }

    /// Flushes heartbeats every `every` until `shutdown`, each flush starting `every` after
    /// the last one started, or as soon as it ends when it took longer (`on_schedule`). A
    /// beat then waits for the next flush at most an interval, or the length of a slow flush,
    /// and is committed within that flush: [`crate::heartbeats::IDLE_GRACE`] covers it while a
    /// flush takes less than an interval. (Sleeping an interval after each flush instead, a
    /// beat taken just after a flush began would wait for that flush, the interval, and its
    /// own flush.) The last flush is the caller's, once no request can add a beat any more
    /// ([`Engine::flush_heartbeats`]).
    pub async fn run_heartbeat_flusher(&self, every: Duration, shutdown: CancellationToken) {
        // Whether the last flush ran over the interval: said once when it starts to.
        let mut over = false;
        let flushed = |outcome: Result<usize, EngineError>, took: Duration| match outcome {
            Ok(beats) => {
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
        };
        on_schedule(every, &shutdown, || self.flush_heartbeats(), flushed).await;
    }
}

/// Runs `work` every `every` until `shutdown`, the first run `every` from now and each next
/// one `every` after the last one started, or as soon as that one ends when it took longer;
/// `done` is told each run's outcome and length. A run under way is not cut short.
async fn on_schedule<T, F: Future<Output = T>>(
    every: Duration,
    shutdown: &CancellationToken,
    mut work: impl FnMut() -> F,
    mut done: impl FnMut(T, Duration),
) {
    let mut next = tokio::time::Instant::now() + every;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = shutdown.cancelled() => return,
        }
        let started = tokio::time::Instant::now();
        next = started + every;
        let outcome = work().await;
        done(outcome, started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::time::Duration;

    use tokio::time::Instant;
    use tokio_util::sync::CancellationToken;

    use super::on_schedule;

    /// Runs the schedule, every `every` ms, over work whose runs take `lengths` ms in turn
    /// (tokio's paused clock). Returns when each run started, from the schedule's start, and
    /// the length each run was reported with.
    async fn schedule(every: u64, lengths: &[u64]) -> (Vec<u64>, Vec<u64>) {
        let t0 = Instant::now();
        let shutdown = CancellationToken::new();
        let starts = RefCell::new(Vec::new());
        let mut reported = Vec::new();
        let mut lengths = lengths.iter().copied();
        let work = || {
            // Past the script, the schedule is told to stop (and a run it still starts does
            // nothing and is not counted).
            let length = lengths.next();
            match length {
                Some(_) => starts.borrow_mut().push(t0.elapsed().as_millis() as u64),
                None => shutdown.cancel(),
            }
            async move {
                if let Some(ms) = length {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                length.is_some()
            }
        };
        let done = |counted: bool, took: Duration| {
            if counted {
                reported.push(took.as_millis() as u64);
            }
        };
        on_schedule(Duration::from_millis(every), &shutdown, work, done).await;
        (starts.into_inner(), reported)
    }

    #[tokio::test(start_paused = true)]
    async fn runs_start_an_interval_apart_however_long_each_took_within_it() {
        let (starts, reported) = schedule(1_000, &[100, 999, 1_000, 0]).await;
        assert_eq!(starts, [1_000, 2_000, 3_000, 4_000]);
        assert_eq!(reported, [100, 999, 1_000, 0]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_longer_than_the_interval_is_followed_at_once_then_the_interval_resumes() {
        let (starts, reported) = schedule(1_000, &[2_500, 100, 1_200, 100]).await;
        // 1.0 s + 2.5 s: the next was due at 2.0 s and starts as the long one ends; the one
        // after a second from there; after 1.2 s at once again.
        assert_eq!(starts, [1_000, 3_500, 4_500, 5_700]);
        assert_eq!(reported, [2_500, 100, 1_200, 100]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_while_waiting_ends_the_schedule_before_its_next_run() {
        let shutdown = CancellationToken::new();
        let runs = RefCell::new(0);
        let stop = {
            let shutdown = shutdown.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(1_500)).await;
                shutdown.cancel();
            }
        };
        let schedule = on_schedule(
            Duration::from_millis(1_000),
            &shutdown,
            || {
                *runs.borrow_mut() += 1;
                async {}
            },
            |(), _| {},
        );
        let started = Instant::now();
        tokio::join!(schedule, stop);
        assert_eq!(*runs.borrow(), 1, "the run at 1 s, none at 2 s");
        assert_eq!(started.elapsed(), Duration::from_millis(1_500));
    }
}
