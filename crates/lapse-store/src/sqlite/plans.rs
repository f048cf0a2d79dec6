//! The plan SQLite picks for each hot statement, for the plan tests: every access path of
//! the store is listed here with the values it is sent with.

use lapse_core::StoreError;
use sqlx::Row;

use super::reads::{self, query};
use super::{SqliteStore, bulk, heartbeats, outbox, rules, writes};
use crate::backend;
use crate::rows::{self, SESSION_COLUMNS};
use crate::statements::{self, Arg, Dialect, Statement};

impl SqliteStore {
    /// The plan SQLite picks for every hot statement, as `(what, plan)`: the plan tests fail
    /// on any that scans `sessions`, `participants` or `events` whole.
    pub async fn hot_plans(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut hot = statements::hot_reads(Dialect::Sqlite, SESSION_COLUMNS);
        let fixed = |name, sql: &str, args: Vec<Arg>| {
            let mut st = Statement::fixed(Dialect::Sqlite, sql);
            st.args = args;
            (name, st)
        };
        let text = |t: &str| Arg::Text(t.to_string());
        // The sweep's reads of sessions, as this store sends them (one JSON value).
        let json = rows::SESSIONS_AS_JSON;
        hot.extend([
            (
                "sessions by id with their participants, as two values",
                statements::sessions_with_participants(json, vec!["s1".into()]),
            ),
            (
                "open children, as one value",
                statements::open_children(Dialect::Sqlite, json, vec!["s1".into()]),
            ),
        ]);
        hot.extend([
            fixed(
                "heartbeat flush, participants",
                heartbeats::FLUSH_PARTICIPANTS,
                vec![text("[]")],
            ),
            fixed(
                "heartbeat flush, sessions",
                heartbeats::FLUSH_SESSIONS,
                vec![text("[]")],
            ),
            fixed(
                "heartbeat flush, sessions moved",
                heartbeats::FLUSH_MOVED,
                vec![text("[]")],
            ),
            fixed(
                "heartbeats of rooms not read first, which stand",
                heartbeats::UNREAD_TAKEN,
                vec![text("[]")],
            ),
            fixed("re-arm", rules::REARM, vec![text("[]")]),
            fixed("re-arm earlier", rules::REARM_EARLIER, vec![text("[]")]),
            fixed("rules in force", rules::RULES_IN_FORCE, vec![]),
            fixed("rules version", rules::RULES_VERSION, vec![]),
            fixed("rules rearmed", rules::MARK_REARMED, vec![Arg::Int(1)]),
            fixed(
                "session update, status and wake-up kept",
                writes::UPDATE_KEEPING_WAKE,
                vec![text("s1")],
            ),
            fixed(
                "session update, status kept",
                writes::UPDATE_KEEPING_STATUS,
                vec![text("s1")],
            ),
            fixed("session update", writes::UPDATE_WHOLE, vec![text("s1")]),
            fixed("next deadline", reads::NEXT_DEADLINE, vec![]),
            fixed("session version", reads::SESSION_VERSION, vec![text("s1")]),
            fixed("was deleted", reads::WAS_DELETED, vec![text("s1")]),
            // Retention: a page of events at a time, in key order from where the last ended.
            fixed(
                "retention, events looked at",
                outbox::EVENTS_LOOKED_AT,
                vec![Arg::Int(0), Arg::Int(999)],
            ),
            fixed(
                "retention, events",
                outbox::PRUNE_EVENTS,
                vec![Arg::Int(0), Arg::Int(1000), Arg::Int(0)],
            ),
            fixed(
                "retention, deliveries",
                outbox::PRUNE_DELIVERIES,
                vec![Arg::Int(0), Arg::Int(1000), text("dead")],
            ),
            fixed(
                "retention, notifications",
                outbox::PRUNE_NOTIFICATIONS,
                vec![Arg::Int(0), Arg::Int(1000)],
            ),
            fixed(
                "retention, idempotency keys",
                outbox::PRUNE_KEYS,
                vec![Arg::Int(0), Arg::Int(1000)],
            ),
            fixed(
                "notifications of a user",
                reads::NOTIFICATIONS,
                vec![text("u1"), Arg::Int(20)],
            ),
            fixed(
                "unread notifications of a user",
                reads::UNREAD_NOTIFICATIONS,
                vec![text("u1"), Arg::Int(20)],
            ),
            fixed(
                "host limit",
                writes::HOST_OPEN_COUNT,
                vec![text("u1"), text("study")],
            ),
            fixed(
                "host limits put in force",
                rules::MARK_HOST_LIMITED,
                vec![text(r#"["study"]"#)],
            ),
            fixed(
                "due deliveries",
                &outbox::due_deliveries_sql(),
                vec![Arg::Int(0), Arg::Int(32), text("https://example.com/hook")],
            ),
            fixed(
                "endpoints of pending deliveries",
                outbox::PENDING_ENDPOINTS,
                vec![],
            ),
            fixed(
                "next delivery",
                outbox::NEXT_DELIVERY,
                vec![text("https://example.com/hook"), Arg::Int(0)],
            ),
        ]);
        for (name, sql) in bulk::batch_statements()? {
            hot.push((name, Statement::fixed(Dialect::Sqlite, &sql)));
        }
        hot.push((
            "batched webhook attempts",
            Statement::fixed(Dialect::Sqlite, &outbox::record_attempts_statement()?),
        ));
        let mut plans = Vec::new();
        for (name, mut st) in hot {
            st.sql = format!("explain query plan {}", st.sql);
            let rows = query(&st)
                .fetch_all(&mut *self.reader.get().await?)
                .await
                .map_err(backend)?;
            let lines: Vec<String> = rows
                .iter()
                .map(|r| r.try_get::<String, _>("detail").map_err(backend))
                .collect::<Result<_, _>>()?;
            plans.push((name.to_string(), lines.join("\n")));
        }
        Ok(plans)
    }
}
