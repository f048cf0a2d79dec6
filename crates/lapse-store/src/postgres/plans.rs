//! The generic plan PostgreSQL picks for each hot statement, for the plan tests: every access
//! path of the store is listed here with the values it is sent with.

use lapse_core::StoreError;
use sqlx::AssertSqlSafe;

use super::{PostgresStore, bulk, heartbeats, leases, outbox, reads, rules, writes};
use crate::backend;
use crate::rows::PG_SESSION_COLUMNS;
use crate::statements::{self, Arg, Dialect, Statement};

impl PostgresStore {
    /// The generic plan PostgreSQL picks for every hot statement (`plan_cache_mode =
    /// force_generic_plan`, so no plan is fitted to the values), as `(what, plan)`, after
    /// `analyze`: the plan tests fail on any that scans `sessions`, `participants` or
    /// `events` whole.
    pub async fn hot_plans(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut hot = statements::hot_reads(Dialect::Postgres, PG_SESSION_COLUMNS);
        let fixed = |name, sql: &str, args: Vec<Arg>| {
            let mut st = Statement::fixed(Dialect::Postgres, sql);
            st.args = args;
            (name, st)
        };
        let text = |t: &str| Arg::Text(t.to_string());
        let empty = || Arg::Texts(Vec::new());
        hot.push((
            "a session by id with its participants",
            statements::pg_session_with_participants(PG_SESSION_COLUMNS, "s1".into()),
        ));
        hot.extend([
            fixed(
                "heartbeat flush, sessions",
                heartbeats::FLUSH_SESSIONS,
                vec![empty(), empty(), empty()],
            ),
            fixed(
                "heartbeat flush, participants",
                heartbeats::FLUSH_PARTICIPANTS,
                vec![empty(), empty(), empty()],
            ),
            fixed(
                "heartbeats of rooms not read first, which stand",
                heartbeats::UNREAD_TAKEN,
                vec![empty(), empty(), empty()],
            ),
            fixed(
                "re-arm",
                rules::REARM,
                vec![empty(), empty(), empty(), empty()],
            ),
            fixed(
                "re-arm earlier",
                rules::REARM_EARLIER,
                vec![empty(), empty(), empty(), empty()],
            ),
            fixed("rules in force", rules::RULES_IN_FORCE, vec![]),
            fixed("rules version", rules::RULES_VERSION, vec![]),
            fixed("rules rearmed", rules::MARK_REARMED, vec![Arg::Int(1)]),
            fixed(
                "batched session update",
                bulk::UPDATE_SESSIONS,
                (0..20).map(|_| empty()).collect(),
            ),
            fixed("lease release", leases::RELEASE, vec![empty(), Arg::Int(1)]),
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
            // Not here: `rules::MARK_HOST_LIMITED`, which runs once per rules put in force and reads
            // every open session of the kinds named. PostgreSQL plans it with their numbers
            // (its first plans are custom) and scans the table where they are most sessions,
            // as in the plan tests' database.
            fixed(
                "due deliveries",
                &outbox::claim_deliveries_sql(32),
                vec![
                    Arg::Int(0),
                    Arg::Int(0),
                    Arg::Int(0),
                    Arg::Int(1),
                    text("https://example.com/hook"),
                ],
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
            fixed(
                "batched webhook attempts",
                outbox::RECORD_ATTEMPTS,
                vec![empty(), empty(), empty(), empty(), empty(), empty()],
            ),
        ]);
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        for sql in ["analyze", "set plan_cache_mode = force_generic_plan"] {
            sqlx::query(sql)
                .execute(&mut *conn)
                .await
                .map_err(backend)?;
        }
        let mut plans = Vec::new();
        for (name, st) in hot {
            // Values as literals: EXPLAIN EXECUTE takes no parameters of its own.
            let values: Vec<String> = st.args.iter().map(Arg::literal).collect();
            let execute = if values.is_empty() {
                "explain execute lapse_plan".to_string()
            } else {
                format!("explain execute lapse_plan({})", values.join(", "))
            };
            let prepare = format!("prepare lapse_plan as {}", st.sql);
            sqlx::raw_sql(AssertSqlSafe(prepare))
                .execute(&mut *conn)
                .await
                .map_err(backend)?;
            let lines: Vec<String> = sqlx::query_scalar(AssertSqlSafe(execute))
                .fetch_all(&mut *conn)
                .await
                .map_err(backend)?;
            sqlx::raw_sql("deallocate lapse_plan")
                .execute(&mut *conn)
                .await
                .map_err(backend)?;
            plans.push((name.to_string(), lines.join("\n")));
        }
        sqlx::query("reset plan_cache_mode")
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
        Ok(plans)
    }
}
