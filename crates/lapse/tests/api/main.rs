//! lapse over HTTP: the real server on a random port, a fresh database, a manual clock. One
//! module per seed system, plus the races, errors, identity rules and paging. Every test runs
//! twice, on SQLite and on PostgreSQL (`LAPSE_TEST_POSTGRES_URL`; skipped, and said so,
//! without it).

/// Turns `async fn name(backend: Backend)` test bodies into one test per store:
/// `module::sqlite::name` and `module::postgres::name`.
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if crate::helpers::postgres_skipped() {
                        return;
                    }
                    super::$name(crate::helpers::Backend::Postgres).await
                }
            )*
        }
    };
}

mod helpers;

mod backup;
mod config;
mod console;
mod errors;
mod identity;
mod instances;
mod overload;
mod paging;
mod policy;
mod races;
mod seed_000_study;
mod seed_000_tools;
mod seed_001_reading;
mod seed_002_mentoring;
mod seed_003_coding;
mod seed_004_repair;
mod streams;
mod webhooks;
