//! Stored columns back into model values. Both backends keep the same columns with the same
//! meanings (times as epoch milliseconds, JSON as text), so one mapping serves both.

mod records;
mod writing;

use std::collections::BTreeMap;

use lapse_core::session::{NextDue, Participant, ParticipantState, Role, Session, Status, Summary};
use lapse_core::{SessionId, StoreError, Timestamp, UserId};
use sqlx::Row;

pub use records::{
    COUNT_BY_KIND_AND_STATUS, DELIVERY_COLUMNS, delivery, due_rows, event, moved, notification,
    rules_in_force, status_count, stored_response,
};
pub(crate) use writing::counted_by;
pub use writing::{
    IMPORT_PARTICIPANT_COLUMNS, IMPORT_SESSION_COLUMNS, ParticipantArrays, ParticipantRow,
    SessionArrays, SessionRow, beat_rows, import_rows, latest_beats, participant_row, session_row,
    to_json, unread_taken,
};

/// Columns of `sessions` as PostgreSQL selects them: its booleans read as 0/1 like SQLite's.
pub const PG_SESSION_COLUMNS: &str = "id, kind, title, metadata, host, parent, scheduled_start, \
    scheduled_end, status, delayed::int::bigint as delayed, used::int::bigint as used, created_at, \
    started_at, ended_at, last_activity_at, end_reason, ended_by, counters, summary, \
    parent_ended_at, warnings, next_due_at, next_due_rule, version";

/// The columns of `sessions` in [`SessionColumns`]' field order, written once for
/// [`SESSION_COLUMNS`] and [`SESSIONS_AS_JSON`].
macro_rules! session_columns {
    () => {
        "id, kind, title, metadata, host, parent, scheduled_start, scheduled_end, status, \
         delayed, used, created_at, started_at, ended_at, last_activity_at, end_reason, \
         ended_by, counters, summary, parent_ended_at, warnings, next_due_at, next_due_rule, \
         version"
    };
}

/// Columns of `sessions`, in the order [`session`] reads them.
pub const SESSION_COLUMNS: &str = session_columns!();

/// `sessions` rows selected as one JSON array of arrays ([`SESSION_COLUMNS`] each), ordered
/// by id: see [`crate::statements::participants_of`] for why.
pub const SESSIONS_AS_JSON: &str = concat!(
    "json_group_array(json_array(",
    session_columns!(),
    ") order by id)"
);

fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("stored {what} is unreadable: {detail}"))
}

fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp::from_millis)
}

fn json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| corrupt(what, e))
}

/// A `sessions` row's columns, in [`SESSION_COLUMNS`] order: read by name from a row, or by
/// position from a JSON array, so the fields keep that order.
#[derive(serde::Deserialize)]
pub struct SessionColumns {
    id: String,
    kind: String,
    title: String,
    metadata: String,
    host: String,
    parent: Option<String>,
    scheduled_start: Option<i64>,
    scheduled_end: Option<i64>,
    status: String,
    delayed: i64,
    used: i64,
    created_at: i64,
    started_at: Option<i64>,
    ended_at: Option<i64>,
    last_activity_at: i64,
    end_reason: Option<String>,
    ended_by: Option<String>,
    counters: String,
    summary: Option<String>,
    parent_ended_at: Option<i64>,
    warnings: String,
    next_due_at: Option<i64>,
    next_due_rule: Option<String>,
    version: i64,
}

impl SessionColumns {
    /// The session, without participants.
    fn session(self) -> Result<Session, StoreError> {
        let id = SessionId::parse(&self.id).map_err(|e| corrupt("id", e))?;
        let status = Status::parse(&self.status).ok_or_else(|| corrupt("status", &self.status))?;
        // The column holds the wake-up time; `next_due` (a rule's deadline) is worked out
        // again from the session whenever it is shown.
        let wake_at = ts(self.next_due_at);
        let next_due = match (wake_at, self.next_due_rule) {
            (Some(at), Some(rule)) => Some(NextDue { rule, at }),
            _ => None,
        };
        let summary: Option<Summary> = match self.summary {
            Some(text) => Some(json("summary", &text)?),
            None => None,
        };
        let counters: BTreeMap<String, i64> = json("counters", &self.counters)?;
        Ok(Session {
            id,
            kind: self.kind,
            title: self.title,
            metadata: json("metadata", &self.metadata)?,
            host: UserId::parse(&self.host).map_err(|e| corrupt("host", e))?,
            parent: self
                .parent
                .map(|p| SessionId::parse(&p))
                .transpose()
                .map_err(|e| corrupt("parent", e))?,
            scheduled_start: ts(self.scheduled_start),
            scheduled_end: ts(self.scheduled_end),
            status,
            delayed: self.delayed != 0,
            used: self.used != 0,
            created_at: Timestamp::from_millis(self.created_at),
            started_at: ts(self.started_at),
            ended_at: ts(self.ended_at),
            last_activity_at: Timestamp::from_millis(self.last_activity_at),
            end_reason: self.end_reason,
            ended_by: self.ended_by,
            counters,
            participants: Default::default(),
            next_due,
            wake_at,
            warnings: json("warnings", &self.warnings)?,
            summary,
            parent_ended_at: ts(self.parent_ended_at),
            version: self.version,
        })
    }
}

/// A `sessions` row, without participants.
pub fn session<R: Row>(row: &R) -> Result<Session, StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database>,
{
    let get_s = |c: &str| row.try_get::<String, _>(c).map_err(|e| corrupt(c, e));
    let get_os = |c: &str| {
        row.try_get::<Option<String>, _>(c)
            .map_err(|e| corrupt(c, e))
    };
    let get_i = |c: &str| row.try_get::<i64, _>(c).map_err(|e| corrupt(c, e));
    let get_oi = |c: &str| row.try_get::<Option<i64>, _>(c).map_err(|e| corrupt(c, e));
    SessionColumns {
        id: get_s("id")?,
        kind: get_s("kind")?,
        title: get_s("title")?,
        metadata: get_s("metadata")?,
        host: get_s("host")?,
        parent: get_os("parent")?,
        scheduled_start: get_oi("scheduled_start")?,
        scheduled_end: get_oi("scheduled_end")?,
        status: get_s("status")?,
        delayed: get_i("delayed")?,
        used: get_i("used")?,
        created_at: get_i("created_at")?,
        started_at: get_oi("started_at")?,
        ended_at: get_oi("ended_at")?,
        last_activity_at: get_i("last_activity_at")?,
        end_reason: get_os("end_reason")?,
        ended_by: get_os("ended_by")?,
        counters: get_s("counters")?,
        summary: get_os("summary")?,
        parent_ended_at: get_oi("parent_ended_at")?,
        warnings: get_s("warnings")?,
        next_due_at: get_oi("next_due_at")?,
        next_due_rule: get_os("next_due_rule")?,
        version: get_i("version")?,
    }
    .session()
}

/// Sessions read as one JSON array of rows ([`SESSIONS_AS_JSON`]), without participants.
pub fn sessions_json(rows: &str) -> Result<Vec<Session>, StoreError> {
    let rows: Vec<SessionColumns> = json("sessions", rows)?;
    rows.into_iter().map(SessionColumns::session).collect()
}

/// A `participants` row's columns, as selected (`session_id` first); from a JSON array too.
#[derive(serde::Deserialize)]
pub struct ParticipantColumns {
    session_id: String,
    user_id: String,
    role: String,
    state: String,
    joined_at: i64,
    left_at: Option<i64>,
    last_seen_at: i64,
    offline_for: Option<i64>,
}

impl ParticipantColumns {
    /// The participant, with the session it belongs to.
    fn participant(self) -> Result<(String, Participant), StoreError> {
        let role = match self.role.as_str() {
            "host" => Role::Host,
            _ => Role::Member,
        };
        let state = match self.state.as_str() {
            "joined" => ParticipantState::Joined,
            _ => ParticipantState::Left,
        };
        let p = Participant {
            user: UserId::parse(&self.user_id).map_err(|e| corrupt("user_id", e))?,
            role,
            state,
            online: false,
            joined_at: Timestamp::from_millis(self.joined_at),
            left_at: ts(self.left_at),
            last_seen_at: Timestamp::from_millis(self.last_seen_at),
            offline_for: ts(self.offline_for),
        };
        Ok((self.session_id, p))
    }
}

/// A `participants` row, with the session it belongs to.
pub fn participant<R: Row>(row: &R) -> Result<(String, Participant), StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database>,
{
    let get_s = |c: &str| row.try_get::<String, _>(c).map_err(|e| corrupt(c, e));
    let get_i = |c: &str| row.try_get::<i64, _>(c).map_err(|e| corrupt(c, e));
    let get_oi = |c: &str| row.try_get::<Option<i64>, _>(c).map_err(|e| corrupt(c, e));
    ParticipantColumns {
        session_id: get_s("session_id")?,
        user_id: get_s("user_id")?,
        role: get_s("role")?,
        state: get_s("state")?,
        joined_at: get_i("joined_at")?,
        left_at: get_oi("left_at")?,
        last_seen_at: get_i("last_seen_at")?,
        offline_for: get_oi("offline_for")?,
    }
    .participant()
}

/// Puts participant rows (`session_id` first) on their sessions, in row order.
pub fn attach_participants<R: Row>(sessions: &mut [Session], rows: &[R]) -> Result<(), StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database>,
{
    attach(sessions, rows.iter().map(participant))
}

/// Puts participants read as one JSON array of rows (see
/// [`crate::statements::participants_of`]) on their sessions, in row order.
pub fn attach_participants_json(sessions: &mut [Session], rows: &str) -> Result<(), StoreError> {
    let rows: Vec<ParticipantColumns> = json("participants", rows)?;
    attach(
        sessions,
        rows.into_iter().map(ParticipantColumns::participant),
    )
}

fn attach(
    sessions: &mut [Session],
    participants: impl Iterator<Item = Result<(String, Participant), StoreError>>,
) -> Result<(), StoreError> {
    let index: std::collections::HashMap<String, usize> = sessions
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.to_string(), i))
        .collect();
    for row in participants {
        let (session_id, p) = row?;
        if let Some(&i) = index.get(&session_id) {
            sessions[i].participants.push(p);
        }
    }
    Ok(())
}
