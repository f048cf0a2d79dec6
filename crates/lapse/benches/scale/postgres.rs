//! Figures on PostgreSQL: transitions per second of a sweep, seed 001's own cleanup function
//! (a `NOT EXISTS` over all sessions) next to a lapse sweep of as many due sessions among as
//! many live ones on the same server, with the least such a sweep must write (its events and
//! webhook rows alone) as what bounds that ratio, and the lag of a burst with two instances
//! sharing it.

use std::time::Instant;

use lapse_core::Span;
use lapse_engine::SweepOptions;
use sqlx::{Connection, PgConnection};

use crate::measure::Pair;
use crate::report::{self, Row};
use crate::world::World;

/// Seed 001's schema and cleanup function, as its users wrote them (with the indexes they
/// added, and the session key every such schema has).
const SEED_SCHEMA: &str = "
drop table if exists session_participants; drop table if exists reading_sessions;
create table reading_sessions (id bigint primary key, is_active boolean not null default true,
    updated_at timestamptz not null default now());
create table session_participants (id bigserial primary key,
    session_id bigint not null references reading_sessions(id) on delete cascade,
    user_id text not null, is_active boolean not null default true,
    last_seen_at timestamptz not null default now(), unique (session_id, user_id));
create index idx_session_participants_last_seen on session_participants(last_seen_at);
create index idx_reading_sessions_updated_at on reading_sessions(updated_at);
create or replace function cleanup_inactive_sessions() returns void language plpgsql as $$
begin
  delete from reading_sessions
  where id in (
    select rs.id from reading_sessions rs
    where rs.is_active = true
    and not exists (
      select 1 from session_participants sp
      where sp.session_id = rs.id and sp.is_active = true
      and sp.last_seen_at > now() - interval '1 hour'));
end; $$;";

/// Adds sessions `from..to` with three participants each, last seen `ago` before now.
async fn seed_sessions(conn: &mut PgConnection, from: i64, to: i64, ago: &str) {
    let sql = format!(
        "with s as (insert into reading_sessions (id) select g from generate_series({from}, {to} - 1) g returning id) \
         insert into session_participants (session_id, user_id, last_seen_at) \
         select s.id, 'u' || k, now() - interval '{ago}' from s, generate_series(1, 3) k"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(conn)
        .await
        .expect("seed rows");
}

/// Both PostgreSQL rows: lapse's transitions per second, and the seed comparison.
pub async fn figures(url: &str, world: &World, rounds: usize, burst: usize) -> Vec<Row> {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    sqlx::raw_sql(SEED_SCHEMA)
        .execute(&mut conn)
        .await
        .expect("seed schema");
    let live = world.live as i64;
    let started = Instant::now();
    seed_sessions(&mut conn, 0, live, "1 minute").await;
    sqlx::raw_sql("analyze")
        .execute(&mut conn)
        .await
        .expect("analyze");
    eprintln!(
        "  seed 001 tables: {live} sessions in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let next = std::cell::Cell::new(live);

    let seed_cleanup = || async {
        let from = next.get();
        next.set(from + burst as i64);
        let mut conn = PgConnection::connect(url).await.expect("connect");
        seed_sessions(&mut conn, from, from + burst as i64, "2 hours").await;
        let started = Instant::now();
        sqlx::query("select cleanup_inactive_sessions()")
            .execute(&mut conn)
            .await
            .expect("cleanup");
        let secs = started.elapsed().as_secs_f64();
        let left: i64 = sqlx::query_scalar("select count(*) from reading_sessions where id >= $1")
            .bind(from)
            .fetch_one(&mut conn)
            .await
            .expect("count");
        assert_eq!(left, 0, "the seed's cleanup removed its stale sessions");
        burst as f64 / secs
    };
    let lapse_sweep = || async {
        let prefix = world.fresh("pgburst");
        world
            .import(
                "burst",
                &format!("{prefix}-"),
                burst,
                0,
                Span::from_secs(21),
            )
            .await;
        let started = Instant::now();
        let report = world
            .engine
            .sweep_once(&SweepOptions::default())
            .await
            .expect("sweep");
        assert_eq!(report.applied.len(), burst);
        burst as f64 / started.elapsed().as_secs_f64()
    };
    // The least any sweep that records an event and a webhook row per transition writes:
    // the events and webhook rows alone, made on the server in one statement, nothing read
    // and no session written. Each with a payload of a real sweep's (read after its first).
    let floor = || async {
        let prefix = world.fresh("floor");
        let mut conn = PgConnection::connect(url).await.expect("connect");
        let data: String = sqlx::query_scalar(
            "select data from events where rule is not null order by seq desc limit 1",
        )
        .fetch_one(&mut conn)
        .await
        .expect("an event of a sweep");
        let started = Instant::now();
        let mut tx = conn.begin().await.expect("begin");
        sqlx::query(FLOOR)
            .bind(&prefix)
            .bind(burst as i64)
            .bind(&data)
            .bind(world.engine.now().millis())
            .bind(&world.engine.config().webhooks[0].url)
            .execute(&mut *tx)
            .await
            .expect("the floor's rows");
        tx.commit().await.expect("commit");
        burst as f64 / started.elapsed().as_secs_f64()
    };
    let (mut pair, mut bound) = (Pair::default(), Pair::default());
    for _ in 0..rounds {
        pair.a.push(lapse_sweep().await);
        let seed = seed_cleanup().await;
        pair.b.push(seed);
        bound.a.push(floor().await);
        bound.b.push(seed);
    }
    let human = crate::engine::human;
    vec![
        report::value(
            "transitions applied by a sweep, with events and webhook rows (PostgreSQL)",
            "≥ 10k/s",
            &pair.a,
            "/s",
            |v| v >= 10_000.0,
        ),
        report::ratio(
            &format!(
                "lapse sweep vs seed 001's `NOT EXISTS` cleanup, {} due among {} (3 participants each), PostgreSQL",
                human(burst),
                human(world.live)
            ),
            "≥ 50×",
            &pair,
            ["lapse", "seed 001"],
            "sessions/s",
            |x| x >= 50.0,
        ),
        report::shown_ratio(
            &format!(
                "the least a sweep of {} writes (its events with their webhook rows, made on the server in one statement; nothing read, no session written) vs seed 001's cleanup",
                human(burst)
            ),
            "none: the most the row above can reach where each transition records an event and a webhook row",
            &bound,
            ["those rows alone", "seed 001"],
            "sessions/s",
        ),
    ]
}

/// The floor's statement: `$2` events numbered as they are inserted, ids in order (as lapse's
/// are: time-ordered), with `$3` as their data, and a pending webhook row for each, as
/// `APPEND_EVENTS` writes them.
const FLOOR: &str = "with e as (\
        insert into events (id, type, at, applied_at, session_id, kind, actor, rule, data) \
        select $1 || lpad(g::text, 30, '0'), 'session.expired', $4, $4, $1 || '-' || g, \
        'burst', 'system', 'expire-unused', $3 from generate_series(1, $2) g order by g \
        returning id, seq) \
    insert into webhook_deliveries (id, endpoint, event_seq, status, attempts, next_attempt_at, \
    created_at) select 'd' || e.id, $5, e.seq, 'pending', 0, $4, $4 from e";

/// The lag of a burst among `live` rooms with two `lapse serve` instances sharing one
/// PostgreSQL database: each takes half the creates and half the heartbeats, and both sweep
/// (leasing disjoint due rows).
pub async fn two_instances(live: usize, load: &crate::served::Load) -> Row {
    let figure = |n: usize| {
        format!(
            "lag `applied_at - at`, {} live, burst of {}, two instances (PostgreSQL)",
            crate::engine::human(live),
            n
        )
    };
    let Some(url) = lapse_store::testing::fresh_postgres_database().await else {
        return report::not_run(&figure(load.burst), "p99 ≤ 1 s", "no server");
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let (_, config) = crate::server::files(dir.path());
    crate::served::fill(&url, live).await;
    // A database as it stands in service: vacuumed and with statistics. Left to autovacuum,
    // a freshly filled million rows get vacuumed and analyzed at a moment of its choosing,
    // often in the middle of the burst.
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    sqlx::raw_sql("vacuum analyze")
        .execute(&mut conn)
        .await
        .expect("vacuum analyze");
    drop(conn);
    let a = crate::server::Server::start(&url, &config).await;
    let b = crate::server::Server::start(&url, &config).await;
    let (lags, beat_rate) = crate::served::burst(&[&a, &b], &url, load, live).await;
    a.stop();
    b.stop();
    crate::served::lag_row(figure(lags.len()), 1000.0, &lags, beat_rate)
}
