//! Commits in one transaction, and the writes of each: session rows (compare-and-set),
//! participants, events with their webhook deliveries, notifications, the host limit.

use lapse_core::store::{Commit, HostLimit};
use lapse_core::{Session, SessionId, StoreError, Timestamp, UserId};
use sqlx::{Connection as _, Sqlite, Transaction};

use super::bulk::{write_caused, write_updates};
use super::conns::Conns;
use super::rules;
use crate::backend;
use crate::batch::{Writes, Written};
use crate::rows::to_json;

/// Commits in one transaction, each checked alone (see `Store::commit_many` and
/// `batch::write_each`).
pub(super) async fn commit_many(
    writer: &Conns,
    commits: &[Commit],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    // The single writer connection already serializes this with every other commit, so
    // host limits and the rules version are checked without a lock.
    let mut writer = writer.get().await?;
    let mut tx = writer.begin().await.map_err(backend)?;
    let in_force = if commits.iter().any(|c| c.rules_version.is_some()) {
        rules::rules_version_of(&mut tx).await?
    } else {
        None
    };
    let stale = crate::batch::stale(commits, in_force);
    let fresh = crate::batch::fresh(commits, &stale);
    let outcomes = match crate::batch::write_each(&mut tx, &fresh).await? {
        Written::Each(outcomes) => outcomes,
        Written::Refused(e) => return Ok(crate::batch::with_stale(&stale, vec![Err(e)])),
    };
    tx.commit().await.map_err(backend)?;
    Ok(crate::batch::with_stale(&stale, outcomes))
}

impl Writes for Transaction<'_, Sqlite> {
    async fn run(&mut self, run: &[&Commit]) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        write_updates(self, run).await
    }

    async fn run_caused(&mut self, written: &[&Commit]) -> Result<(), StoreError> {
        write_caused(self, written).await
    }

    /// The single writer connection already puts event numbers in commit order.
    async fn before_events(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn exec(&mut self, sql: &'static str) -> Result<(), StoreError> {
        sqlx::query(sql)
            .execute(&mut **self)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn check_host_limit(&mut self, limit: &HostLimit) -> Result<(), StoreError> {
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
             values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, \
             ?18, ?19, ?20, ?21, ?22, ?23, ?24, 1) on conflict (id) do nothing",
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
        .bind(s.delayed as i64)
        .bind(s.used as i64)
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

    /// Tried cheapest first: keeping the stored status and wake-up, then the status, then
    /// neither (see [`UPDATE_KEEPING_WAKE`]).
    async fn update_session(&mut self, s: &Session) -> Result<(), StoreError> {
        let metadata = to_json(&s.metadata);
        let counters = to_json(&s.counters);
        let summary = s.summary.as_ref().map(to_json);
        let warnings = to_json(&s.warnings);
        for sql in [UPDATE_KEEPING_WAKE, UPDATE_KEEPING_STATUS, UPDATE_WHOLE] {
            let result = sqlx::query(sql)
                .bind(s.id.as_str())
                .bind(&s.title)
                .bind(&metadata)
                .bind(s.scheduled_start.map(Timestamp::millis))
                .bind(s.scheduled_end.map(Timestamp::millis))
                .bind(s.status.as_str())
                .bind(s.delayed as i64)
                .bind(s.used as i64)
                .bind(s.started_at.map(Timestamp::millis))
                .bind(s.ended_at.map(Timestamp::millis))
                .bind(s.last_activity_at.millis())
                .bind(s.end_reason.as_deref())
                .bind(s.ended_by.as_deref())
                .bind(&counters)
                .bind(summary.as_deref())
                .bind(s.parent_ended_at.map(Timestamp::millis))
                .bind(s.wake_at.map(Timestamp::millis))
                .bind(s.next_due.as_ref().map(|n| n.rule.as_str()))
                .bind(s.version)
                .bind(&warnings)
                .execute(&mut **self)
                .await
                .map_err(backend)?;
            if result.rows_affected() == 1 {
                return Ok(());
            }
        }
        Err(StoreError::Conflict)
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
                 last_seen_at, offline_for) values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 on conflict (session_id, user_id) do update set role = excluded.role, \
                 state = excluded.state, joined_at = excluded.joined_at, left_at = excluded.left_at, \
                 offline_for = excluded.offline_for, \
                 last_seen_at = max(participants.last_seen_at, excluded.last_seen_at)",
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
        let result = sqlx::query("delete from sessions where id = ?1 and version = ?2")
            .bind(id.as_str())
            .bind(version)
            .execute(&mut **self)
            .await
            .map_err(backend)?;
        if result.rows_affected() == 0 {
            return Err(StoreError::Conflict);
        }
        sqlx::query("delete from participants where session_id = ?1")
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
                 values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) returning seq",
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
                 created_at) values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
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

/// A session row rewritten under compare-and-set, with `status = ?6` set where the first
/// placeholder stands, `next_due_at = ?17` where the second does, and the guard after the key
/// and version where the third does.
macro_rules! update_session_sql {
    ($status:literal, $wake:literal, $guard:literal) => {
        concat!(
            "update sessions set title = ?2, metadata = ?3, scheduled_start = ?4, \
             scheduled_end = ?5, ",
            $status,
            "delayed = ?7, used = ?8, started_at = ?9, ended_at = ?10, \
             last_activity_at = max(last_activity_at, ?11), end_reason = ?12, ended_by = ?13, \
             counters = ?14, summary = ?15, parent_ended_at = ?16, ",
            $wake,
            "next_due_rule = ?18, warnings = ?20, version = version + 1 \
             where id = ?1 and version = ?19",
            $guard
        )
    };
}

/// A session reopened counts against its host's limit again, marked whatever its kind (see
/// `REOPENED_COUNTS` in the batched form): reopens are rare, and a mark on a kind without a
/// limit is counted by nothing.
///
/// SQLite moves a row's entries in every index whose columns an update names, changed or
/// not, and three of `sessions`' indexes hold its status. Most writes of one session (a join,
/// a leave, activity, a patch) keep it, and most of those keep its stored wake-up too (the
/// engine leaves one that is only put off in place: lazy re-arm). So the row is first written
/// naming neither, guarded by the stored status and wake-up being the new ones already; then
/// naming the wake-up; only when that finds no row either is it written whole (a status that
/// changes, or a version that no longer matches).
pub(super) const UPDATE_KEEPING_WAKE: &str =
    update_session_sql!("", "", " and status = ?6 and next_due_at is ?17");
pub(super) const UPDATE_KEEPING_STATUS: &str =
    update_session_sql!("", "next_due_at = ?17, ", " and status = ?6");
pub(super) const UPDATE_WHOLE: &str = update_session_sql!(
    "status = ?6, host_limited = host_limited or (status not in ('pending', 'active') \
     and ?6 in ('pending', 'active')), ",
    "next_due_at = ?17, ",
    ""
);

/// How many open sessions of a kind a host has that count against its limit (marked
/// `host_limited`; `sessions_open_by_host`).
pub(super) const HOST_OPEN_COUNT: &str = "select count(*) from sessions where host = ?1 and kind = ?2 \
         and host_limited = 1 and status in ('pending', 'active')";

/// Queues one event for one endpoint, unless the endpoint was disabled.
async fn queue_delivery(
    tx: &mut Transaction<'_, Sqlite>,
    id: &str,
    url: &str,
    seq: i64,
    at: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query(
        "insert into webhook_deliveries (id, endpoint, event_seq, status, attempts, \
         next_attempt_at, created_at) \
         select ?1, ?2, ?3, 'pending', 0, ?4, ?4 \
         where not exists (select 1 from webhook_endpoints_disabled where url = ?2)",
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
