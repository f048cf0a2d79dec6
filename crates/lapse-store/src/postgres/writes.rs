//! Commits in one transaction, and the writes of each: session rows (compare-and-set),
//! participants, events with their webhook deliveries, notifications, the host limit.

use lapse_core::store::{Change, Commit, HostLimit};
use lapse_core::{Session, SessionId, StoreError, Timestamp, UserId};
use sqlx::postgres::PgPool;
use sqlx::{Postgres, Transaction};

use super::bulk::{write_caused, write_updates};
use super::changes::announce;
use super::rules::first_locks;
use super::{EVENTS_LOCK, FLUSH_LOCK, lock_shared_until_commit, lock_until_commit};
use crate::backend;
use crate::batch::{Writes, Written};
use crate::rows::to_json;

/// Commits in one transaction, each checked alone (see `Store::commit_many` and
/// `batch::write_each`), then what the written ones announce.
pub(super) async fn commit_many(
    pool: &PgPool,
    commits: &[Commit],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let mut tx = pool.begin().await.map_err(backend)?;
    let checked = commits.iter().any(|c| c.rules_version.is_some());
    let in_force = first_locks(&mut tx, checked).await?;
    let stale = crate::batch::stale(commits, in_force);
    let fresh = crate::batch::fresh(commits, &stale);
    // A flush writes many sessions in an order of its own, and so does a sweep's batch or
    // a cascade: taken one at a time with flushes, they never deadlock with one. Sweeps'
    // batches of rows leased to each alone touch disjoint rows, so they take their turn
    // together (shared). A commit of one session needs no turn: a flush waits for it before
    // touching its participants.
    if fresh.iter().map(|c| c.sessions.len()).sum::<usize>() > 1 {
        if fresh.iter().all(|c| c.leased) {
            lock_shared_until_commit(&mut tx, FLUSH_LOCK).await?;
        } else {
            lock_until_commit(&mut tx, FLUSH_LOCK).await?;
        }
    }
    let outcomes = match crate::batch::write_each(&mut tx, &fresh).await? {
        Written::Each(outcomes) => outcomes,
        Written::Refused(e) => return Ok(crate::batch::with_stale(&stale, vec![Err(e)])),
    };
    let outcomes = crate::batch::with_stale(&stale, outcomes);
    // What the written commits announce: new events, and their earliest deadline.
    let written = commits
        .iter()
        .zip(&outcomes)
        .filter_map(|(c, o)| o.is_ok().then_some(c));
    let (mut earliest, mut events) = (None::<Timestamp>, false);
    for commit in written {
        events |= !commit.events.is_empty();
        let wakes = commit.sessions.iter().filter_map(|w| w.session()?.wake_at);
        earliest = earliest.into_iter().chain(wakes).min();
    }
    if events {
        announce(&mut tx, Change::Events).await?;
    }
    if let Some(at) = earliest {
        announce(&mut tx, Change::Deadline(at)).await?;
    }
    tx.commit().await.map_err(backend)?;
    Ok(outcomes)
}

impl Writes for Transaction<'_, Postgres> {
    async fn run(&mut self, run: &[&Commit]) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        write_updates(self, run).await
    }

    async fn run_caused(&mut self, written: &[&Commit]) -> Result<(), StoreError> {
        write_caused(self, written).await
    }

    /// The events lock (see `rules::first_locks`), until the commit.
    async fn before_events(&mut self) -> Result<(), StoreError> {
        lock_until_commit(self, EVENTS_LOCK).await
    }

    async fn exec(&mut self, sql: &'static str) -> Result<(), StoreError> {
        sqlx::query(sql)
            .execute(&mut **self)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Counts the host's open sessions of the kind under a transaction-scoped lock on that
    /// pair, so creates on different instances take turns.
    async fn check_host_limit(&mut self, limit: &HostLimit) -> Result<(), StoreError> {
        sqlx::query("select pg_advisory_xact_lock(hashtext($1), hashtext($2))")
            .bind(limit.host.as_str())
            .bind(&limit.kind)
            .execute(&mut **self)
            .await
            .map_err(backend)?;
        let open: i64 = sqlx::query_scalar(HOST_OPEN_COUNT)
            .bind(limit.host.as_str())
            .bind(&limit.kind)
            .fetch_one(&mut **self)
            .await
            .map_err(backend)?;
        if open >= i64::from(limit.max) {
            return Err(StoreError::LimitReached);
        }
        Ok(())
    }

    async fn insert_session(&mut self, s: &Session, host_limited: bool) -> Result<(), StoreError> {
        let result = sqlx::query(
            "insert into sessions (id, kind, title, metadata, host, parent, scheduled_start, \
             scheduled_end, status, delayed, used, created_at, started_at, ended_at, \
             last_activity_at, end_reason, ended_by, counters, summary, parent_ended_at, \
             next_due_at, next_due_rule, warnings, host_limited, version) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
             $18, $19, $20, $21, $22, $23, $24, 1) on conflict (id) do nothing",
        )
        .bind(s.id.as_str())
        .bind(&s.kind)
        .bind(&s.title)
        .bind(to_json(&s.metadata))
        .bind(s.host.as_str())
        .bind(s.parent.as_ref().map(|p| p.as_str()))
        .bind(s.scheduled_start.map(Timestamp::millis))
        .bind(s.scheduled_end.map(Timestamp::millis))
        .bind(s.status.as_str())
        .bind(s.delayed)
        .bind(s.used)
        .bind(s.created_at.millis())
        .bind(s.started_at.map(Timestamp::millis))
        .bind(s.ended_at.map(Timestamp::millis))
        .bind(s.last_activity_at.millis())
        .bind(s.end_reason.as_deref())
        .bind(s.ended_by.as_deref())
        .bind(to_json(&s.counters))
        .bind(s.summary.as_ref().map(to_json))
        .bind(s.parent_ended_at.map(Timestamp::millis))
        .bind(s.wake_at.map(Timestamp::millis))
        .bind(s.next_due.as_ref().map(|n| n.rule.as_str()))
        .bind(to_json(&s.warnings))
        .bind(host_limited)
        .execute(&mut **self)
        .await
        .map_err(backend)?;
        if result.rows_affected() == 0 {
            return Err(StoreError::Duplicate);
        }
        Ok(())
    }

    async fn update_session(&mut self, s: &Session) -> Result<(), StoreError> {
        let result = sqlx::query(
            "update sessions set title = $2, metadata = $3, scheduled_start = $4, \
             scheduled_end = $5, status = $6, host_limited = host_limited or \
             (status not in ('pending', 'active') and $6 in ('pending', 'active')), \
             delayed = $7, used = $8, started_at = $9, \
             ended_at = $10, last_activity_at = greatest(last_activity_at, $11), end_reason = $12, \
             ended_by = $13, counters = $14, summary = $15, parent_ended_at = $16, \
             next_due_at = $17, next_due_rule = $18, warnings = $20, claimed_until = null, version = version + 1 \
             where id = $1 and version = $19",
        )
        .bind(s.id.as_str())
        .bind(&s.title)
        .bind(to_json(&s.metadata))
        .bind(s.scheduled_start.map(Timestamp::millis))
        .bind(s.scheduled_end.map(Timestamp::millis))
        .bind(s.status.as_str())
        .bind(s.delayed)
        .bind(s.used)
        .bind(s.started_at.map(Timestamp::millis))
        .bind(s.ended_at.map(Timestamp::millis))
        .bind(s.last_activity_at.millis())
        .bind(s.end_reason.as_deref())
        .bind(s.ended_by.as_deref())
        .bind(to_json(&s.counters))
        .bind(s.summary.as_ref().map(to_json))
        .bind(s.parent_ended_at.map(Timestamp::millis))
        .bind(s.wake_at.map(Timestamp::millis))
        .bind(s.next_due.as_ref().map(|n| n.rule.as_str()))
        .bind(s.version)
        .bind(to_json(&s.warnings))
        .execute(&mut **self)
        .await
        .map_err(backend)?;
        if result.rows_affected() == 0 {
            return Err(StoreError::Conflict);
        }
        Ok(())
    }

    async fn upsert_participants(
        &mut self,
        s: &Session,
        changed: Option<&[UserId]>,
    ) -> Result<(), StoreError> {
        let wanted = |p: &&lapse_core::Participant| changed.is_none_or(|c| c.contains(&p.user));
        for p in s.participants.iter().filter(wanted) {
            sqlx::query(
                "insert into participants (session_id, user_id, role, state, joined_at, left_at, \
                 last_seen_at, offline_for) values ($1, $2, $3, $4, $5, $6, $7, $8) \
                 on conflict (session_id, user_id) do update set role = excluded.role, \
                 state = excluded.state, joined_at = excluded.joined_at, left_at = excluded.left_at, \
                 offline_for = excluded.offline_for, \
                 last_seen_at = greatest(participants.last_seen_at, excluded.last_seen_at)",
            )
            .bind(s.id.as_str())
            .bind(p.user.as_str())
            .bind(p.role.as_str())
            .bind(p.state.as_str())
            .bind(p.joined_at.millis())
            .bind(p.left_at.map(Timestamp::millis))
            .bind(p.last_seen_at.millis())
            .bind(p.offline_for.map(Timestamp::millis))
            .execute(&mut **self)
            .await
            .map_err(backend)?;
        }
        Ok(())
    }

    async fn delete_session(&mut self, id: &SessionId, version: i64) -> Result<(), StoreError> {
        let result = sqlx::query("delete from sessions where id = $1 and version = $2")
            .bind(id.as_str())
            .bind(version)
            .execute(&mut **self)
            .await
            .map_err(backend)?;
        if result.rows_affected() == 0 {
            return Err(StoreError::Conflict);
        }
        sqlx::query("delete from participants where session_id = $1")
            .bind(id.as_str())
            .execute(&mut **self)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn append_events(&mut self, commit: &Commit) -> Result<(), StoreError> {
        for r in &commit.events {
            let e = &r.event;
            let seq: i64 = sqlx::query_scalar(
                "insert into events (id, type, at, applied_at, session_id, kind, actor, rule, data) \
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9) returning seq",
            )
            .bind(&r.id)
            .bind(e.event_type.as_str())
            .bind(e.at.millis())
            .bind(r.applied_at.millis())
            .bind(e.session_id.as_str())
            .bind(&e.kind)
            .bind(&e.actor)
            .bind(e.rule.as_deref())
            .bind(e.data.as_str())
            .fetch_one(&mut **self)
            .await
            .map_err(backend)?;
            for (n, url) in r.webhooks.iter().enumerate() {
                queue_delivery(self, &format!("{}.{n}", r.id), url, seq, r.applied_at).await?;
            }
        }
        Ok(())
    }

    async fn deliver_notifications(&mut self, commit: &Commit) -> Result<(), StoreError> {
        for r in &commit.notifications {
            let n = &r.notification;
            sqlx::query(
                "insert into notifications (id, user_id, type, title, message, session_id, link, \
                 created_at) values ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&r.id)
            .bind(n.user.as_str())
            .bind(&n.notification_type)
            .bind(&n.title)
            .bind(&n.message)
            .bind(n.session.as_str())
            .bind(n.link.as_deref())
            .bind(n.created_at.millis())
            .execute(&mut **self)
            .await
            .map_err(backend)?;
        }
        Ok(())
    }
}

/// How many open sessions of a kind a host has that count against its limit (marked
/// `host_limited`; `sessions_open_by_host`).
pub(super) const HOST_OPEN_COUNT: &str = "select count(*) from sessions where host = $1 and kind = $2 \
         and host_limited and status in ('pending', 'active')";

/// Queues one event for one endpoint, unless the endpoint was disabled.
async fn queue_delivery(
    tx: &mut Transaction<'_, Postgres>,
    id: &str,
    url: &str,
    seq: i64,
    at: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query(
        "insert into webhook_deliveries (id, endpoint, event_seq, status, attempts, \
         next_attempt_at, created_at) \
         select $1, $2, $3, 'pending', 0, $4, $4 \
         where not exists (select 1 from webhook_endpoints_disabled where url = $2)",
    )
    .bind(id)
    .bind(url)
    .bind(seq)
    .bind(at.millis())
    .execute(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(())
}
