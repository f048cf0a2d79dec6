//! The command line (SPEC §8). `serve` runs the server; the others work on the database
//! directly, for cron jobs, systemd timers and operators.

use std::io::IsTerminal as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lapse_core::SessionId;
use lapse_engine::health::Health;
use lapse_engine::{Caller, Progress, SweepOptions};
use tokio_util::sync::CancellationToken;

use crate::app::{App, Rules, open_engine, shutdown_on_signal};
use crate::export::{Format, render};
use crate::settings::{Environment, Settings};

mod policy;
pub mod remote;

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
            Command::CheckConfig {
                file: Some(file), ..
            } => Some(file),
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
    /// Validate a configuration file (or the built-in defaults) and exit; with --against,
    /// preview its rules against the sessions in the configured database (exit 3 when some
    /// would fire at once).
    CheckConfig {
        /// The file (default: --config, LAPSE_CONFIG, or the built-in defaults).
        file: Option<PathBuf>,
        /// Judge the file's rules against the live sessions of the configured database
        /// (--config's, or else the database the file itself names).
        #[arg(long)]
        against: bool,
        /// Print the preview as JSON.
        #[arg(long, requires = "against")]
        json: bool,
    },
    /// Create or upgrade the database schema.
    Migrate,
    /// Why each rule of a session's kind does or does not apply.
    Explain {
        /// The session id.
        id: String,
        /// Also judge it under the rules of this configuration file.
        #[arg(long, value_name = "NEW.toml")]
        with: Option<PathBuf>,
    },
    /// Write a consistent copy of the database to PATH while lapse runs (SQLite; PostgreSQL
    /// is backed up with pg_dump).
    Backup {
        /// The copy to write; it must not exist.
        path: PathBuf,
    },
    /// Sessions on a running lapse, through its API (key from LAPSE_ADMIN_KEY).
    Sessions {
        /// Where lapse answers.
        #[command(flatten)]
        server: RunningServer,
        /// What to do.
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Events on a running lapse, through its API (key from LAPSE_ADMIN_KEY).
    Events {
        /// Where lapse answers.
        #[command(flatten)]
        server: RunningServer,
        /// What to do.
        #[command(subcommand)]
        command: EventsCommand,
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

/// A running lapse, for the commands that go through its API.
#[derive(clap::Args, Debug)]
pub struct RunningServer {
    /// Where lapse answers.
    #[arg(
        long,
        env = "LAPSE_URL",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub url: String,
}

/// `lapse sessions …`
#[derive(Subcommand, Debug)]
pub enum SessionsCommand {
    /// One page of sessions, filtered by kind, status, host or participant.
    List {
        /// Only this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Only this status (pending, active, completed, cancelled, expired).
        #[arg(long)]
        status: Option<String>,
        /// Only sessions this user hosts.
        #[arg(long)]
        host: Option<String>,
        /// Only sessions this user takes part in.
        #[arg(long)]
        participant: Option<String>,
        /// At most this many (1-500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print lapse's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// One session: its fields, participants, and why each rule does or does not apply.
    Show {
        /// The session id.
        id: String,
        /// Print lapse's answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `lapse events …`
#[derive(Subcommand, Debug)]
pub enum EventsCommand {
    /// Follow events as they happen (Ctrl-C ends it); resumes by itself after a drop.
    Tail {
        /// Only this session's.
        #[arg(long)]
        session: Option<String>,
        /// Only this kind's.
        #[arg(long)]
        kind: Option<String>,
        /// Only these types (`session.ended,participant.*`).
        #[arg(long = "type")]
        types: Option<String>,
        /// Start after this sequence number (default: from now on).
        #[arg(long)]
        after: Option<i64>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

/// `[##########----------]  500/1000 due rows, 480 rules applied`: a sweep's progress over
/// the due rows counted at its start (more may come due meanwhile: the bar stays full).
fn progress_bar(examined: u64, total: u64, applied: usize) -> String {
    const WIDTH: u64 = 30;
    let done = (examined.min(total) * WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH);
    format!(
        "[{}{}] {examined}/{total} due rows, {applied} rule(s) applied",
        "#".repeat(done as usize),
        "-".repeat((WIDTH - done) as usize)
    )
}

/// Runs the command line; returns the process exit code.
pub async fn main(cli: Cli) -> anyhow::Result<i32> {
    let env = Environment::from_process();
    match cli.command {
        Command::CheckConfig {
            file,
            against,
            json,
        } => {
            let database = cli.config.clone();
            let file = file.or(cli.config);
            let settings = Settings::load(file.as_deref(), env.clone())?;
            let c = &settings.config;
            if against {
                let target = match database {
                    Some(config) => Settings::load(Some(&config), env)?,
                    None => settings.clone(),
                };
                let engine = open_engine(&target, Rules::Follow).await?;
                let preview = engine.preview(&cli_admin(), c, None, None).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&preview)?);
                } else {
                    println!(
                        "{} against {} (rules in force: version {}):\n",
                        c.source,
                        lapse_store::redact(&target.config.database.url),
                        engine.policy().version
                    );
                    print!("{}", policy::preview_text(&preview, remote::width()));
                }
                return Ok(if preview.fire_now_total > 0 { 3 } else { 0 });
            }
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
            open_engine(&settings, Rules::Follow).await?;
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
            let rules = if dry_run { Rules::Follow } else { Rules::Put };
            let engine = open_engine(&settings, rules).await?;
            // Progress goes to stderr while stdout stays the report. On a terminal, a sweep
            // with more than a batch to do draws a bar over the due rows counted at its start;
            // elsewhere (a log) one line a batch from the second on.
            let on_terminal = std::io::stderr().is_terminal();
            let total = if on_terminal {
                engine.due_count(kind.as_deref()).await?
            } else {
                0
            };
            let bar = on_terminal && total > u64::from(settings.config.sweeper.batch);
            let batches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let told = batches.clone();
            let progress = Progress(std::sync::Arc::new(move |examined, applied| {
                let batch = told.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if bar {
                    eprint!("\r\x1b[2K{}", progress_bar(examined as u64, total, applied));
                } else if batch > 0 && !on_terminal {
                    eprintln!(
                        "sweeping: {examined} due row(s) examined, {applied} rule(s) applied"
                    );
                }
            }));
            // Ctrl-C or SIGTERM ends the sweep after its current batch: what it applied is
            // reported, the rest stays due.
            let stop = CancellationToken::new();
            tokio::spawn(shutdown_on_signal(stop.clone()));
            let opts = SweepOptions {
                dry_run,
                due_by: None,
                kind,
                progress: Some(progress),
                stop,
            };
            let report = engine.sweep_once(&opts).await;
            if bar && batches.load(std::sync::atomic::Ordering::Relaxed) > 0 {
                eprintln!();
            }
            let report = report?;
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
            let engine = open_engine(&settings, Rules::Follow).await?;
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
            let engine = match open_engine(&settings, Rules::Follow).await {
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
        Command::Sessions { server, command } => {
            let lapse = remote::Remote::new(&server.url)?;
            match command {
                SessionsCommand::List {
                    kind,
                    status,
                    host,
                    participant,
                    limit,
                    json,
                } => {
                    let mut query = vec![("limit", limit.to_string())];
                    for (name, value) in [
                        ("kind", kind),
                        ("status", status),
                        ("host", host),
                        ("participant", participant),
                    ] {
                        query.extend(value.map(|v| (name, v)));
                    }
                    let page = lapse.get("/v1/sessions", &query).await?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&page)?);
                    } else {
                        let sessions = page["sessions"].as_array().cloned().unwrap_or_default();
                        if sessions.is_empty() {
                            println!("no sessions");
                        } else {
                            print!("{}", remote::sessions_table(&sessions, remote::width()));
                        }
                        if !page["next_cursor"].is_null() {
                            println!("(more: raise --limit, up to 500)");
                        }
                    }
                }
                SessionsCommand::Show { id, json } => {
                    let id = SessionId::parse(&id).context("session id")?;
                    let explained = lapse
                        .get(&format!("/v1/sessions/{id}/explain"), &[])
                        .await?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&explained)?);
                    } else {
                        print!("{}", remote::session_page(&explained, remote::width()));
                    }
                }
            }
            Ok(0)
        }
        Command::Events { server, command } => {
            let lapse = remote::Remote::new(&server.url)?;
            let EventsCommand::Tail {
                session,
                kind,
                types,
                after,
                json,
            } = command;
            let mut query = Vec::new();
            for (name, value) in [("session", session), ("kind", kind), ("type", types)] {
                query.extend(value.map(|v| (name, v)));
            }
            let stop = CancellationToken::new();
            tokio::spawn(shutdown_on_signal(stop.clone()));
            let follow = lapse.follow(&query, after, |event| {
                if json {
                    println!("{event}");
                } else {
                    println!("{}", remote::event_line(event));
                }
            });
            tokio::select! {
                done = follow => done?,
                _ = stop.cancelled() => {}
            }
            Ok(0)
        }
        Command::Export { id, format } => {
            let format: Format = format.parse().map_err(anyhow::Error::msg)?;
            let settings = Settings::load(cli.config.as_deref(), env)?;
            let engine = open_engine(&settings, Rules::Follow).await?;
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
        Command::Explain { id, with } => {
            let settings = Settings::load(cli.config.as_deref(), env)?;
            let candidate = match &with {
                Some(file) => Some(crate::settings::read_config(Some(file))?),
                None => None,
            };
            let engine = open_engine(&settings, Rules::Follow).await?;
            let id = SessionId::parse(&id).context("session id")?;
            let e = engine.explain(&cli_admin(), &id).await?;
            println!(
                "session {} [{}] is {} at {}",
                e.session.id,
                e.session.kind,
                e.session.status.as_str(),
                e.now
            );
            let Some(candidate) = candidate else {
                print!("{}", policy::explain_lines(&e.rules));
                return Ok(0);
            };
            let preview = engine
                .preview(&cli_admin(), &candidate, Some(e.now), Some(&id))
                .await?;
            let both = preview
                .explain
                .context("the preview explains the session")?;
            println!(
                "under the rules in force (version {}):",
                engine.policy().version
            );
            print!("{}", policy::explain_lines(&both.current));
            println!("under {}:", candidate.source);
            print!("{}", policy::explain_lines(&both.new));
            Ok(0)
        }
    }
}

/// The CLI works on the database as an operator: admin rights.
fn cli_admin() -> Caller {
    Caller::Admin {
        name: "cli".into(),
        actor: None,
    }
}

#[cfg(test)]
mod tests {
    use super::progress_bar;

    #[test]
    fn the_progress_bar_fills_with_the_rows_examined() {
        assert_eq!(
            progress_bar(500, 1000, 480),
            format!(
                "[{}{}] 500/1000 due rows, 480 rule(s) applied",
                "#".repeat(15),
                "-".repeat(15)
            )
        );
        assert!(progress_bar(1200, 1000, 1).starts_with(&format!("[{}]", "#".repeat(30))));
        assert!(progress_bar(0, 0, 0).starts_with(&format!("[{}]", "#".repeat(30))));
    }
}
