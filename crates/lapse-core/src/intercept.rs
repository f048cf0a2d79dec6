//! A [`Store`] with a hook around every call. The engine watches for database outages this
//! way (`lapse_engine::outage`), and a simulation can inject faults between any two calls
//! the same way; neither needs to know how a call is made.

use std::sync::Arc;

use async_trait::async_trait;

use crate::event::{Event, Notification};
use crate::store::{
    Attempt, Beat, BeatsWritten, ChangeCallback, Commit, Delivery, DeliveryStatus,
    DisabledEndpoint, DueRow, EventQuery, EventRecord, HealthCounts, Moved, PruneBefore, Pruned,
    Rearm, RearmOnly, RulesInForce, SessionQuery, StatusCount, StoredResponse,
};
use crate::{Session, SessionId, Span, Store, StoreError, Timestamp, UserId};

/// A store call as a hook sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    /// The [`Store`] method.
    pub name: &'static str,
    /// Whether it writes (a SQLite database on a full disk still reads).
    pub writes: bool,
}

/// What runs around every call of an [`Intercepted`] store.
pub trait Hook: Send + Sync + 'static {
    /// Carried from [`Hook::before`] to [`Hook::after`].
    type Ticket: Send;
    /// Before the call: an error here is returned in its place, and the call is not made.
    fn before(&self, call: Call) -> Result<Self::Ticket, StoreError>;
    /// After the call, with how it went. Nothing, unless the hook needs to know.
    fn after(&self, call: Call, ticket: Self::Ticket, outcome: Result<(), &StoreError>) {
        let _ = (call, ticket, outcome);
    }
}

/// `inner` with `hook` around every call.
pub struct Intercepted<H> {
    inner: Arc<dyn Store>,
    hook: Arc<H>,
}

impl<H: Hook> Intercepted<H> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, hook: Arc<H>) -> Self {
        Intercepted { inner, hook }
    }

    async fn run<T>(
        &self,
        name: &'static str,
        writes: bool,
        call: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        let call_of = Call { name, writes };
        let ticket = self.hook.before(call_of)?;
        let outcome = call.await;
        self.hook
            .after(call_of, ticket, outcome.as_ref().map(|_| ()));
        outcome
    }
}

const READ: bool = false;
const WRITE: bool = true;

#[async_trait]
impl<H: Hook> Store for Intercepted<H> {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.run("migrate", WRITE, self.inner.migrate()).await
    }

    async fn load(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        self.run("load", READ, self.inner.load(id)).await
    }

    async fn version(&self, id: &SessionId) -> Result<Option<i64>, StoreError> {
        self.run("version", READ, self.inner.version(id)).await
    }

    async fn load_many(&self, ids: &[SessionId]) -> Result<Vec<Session>, StoreError> {
        self.run("load_many", READ, self.inner.load_many(ids)).await
    }

    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        self.run("commit", WRITE, self.inner.commit(commit)).await
    }

    async fn commit_many(
        &self,
        commits: &[Commit],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        self.run("commit_many", WRITE, self.inner.commit_many(commits))
            .await
    }

    async fn import(&self, sessions: &[Session]) -> Result<u64, StoreError> {
        self.run("import", WRITE, self.inner.import(sessions)).await
    }

    async fn list(&self, query: &SessionQuery) -> Result<Vec<Session>, StoreError> {
        self.run("list", READ, self.inner.list(query)).await
    }

    async fn open_children(&self, parents: &[SessionId]) -> Result<Vec<Session>, StoreError> {
        self.run("open_children", READ, self.inner.open_children(parents))
            .await
    }

    async fn due(
        &self,
        now: Timestamp,
        kind: Option<&str>,
        cursor: Option<&DueRow>,
        limit: u32,
        claim: bool,
    ) -> Result<Vec<DueRow>, StoreError> {
        // A claim writes leases only where instances share the database.
        let writes = claim && self.inner.is_shared();
        let call = self.inner.due(now, kind, cursor, limit, claim);
        self.run("due", writes, call).await
    }

    async fn release(&self, ids: &[SessionId]) -> Result<(), StoreError> {
        // Leases are written only where instances share the database.
        let writes = self.inner.is_shared();
        self.run("release", writes, self.inner.release(ids)).await
    }

    async fn rearm(
        &self,
        rows: &[Rearm],
        rules_version: Option<i64>,
        only: RearmOnly,
    ) -> Result<u64, StoreError> {
        let call = self.inner.rearm(rows, rules_version, only);
        self.run("rearm", WRITE, call).await
    }

    async fn mark_rearmed(&self, version: i64) -> Result<(), StoreError> {
        self.run("mark_rearmed", WRITE, self.inner.mark_rearmed(version))
            .await
    }

    async fn rules_in_force(&self) -> Result<Option<RulesInForce>, StoreError> {
        self.run("rules_in_force", READ, self.inner.rules_in_force())
            .await
    }

    async fn publish_rules(
        &self,
        expected: i64,
        kinds: &str,
        limited: &[String],
        at: Timestamp,
        event: Option<EventRecord>,
    ) -> Result<i64, StoreError> {
        let call = self
            .inner
            .publish_rules(expected, kinds, limited, at, event);
        self.run("publish_rules", WRITE, call).await
    }

    async fn next_deadline(&self) -> Result<Option<Timestamp>, StoreError> {
        self.run("next_deadline", READ, self.inner.next_deadline())
            .await
    }

    async fn flush_heartbeats(&self, beats: &[Beat]) -> Result<Vec<Moved>, StoreError> {
        self.run(
            "flush_heartbeats",
            WRITE,
            self.inner.flush_heartbeats(beats),
        )
        .await
    }

    async fn write_heartbeats(
        &self,
        read: &[Beat],
        unread: &[Beat],
    ) -> Result<BeatsWritten, StoreError> {
        self.run(
            "write_heartbeats",
            WRITE,
            self.inner.write_heartbeats(read, unread),
        )
        .await
    }

    async fn was_deleted(&self, id: &SessionId) -> Result<bool, StoreError> {
        self.run("was_deleted", READ, self.inner.was_deleted(id))
            .await
    }

    async fn last_event_seq(&self) -> Result<i64, StoreError> {
        self.run("last_event_seq", READ, self.inner.last_event_seq())
            .await
    }

    async fn events(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        self.run("events", READ, self.inner.events(query)).await
    }

    async fn notifications(
        &self,
        user: &UserId,
        unread_only: bool,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        let call = self.inner.notifications(user, unread_only, limit);
        self.run("notifications", READ, call).await
    }

    async fn mark_read(
        &self,
        user: &UserId,
        id: &str,
        at: Timestamp,
    ) -> Result<Option<Notification>, StoreError> {
        self.run("mark_read", WRITE, self.inner.mark_read(user, id, at))
            .await
    }

    async fn counts(&self) -> Result<Vec<StatusCount>, StoreError> {
        self.run("counts", READ, self.inner.counts()).await
    }

    async fn watch(&self, seen: ChangeCallback) -> Result<(), StoreError> {
        self.run("watch", READ, self.inner.watch(seen)).await
    }

    async fn due_deliveries(
        &self,
        endpoint: &str,
        now: Timestamp,
        limit: u32,
        lease: Option<Span>,
    ) -> Result<Vec<(Delivery, Event)>, StoreError> {
        let writes = lease.is_some() && self.inner.is_shared();
        let call = self.inner.due_deliveries(endpoint, now, limit, lease);
        self.run("due_deliveries", writes, call).await
    }

    async fn record_attempts(&self, attempts: &[(String, Attempt)]) -> Result<(), StoreError> {
        self.run(
            "record_attempts",
            WRITE,
            self.inner.record_attempts(attempts),
        )
        .await
    }

    async fn disable_endpoint(
        &self,
        url: &str,
        at: Timestamp,
        reason: &str,
        attempted: &[String],
    ) -> Result<(), StoreError> {
        let call = self.inner.disable_endpoint(url, at, reason, attempted);
        self.run("disable_endpoint", WRITE, call).await
    }

    async fn count_due(&self, now: Timestamp, kind: Option<&str>) -> Result<u64, StoreError> {
        self.run("count_due", READ, self.inner.count_due(now, kind))
            .await
    }

    async fn disabled_endpoints(&self) -> Result<Vec<DisabledEndpoint>, StoreError> {
        self.run("disabled_endpoints", READ, self.inner.disabled_endpoints())
            .await
    }

    async fn deliveries(
        &self,
        status: Option<DeliveryStatus>,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.run("deliveries", READ, self.inner.deliveries(status, limit))
            .await
    }

    async fn retry_delivery(
        &self,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<Delivery>, StoreError> {
        self.run("retry_delivery", WRITE, self.inner.retry_delivery(id, now))
            .await
    }

    async fn pending_endpoints(&self) -> Result<Vec<String>, StoreError> {
        self.run("pending_endpoints", READ, self.inner.pending_endpoints())
            .await
    }

    async fn next_delivery_at(
        &self,
        endpoint: &str,
        after: Timestamp,
    ) -> Result<Option<Timestamp>, StoreError> {
        self.run(
            "next_delivery_at",
            READ,
            self.inner.next_delivery_at(endpoint, after),
        )
        .await
    }

    async fn prune(
        &self,
        before: &PruneBefore,
        after: i64,
        limit: u32,
    ) -> Result<Pruned, StoreError> {
        self.run("prune", WRITE, self.inner.prune(before, after, limit))
            .await
    }

    async fn idempotent_response(
        &self,
        actor: &str,
        key: &str,
        since: Timestamp,
    ) -> Result<Option<StoredResponse>, StoreError> {
        let call = self.inner.idempotent_response(actor, key, since);
        self.run("idempotent_response", READ, call).await
    }

    async fn save_idempotent_response(
        &self,
        actor: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<(), StoreError> {
        let call = self.inner.save_idempotent_response(actor, key, response);
        self.run("save_idempotent_response", WRITE, call).await
    }

    async fn write_check(&self, at: Timestamp) -> Result<(), StoreError> {
        self.run("write_check", WRITE, self.inner.write_check(at))
            .await
    }

    async fn health_counts(
        &self,
        overdue_before: Timestamp,
        stale_before: Timestamp,
    ) -> Result<HealthCounts, StoreError> {
        let call = self.inner.health_counts(overdue_before, stale_before);
        self.run("health_counts", READ, call).await
    }

    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }

    fn writes_one_at_a_time(&self) -> bool {
        self.inner.writes_one_at_a_time()
    }
}
