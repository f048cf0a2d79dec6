//! Everything lapse needs to start: the validated config file (or the built-in defaults) with
//! the environment's overrides applied, and the secrets the environment holds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use lapse_core::config::{ClockMode, ConfigError, Env};
use lapse_core::{Config, Timestamp};

/// The environment variables lapse reads, captured once (tests pass their own).
#[derive(Clone, Debug, Default)]
pub struct Environment(HashMap<String, String>);

impl Environment {
    /// The process environment.
    pub fn from_process() -> Self {
        Environment(std::env::vars().collect())
    }

    /// A given set of variables.
    pub fn from_pairs<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Self {
        Environment(pairs.into_iter().collect())
    }

    /// A variable's value, if set and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// A validated configuration plus the environment it was resolved in.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The configuration, overrides applied.
    pub config: Config,
    /// Where secrets are read from.
    pub env: Environment,
    /// The file read (`None`: the built-in defaults); a reload reads it again.
    pub file: Option<PathBuf>,
}

/// Reads and validates the configuration in `file`, or the built-in defaults.
pub fn read_config(file: Option<&Path>) -> Result<Config, ConfigError> {
    let Some(path) = file else {
        return Ok(Config::default());
    };
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: name.clone(),
        place: String::new(),
        message: format!("cannot be read: {e}"),
    })?;
    Config::parse(&text, &name)
}

impl Settings {
    /// Reads `file` (or `LAPSE_CONFIG`, or nothing: the built-in defaults) and applies the
    /// environment's overrides.
    pub fn load(file: Option<&Path>, env: Environment) -> anyhow::Result<Settings> {
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| env.get("LAPSE_CONFIG").map(Into::into));
        let config = read_config(file.as_deref())?;
        Ok(Settings {
            file,
            ..Settings::from_config(config, env)?
        })
    }

    /// Applies the environment's overrides to `config` and validates the result.
    pub fn from_config(mut config: Config, env: Environment) -> anyhow::Result<Settings> {
        if let Some(listen) = env.get("LAPSE_LISTEN") {
            config.server.listen = listen.to_string();
        }
        if let Some(url) = env.get("DATABASE_URL") {
            config.database.url = url.to_string();
        }
        match env.get("LAPSE_CLOCK") {
            Some("manual") => config.clock.mode = ClockMode::Manual,
            Some("system") => config.clock.mode = ClockMode::System,
            Some(other) => anyhow::bail!("LAPSE_CLOCK must be `manual` or `system`, not `{other}`"),
            None => {}
        }
        config.validate()?;
        if let Some(cron) = &config.sweeper.cron {
            cron_schedule(cron).with_context(|| format!("{}: [sweeper] cron", config.source))?;
        }
        let settings = Settings {
            config,
            env,
            file: None,
        };
        if settings.config.server.env == Env::Production && !settings.has_credentials() {
            anyhow::bail!(
                "env = \"production\" needs credentials: set LAPSE_ADMIN_KEY, LAPSE_SERVICE_KEY, \
                 [[auth.api_keys]], a cron secret or a JWT secret"
            );
        }
        Ok(settings)
    }

    /// Whether any credential is configured.
    pub fn has_credentials(&self) -> bool {
        let auth = &self.config.auth;
        self.env.get("LAPSE_ADMIN_KEY").is_some()
            || self.env.get("LAPSE_SERVICE_KEY").is_some()
            || self.env.get(&auth.cron_secret_env).is_some()
            || self.env.get(&auth.jwt_hs256_secret_env).is_some()
            || auth.jwt_rs256_public_key_file.is_some()
            || !auth.api_keys.is_empty()
    }

    /// Where a manual clock starts.
    pub fn clock_start(&self) -> Timestamp {
        self.config
            .clock
            .start
            .unwrap_or_else(lapse_engine::Clock::system_now)
    }
}

/// Parses a cron expression for `[sweeper] cron`.
pub fn cron_schedule(expr: &str) -> anyhow::Result<croner::Cron> {
    use std::str::FromStr as _;
    croner::Cron::from_str(expr)
        .map_err(|e| anyhow::anyhow!("`{expr}` is not a cron expression: {e}"))
}
