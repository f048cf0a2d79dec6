//! Operators' commands on the database directly: a backup, the schema, counts, the health
//! report, a session's document.

use std::path::{Path, PathBuf};

use anyhow::Context;
use lapse_core::SessionId;
use lapse_engine::health::Health;

use super::cli_admin;
use crate::app::{Rules, open_engine};
use crate::export::{Format, render};
use crate::settings::{Environment, Settings};

/// `lapse backup PATH`: a consistent copy of a SQLite database, while lapse runs.
pub(super) async fn backup(
    config: Option<&Path>,
    env: Environment,
    path: PathBuf,
) -> anyhow::Result<i32> {
    let settings = Settings::load(config, env)?;
    let url = &settings.config.database.url;
    if !url.starts_with("sqlite:") {
        eprintln!(
            "lapse backup copies a SQLite database. Back up PostgreSQL with its own \
             tools, while lapse runs:\n  pg_dump --format=custom --file {} \"$DATABASE_URL\"\n\
             and restore into an empty database with pg_restore --dbname.",
            path.display()
        );
        return Ok(2);
    }
    eprintln!(
        "backing up {} to {} ...",
        lapse_store::redact(url),
        path.display()
    );
    let started = std::time::Instant::now();
    let copy = lapse_store::sqlite::backup(url, &path)
        .await
        .with_context(|| format!("backing up to {}", path.display()))?;
    println!(
        "{}: {} session(s), {} event(s), {} bytes, in {} ms",
        path.display(),
        copy.sessions,
        copy.events,
        copy.bytes,
        started.elapsed().as_millis()
    );
    Ok(0)
}

/// `lapse migrate`: the schema created or brought up to date.
pub(super) async fn migrate(config: Option<&Path>, env: Environment) -> anyhow::Result<i32> {
    let settings = Settings::load(config, env)?;
    open_engine(&settings, Rules::Follow).await?;
    println!(
        "database {} is up to date",
        lapse_store::redact(&settings.config.database.url)
    );
    Ok(0)
}

/// `lapse stats`: sessions by kind and status, and the next stored deadline.
pub(super) async fn stats(config: Option<&Path>, env: Environment) -> anyhow::Result<i32> {
    let settings = Settings::load(config, env)?;
    let engine = open_engine(&settings, Rules::Follow).await?;
    let counts = engine.counts(&cli_admin()).await?;
    if counts.is_empty() {
        println!("no sessions");
    } else {
        let width = counts
            .iter()
            .map(|c| c.kind.len())
            .max()
            .unwrap_or(0)
            .max(4);
        println!("{:<width$}  {:<9}  {:>8}", "KIND", "STATUS", "SESSIONS");
        for c in counts {
            println!(
                "{:<width$}  {:<9}  {:>8}",
                c.kind,
                c.status.as_str(),
                c.count
            );
        }
    }
    let figures = engine.sweeper_figures().await?;
    if let Some(next) = figures.next_deadline {
        println!("next deadline: {next}");
    }
    Ok(0)
}

/// `lapse health [--json]`: the health report; exits 0 healthy, 1 degraded, 2 unhealthy (and
/// 2 when the database cannot be opened).
pub(super) async fn health(
    config: Option<&Path>,
    env: Environment,
    json: bool,
) -> anyhow::Result<i32> {
    let settings = Settings::load(config, env)?;
    let engine = match open_engine(&settings, Rules::Follow).await {
        Ok(engine) => engine,
        Err(e) => {
            println!("unhealthy: {e:#}");
            return Ok(2);
        }
    };
    let report = match engine.health(&cli_admin()).await {
        Ok(report) => report,
        Err(e) => {
            println!("unhealthy: {e}");
            return Ok(2);
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{:?}", report.health);
        for p in &report.problems {
            println!("  {}: {}", p.code, p.detail);
        }
        for r in &report.recommendations {
            println!("  → {r}");
        }
    }
    Ok(match report.health {
        Health::Healthy => 0,
        Health::Degraded => 1,
        Health::Unhealthy => 2,
    })
}

/// `lapse export ID --format F`: a session with its participants, summary and timeline.
pub(super) async fn export(
    config: Option<&Path>,
    env: Environment,
    id: String,
    format: String,
) -> anyhow::Result<i32> {
    let format: Format = format.parse().map_err(anyhow::Error::msg)?;
    let settings = Settings::load(config, env)?;
    let engine = open_engine(&settings, Rules::Follow).await?;
    let id = SessionId::parse(&id).context("session id")?;
    let admin = cli_admin();
    let session = engine.get(&admin, &id).await?;
    let events = engine.session_events(&admin, &id, 0, 1000).await?;
    print!("{}", render(format, &session, &events));
    Ok(0)
}
