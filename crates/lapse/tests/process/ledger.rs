//! What the database holds, read directly: the ground truth a process test judges lapse by.
//! Also where a test's sessions are written before lapse starts (in bulk, as a restore
//! would).

use std::collections::HashMap;

use lapse_core::{Config, Session, Timestamp};
use sqlx::{PgPool, SqlitePool};

/// The kinds every process test uses: `storm`, which expires a second after creation unless
/// used, and `kept`, which expires after `kept_idle` without activity (heartbeats keep it).
pub fn kinds(kept_idle: &str) -> String {
    format!(
        r#"
[kinds.storm]
presence_timeout = "90s"

[[kinds.storm.rules]]
name = "expire-unused"
on = "unused"
after = "1s"
do = "expire"

[kinds.kept]
presence_timeout = "90s"

[[kinds.kept.rules]]
name = "expire-idle"
on = "idle"
after = "{kept_idle}"
do = "expire"
"#
    )
}

/// `text` written as the test's `lapse.toml` in `dir`, and the configuration lapse reads
/// from it.
pub fn config_file(dir: &std::path::Path, text: &str) -> (std::path::PathBuf, Config) {
    let path = dir.join("lapse.toml");
    std::fs::write(&path, text).expect("the configuration is written");
    let config = Config::parse(text, "lapse.toml").expect("the configuration is valid");
    (path, config)
}

/// One `session.expired` event.
#[derive(Clone, Debug)]
pub struct Expiry {
    /// The event's id (a webhook's `webhook-id`).
    pub event: String,
    pub session: String,
    /// The deadline it was stamped at.
    pub at: i64,
    /// When it was written.
    pub applied_at: i64,
}

/// A test's database.
pub enum Ledger {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A fresh database for one test: SQLite in `dir`, or PostgreSQL when `postgres` (`None` when
/// no PostgreSQL server is configured and none is required).
pub async fn fresh_database(dir: &std::path::Path, postgres: bool) -> Option<String> {
    if postgres {
        lapse_store::testing::fresh_postgres_database().await
    } else {
        Some(format!("sqlite://{}", dir.join("lapse.db").display()))
    }
}

/// `count` sessions of `kind` named `{prefix}{n}` with no one but their host (`h{n}`), the
/// `n`th created at `created(n)`; the schema is made first.
pub async fn import(
    url: &str,
    config: &Config,
    kind: &str,
    prefix: &str,
    count: usize,
    created: impl Fn(usize) -> Timestamp,
) {
    let store = lapse_store::open(url, None, None)
        .await
        .expect("the database opens");
    store.migrate().await.expect("migrate");
    let kind = config.kind(kind).expect("the kind is configured");
    let sessions: Vec<Session> = (0..count)
        .flat_map(|n| {
            lapse_store::testing::synthetic_sessions(
                kind,
                &format!("{prefix}{n}-"),
                1,
                1,
                0,
                created(n),
            )
        })
        .collect();
    for chunk in sessions.chunks(5_000) {
        store.import(chunk).await.expect("import");
    }
}

impl Ledger {
    pub async fn open(url: &str) -> Ledger {
        if url.starts_with("sqlite:") {
            Ledger::Sqlite(SqlitePool::connect(url).await.expect("sqlite opens"))
        } else {
            Ledger::Postgres(PgPool::connect(url).await.expect("postgres opens"))
        }
    }

    /// Every `session.expired` event.
    pub async fn expiries(&self) -> Vec<Expiry> {
        const SQL: &str =
            "select id, session_id, at, applied_at from events where type = 'session.expired'";
        let rows: Vec<(String, String, i64, i64)> = match self {
            Ledger::Sqlite(p) => sqlx::query_as(SQL).fetch_all(p).await,
            Ledger::Postgres(p) => sqlx::query_as(SQL).fetch_all(p).await,
        }
        .expect("events read");
        rows.into_iter()
            .map(|(event, session, at, applied_at)| Expiry {
                event,
                session,
                at,
                applied_at,
            })
            .collect()
    }

    /// Sessions by status.
    pub async fn statuses(&self) -> HashMap<String, String> {
        self.pairs("select id, status from sessions").await
    }

    /// Each session's `last_activity_at`.
    pub async fn activity(&self) -> HashMap<String, i64> {
        self.pairs("select id, last_activity_at from sessions")
            .await
    }

    /// How many events each session has.
    pub async fn events_by_session(&self) -> HashMap<String, i64> {
        self.pairs("select session_id, count(*) from events group by session_id")
            .await
    }

    /// Webhook deliveries by status.
    pub async fn deliveries(&self) -> HashMap<String, i64> {
        self.pairs("select status, count(*) from webhook_deliveries group by status")
            .await
    }

    /// The rows of `sql`, two columns each, as a map from the first to the second.
    async fn pairs<V>(&self, sql: &'static str) -> HashMap<String, V>
    where
        V: Send
            + Unpin
            + sqlx::Type<sqlx::Sqlite>
            + for<'r> sqlx::Decode<'r, sqlx::Sqlite>
            + sqlx::Type<sqlx::Postgres>
            + for<'r> sqlx::Decode<'r, sqlx::Postgres>,
    {
        let rows: Vec<(String, V)> = match self {
            Ledger::Sqlite(p) => sqlx::query_as(sql).fetch_all(p).await,
            Ledger::Postgres(p) => sqlx::query_as(sql).fetch_all(p).await,
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows.into_iter().collect()
    }

    pub async fn close(self) {
        match self {
            Ledger::Sqlite(p) => p.close().await,
            Ledger::Postgres(p) => p.close().await,
        }
    }
}

/// Expiries per session, for counting doubles.
pub fn by_session(expiries: &[Expiry]) -> HashMap<&str, usize> {
    let mut n = HashMap::new();
    for e in expiries {
        *n.entry(e.session.as_str()).or_default() += 1;
    }
    n
}
