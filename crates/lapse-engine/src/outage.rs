//! Database outages, noticed from the calls that fail and ridden out.
//!
//! The engine's store is wrapped with [`Outage`] (see `lapse_core::intercept`). A call that
//! fails with [`StoreError::Unavailable`] opens an outage for its class of call, reads or
//! writes (a SQLite database on a full disk still reads); it is logged once. While it lasts,
//! further calls of that class fail at once instead of each waiting for a connection, and
//! [`Engine::run_outage_probe`](crate::Engine::run_outage_probe) writes one tiny row every
//! [`PROBE_EVERY`] to find out whether the database is back. Any call that reaches the
//! database and started after the outage began ends it (a write ends a reads outage too), and
//! that is logged once too. Nothing here retries: callers answer 503 (requests), keep what they hold (heartbeats)
//! or try again on their next round (the sweeper, deliveries).
//!
//! A call that found no free connection in time ([`StoreError::Busy`]) opens an outage only
//! when the database looks out of reach: no call came back from it while this one waited, and
//! no call that started earlier is still running (one that is holds a connection: a pool
//! saturated by long sweeps is busy, not down). A database that hangs every call is noticed
//! when those calls fail.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lapse_core::StoreError;
use lapse_core::intercept::{Call, Hook};
use tokio_util::sync::CancellationToken;

/// During an outage, the database is tried this often to see if it is over.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);

/// The one call let through during an outage: the probe's write.
const PROBE: &str = "write_check";

/// The engine's watch on its database; see the module docs.
#[derive(Default)]
pub struct Outage {
    reads: Gate,
    writes: Gate,
    calls: Arc<Mutex<Calls>>,
}

/// The calls under way, and when one last came back from the database.
#[derive(Default)]
struct Calls {
    /// Numbers the calls in the order they start.
    next: u64,
    in_flight: BTreeSet<u64>,
    reached_at: Option<Instant>,
}

fn lock(calls: &Mutex<Calls>) -> MutexGuard<'_, Calls> {
    // Plain values: a panic elsewhere cannot leave them half-written.
    calls.lock().unwrap_or_else(|p| p.into_inner())
}

/// One call under way; it stops counting as such when dropped, so a call abandoned midway (a
/// request whose client went away) does not stay in flight forever.
pub struct InFlight {
    started: Instant,
    number: u64,
    calls: Arc<Mutex<Calls>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.calls).in_flight.remove(&self.number);
    }
}

#[derive(Default)]
struct Gate(Mutex<Option<Down>>);

struct Down {
    since: Instant,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Down>> {
        // Plain values: a panic elsewhere cannot leave them half-written.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a call may go to the database now.
    fn pass(&self) -> bool {
        self.lock().is_none()
    }

    fn failed(&self, class: &str, error: &str) {
        let mut down = self.lock();
        if down.is_none() {
            tracing::error!(
                %error,
                "database unavailable for {class}: requests that need it get 503 \
                 database_unavailable until it is back (checked every {} ms)",
                PROBE_EVERY.as_millis()
            );
            *down = Some(Down {
                since: Instant::now(),
            });
        }
    }

    fn reached(&self, class: &str, started: Instant) {
        let mut down = self.lock();
        if let Some(d) = down.as_ref()
            && started >= d.since
        {
            tracing::warn!(
                after_ms = d.since.elapsed().as_millis() as u64,
                "database available again for {class}"
            );
            *down = None;
        }
    }

    fn is_down(&self) -> bool {
        self.lock().is_some()
    }
}

impl Outage {
    fn gate(&self, call: Call) -> (&Gate, &'static str) {
        match call.writes {
            true => (&self.writes, "writes"),
            false => (&self.reads, "reads"),
        }
    }

    /// Whether an outage is under way (for reads or for writes).
    pub fn is_down(&self) -> bool {
        self.reads.is_down() || self.writes.is_down()
    }
}

impl Hook for Outage {
    type Ticket = InFlight;

    fn before(&self, call: Call) -> Result<InFlight, StoreError> {
        let (gate, class) = self.gate(call);
        if call.name == PROBE || gate.pass() {
            let mut calls = lock(&self.calls);
            let number = calls.next;
            calls.next += 1;
            calls.in_flight.insert(number);
            Ok(InFlight {
                started: Instant::now(),
                number,
                calls: self.calls.clone(),
            })
        } else {
            Err(StoreError::Unavailable(format!(
                "the database is unavailable for {class}; lapse is checking every {} ms",
                PROBE_EVERY.as_millis()
            )))
        }
    }

    fn after(&self, call: Call, ticket: InFlight, outcome: Result<(), &StoreError>) {
        let (gate, class) = self.gate(call);
        let started = ticket.started;
        match outcome {
            Err(StoreError::Unavailable(e)) => gate.failed(class, e),
            // No connection came free in time: see the module docs.
            Err(StoreError::Busy) => {
                let out_of_reach = {
                    let calls = lock(&ticket.calls);
                    let earlier_running = calls
                        .in_flight
                        .first()
                        .is_some_and(|&first| first < ticket.number);
                    let came_back = calls.reached_at.is_some_and(|at| at > started);
                    !earlier_running && !came_back
                };
                if out_of_reach {
                    gate.failed(
                        class,
                        "no connection came free, no call reached the database meanwhile, \
                         and none is running",
                    );
                }
            }
            // Anything else came from the database itself: it is there. A database that
            // takes writes serves reads too.
            _ => {
                lock(&self.calls).reached_at = Some(Instant::now());
                gate.reached(class, started);
                if call.writes {
                    self.reads.reached("reads", started);
                }
            }
        }
    }
}

impl crate::Engine {
    /// Whether this instance can serve requests: no at once during an outage, otherwise one
    /// cheap read (`/readyz`).
    pub async fn ready(&self) -> Result<(), crate::EngineError> {
        if self.outage.is_down() {
            return Err(StoreError::Unavailable("the database is unavailable".into()).into());
        }
        self.store.next_deadline().await?;
        Ok(())
    }

    /// Whether a database outage is under way.
    pub fn database_unavailable(&self) -> bool {
        self.outage.is_down()
    }

    /// During an outage, tries the database once (a one-row write, the only call let through
    /// meanwhile); returns whether it is reachable now.
    pub async fn probe_database(&self) -> bool {
        if !self.outage.is_down() {
            return true;
        }
        self.store.write_check(self.now()).await.is_ok()
    }

    /// [`Self::probe_database`] every [`PROBE_EVERY`], so the end of an outage is noticed
    /// even when nothing else calls (a load balancer that stopped sending requests on
    /// `/readyz`'s 503 would otherwise never see it end). Returns when `shutdown` is cancelled.
    pub async fn run_outage_probe(self: std::sync::Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(PROBE_EVERY) => {}
                _ = shutdown.cancelled() => return,
            }
            self.probe_database().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READ: Call = Call {
        name: "load",
        writes: false,
    };

    #[test]
    fn a_busy_pool_is_an_outage_only_when_nothing_reached_the_database_meanwhile() {
        let outage = Outage::default();
        let waiting = outage.before(READ).unwrap();
        // Another call comes back from the database while this one waits for a connection:
        // the pool is saturated, the database is there.
        let other = outage.before(READ).unwrap();
        outage.after(READ, other, Ok(()));
        outage.after(READ, waiting, Err(&StoreError::Busy));
        assert!(!outage.is_down());

        // Nothing comes back while this one waits: out of reach.
        let waiting = outage.before(READ).unwrap();
        outage.after(READ, waiting, Err(&StoreError::Busy));
        assert!(outage.is_down());
        assert!(outage.before(READ).is_err(), "calls fail at once now");
    }

    #[test]
    fn a_pool_held_by_long_calls_is_busy_not_down() {
        let outage = Outage::default();
        // A long sweep holds a connection; nothing has come back since it started.
        let sweep = outage.before(READ).unwrap();
        let waiting = outage.before(READ).unwrap();
        outage.after(READ, waiting, Err(&StoreError::Busy));
        assert!(!outage.is_down(), "an earlier call is still running");

        // Later waiters do not count as running calls: with the sweep abandoned (dropped
        // without an answer), two waiting together is an outage.
        drop(sweep);
        let first = outage.before(READ).unwrap();
        let second = outage.before(READ).unwrap();
        outage.after(READ, second, Err(&StoreError::Busy));
        assert!(
            !outage.is_down(),
            "the first waiter started earlier and is still waiting"
        );
        outage.after(READ, first, Err(&StoreError::Busy));
        assert!(outage.is_down());
    }
}
