//! Group commit: the single-session changes of many requests written in one transaction.
//!
//! A store with one writer (SQLite) writes one transaction at a time. Each request's change
//! waited its turn for the connection, and then every step of its transaction (begin, each
//! statement, commit) waited for the runtime to come back to it: under a flood of requests,
//! behind hundreds of other tasks each time, with the writer idle meanwhile. While
//! [`Engine::run_committer`] runs, a request hands its change to it and waits for one answer;
//! the committer writes the changes waiting as one batch, each checked alone (one that loses
//! its compare-and-set, meets a host limit or finds its id taken fails alone, as in a sweep's
//! batch), then does what follows a write (the session cache, the sweeper's wake-up, event
//! streams) and answers each. A change is answered only once its transaction has committed.
//!
//! Stores that write in parallel (PostgreSQL) keep writing each change on its own connection.

use std::sync::Mutex;

use lapse_core::StoreError;
use lapse_core::store::Commit;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::{Engine, EngineError};

/// At most this many changes go in one transaction.
pub const MAX_GROUP: usize = 256;

/// A change waiting for the committer, and where its answer goes.
struct Job {
    commit: Commit,
    answer: oneshot::Sender<Result<(), EngineError>>,
}

/// The way in to a running committer (none while it is not running).
#[derive(Default)]
pub(crate) struct Committer {
    queue: Mutex<Option<mpsc::Sender<Job>>>,
}

impl Committer {
    fn queue(&self) -> Option<mpsc::Sender<Job>> {
        // Poisoned only if a holder panicked while swapping an Option: the value is whole.
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, queue: Option<mpsc::Sender<Job>>) {
        *self.queue.lock().unwrap_or_else(|p| p.into_inner()) = queue;
    }
}

impl Engine {
    /// Writes one change: through the committer while it runs, else at once.
    pub(crate) async fn apply_commit(&self, commit: Commit) -> Result<(), EngineError> {
        let commit = match self.committer.queue() {
            Some(queue) => {
                let (answer, answered) = oneshot::channel();
                match queue.send(Job { commit, answer }).await {
                    // The committer answers every job it took, even while stopping.
                    Ok(()) => {
                        return answered.await.unwrap_or_else(|_| {
                            Err(StoreError::Unavailable("the writer stopped".into()).into())
                        });
                    }
                    // It stopped since: write it here.
                    Err(mpsc::error::SendError(job)) => job.commit,
                }
            }
            None => commit,
        };
        match self
            .apply_commits(std::slice::from_ref(&commit))
            .await?
            .pop()
        {
            Some(outcome) => Ok(outcome?),
            None => Ok(()),
        }
    }

    /// Whether the store writes one transaction at a time (SQLite), so that
    /// [`Engine::run_committer`] has work to do.
    pub fn writes_one_at_a_time(&self) -> bool {
        self.store.writes_one_at_a_time()
    }

    /// Whether requests' changes go through the committer now.
    pub fn group_commits(&self) -> bool {
        self.committer.queue().is_some()
    }

    /// Writes the changes requests hand in, many to a transaction, until `stop`; then those
    /// already handed in, while new ones are written by their requests again. Returns at once
    /// for a store that writes in parallel ([`lapse_core::Store::writes_one_at_a_time`]).
    pub async fn run_committer(&self, stop: CancellationToken) {
        if !self.store.writes_one_at_a_time() {
            return;
        }
        let (queue, mut jobs) = mpsc::channel(4 * MAX_GROUP);
        self.committer.set(Some(queue));
        let mut group = Vec::with_capacity(MAX_GROUP);
        loop {
            tokio::select! {
                n = jobs.recv_many(&mut group, MAX_GROUP) => if n == 0 { break },
                () = stop.cancelled() => break,
            }
            self.commit_group(std::mem::take(&mut group)).await;
        }
        self.committer.set(None);
        jobs.close();
        while jobs.recv_many(&mut group, MAX_GROUP).await > 0 {
            self.commit_group(std::mem::take(&mut group)).await;
        }
    }

    /// One transaction for `group`; if the database fails it as a whole, each change alone,
    /// so that one bad change costs no other its write.
    async fn commit_group(&self, group: Vec<Job>) {
        let (commits, answers): (Vec<Commit>, Vec<_>) =
            group.into_iter().map(|j| (j.commit, j.answer)).unzip();
        match self.apply_commits(&commits).await {
            Ok(outcomes) => {
                for (answer, outcome) in answers.into_iter().zip(outcomes) {
                    let _ = answer.send(outcome.map_err(EngineError::from));
                }
            }
            Err(EngineError::Store(e)) if e.is_unavailable() || commits.len() == 1 => {
                for answer in answers {
                    let _ = answer.send(Err(EngineError::Store(e.clone())));
                }
            }
            Err(_) => {
                for (commit, answer) in commits.iter().zip(answers) {
                    let outcome = match self.apply_commits(std::slice::from_ref(commit)).await {
                        Ok(mut outcomes) => outcomes.pop().unwrap_or(Ok(())).map_err(Into::into),
                        Err(e) => Err(e),
                    };
                    let _ = answer.send(outcome);
                }
            }
        }
    }
}
