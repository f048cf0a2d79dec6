//! Model values as the columns written: a session or participant as a row for the bulk
//! statements (and, for PostgreSQL's, a run of such rows as one array per column), a flush's
//! latest beats, stored JSON text.

use lapse_core::session::{Participant, Session};
use lapse_core::store::Commit;
use lapse_core::{SessionId, Timestamp};

/// Whether `s`, inserted by `commit`, counts against its host's limit: the commit checked
/// one for its kind and host, because the kind has one under the rules it was decided by.
pub(crate) fn counted_by(commit: &Commit, s: &Session) -> bool {
    commit
        .host_limit
        .as_ref()
        .is_some_and(|l| l.kind == s.kind && l.host == s.host)
}

/// Counters and metadata as stored text.
pub fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Serializing maps of strings and integers cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| "{}".into())
}

/// A `sessions` row as the bulk statements read it (bound values on SQLite, `sqlite/values.rs`;
/// `json_to_recordset` on PostgreSQL): keyed by column, times as epoch milliseconds, written
/// straight from the session (no JSON tree is built on the way).
#[derive(Default, serde::Serialize)]
pub struct SessionRow<'a> {
    id: &'a str,
    kind: &'a str,
    title: &'a str,
    metadata: String,
    host: &'a str,
    parent: Option<&'a str>,
    scheduled_start: Option<i64>,
    scheduled_end: Option<i64>,
    status: &'static str,
    delayed: bool,
    used: bool,
    created_at: i64,
    started_at: Option<i64>,
    ended_at: Option<i64>,
    last_activity_at: i64,
    end_reason: Option<&'a str>,
    ended_by: Option<&'a str>,
    counters: String,
    summary: Option<String>,
    parent_ended_at: Option<i64>,
    warnings: String,
    next_due_at: Option<i64>,
    next_due_rule: Option<&'a str>,
    version: i64,
}

/// A run's session rows as the columns PostgreSQL's batched update reads, one array each
/// (bound to `unnest`, so the rows reach the server with no text to parse).
#[derive(Default)]
pub struct SessionArrays<'a> {
    pub id: Vec<&'a str>,
    pub version: Vec<i64>,
    pub title: Vec<&'a str>,
    pub metadata: Vec<String>,
    pub scheduled_start: Vec<Option<i64>>,
    pub scheduled_end: Vec<Option<i64>>,
    pub status: Vec<&'static str>,
    pub delayed: Vec<bool>,
    pub used: Vec<bool>,
    pub started_at: Vec<Option<i64>>,
    pub ended_at: Vec<Option<i64>>,
    pub last_activity_at: Vec<i64>,
    pub end_reason: Vec<Option<&'a str>>,
    pub ended_by: Vec<Option<&'a str>>,
    pub counters: Vec<String>,
    pub summary: Vec<Option<String>>,
    pub parent_ended_at: Vec<Option<i64>>,
    pub next_due_at: Vec<Option<i64>>,
    pub next_due_rule: Vec<Option<&'a str>>,
    pub warnings: Vec<String>,
}

impl<'a> SessionArrays<'a> {
    /// `rows`, column by column.
    pub fn of(rows: Vec<SessionRow<'a>>) -> Self {
        let mut c = SessionArrays::default();
        for r in rows {
            c.id.push(r.id);
            c.version.push(r.version);
            c.title.push(r.title);
            c.metadata.push(r.metadata);
            c.scheduled_start.push(r.scheduled_start);
            c.scheduled_end.push(r.scheduled_end);
            c.status.push(r.status);
            c.delayed.push(r.delayed);
            c.used.push(r.used);
            c.started_at.push(r.started_at);
            c.ended_at.push(r.ended_at);
            c.last_activity_at.push(r.last_activity_at);
            c.end_reason.push(r.end_reason);
            c.ended_by.push(r.ended_by);
            c.counters.push(r.counters);
            c.summary.push(r.summary);
            c.parent_ended_at.push(r.parent_ended_at);
            c.next_due_at.push(r.next_due_at);
            c.next_due_rule.push(r.next_due_rule);
            c.warnings.push(r.warnings);
        }
        c
    }
}

fn ms(t: Option<Timestamp>) -> Option<i64> {
    t.map(Timestamp::millis)
}

/// `s` as a row.
pub fn session_row(s: &Session) -> SessionRow<'_> {
    SessionRow {
        id: s.id.as_str(),
        kind: &s.kind,
        title: &s.title,
        metadata: to_json(&s.metadata),
        host: s.host.as_str(),
        parent: s.parent.as_ref().map(SessionId::as_str),
        scheduled_start: ms(s.scheduled_start),
        scheduled_end: ms(s.scheduled_end),
        status: s.status.as_str(),
        delayed: s.delayed,
        used: s.used,
        created_at: s.created_at.millis(),
        started_at: ms(s.started_at),
        ended_at: ms(s.ended_at),
        last_activity_at: s.last_activity_at.millis(),
        end_reason: s.end_reason.as_deref(),
        ended_by: s.ended_by.as_deref(),
        counters: to_json(&s.counters),
        summary: s.summary.as_ref().map(to_json),
        parent_ended_at: ms(s.parent_ended_at),
        warnings: to_json(&s.warnings),
        next_due_at: ms(s.wake_at),
        next_due_rule: s.next_due.as_ref().map(|n| n.rule.as_str()),
        version: s.version,
    }
}

/// A heartbeat flush's beats as `(session, user, at)`, one per participant, the latest.
pub fn latest_beats(beats: &[lapse_core::store::Beat]) -> Vec<(&str, &str, i64)> {
    let mut latest: std::collections::HashMap<(&str, &str), i64> =
        std::collections::HashMap::with_capacity(beats.len());
    for b in beats {
        let at = latest
            .entry((b.session.as_str(), b.user.as_str()))
            .or_insert(b.at.millis());
        *at = (*at).max(b.at.millis());
    }
    latest.into_iter().map(|((s, u), at)| (s, u, at)).collect()
}

/// Beats as `(session, user, at)`, each as it is, in order (a write of unread beats answers
/// for each: [`unread_taken`]).
pub fn beat_rows(beats: &[lapse_core::store::Beat]) -> Vec<(&str, &str, i64)> {
    beats
        .iter()
        .map(|b| (b.session.as_str(), b.user.as_str(), b.at.millis()))
        .collect()
}

/// For each of `n` unread beats, its room's activity as stored, where `found` (`(index,
/// last_activity_at)` pairs, the beats whose rooms let them stand unread) names it; `None`
/// for the others.
pub fn unread_taken(n: usize, found: Vec<(i64, i64)>) -> Vec<Option<Timestamp>> {
    let mut taken = vec![None; n];
    for (index, activity) in found {
        if let Some(t) = usize::try_from(index).ok().and_then(|i| taken.get_mut(i)) {
            *t = Some(Timestamp::from_millis(activity));
        }
    }
    taken
}

/// A `participants` row as the bulk statements read it.
#[derive(Default, serde::Serialize)]
pub struct ParticipantRow<'a> {
    session_id: &'a str,
    user_id: &'a str,
    role: &'static str,
    state: &'static str,
    joined_at: i64,
    left_at: Option<i64>,
    last_seen_at: i64,
    offline_for: Option<i64>,
}

/// Participant rows as the columns PostgreSQL's batched upsert reads, one array each (see
/// [`SessionArrays`]).
#[derive(Default)]
pub struct ParticipantArrays<'a> {
    pub session_id: Vec<&'a str>,
    pub user_id: Vec<&'a str>,
    pub role: Vec<&'static str>,
    pub state: Vec<&'static str>,
    pub joined_at: Vec<i64>,
    pub left_at: Vec<Option<i64>>,
    pub last_seen_at: Vec<i64>,
    pub offline_for: Vec<Option<i64>>,
}

impl<'a> ParticipantArrays<'a> {
    /// `rows`, column by column.
    pub fn of(rows: &[ParticipantRow<'a>]) -> Self {
        let mut c = ParticipantArrays::default();
        for r in rows {
            c.session_id.push(r.session_id);
            c.user_id.push(r.user_id);
            c.role.push(r.role);
            c.state.push(r.state);
            c.joined_at.push(r.joined_at);
            c.left_at.push(r.left_at);
            c.last_seen_at.push(r.last_seen_at);
            c.offline_for.push(r.offline_for);
        }
        c
    }
}

/// `p` of `s` as a row.
pub fn participant_row<'a>(s: &'a Session, p: &'a Participant) -> ParticipantRow<'a> {
    ParticipantRow {
        session_id: s.id.as_str(),
        user_id: p.user.as_str(),
        role: p.role.as_str(),
        state: p.state.as_str(),
        joined_at: p.joined_at.millis(),
        left_at: ms(p.left_at),
        last_seen_at: p.last_seen_at.millis(),
        offline_for: ms(p.offline_for),
    }
}

/// Sessions and their participants as two JSON arrays of rows, for bulk imports.
pub fn import_rows(sessions: &[Session]) -> (String, String) {
    let rows: Vec<SessionRow> = sessions.iter().map(session_row).collect();
    let participants: Vec<ParticipantRow> = sessions
        .iter()
        .flat_map(|s| s.participants.iter().map(move |p| participant_row(s, p)))
        .collect();
    (to_json(&rows), to_json(&participants))
}

/// The columns [`import_rows`] writes, in the order of the import statements.
pub const IMPORT_SESSION_COLUMNS: &str = "id, kind, title, metadata, host, parent, \
    scheduled_start, scheduled_end, status, delayed, used, created_at, started_at, ended_at, \
    last_activity_at, end_reason, ended_by, counters, summary, parent_ended_at, warnings, \
    next_due_at, next_due_rule";

/// The participant columns [`import_rows`] writes.
pub const IMPORT_PARTICIPANT_COLUMNS: &str =
    "session_id, user_id, role, state, joined_at, left_at, last_seen_at, offline_for";
