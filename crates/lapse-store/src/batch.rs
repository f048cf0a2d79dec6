//! A sweep's page of transitions, written set-based on both backends: a run of commits that
//! each update one session (and write what that causes: participants, events, webhook rows,
//! notifications) goes in five statements instead of five per commit. The compare-and-set of
//! each session row decides its commit: a commit whose row lost writes nothing and gets
//! `Conflict`.
//!
//! Here: a transaction's commits written in two rounds, each commit checked alone
//! ([`write_each`], over what each backend writes: [`Writes`]): every session row first,
//! then what the written ones cause (events, webhook rows, notifications), so that where
//! instances share the database the lock that puts events in commit order is taken last and
//! never held while a row is waited for; the order of one commit's writes ([`write_commit`]);
//! finding such a run, and gathering its rows for the statements (PostgreSQL takes them as
//! arrays, one a column, and its notifications as JSON; SQLite as bound values,
//! `sqlite/values.rs`). The SQL is each backend's own (`sqlite/writes.rs` and
//! `postgres/writes.rs`; the set-based statements in `sqlite/bulk.rs` and
//! `postgres/bulk.rs`).

use std::collections::HashSet;

use lapse_core::store::{Commit, HostLimit, SessionWrite};
use lapse_core::{Session, SessionId, StoreError, UserId};
use serde::Serialize;

use crate::rows::{ParticipantRow, SessionRow, counted_by, participant_row, session_row};

/// Whether a commit can join a bulk write: one session update and what it causes; its one
/// compare-and-set decides all of it.
fn is_single_update(c: &Commit) -> bool {
    c.host_limit.is_none() && matches!(c.sessions.as_slice(), [SessionWrite::Update { .. }])
}

/// How a list of commits is written, in order: runs of single-row updates of distinct
/// sessions set-based, the rest one by one.
pub enum Step<'a> {
    Run(Vec<&'a Commit>),
    One(&'a Commit),
}

/// Which of `commits` were decided under rules other than the version `in_force` (see
/// [`Commit::rules_version`]); `None` when no commit names a version.
pub fn stale(commits: &[Commit], in_force: Option<i64>) -> Vec<bool> {
    commits
        .iter()
        .map(|c| c.rules_version.is_some_and(|v| Some(v) != in_force))
        .collect()
}

/// The commits to write: those not `stale`.
pub fn fresh<'a>(commits: &'a [Commit], stale: &[bool]) -> Vec<&'a Commit> {
    commits
        .iter()
        .zip(stale)
        .filter(|(_, stale)| !**stale)
        .map(|(c, _)| c)
        .collect()
}

/// The outcome of every commit, in order: [`StoreError::PolicyChanged`] for the stale ones,
/// the rest as `written` (the outcomes of [`fresh`], in order).
pub fn with_stale(
    stale: &[bool],
    written: Vec<Result<(), StoreError>>,
) -> Vec<Result<(), StoreError>> {
    let mut written = written.into_iter();
    stale
        .iter()
        .map(|stale| {
            if *stale {
                Err(StoreError::PolicyChanged)
            } else {
                written.next().unwrap_or(Err(StoreError::PolicyChanged))
            }
        })
        .collect()
}

/// What a backend writes inside a transaction of commits: a run of them set-based, or the
/// parts of one ([`write_commit`] puts them in order).
pub trait Writes {
    /// A run of single-session updates, set-based: the session rows and their participants;
    /// each commit's outcome, in order.
    async fn run(&mut self, run: &[&Commit]) -> Result<Vec<Result<(), StoreError>>, StoreError>;
    /// What a run's written commits cause, set-based: events with their webhook deliveries,
    /// notifications.
    async fn run_caused(&mut self, written: &[&Commit]) -> Result<(), StoreError>;
    /// Taken once the session rows are written and before the first event is: where
    /// instances share the database, event numbers then follow commit order (PostgreSQL
    /// takes a lock until the commit), and a transaction holding it waits for no row.
    async fn before_events(&mut self) -> Result<(), StoreError>;
    /// A statement without values (savepoints).
    async fn exec(&mut self, sql: &'static str) -> Result<(), StoreError>;
    /// `LimitReached` if the host has as many open sessions of the kind as it may.
    async fn check_host_limit(&mut self, limit: &HostLimit) -> Result<(), StoreError>;
    /// A new session row, counted against its host's limit where `host_limited`;
    /// `Duplicate` if its id is taken.
    async fn insert_session(&mut self, s: &Session, host_limited: bool) -> Result<(), StoreError>;
    /// A session row rewritten under compare-and-set on the version it was decided on;
    /// `Conflict` if the stored one has moved.
    async fn update_session(&mut self, s: &Session) -> Result<(), StoreError>;
    /// A session's participants, or only the `changed` ones, inserted or brought up to date.
    async fn upsert_participants(
        &mut self,
        s: &Session,
        changed: Option<&[UserId]>,
    ) -> Result<(), StoreError>;
    /// A session row and its participants deleted under compare-and-set; `Conflict` if the
    /// stored version has moved.
    async fn delete_session(&mut self, id: &SessionId, version: i64) -> Result<(), StoreError>;
    /// A commit's events, each with its webhook deliveries (none to a disabled endpoint).
    async fn append_events(&mut self, commit: &Commit) -> Result<(), StoreError>;
    /// A commit's notifications.
    async fn deliver_notifications(&mut self, commit: &Commit) -> Result<(), StoreError>;
}

/// Everything one commit writes, in order, inside `tx`: its session rows
/// ([`write_rows`]), then what it causes ([`write_caused`]).
pub async fn write_commit(tx: &mut impl Writes, commit: &Commit) -> Result<(), StoreError> {
    write_rows(tx, commit).await?;
    if !commit.events.is_empty() {
        tx.before_events().await?;
    }
    write_caused(tx, commit).await
}

/// A commit's session rows with their participants, in order. Its first statement is the one
/// that can refuse it (host limit, insert, compare-and-set); one of several sessions refused
/// at a later session's is undone by [`write_each`]'s savepoint.
async fn write_rows(tx: &mut impl Writes, commit: &Commit) -> Result<(), StoreError> {
    if let Some(limit) = &commit.host_limit {
        tx.check_host_limit(limit).await?;
    }
    for write in &commit.sessions {
        match write {
            SessionWrite::Insert(s) => {
                tx.insert_session(s, counted_by(commit, s)).await?;
                tx.upsert_participants(s, None).await?;
            }
            SessionWrite::Update { session, changed } => {
                tx.update_session(session).await?;
                tx.upsert_participants(session, changed.as_deref()).await?;
            }
            SessionWrite::Delete { id, version } => tx.delete_session(id, *version).await?,
        }
    }
    Ok(())
}

/// What a commit whose rows are written causes: its events, then its notifications. Only new
/// rows, so nothing here waits for another transaction's row.
async fn write_caused(tx: &mut impl Writes, commit: &Commit) -> Result<(), StoreError> {
    tx.append_events(commit).await?;
    tx.deliver_notifications(commit).await
}

/// How [`write_each`] ended.
pub enum Written {
    /// Every commit's outcome, in order: the transaction may commit.
    Each(Vec<Result<(), StoreError>>),
    /// The one commit there was refused: nothing in the transaction is worth committing.
    Refused(StoreError),
}

/// Writes `fresh` in `tx`, each checked alone, in two rounds: first every session row,
/// runs of single-session updates set-based and the others one by one, under a savepoint
/// when a commit that writes more than one session shares the transaction (one refused by
/// its first statement has written nothing); then, in the same order, what the written
/// commits cause, after [`Writes::before_events`]. A backend error or a rollback fails the
/// whole transaction.
pub async fn write_each(tx: &mut impl Writes, fresh: &[&Commit]) -> Result<Written, StoreError> {
    let alone = fresh.len() == 1;
    let steps = steps(fresh);
    let mut outcomes = Vec::with_capacity(fresh.len());
    // The sessions of commits refused so far. A later commit of one of them was decided on
    // top of the refused one (a cascade's child, then its own rule): the version it expects
    // is the one the refused commit would have written, which another writer may have
    // written instead. It is refused without a write.
    let mut refused: HashSet<&SessionId> = HashSet::new();
    for step in &steps {
        let commit = match step {
            Step::Run(run) => {
                let built_on_refused: Vec<bool> = run
                    .iter()
                    .map(|c| session_ids(c).any(|id| refused.contains(id)))
                    .collect();
                let rest: Vec<&Commit> = run
                    .iter()
                    .zip(&built_on_refused)
                    .filter_map(|(c, refused)| (!refused).then_some(*c))
                    .collect();
                let mut written = if rest.is_empty() {
                    Vec::new()
                } else {
                    tx.run(&rest).await?
                }
                .into_iter();
                for (c, built_on_refused) in run.iter().zip(built_on_refused) {
                    let outcome = match built_on_refused {
                        true => Err(StoreError::Conflict),
                        false => written.next().unwrap_or(Err(StoreError::Conflict)),
                    };
                    if outcome.is_err() {
                        refused.extend(session_ids(c));
                    }
                    outcomes.push(outcome);
                }
                continue;
            }
            Step::One(commit) => commit,
        };
        if session_ids(commit).any(|id| refused.contains(id)) {
            outcomes.push(Err(StoreError::Conflict));
            continue;
        }
        let savepoint = !alone && commit.sessions.len() > 1;
        if savepoint {
            tx.exec("savepoint one_commit").await?;
        }
        match write_rows(tx, commit).await {
            Ok(()) => outcomes.push(Ok(())),
            Err(e @ (StoreError::Backend(_) | StoreError::RolledBack)) => return Err(e),
            Err(e) if alone => return Ok(Written::Refused(e)),
            Err(e) => {
                if savepoint {
                    tx.exec("rollback to savepoint one_commit").await?;
                }
                refused.extend(session_ids(commit));
                outcomes.push(Err(e));
            }
        }
        if savepoint {
            tx.exec("release savepoint one_commit").await?;
        }
    }
    write_caused_in_order(tx, &steps, &outcomes).await?;
    Ok(Written::Each(outcomes))
}

/// The second round of [`write_each`]: what the written commits of `steps` (their
/// `outcomes`, in order) cause, in order, after [`Writes::before_events`].
async fn write_caused_in_order(
    tx: &mut impl Writes,
    steps: &[Step<'_>],
    outcomes: &[Result<(), StoreError>],
) -> Result<(), StoreError> {
    let mut done = outcomes.iter();
    let mut events_locked = false;
    for step in steps {
        let written: Vec<&Commit> = match step {
            Step::Run(run) => run
                .iter()
                .zip(done.by_ref())
                .filter(|(_, o)| o.is_ok())
                .map(|(c, _)| *c)
                .collect(),
            Step::One(commit) => match done.next() {
                Some(Ok(())) => vec![*commit],
                _ => Vec::new(),
            },
        };
        if !events_locked && written.iter().any(|c| !c.events.is_empty()) {
            tx.before_events().await?;
            events_locked = true;
        }
        match step {
            Step::Run(_) if !written.is_empty() => tx.run_caused(&written).await?,
            Step::Run(_) => {}
            Step::One(_) => {
                for commit in written {
                    write_caused(tx, commit).await?;
                }
            }
        }
    }
    Ok(())
}

/// The sessions a commit writes.
fn session_ids(c: &Commit) -> impl Iterator<Item = &SessionId> {
    c.sessions.iter().map(|w| match w {
        SessionWrite::Insert(s) | SessionWrite::Update { session: s, .. } => &s.id,
        SessionWrite::Delete { id, .. } => id,
    })
}

/// `commits` cut into [`Step`]s.
pub fn steps<'a>(commits: &[&'a Commit]) -> Vec<Step<'a>> {
    let mut steps = Vec::new();
    let mut rest = commits;
    while let Some(&first) = rest.first() {
        let run = single_update_run(rest);
        rest = &rest[run.len().max(1)..];
        steps.push(if run.len() > 1 {
            Step::Run(run)
        } else {
            Step::One(first)
        });
    }
    steps
}

/// The leading commits of `commits` that are single-row updates of distinct sessions.
fn single_update_run<'a>(commits: &[&'a Commit]) -> Vec<&'a Commit> {
    let mut seen = HashSet::new();
    commits
        .iter()
        .copied()
        .take_while(|c| {
            is_single_update(c)
                && c.sessions
                    .first()
                    .and_then(|w| w.session())
                    .is_some_and(|s| seen.insert(s.id.clone()))
        })
        .collect()
}

fn updated(c: &Commit) -> Option<(&Session, &Option<Vec<UserId>>)> {
    match c.sessions.first() {
        Some(SessionWrite::Update { session, changed }) => Some((session, changed)),
        _ => None,
    }
}

/// The session rows of a run (each with the version it was decided on).
pub fn session_rows<'a>(run: &[&'a Commit]) -> Vec<SessionRow<'a>> {
    run.iter()
        .filter_map(|c| updated(c).map(|(s, _)| session_row(s)))
        .collect()
}

/// A session row's key, the version a write of it was decided on, and the status and
/// wake-up it writes.
#[derive(Default, Serialize)]
pub struct SessionKey<'a> {
    id: &'a str,
    version: i64,
    status: &'static str,
    next_due_at: Option<i64>,
}

/// The keys of a run's session rows, in order.
pub fn session_keys<'a>(run: &[&'a Commit]) -> Vec<SessionKey<'a>> {
    run.iter()
        .filter_map(|c| {
            updated(c).map(|(s, _)| SessionKey {
                id: s.id.as_str(),
                version: s.version,
                status: s.status.as_str(),
                next_due_at: s.wake_at.map(lapse_core::Timestamp::millis),
            })
        })
        .collect()
}

/// The commits of a run whose session is one of `ids`, and the rest, each in order.
pub fn split<'a>(run: &[&'a Commit], ids: &HashSet<String>) -> (Vec<&'a Commit>, Vec<&'a Commit>) {
    run.iter()
        .partition(|c| updated(c).is_some_and(|(s, _)| ids.contains(s.id.as_str())))
}

/// The ids of a run's session rows, but for the `stale` ones: the rows that win their
/// compare-and-set when nothing else writes between the check and the update.
pub fn won_unless(run: &[&Commit], stale: &HashSet<String>) -> HashSet<String> {
    run.iter()
        .filter_map(|c| updated(c).map(|(s, _)| s.id.to_string()))
        .filter(|id| !stale.contains(id))
        .collect()
}

/// What a run's written commits cause, each kind as one JSON array.
#[derive(Default)]
pub struct Caused<'a> {
    /// In the order the events were decided in, which their sequence numbers must follow.
    pub events: Vec<EventRow<'a>>,
    /// Keyed to their event by the event's id.
    pub deliveries: Vec<DeliveryRow<'a>>,
    pub notifications: Vec<NotificationRow<'a>>,
}

/// An `events` row.
#[derive(Default, Serialize)]
pub struct EventRow<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'static str,
    at: i64,
    applied_at: i64,
    session_id: &'a str,
    kind: &'a str,
    actor: &'a str,
    rule: Option<&'a str>,
    data: &'a str,
}

/// Events as the columns PostgreSQL's batched insert reads, one array each (bound to
/// `unnest`), in the events' order.
#[derive(Default)]
pub struct EventArrays<'a> {
    pub id: Vec<&'a str>,
    pub event_type: Vec<&'static str>,
    pub at: Vec<i64>,
    pub applied_at: Vec<i64>,
    pub session_id: Vec<&'a str>,
    pub kind: Vec<&'a str>,
    pub actor: Vec<&'a str>,
    pub rule: Vec<Option<&'a str>>,
    pub data: Vec<&'a str>,
}

impl<'a> EventArrays<'a> {
    /// `rows`, column by column.
    pub fn of(rows: &[EventRow<'a>]) -> Self {
        let mut c = EventArrays::default();
        for r in rows {
            c.id.push(r.id);
            c.event_type.push(r.event_type);
            c.at.push(r.at);
            c.applied_at.push(r.applied_at);
            c.session_id.push(r.session_id);
            c.kind.push(r.kind);
            c.actor.push(r.actor);
            c.rule.push(r.rule);
            c.data.push(r.data);
        }
        c
    }
}

/// Webhook rows as columns, one array each (see [`EventArrays`]).
#[derive(Default)]
pub struct DeliveryArrays<'a> {
    pub id: Vec<&'a str>,
    pub url: Vec<&'a str>,
    pub event: Vec<&'a str>,
    pub at: Vec<i64>,
}

impl<'a> DeliveryArrays<'a> {
    /// `rows`, column by column.
    pub fn of(rows: &'a [DeliveryRow<'a>]) -> Self {
        let mut c = DeliveryArrays::default();
        for r in rows {
            c.id.push(&r.id);
            c.url.push(r.url);
            c.event.push(r.event);
            c.at.push(r.at);
        }
        c
    }
}

/// A `webhook_deliveries` row, naming its event by id.
#[derive(Default, Serialize)]
pub struct DeliveryRow<'a> {
    id: String,
    url: &'a str,
    event: &'a str,
    at: i64,
}

/// A `notifications` row.
#[derive(Default, Serialize)]
pub struct NotificationRow<'a> {
    id: &'a str,
    user_id: &'a str,
    #[serde(rename = "type")]
    notification_type: &'a str,
    title: &'a str,
    message: &'a str,
    session_id: &'a str,
    link: Option<&'a str>,
    created_at: i64,
}

/// Each commit's outcome (those whose session id is not in `won` lost their compare-and-set),
/// and the participant rows the winners write after their session row.
pub fn participants<'a>(
    run: &[&'a Commit],
    won: &HashSet<String>,
) -> (Vec<Result<(), StoreError>>, Vec<ParticipantRow<'a>>) {
    let mut outcomes = Vec::with_capacity(run.len());
    let mut rows = Vec::new();
    for c in run {
        let Some((s, changed)) = updated(c).filter(|(s, _)| won.contains(s.id.as_str())) else {
            outcomes.push(Err(StoreError::Conflict));
            continue;
        };
        outcomes.push(Ok(()));
        let wanted =
            |p: &&lapse_core::Participant| changed.as_ref().is_none_or(|c| c.contains(&p.user));
        rows.extend(
            s.participants
                .iter()
                .filter(wanted)
                .map(|p| participant_row(s, p)),
        );
    }
    (outcomes, rows)
}

/// The rows `written` commits cause, in order.
pub fn caused<'a>(written: &[&'a Commit]) -> Caused<'a> {
    let mut rows = Caused::default();
    for c in written {
        for r in &c.events {
            let e = &r.event;
            rows.events.push(EventRow {
                id: &r.id,
                event_type: e.event_type.as_str(),
                at: e.at.millis(),
                applied_at: r.applied_at.millis(),
                session_id: e.session_id.as_str(),
                kind: &e.kind,
                actor: &e.actor,
                rule: e.rule.as_deref(),
                data: e.data.as_str(),
            });
            for (n, url) in r.webhooks.iter().enumerate() {
                rows.deliveries.push(DeliveryRow {
                    id: format!("{}.{n}", r.id),
                    url,
                    event: &r.id,
                    at: r.applied_at.millis(),
                });
            }
        }
        for r in &c.notifications {
            let n = &r.notification;
            rows.notifications.push(NotificationRow {
                id: &r.id,
                user_id: n.user.as_str(),
                notification_type: &n.notification_type,
                title: &n.title,
                message: &n.message,
                session_id: n.session.as_str(),
                link: n.link.as_deref(),
                created_at: n.created_at.millis(),
            });
        }
    }
    rows
}
