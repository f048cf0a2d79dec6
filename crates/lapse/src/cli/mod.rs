//! The command line (SPEC §8). `serve` runs the server; the others work on the database
//! directly, for cron jobs, systemd timers and operators, or on a running lapse.
//!
//! - here: the commands and their flags, and which function runs each.
//! - `sweep`: `lapse sweep`, with its progress. `database`: backup, migrate, stats, health,
//!   export. `policy`: `check-config` and `explain`, a rules change judged before it is made.
//! - `remote`: `sessions` and `events`, through a running lapse's API; `tables`: what they
//!   print.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use lapse_engine::Caller;
use tokio_util::sync::CancellationToken;

use crate::app::{App, shutdown_on_signal};
use crate::settings::{Environment, Settings};

mod database;
mod policy;
pub mod remote;
mod sweep;
mod tables;

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

/// Runs the command line; returns the process exit code.
pub async fn main(cli: Cli) -> anyhow::Result<i32> {
    let env = Environment::from_process();
    let config = cli.config.as_deref();
    match cli.command {
        Command::CheckConfig {
            file,
            against,
            json,
        } => policy::check_config(config, file, against, json, env).await,
        Command::Serve => {
            let settings = Settings::load(config, env)?;
            let app = App::build(settings).await?;
            let token = CancellationToken::new();
            tokio::spawn(shutdown_on_signal(token.clone()));
            app.run(token).await?;
            Ok(0)
        }
        Command::Backup { path } => database::backup(config, env, path).await,
        Command::Migrate => database::migrate(config, env).await,
        Command::Sweep {
            dry_run,
            verbose,
            kind,
            json,
        } => sweep::sweep(config, env, dry_run, verbose, kind, json).await,
        Command::Stats => database::stats(config, env).await,
        Command::Health { json } => database::health(config, env, json).await,
        Command::Sessions { server, command } => remote::sessions(server, command).await,
        Command::Events { server, command } => remote::events(server, command).await,
        Command::Export { id, format } => database::export(config, env, id, format).await,
        Command::Explain { id, with } => policy::explain(config, env, id, with).await,
    }
}

/// The CLI works on the database as an operator: admin rights.
fn cli_admin() -> Caller {
    Caller::Admin {
        name: "cli".into(),
        actor: None,
    }
}
