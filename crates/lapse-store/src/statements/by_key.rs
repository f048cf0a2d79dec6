//! Reads of sessions by key: sessions by id, their participants (alone or with their
//! sessions, in one round trip), and the open children of ending parents. Each is one
//! statement for a list of keys, whose shape follows only the dialect.

use super::{Arg, Dialect, Statement, filter_only, sqlite_in};
use crate::rows::to_json;

/// Open sessions whose parent is one of `parents` (the cascade of an ending parent), through
/// `sessions_parent` (a partial index: `parent is not null` lets SQLite see it applies).
pub(crate) fn open_children(dialect: Dialect, columns: &str, parents: Vec<String>) -> Statement {
    let mut st = Statement::new(dialect, "");
    let parent_in = st.in_texts("parent", parents);
    // By parent, never by status: the status index would read every open session.
    let status = filter_only(dialect, "status");
    st.sql = format!(
        "select {columns} from sessions where parent is not null and {parent_in} \
         and {status} in ('pending', 'active') order by id"
    );
    st
}

/// Sessions by id, through the primary key.
pub(crate) fn sessions_by_id(dialect: Dialect, columns: &str, ids: Vec<String>) -> Statement {
    let mut st = Statement::new(dialect, "");
    let id_in = st.in_texts("id", ids);
    st.sql = format!("select {columns} from sessions where {id_in}");
    st
}

/// Participants of sessions, through the primary key's leading column. On SQLite, one JSON
/// array of rows as arrays: each row that crosses from SQLite's thread to ours costs a
/// message and a wake-up of its own (≈ 2.5 µs a row measured, three times what reading it
/// inside one value costs), and a sweep reads a few of these for every session it moves.
pub(crate) fn participants_of(dialect: Dialect, ids: Vec<String>) -> Statement {
    let mut st = Statement::new(dialect, "");
    let id_in = st.in_texts("session_id", ids);
    st.sql = match dialect {
        Dialect::Sqlite => participants_as_json(&id_in),
        Dialect::Postgres => format!(
            "select {PARTICIPANT_COLUMNS} from participants where {id_in} \
             order by joined_at, user_id"
        ),
    };
    st
}

/// SQLite: the participants `id_in` picks, as one JSON array of rows as arrays.
fn participants_as_json(id_in: &str) -> String {
    format!(
        "select json_group_array(json_array({PARTICIPANT_COLUMNS}) order by joined_at, user_id) \
         from participants where {id_in}"
    )
}

/// Columns of `participants`, as [`participants_of`] selects them.
const PARTICIPANT_COLUMNS: &str =
    "session_id, user_id, role, state, joined_at, left_at, last_seen_at, offline_for";

/// Sessions by id and their participants in one SQLite statement of two values: the
/// sessions as [`sessions_by_id`] selects them with `columns` (one JSON value), and their
/// participants as [`participants_of`] does. One round trip to a connection's thread instead
/// of two, and both read from one snapshot. Both halves read the ids from one value.
pub(crate) fn sessions_with_participants(columns: &str, ids: Vec<String>) -> Statement {
    let mut st = Statement::new(Dialect::Sqlite, "");
    let p = st.arg(Arg::Text(to_json(&ids)));
    let session_in = sqlite_in("id", &p);
    let participant_in = sqlite_in("session_id", &p);
    st.sql = format!(
        "select (select {columns} from sessions where {session_in}), ({})",
        participants_as_json(&participant_in)
    );
    st
}

/// PostgreSQL: a session by id with `columns`, and its participants in a last column,
/// `participants`: one JSON array of rows as arrays, as [`participants_of`] reads them on
/// SQLite. One round trip instead of two, and one snapshot.
pub(crate) fn pg_session_with_participants(columns: &str, id: String) -> Statement {
    let mut st = Statement::new(Dialect::Postgres, "");
    let p = st.arg(Arg::Text(id));
    st.sql = format!(
        "select {columns}, (select coalesce(json_agg(json_build_array({PARTICIPANT_COLUMNS}) \
         order by joined_at, user_id), '[]')::text \
         from participants p where p.session_id = s.id) as participants \
         from sessions s where s.id = {p}"
    );
    st
}
