//! Stored columns back into model values. Both backends keep the same columns with the same
//! meanings (times as epoch milliseconds, JSON as text), so one mapping serves both.

use std::collections::BTreeMap;

use lapse_core::event::{Event, EventData, EventType, Notification};
use lapse_core::session::{NextDue, Participant, ParticipantState, Role, Session, Status, Summary};
use lapse_core::store::{Commit, Delivery, DeliveryStatus, RulesInForce};
use lapse_core::{SessionId, StoreError, Timestamp, UserId};
use sqlx::Row;

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

/// An `events` row.
pub fn event<R: Row>(row: &R) -> Result<Event, StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database>,
{
    let get_s = |c: &str| row.try_get::<String, _>(c).map_err(|e| corrupt(c, e));
    let get_i = |c: &str| row.try_get::<i64, _>(c).map_err(|e| corrupt(c, e));
    let type_text = get_s("type")?;
    Ok(Event {
        seq: get_i("seq")?,
        id: get_s("id")?,
        event_type: EventType::parse(&type_text).ok_or_else(|| corrupt("type", &type_text))?,
        at: Timestamp::from_millis(get_i("at")?),
        applied_at: Timestamp::from_millis(get_i("applied_at")?),
        session_id: SessionId::parse(&get_s("session_id")?)
            .map_err(|e| corrupt("session_id", e))?,
        kind: get_s("kind")?,
        actor: get_s("actor")?,
        rule: row
            .try_get::<Option<String>, _>("rule")
            .map_err(|e| corrupt("rule", e))?,
        data: EventData::from_text(get_s("data")?).map_err(|e| corrupt("data", e))?,
    })
}

/// A `notifications` row.
pub fn notification<R: Row>(row: &R) -> Result<Notification, StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database>,
{
    let get_s = |c: &str| row.try_get::<String, _>(c).map_err(|e| corrupt(c, e));
    Ok(Notification {
        id: get_s("id")?,
        user: UserId::parse(&get_s("user_id")?).map_err(|e| corrupt("user_id", e))?,
        notification_type: get_s("type")?,
        title: get_s("title")?,
        message: get_s("message")?,
        session: SessionId::parse(&get_s("session_id")?).map_err(|e| corrupt("session_id", e))?,
        link: row
            .try_get::<Option<String>, _>("link")
            .map_err(|e| corrupt("link", e))?,
        created_at: Timestamp::from_millis(
            row.try_get::<i64, _>("created_at")
                .map_err(|e| corrupt("created_at", e))?,
        ),
        read_at: ts(row
            .try_get::<Option<i64>, _>("read_at")
            .map_err(|e| corrupt("read_at", e))?),
    })
}

/// The `rules_in_force` row.
pub fn rules_in_force<R: Row>(row: &R) -> Result<RulesInForce, StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let get_i = |c: &str| row.try_get::<i64, _>(c).map_err(|e| corrupt(c, e));
    let version = get_i("version")?;
    Ok(RulesInForce {
        version,
        kinds: row
            .try_get::<String, _>("kinds")
            .map_err(|e| corrupt("kinds", e))?,
        updated_at: Timestamp::from_millis(get_i("updated_at")?),
        rearmed: get_i("rearmed_version")? == version,
    })
}

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

/// Columns of a delivery joined with its event, as [`delivery`] reads them.
pub const DELIVERY_COLUMNS: &str = "d.id as d_id, d.endpoint, d.event_seq, e.id as event_id, \
    e.type as event_type, d.status, d.attempts, d.next_attempt_at, d.last_attempt_at, \
    d.last_status, d.last_error, d.created_at as d_created_at";

/// A `webhook_deliveries` row joined with its event.
pub fn delivery<R: Row>(row: &R) -> Result<Delivery, StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database>,
{
    let get_s = |c: &str| row.try_get::<String, _>(c).map_err(|e| corrupt(c, e));
    let get_i = |c: &str| row.try_get::<i64, _>(c).map_err(|e| corrupt(c, e));
    let get_oi = |c: &str| row.try_get::<Option<i64>, _>(c).map_err(|e| corrupt(c, e));
    let status_text = get_s("status")?;
    Ok(Delivery {
        id: get_s("d_id")?,
        endpoint: get_s("endpoint")?,
        event_seq: get_i("event_seq")?,
        event_id: get_s("event_id")?,
        event_type: get_s("event_type")?,
        status: DeliveryStatus::parse(&status_text)
            .ok_or_else(|| corrupt("status", &status_text))?,
        attempts: get_i("attempts")?,
        next_attempt_at: ts(get_oi("next_attempt_at")?),
        last_attempt_at: ts(get_oi("last_attempt_at")?),
        last_status: get_oi("last_status")?,
        last_error: row
            .try_get::<Option<String>, _>("last_error")
            .map_err(|e| corrupt("last_error", e))?,
        created_at: Timestamp::from_millis(get_i("d_created_at")?),
    })
}

/// A `sessions` row as the bulk statements read it (bound values on SQLite, `sqlite/values.rs`;
/// `jsonb_to_recordset` on PostgreSQL): keyed by column, times as epoch milliseconds, written
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

/// Due rows read as one JSON array of `[id, next_due_at]`.
pub fn due_rows(rows: &str) -> Result<Vec<lapse_core::store::DueRow>, StoreError> {
    let rows: Vec<(String, i64)> = json("due rows", rows)?;
    rows.into_iter()
        .map(|(id, at)| {
            Ok(lapse_core::store::DueRow {
                id: SessionId::parse(&id).map_err(|e| corrupt("session id", e))?,
                at: Timestamp::from_millis(at),
            })
        })
        .collect()
}

/// The `(id, version)` rows a heartbeat flush returns.
pub fn moved(rows: Vec<(String, i64)>) -> Result<Vec<lapse_core::store::Moved>, StoreError> {
    rows.into_iter()
        .map(|(id, version)| {
            let id = SessionId::parse(&id).map_err(|e| corrupt("session id", e))?;
            Ok(lapse_core::store::Moved { id, version })
        })
        .collect()
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
