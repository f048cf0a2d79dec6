//! The read statements whose shape depends on which filters a caller gave: session lists, due
//! rows and event pages. Each is built with only the predicates that are present, so every
//! combination is its own statement that the planner can fit to an index. A catch-all
//! predicate ("this kind, if one was given") would be planned once for every combination,
//! and no index serves all of them: that turned every list into a walk of the whole table.
//!
//! Both backends share the builders; only placeholders and list parameters differ. The
//! reads by key (sessions by id, their participants, open children) are in `by_key.rs`;
//! `catalogue.rs` lists every shape for the plan tests.

use lapse_core::store::{DeliveryStatus, DueRow, EventQuery, SessionQuery};

mod by_key;
mod catalogue;

pub(crate) use by_key::{
    open_children, participants_of, pg_session_with_participants, sessions_by_id,
    sessions_with_participants,
};
pub(crate) use catalogue::hot_reads;

use crate::postgres::LEASE_HOLDERS;
use crate::rows::{DELIVERY_COLUMNS, to_json};

/// Which SQL dialect a statement is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// One bound value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Arg {
    Text(String),
    Int(i64),
    /// A list of texts: a JSON array on SQLite, a `text[]` on PostgreSQL.
    Texts(Vec<String>),
}

impl Arg {
    /// The value as a PostgreSQL literal (for `explain execute`, which takes no parameters).
    pub(crate) fn literal(&self) -> String {
        let quote = |t: &str| format!("'{}'", t.replace('\'', "''"));
        match self {
            Arg::Text(t) => quote(t),
            Arg::Int(i) => i.to_string(),
            // An untyped array literal, so it fits any array parameter.
            Arg::Texts(list) => {
                let items: Vec<String> = list
                    .iter()
                    .map(|t| format!("\"{}\"", t.replace('\\', "\\\\").replace('"', "\\\"")))
                    .collect();
                quote(&format!("{{{}}}", items.join(",")))
            }
        }
    }
}

/// A statement and the values for its placeholders, in order.
#[derive(Clone, Debug)]
pub(crate) struct Statement {
    pub sql: String,
    pub args: Vec<Arg>,
    dialect: Dialect,
}

impl Statement {
    /// A statement written out in full, for callers that add its values themselves.
    pub(crate) fn fixed(dialect: Dialect, sql: &str) -> Self {
        Statement::new(dialect, sql)
    }

    fn new(dialect: Dialect, sql: impl Into<String>) -> Self {
        Statement {
            sql: sql.into(),
            args: Vec::new(),
            dialect,
        }
    }

    /// Adds a value and returns its placeholder.
    fn arg(&mut self, value: Arg) -> String {
        self.args.push(value);
        let n = self.args.len();
        match self.dialect {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }

    /// `column in (the list)` for a list of texts.
    fn in_texts(&mut self, column: &str, values: Vec<String>) -> String {
        match self.dialect {
            Dialect::Sqlite => {
                let p = self.arg(Arg::Text(to_json(&values)));
                sqlite_in(column, &p)
            }
            Dialect::Postgres => {
                let p = self.arg(Arg::Texts(values));
                format!("{column} = any({p}::text[])")
            }
        }
    }
}

/// SQLite: `column in` the texts of the JSON array bound as `p`.
fn sqlite_in(column: &str, p: &str) -> String {
    format!("{column} in (select value from json_each({p}))")
}

/// A column the planner must only filter on, not look up by: SQLite takes `+column` as
/// "not through an index" (its planner, without statistics, can favour a broad index over a
/// selective one); PostgreSQL's costs already choose right.
fn filter_only(dialect: Dialect, column: &str) -> String {
    match dialect {
        Dialect::Sqlite => format!("+{column}"),
        Dialect::Postgres => column.to_string(),
    }
}

/// The first id of a listing: every valid session id sorts after the empty string, so the
/// first page and the next ones are one statement (`id > ?`), always an index range.
const BEFORE_ALL_IDS: &str = "";

/// A page of sessions matching `q`, ordered by id. `columns` are the session columns as the
/// backend selects them.
pub(crate) fn list_sessions(dialect: Dialect, columns: &str, q: &SessionQuery) -> Statement {
    let mut st = Statement::new(dialect, "");
    let mut filters = Vec::new();
    if let Some(user) = &q.participant {
        // Drives from the participant's own rows (participants_user), not from all sessions.
        let p = st.arg(Arg::Text(user.to_string()));
        filters.push(format!(
            "id in (select session_id from participants where user_id = {p})"
        ));
    }
    if let Some(host) = &q.host {
        let p = st.arg(Arg::Text(host.to_string()));
        filters.push(format!("host = {p}"));
    }
    if let Some(kind) = &q.kind {
        let p = st.arg(Arg::Text(kind.clone()));
        filters.push(format!("kind = {p}"));
    }
    match (q.status, q.open_only) {
        (Some(status), _) => {
            let p = st.arg(Arg::Text(status.as_str().to_string()));
            filters.push(format!("status = {p}"));
        }
        (None, true) => filters.push("status in ('pending', 'active')".to_string()),
        (None, false) => {}
    }
    if q.host_limited {
        filters.push(match dialect {
            Dialect::Sqlite => "host_limited = 1".to_string(),
            Dialect::Postgres => "host_limited".to_string(),
        });
    }
    let after = q
        .after
        .as_ref()
        .map_or(BEFORE_ALL_IDS.to_string(), |a| a.to_string());
    let p = st.arg(Arg::Text(after));
    filters.push(format!("id > {p}"));
    let limit = st.arg(Arg::Int(i64::from(q.limit)));
    st.sql = format!(
        "select {columns} from sessions where {} order by id limit {limit}",
        filters.join(" and ")
    );
    st
}

/// The cursor before every due row: the first page and the next ones are one statement.
fn due_cursor(cursor: Option<&DueRow>) -> (i64, String) {
    cursor.map_or((i64::MIN, BEFORE_ALL_IDS.to_string()), |c| {
        (c.at.millis(), c.id.to_string())
    })
}

/// A row no live instance holds a lease on at wall-clock `wall` (a placeholder): never
/// leased, lease run out, or its holder's connection gone. The holders still connected are
/// read once per statement, from the lock table (PostgreSQL; see [`LEASE_HOLDERS`]).
pub(crate) fn unleased(wall: &str) -> String {
    format!(
        "(claimed_until is null or claimed_until < {wall} or claimed_by <> all(array( \
         select l.objid::int8 from pg_locks l where l.locktype = 'advisory' \
         and l.classid = {LEASE_HOLDERS} and l.objsubid = 2 and l.granted \
         and l.database = (select oid from pg_database where datname = current_database()))))"
    )
}

/// Due rows (`next_due_at <= now`) after `cursor` in (deadline, id) order, through the
/// partial deadline index. With `unleased_at`, only rows no sweeper holds a lease on at that
/// wall-clock instant (PostgreSQL's claim wraps this statement). On SQLite, one JSON array of
/// `[id, next_due_at]` (see [`participants_of`]).
pub(crate) fn due_sessions(
    dialect: Dialect,
    now: i64,
    kind: Option<&str>,
    cursor: Option<&DueRow>,
    limit: u32,
    unleased_at: Option<i64>,
) -> Statement {
    let mut st = Statement::new(dialect, "");
    let now = st.arg(Arg::Int(now));
    let (at, id) = due_cursor(cursor);
    let at = st.arg(Arg::Int(at));
    let id = st.arg(Arg::Text(id));
    // Filtered, never looked up: the kind index would read every session of the kind
    // instead of the due ones.
    let kind = kind.map(|k| {
        let p = st.arg(Arg::Text(k.to_string()));
        format!(" and {} = {p}", filter_only(dialect, "kind"))
    });
    let lease = unleased_at.map(|wall| {
        let p = st.arg(Arg::Int(wall));
        format!(" and {}", unleased(&p))
    });
    let limit = st.arg(Arg::Int(i64::from(limit)));
    st.sql = format!(
        "select id, next_due_at from sessions \
         where next_due_at is not null and next_due_at <= {now} \
         and (next_due_at, id) > ({at}, {id}){kind}{lease} \
         order by next_due_at, id limit {limit}",
        kind = kind.unwrap_or_default(),
        lease = lease.unwrap_or_default(),
    );
    if dialect == Dialect::Sqlite {
        st.sql = format!(
            "select json_group_array(json_array(id, next_due_at) order by next_due_at, id) \
             from ({})",
            st.sql
        );
    }
    st
}

/// How many rows are due (`next_due_at <= now`), through the partial deadline index: what a
/// long sweep has ahead of it, for its progress bar.
pub(crate) fn count_due(dialect: Dialect, now: i64, kind: Option<&str>) -> Statement {
    let mut st = Statement::new(dialect, "");
    let now = st.arg(Arg::Int(now));
    let kind = kind.map(|k| {
        let p = st.arg(Arg::Text(k.to_string()));
        format!(" and {} = {p}", filter_only(dialect, "kind"))
    });
    // In deadline order under a limit, as the sweep reads them: a generic plan, knowing no
    // bound, would otherwise guess a third of the table due and scan it whole.
    let cap = st.arg(Arg::Int(i64::from(u32::MAX)));
    st.sql = format!(
        "select count(*) as n from (select 1 from sessions \
         where next_due_at is not null and next_due_at <= {now}{kind} \
         order by next_due_at limit {cap}) due",
        kind = kind.unwrap_or_default(),
    );
    st
}

/// A page of events after `q.after`, in `seq` order; by session through `events_session`.
pub(crate) fn events_page(dialect: Dialect, q: &EventQuery) -> Statement {
    let mut st = Statement::new(dialect, "");
    let after = st.arg(Arg::Int(q.after));
    let mut filters = vec![format!("seq > {after}")];
    if let Some(session) = &q.session {
        let p = st.arg(Arg::Text(session.to_string()));
        filters.push(format!("session_id = {p}"));
    }
    if let Some(kind) = &q.kind {
        let p = st.arg(Arg::Text(kind.clone()));
        filters.push(format!("kind = {p}"));
    }
    if !q.types.is_empty() {
        let types = q.types.iter().map(|t| t.as_str().to_string()).collect();
        filters.push(st.in_texts("type", types));
    }
    let limit = st.arg(Arg::Int(i64::from(q.limit)));
    st.sql = format!(
        "select seq, id, type, at, applied_at, session_id, kind, actor, rule, data \
         from events where {} order by seq limit {limit}",
        filters.join(" and ")
    );
    st
}

/// The newest webhook deliveries with their events, at most `limit`: of one status, a page of
/// `webhook_deliveries_status` read newest first; of every status, the newest page of each
/// status merged. One read of the whole table ordered by time would take every delivery ever
/// made (one per event and endpoint) to keep the last few.
pub(crate) fn deliveries_page(
    dialect: Dialect,
    status: Option<DeliveryStatus>,
    limit: u32,
) -> Statement {
    let mut st = Statement::new(dialect, "");
    let page = |status: &str, limit: &str| {
        format!(
            "select {DELIVERY_COLUMNS} from webhook_deliveries d \
             join events e on e.seq = d.event_seq where d.status = {status} \
             order by d.created_at desc, d.id desc limit {limit}"
        )
    };
    st.sql = match status {
        Some(status) => {
            let status = st.arg(Arg::Text(status.as_str().to_string()));
            let limit = st.arg(Arg::Int(i64::from(limit)));
            page(&status, &limit)
        }
        None => {
            let limit = st.arg(Arg::Int(i64::from(limit)));
            // The statuses are the enum's own names, written in.
            let pages: Vec<String> = DeliveryStatus::ALL
                .iter()
                .map(|s| {
                    let name = s.as_str();
                    format!(
                        "select * from ({}) as {name}",
                        page(&format!("'{name}'"), &limit)
                    )
                })
                .collect();
            format!(
                "select * from ({}) as newest order by d_created_at desc, d_id desc limit {limit}",
                pages.join(" union all ")
            )
        }
    };
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapse_core::UserId;

    #[test]
    fn a_list_names_only_the_filters_it_was_given() {
        let q = SessionQuery {
            host: Some(UserId::parse("ana").unwrap()),
            open_only: true,
            limit: 10,
            ..SessionQuery::default()
        };
        let st = list_sessions(Dialect::Sqlite, "id", &q);
        assert_eq!(
            st.sql,
            "select id from sessions where host = ?1 and status in ('pending', 'active') \
             and id > ?2 order by id limit ?3"
        );
        assert!(!st.sql.contains("is null"));
        assert_eq!(st.args.len(), 3);
    }

    #[test]
    fn postgres_placeholders_and_lists_follow_its_dialect() {
        let q = EventQuery {
            after: 5,
            limit: 10,
            types: vec![lapse_core::EventType::SessionCreated],
            ..EventQuery::default()
        };
        let st = events_page(Dialect::Postgres, &q);
        assert!(st.sql.contains("seq > $1 and type = any($2::text[])"));
        assert!(st.sql.ends_with("limit $3"));
    }
}
