//! Throwaway databases for tests: each test gets its own, so tests never see each other's
//! rows. PostgreSQL tests find their server in `LAPSE_TEST_POSTGRES_URL` (the repo's
//! `scripts/with-postgres` starts one); without it they are skipped, unless
//! `LAPSE_TEST_REQUIRE_POSTGRES=1` says that skipping is a failure (CI sets it).

use std::io::Write as _;
use std::sync::Once;

use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// The variable naming the test server.
pub const POSTGRES_URL_ENV: &str = "LAPSE_TEST_POSTGRES_URL";
/// The variable that turns a skipped PostgreSQL test into a failure.
pub const REQUIRE_POSTGRES_ENV: &str = "LAPSE_TEST_REQUIRE_POSTGRES";

static SKIP_NOTICE: Once = Once::new();

/// A fresh, empty PostgreSQL database on the test server, as a URL; `None` (after saying so
/// once on the terminal) when no test server is configured.
///
/// # Panics
/// When no server is configured but one is required, or the server refuses.
pub async fn fresh_postgres_database() -> Option<String> {
    fresh_postgres_database_with("").await
}

/// As [`fresh_postgres_database`], created with `options` after `create database <name>`
/// (`template template0 locale_provider icu icu_locale 'en-US'`: a database whose default
/// collation is a language's).
///
/// # Panics
/// As [`fresh_postgres_database`].
pub async fn fresh_postgres_database_with(options: &str) -> Option<String> {
    let Some(admin) = std::env::var(POSTGRES_URL_ENV)
        .ok()
        .filter(|v| !v.is_empty())
    else {
        assert!(
            std::env::var(REQUIRE_POSTGRES_ENV).ok().as_deref() != Some("1"),
            "{REQUIRE_POSTGRES_ENV}=1 but {POSTGRES_URL_ENV} is not set: PostgreSQL tests would be skipped"
        );
        SKIP_NOTICE.call_once(|| {
            // Straight to the terminal: the test harness captures print! but not this.
            let _ = writeln!(
                std::io::stderr(),
                "note: PostgreSQL tests skipped ({POSTGRES_URL_ENV} not set; run them with scripts/with-postgres)"
            );
        });
        return None;
    };
    let name = format!("lapse_test_{}", uuid_like());
    let mut conn = PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test server {admin}: {e}"));
    sqlx::query(AssertSqlSafe(format!("create database {name} {options}")))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
    let base = admin.split('?').next().unwrap_or(&admin);
    let server = base.rsplit_once('/').map_or(base, |(server, _db)| server);
    Some(format!("{server}/{name}"))
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{}_{}_{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// `count` new sessions of `kind` created at `at`, named `{prefix}{n}`, each hosted by one of
/// `hosts` users (`h{n % hosts}`) with `members` more participants (`m{n}-{k}`), observed so
/// their stored deadlines are right: a population for plan tests and benchmarks, written with
/// [`lapse_core::Store::import`].
pub fn synthetic_sessions(
    kind: &lapse_core::Kind,
    prefix: &str,
    count: usize,
    hosts: usize,
    members: usize,
    at: lapse_core::Timestamp,
) -> Vec<lapse_core::Session> {
    use lapse_core::lifecycle::{self, By, Effects, NewSession, Via};
    use lapse_core::{SessionId, UserId};
    (0..count)
        .map(|n| {
            // Ids and user names built here are always valid.
            let host = UserId::parse(&format!("h{}", n % hosts.max(1))).expect("a valid user id");
            let input = NewSession {
                title: None,
                metadata: None,
                host,
                parent: None,
                scheduled_start: None,
                scheduled_end: None,
            };
            let id = SessionId::parse(&format!("{prefix}{n}")).expect("a valid session id");
            let mut fx = Effects::default();
            let mut s = lifecycle::create(kind, id, input, None, at, &By::system(), &mut fx)
                .expect("a plain session can always be created");
            for k in 0..members {
                let user = UserId::parse(&format!("m{n}-{k}")).expect("a valid user id");
                // Joining an open session with no limits cannot be refused.
                let _ = lifecycle::join(
                    kind,
                    &mut s,
                    &user,
                    None,
                    Via::Direct,
                    at,
                    &By::system(),
                    &mut fx,
                );
            }
            s.observe(kind, at);
            s
        })
        .collect()
}

/// Waits until `n` connections to this test's database wait for a lock (a transaction
/// blocked on another's row or advisory lock), checking `meanwhile` on each look. Other
/// tests' databases on the same server are not counted.
///
/// # Panics
/// When they are not waiting after 10 s, or the server does not answer.
pub async fn until_waiting(raw: &sqlx::PgPool, n: i64, meanwhile: impl Fn()) {
    let started = std::time::Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity \
             where datname = current_database() and wait_event_type = 'Lock'",
        )
        .fetch_one(raw)
        .await
        .expect("the test server answers");
        if waiting >= n {
            return;
        }
        meanwhile();
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{waiting} of {n} lock requests waiting after 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
