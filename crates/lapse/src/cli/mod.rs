//! The command line (SPEC §8). `serve` runs the server; the others work on the database
//! directly, for cron jobs, systemd timers and operators.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lapse_core::SessionId;
use lapse_engine::health::Health;
use lapse_engine::{Caller, Progress, SweepOptions};
use tokio_util::sync::CancellationToken;

use crate::app::{App, open_engine, shutdown_on_signal};
use crate::export::{Format, render};
use crate::settings::{Environment, Settings};

/// lapse: the session lifecycle engine.
#[derive(Parser, Debug)]
#[command(name = "lapse", version, about)]
pub struct Cli {
    /// Configuration file (default: built-in kinds and settings).
    #[arg(long, global = true, env = "LAPSE_CONFIG")]
    pub config: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The configuration file this command reads, if any.
    pub fn config_file(&self) -> Option<&std::path::Path> {
        match &self.command {
            Command::CheckConfig { file: Some(file) } => Some(file),
            _ => self.config.as_deref(),
        }
    }
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the HTTP server, the sweeper and the heartbeat flusher.
    Serve,
    /// Apply every due rule now, on the database directly.
    Sweep {
        /// Show what would be applied; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// One line per applied rule.
        #[arg(long)]
        verbose: bool,
        /// Only this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Session counts by kind and status.
    Stats,
    /// The health report; exits 0 healthy, 1 degraded, 2 unhealthy.
    Health {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate a configuration file (or the built-in defaults) and exit.
    CheckConfig {
        /// The file (default: --config, LAPSE_CONFIG, or the built-in defaults).
        file: Option<PathBuf>,
    },
    /// Create or upgrade the database schema.
    Migrate,
    /// Why each rule of a session's kind does or does not apply.
    Explain {
        /// The session id.
        id: String,
    },
    /// Write a consistent copy of the database to PATH while lapse runs (SQLite; PostgreSQL
    /// is backed up with pg_dump).
    Backup {
        /// The copy to write; it must not exist.
        path: PathBuf,
    },
    /// A session with its participants, summary and timeline, as a document.
    Export {
        /// The session id.
        id: String,
        /// json, markdown or csv.
        #[arg(long, default_value = "json")]
        format: String,
    },
}

/// Runs the command line; returns the process exit code.
pub async fn main(cli: Cli) -> anyhow::Result<i32> {
    let env = Environment::from_process();
    match cli.command {
        Command::CheckConfig { file } => {
            let file = file.or(cli.config);
            let settings = Settings::load(file.as_deref(), env)?;
            let c = &settings.config;
            println!(
                "{}: ok — {} kind(s): {}",
                c.source,
                c.kinds.len(),
                c.kinds
                    .values()
                    .map(|k| format!(
                        "{} ({} rule{})",
                        k.name,
                        k.rules.len(),
                        if k.rules.len() == 1 { "" } else { "s" }
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(0)
        }
        Command::Serve => {
            let settings = Settings::load(cli.config.as_deref(), env)?;
            let app = App::build(settings).await?;
            let token = CancellationToken::new();
            tokio::spawn(shutdown_on_signal(token.clone()));
            app.run(token).await?;
            Ok(0)
        }
        Command::Backup { path } => {
            let settings = Settings::load(cli.config.as_deref(), env)?;
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
        Command::Migrate => {
            let settings = Settings::load(cli.config.as_deref(), env)?;
            open_engine(&settings).await?;
            println!(
                "database {} is up to date",
                lapse_store::redact(&settings.config.database.url)
            );
            Ok(0)
        }
        Command::Sweep {
            dry_run,
            verbose,
            kind,
            json,
        } => {
            let settings = Settings::load(cli.config.as_deref(), env)?;
            if let Some(k) = &kind
                && settings.config.kind(k).is_none()
            {
                anyhow::bail!("unknown kind `{k}`");
            }
            let engine = open_engine(&settings).await?;
            // Progress goes to stderr, once per batch, so long sweeps show they are moving
            // while stdout stays the report.
            let progress = Progress(std::sync::Arc::new(|examined, applied| {
                eprintln!("… {examined} due row(s) examined, {applied} rule(s) applied");
            }));
            // Ctrl-C or SIGTERM ends the sweep after its current batch: what it applied is
            // reported, the rest stays due.
            let stop = CancellationToken::new();
            tokio::spawn(shutdown_on_signal(stop.clone()));
            let opts = SweepOptions {
                dry_run,
                kind,
                progress: Some(progress),
                stop,
            };
            let report = engine.sweep_once(&opts).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                if verbose {
                    for a in &report.applied {
                        println!(
                            "{} {} [{}] rule {} ({}): {} -> {} at {}",
                            if dry_run { "would apply" } else { "applied" },
                            a.session,
                            a.kind,
                            a.rule,
                            a.action,
                            a.from.as_str(),
                            a.to,
                            a.due_at
                        );
                    }
                    for e in &report.errors {
                        println!("error {}: {}", e.session, e.error);
                    }
                }
                let counts: Vec<String> = report
                    .counts
                    .iter()
                    .map(|(a, n)| format!("{a}: {n}"))
                    .collect();
                println!(
                    "{} {} rule(s) in {} ms{}{}",
                    if dry_run {
                        "dry run: would apply"
                    } else {
                        "applied"
                    },
                    report.applied.len(),
                    report.duration_ms,
                    if counts.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", counts.join(", "))
                    },
                    if report.errors.is_empty() {
                        String::new()
                    } else {
                        format!("; {} error(s)", report.errors.len())
                    },
                );
            }
            Ok(if report.errors.is_empty() { 0 } else { 1 })
        }
        Command::Stats => {
            let settings = Settings::load(cli.config.as_deref(), env)?;
            let engine = open_engine(&settings).await?;
            let counts = engine
                .counts(&Caller::Admin {
                    name: "cli".into(),
                    actor: None,
                })
                .await?;
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
        Command::Health { json } => {
            let settings = Settings::load(cli.config.as_deref(), env)?;
            let engine = match open_engine(&settings).await {
                Ok(engine) => engine,
                Err(e) => {
                    println!("unhealthy: {e:#}");
                    return Ok(2);
                }
            };
            let report = match engine
                .health(&Caller::Admin {
                    name: "cli".into(),
                    actor: None,
                })
                .await
            {
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
        Command::Export { id, format } => {
            let format: Format = format.parse().map_err(anyhow::Error::msg)?;
            let settings = Settings::load(cli.config.as_deref(), env)?;
            let engine = open_engine(&settings).await?;
            let id = SessionId::parse(&id).context("session id")?;
            let admin = Caller::Admin {
                name: "cli".into(),
                actor: None,
            };
            let session = engine.get(&admin, &id).await?;
            let events = engine.session_events(&admin, &id, 0, 1000).await?;
            print!("{}", render(format, &session, &events));
            Ok(0)
        }
        Command::Explain { id } => {
            let settings = Settings::load(cli.config.as_deref(), env)?;
            let engine = open_engine(&settings).await?;
            let id = SessionId::parse(&id).context("session id")?;
            let e = engine
                .explain(
                    &Caller::Admin {
                        name: "cli".into(),
                        actor: None,
                    },
                    &id,
                )
                .await?;
            println!(
                "session {} [{}] is {} at {}",
                e.session.id,
                e.session.kind,
                e.session.status.as_str(),
                e.now
            );
            for r in &e.rules {
                let mark = if r.due {
                    "DUE "
                } else if r.applies {
                    "wait"
                } else {
                    " -  "
                };
                println!(
                    "  {mark} {} (on {} → {}): {}",
                    r.rule,
                    r.on.as_str(),
                    r.action,
                    r.why
                );
            }
            Ok(0)
        }
    }
}
