//! Start-up as a value: [`App::build`] opens the store, migrates it, binds the listener (port 0
//! allowed); [`App::port`] reports; [`App::run`] serves until the shutdown token is cancelled,
//! with the sweeper and the heartbeat flusher beside it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lapse_core::config::{ClockMode, SweeperMode};
use lapse_engine::deliveries::{Endpoint, parse_secrets};
use lapse_engine::{Clock, Engine, SweepOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http::limits::{InFlight, Limiter};
use crate::http::{self, AppState, auth::Credentials};
use crate::settings::{Settings, cron_schedule};

/// A built, bound, not yet serving lapse.
pub struct App {
    listener: TcpListener,
    engine: Arc<Engine>,
    credentials: Credentials,
    settings: Settings,
}

/// Whose rules a command opening the database decides by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rules {
    /// Its own file's: put in force if the database holds others (`serve`, `sweep`: the
    /// process started last with a file decides, as after a deploy).
    Put,
    /// Those in force in the database, whatever its own file says (reads, dry runs).
    Follow,
}

/// Opens the database the settings name, brings its schema up to date and settles which
/// rules are in force.
pub async fn open_engine(settings: &Settings, rules: Rules) -> anyhow::Result<Arc<Engine>> {
    let db = &settings.config.database;
    let timeout = db
        .statement_timeout
        .map(|t| Duration::from_millis(t.millis() as u64));
    let store = lapse_store::open(&db.url, db.pool_size, timeout)
        .await
        .with_context(|| format!("opening database {}", lapse_store::redact(&db.url)))?;
    store.migrate().await.context("migrating the database")?;
    let clock = match settings.config.clock.mode {
        ClockMode::System => Clock::System,
        ClockMode::Manual => Clock::manual(settings.clock_start()),
    };
    let endpoints = webhook_endpoints(settings)?;
    let engine = Engine::with_webhooks(store, Arc::new(settings.config.clone()), clock, endpoints);
    match rules {
        Rules::Put => {
            engine
                .put_rules_in_force()
                .await
                .context("putting the configured rules in force")?;
        }
        Rules::Follow => {
            engine
                .follow_rules_in_force()
                .await
                .context("reading the rules in force")?;
        }
    }
    Ok(engine)
}

/// The `[[webhooks]]` with their signing secrets read from the environment.
fn webhook_endpoints(settings: &Settings) -> anyhow::Result<Vec<Endpoint>> {
    let mut endpoints = Vec::new();
    for hook in &settings.config.webhooks {
        let keys = match &hook.secret_env {
            Some(var) => {
                let text = settings.env.get(var).with_context(|| {
                    format!("webhook {}: its secret_env `{var}` is not set", hook.url)
                })?;
                parse_secrets(text).map_err(|e| anyhow::anyhow!("webhook {}: {e}", hook.url))?
            }
            None => {
                tracing::warn!(url = %hook.url, "webhook has no secret_env: deliveries are unsigned");
                Vec::new()
            }
        };
        endpoints.push(Endpoint {
            config: hook.clone(),
            keys,
        });
    }
    Ok(endpoints)
}

impl App {
    /// Opens the store and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        let engine = open_engine(&settings, Rules::Put).await?;
        let addr: SocketAddr = settings
            .config
            .server
            .listen
            .parse()
            .with_context(|| format!("listen address `{}`", settings.config.server.listen))?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let credentials = Credentials::from_settings(&settings, addr.ip().is_loopback())?;
        if credentials.is_open() {
            tracing::warn!(
                "DEVELOPMENT MODE: no credentials are configured, so every request on {addr} is \
                 treated as admin. Set LAPSE_ADMIN_KEY (or any credential) before exposing lapse."
            );
        } else if !settings.has_credentials() {
            tracing::warn!(
                "NO CREDENTIALS: lapse listens on {addr}, beyond this machine, and no key, cron \
                 secret or JWT secret is configured, so every request but /livez, /readyz, \
                 /metrics and /openapi.json is answered 401. Set LAPSE_ADMIN_KEY or \
                 LAPSE_SERVICE_KEY (or any credential), or listen on 127.0.0.1 for development mode."
            );
        }
        if engine.clock().is_manual() {
            tracing::warn!(now = %engine.now(), "manual clock: rules apply only on /v1/sweep and on access");
        }
        Ok(App {
            listener,
            engine,
            credentials,
            settings,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The engine this app serves.
    pub fn engine(&self) -> Arc<Engine> {
        self.engine.clone()
    }

    /// Serves until `shutdown` is cancelled. Then no connection is taken any more, event
    /// streams end, a sweep under way stops after its current batch, and requests in flight
    /// and webhook deliveries under way get `[server] drain` to finish; the heartbeats accepted
    /// until then are flushed last.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let engine = self.engine.clone();
        let state = Arc::new(AppState {
            engine: engine.clone(),
            credentials: self.credentials,
            limiter: Limiter::new(self.settings.config.rate_limits.clone()),
            in_flight: InFlight::new(self.settings.config.server.max_in_flight),
            shutdown: shutdown.clone(),
            requests: Default::default(),
            config_file: self.settings.file.clone(),
            hand_sweep: Default::default(),
        });
        // On SQLite the sweeper, the heartbeat flusher, the group committer and the event
        // reader each run on a thread of their own, at a priority above the request threads'
        // (`crate::priority`); the committer stops last, after the requests it writes for.
        // PostgreSQL's sockets are driven by the runtime that opened them, mostly the request
        // threads': there the sweeper, the flusher and the reader stay on that runtime, and
        // there is no committer.
        let own_threads = engine.writes_one_at_a_time();
        let housekeeping = |name: &str, work: futures_util::future::BoxFuture<'static, ()>| {
            if own_threads {
                crate::priority::spawn_housekeeping(name, work)
                    .with_context(|| format!("starting the {name} thread"))
            } else {
                Ok(tokio::spawn(work))
            }
        };
        let writes = CancellationToken::new();
        let committer = {
            let engine = engine.clone();
            let token = writes.clone();
            housekeeping(
                "lapse-writer",
                Box::pin(async move { engine.run_committer(token).await }),
            )?
        };
        let sweeper = {
            let engine = engine.clone();
            let token = shutdown.clone();
            let sweeper = self.settings.config.sweeper.clone();
            housekeeping(
                "lapse-sweeper",
                Box::pin(async move {
                    match (sweeper.mode, sweeper.cron) {
                        (SweeperMode::Schedule, Some(cron)) => {
                            run_scheduled(&engine, &cron, token).await
                        }
                        _ => engine.run_sweeper(token).await,
                    }
                }),
            )?
        };
        let flusher = {
            let engine = engine.clone();
            let token = shutdown.clone();
            housekeeping(
                "lapse-flusher",
                Box::pin(async move {
                    engine
                        .run_heartbeat_flusher(lapse_engine::heartbeats::FLUSH_INTERVAL, token)
                        .await
                }),
            )?
        };
        let watch = tokio::spawn(engine.clone().run_change_watch(shutdown.clone()));
        // The event reader takes its place before any stream can connect.
        if let Err(e) = engine.feed_once().await {
            tracing::warn!(error = %e, "event feed could not start; it will retry");
        }
        // The event reader too: under a flood of requests it would wait behind them, and
        // with it every stream's events and the held copies that heartbeats answer from.
        let feed = housekeeping(
            "lapse-feed",
            Box::pin(engine.clone().run_event_feed(shutdown.clone())),
        )?;
        let deliveries = tokio::spawn(engine.clone().run_deliveries(shutdown.clone()));
        let retention = tokio::spawn(engine.clone().run_retention(shutdown.clone()));
        let probe = tokio::spawn(engine.clone().run_outage_probe(shutdown.clone()));
        let hangup = tokio::spawn(reload_on_hangup(
            engine.clone(),
            self.settings.file.clone(),
            shutdown.clone(),
        ));
        tracing::info!(addr = %self.listener.local_addr()?, "lapse listening");
        let router = http::router(state);
        let server = tokio::spawn(http::serve::serve(self.listener, router, shutdown.clone()));

        shutdown.cancelled().await;
        let drain = Duration::from_millis(self.settings.config.server.drain.millis() as u64);
        let deadline = tokio::time::Instant::now() + drain;
        let mut late = Vec::new();
        for (what, task) in [
            ("requests", server),
            ("sweep", sweeper),
            ("webhook deliveries", deliveries),
            ("retention", retention),
            ("heartbeat flusher", flusher),
            ("change watch", watch),
            ("event feed", feed),
            ("outage probe", probe),
            ("reload on SIGHUP", hangup),
        ] {
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                late.push(what);
            }
        }
        if !late.is_empty() {
            tracing::warn!(
                still_running = late.join(", "),
                drain_ms = drain.as_millis() as u64,
                "stopping anyway after the drain"
            );
        }
        writes.cancel();
        let _ = committer.await;
        // The last flush: no request adds a beat any more (unless one outlived the drain).
        match engine.flush_heartbeats().await {
            Ok(n) => tracing::info!(heartbeats = n, "stopped"),
            Err(e) => tracing::error!(error = %e, "the last heartbeat flush failed"),
        }
        Ok(())
    }
}

/// `[sweeper] mode = "schedule"`: a sweep at each cron time, nothing in between (rules still
/// apply on access).
async fn run_scheduled(engine: &Engine, cron: &str, shutdown: CancellationToken) {
    let Ok(schedule) = cron_schedule(cron) else {
        return;
    };
    loop {
        let now = chrono::Utc::now();
        let Ok(next) = schedule.find_next_occurrence(&now, false) else {
            tracing::error!(%cron, "the cron schedule has no next time; scheduled sweeps stop");
            return;
        };
        let wait = (next - now).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
        let opts = SweepOptions {
            stop: shutdown.clone(),
            ..SweepOptions::default()
        };
        match engine.sweep_once(&opts).await {
            Ok(r) => tracing::info!(
                applied = r.applied.len(),
                ms = r.duration_ms,
                "scheduled sweep"
            ),
            Err(e) => tracing::error!(error = %e, "scheduled sweep failed"),
        }
    }
}

/// On each SIGHUP, reads the configuration file again and puts its rules in force, as
/// `POST /v1/admin/config/reload` without `force` does; what was refused is logged.
async fn reload_on_hangup(
    engine: Arc<Engine>,
    file: Option<std::path::PathBuf>,
    shutdown: CancellationToken,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            return;
        };
        let admin = lapse_engine::Caller::Admin {
            name: "SIGHUP".into(),
            actor: None,
        };
        loop {
            tokio::select! {
                _ = hangups.recv() => {}
                _ = shutdown.cancelled() => return,
            }
            let config = match crate::settings::read_config(file.as_deref()) {
                Ok(config) => config,
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: the configuration is invalid; the rules in force stay");
                    continue;
                }
            };
            match engine.reload(&admin, &config, false).await {
                Ok(done) => tracing::info!(
                    rules_version = done.rules_version,
                    fire_now = done.fire_now_total,
                    rearmed = done.rearmed,
                    diff = %done.diff,
                    "SIGHUP: rules reloaded"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: reload refused; the rules in force stay")
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (engine, file);
        shutdown.cancelled().await;
    }
}

/// Cancels `token` on SIGINT or SIGTERM.
pub async fn shutdown_on_signal(token: CancellationToken) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
    token.cancel();
}
