//! The configuration file (SPEC §4): parsing, validation, and the built-in kinds.
//!
//! Every key of the spec is accepted from the first release, even where its behaviour comes
//! later, and every unknown key is an error. A file is read in two passes so that a mistake
//! inside a kind or a rule is reported with the file, the kind and the rule it is in.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::rules::{Action, Rule, Trigger};
use crate::time::{Span, Timestamp};

/// A mistake in a configuration file, with where it is.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The file's name (or `built-in defaults`).
    pub file: String,
    /// Where in it: ``kind `study`, rule `delete-unused` ``, `[server]`, ...
    pub place: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// The kind the mistake is in, if it is in one.
    pub fn kind(&self) -> Option<&str> {
        quoted_after(&self.place, "kind `")
    }

    /// The rule the mistake is in, if it is in one.
    pub fn rule(&self) -> Option<&str> {
        quoted_after(&self.place, "rule `")
    }
}

/// The name in backquotes after `label` in a place like "kind `study`, rule `x`".
fn quoted_after<'p>(place: &'p str, label: &str) -> Option<&'p str> {
    let start = place.find(label)? + label.len();
    let len = place[start..].find('`')?;
    Some(&place[start..start + len])
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.place.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.place, self.message)
        }
    }
}

/// Whether this is a developer's machine or a real deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Env {
    /// Lenient: with no credentials on a loopback listener, every request is admin.
    Development,
    /// Strict: refuses to start without credentials or with a manual clock.
    Production,
}

/// `[server]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Address to listen on.
    pub listen: String,
    /// `development` or `production`.
    pub env: Env,
    /// At shutdown, the longest lapse waits for requests in flight, the sweep's current batch
    /// and webhook deliveries under way before it flushes heartbeats and exits.
    pub drain: Span,
    /// Most requests answered at once (0: no limit); past it a request waits a moment for a
    /// place, then is refused with 429.
    pub max_in_flight: u32,
    /// Web origins (`https://app.example`, or `*` for any) whose pages may call lapse from
    /// the browser (CORS); none by default.
    pub cors_origins: Vec<String>,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: "127.0.0.1:7070".into(),
            env: Env::Development,
            drain: Span::from_secs(5),
            max_in_flight: 256,
            cors_origins: Vec::new(),
        }
    }
}

/// `[database]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Database {
    /// `sqlite://path` or `postgres://...`.
    pub url: String,
    /// Most connections in the pool.
    pub pool_size: Option<u32>,
    /// Longest a statement may run (PostgreSQL).
    pub statement_timeout: Option<Span>,
}

impl Default for Database {
    fn default() -> Self {
        Database {
            url: "sqlite://lapse.db".into(),
            pool_size: None,
            statement_timeout: None,
        }
    }
}

/// How the background sweeper is driven.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SweeperMode {
    /// Sleeps until the next deadline; woken when a change moves one earlier.
    Continuous,
    /// Sweeps on the `cron` schedule only.
    Schedule,
}

/// `[sweeper]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sweeper {
    /// `continuous` or `schedule`.
    pub mode: SweeperMode,
    /// Cron expression for `schedule` mode.
    pub cron: Option<String>,
    /// Sessions read per batch.
    pub batch: u32,
}

impl Default for Sweeper {
    fn default() -> Self {
        Sweeper {
            mode: SweeperMode::Continuous,
            cron: None,
            batch: 1000,
        }
    }
}

/// Where `now` comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockMode {
    /// The machine's clock.
    System,
    /// Moved only through `/v1/admin/clock`; for tests.
    Manual,
}

/// `[clock]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Clock {
    /// `system` or `manual`.
    pub mode: ClockMode,
    /// Where a manual clock starts (default: the system time at start-up).
    pub start: Option<Timestamp>,
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            mode: ClockMode::System,
            start: None,
        }
    }
}

/// `[log]`
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `text` (one line per record; colours only on a terminal) or `json` (one object per
    /// line, for a log pipeline). `LAPSE_LOG_FORMAT` overrides it.
    pub format: LogFormat,
}

/// How log records are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "log format must be `text` or `json`, not `{other}`"
            )),
        }
    }
}

/// What an API key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyRole {
    /// Everything.
    Admin,
    /// An app backend, acting as the system or, with `X-Actor`, as a user.
    Service,
    /// Sweep, stats and health.
    Cron,
}

/// One `[[auth.api_keys]]` entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// A name for logs and events (never the key itself).
    pub name: String,
    /// What it may do.
    pub role: KeyRole,
    /// Environment variable holding the key.
    pub key_env: Option<String>,
    /// Hex SHA-256 of the key, for keys kept out of the environment.
    pub key_sha256: Option<String>,
}

/// `[auth]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Environment variable holding the cron secret.
    pub cron_secret_env: String,
    /// Environment variable holding the HS256 JWT secret.
    pub jwt_hs256_secret_env: String,
    /// Required `iss` of user JWTs.
    pub jwt_issuer: Option<String>,
    /// Required `aud` of user JWTs.
    pub jwt_audience: Option<String>,
    /// PEM file with an RS256 public key for user JWTs.
    pub jwt_rs256_public_key_file: Option<String>,
    /// API keys.
    pub api_keys: Vec<ApiKey>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            cron_secret_env: "CRON_SECRET".into(),
            jwt_hs256_secret_env: "LAPSE_JWT_SECRET".into(),
            jwt_issuer: None,
            jwt_audience: None,
            jwt_rs256_public_key_file: None,
            api_keys: Vec::new(),
        }
    }
}

/// A rate limit, `N/sec|min|hour`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed per period.
    pub count: u32,
    /// The period.
    pub per: Span,
}

impl std::str::FromStr for RateLimit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a rate (use e.g. \"20/min\", \"5/sec\", \"100/hour\")");
        let (n, unit) = s.split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Span::from_secs(1),
            "m" | "min" | "minute" => Span::from_secs(60),
            "h" | "hour" => Span::from_secs(3600),
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(bad());
        }
        Ok(RateLimit { count, per })
    }
}

/// The operations a rate limit can name.
pub const RATE_LIMITED_OPERATIONS: &[&str] = &[
    "default",
    "create",
    "start",
    "end",
    "cancel",
    "reopen",
    "join",
    "leave",
    "heartbeat",
    "activity",
    "update",
    "delete",
    "sweep",
];

/// One `[[webhooks]]` endpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// Where deliveries are POSTed.
    pub url: String,
    /// Environment variable holding the `whsec_` secret (several, space-separated, rotate).
    pub secret_env: Option<String>,
    /// Globs on the event type.
    #[serde(default = "all_events")]
    pub events: Vec<String>,
    /// Kinds to deliver (all when absent).
    pub kinds: Option<Vec<String>>,
}

fn all_events() -> Vec<String> {
    vec!["*".into()]
}

impl Webhook {
    /// Whether an event of `event_type` in `kind` goes to this endpoint.
    pub fn wants(&self, event_type: &str, kind: &str) -> bool {
        self.events.iter().any(|g| glob_matches(g, event_type))
            && self
                .kinds
                .as_ref()
                .is_none_or(|k| k.iter().any(|k| k == kind))
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_matches(glob: &str, text: &str) -> bool {
    match glob.split_once('*') {
        None => glob == text,
        Some((head, rest)) => {
            let Some(tail) = text.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && glob_matches(rest, &tail[i..]))
        }
    }
}

/// `[delivery]`: how webhooks are sent.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Delivery {
    /// Wait before each attempt: the first is the delay before the first try.
    pub retry: Vec<Span>,
    /// Longest wait for an endpoint's answer.
    pub timeout: Span,
}

impl Default for Delivery {
    fn default() -> Self {
        let s = |secs| Span::from_secs(secs);
        Delivery {
            retry: vec![s(0), s(5), s(300), s(1800), s(7200), s(18000), s(36000)],
            timeout: s(10),
        }
    }
}

/// `[retention]`: how long history is kept.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Events and finished webhook deliveries older than this are pruned.
    pub events: Span,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            events: Span::from_secs(30 * 86_400),
        }
    }
}

/// `[rollout]`: how a new configuration may come into force.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// A reload that would fire more sessions than this at once is refused unless forced.
    pub max_immediate: Option<u64>,
}

/// A session type with its policy.
#[derive(Clone, Debug, Serialize)]
pub struct Kind {
    /// Its name.
    pub name: String,
    /// A participant is online while seen within this.
    pub presence_timeout: Span,
    /// Invites die after this much silence.
    pub invite_expiry: Option<Span>,
    /// Most joined participants at once.
    pub max_participants: Option<u32>,
    /// Most open sessions one host may have.
    pub max_open_per_host: Option<u32>,
    /// How long a host may reopen a session they ended.
    pub reopen_window: Option<Span>,
    /// Whether ending notifies the participants.
    pub notify_on_end: bool,
    /// Link in notifications; `{id}` is replaced.
    pub summary_url: Option<String>,
    /// The kind this kind's sessions belong to.
    pub parent_kind: Option<String>,
    /// The rules, in config order.
    pub rules: Vec<Rule>,
    /// How long after its deadline an `idle` rule waits before it fires: it covers heartbeats
    /// accepted but not yet written (held by another instance, or lost with one that was
    /// killed). Effects are still stamped at the deadline. Set by the engine, not config.
    #[serde(skip)]
    pub idle_grace: Span,
}

/// How long a participant stays online without being seen, unless the kind says otherwise.
const DEFAULT_PRESENCE_TIMEOUT: Span = Span::from_secs(90);

impl Kind {
    /// A kind called `name` with no rules and every setting at its default: the policy of a
    /// session whose kind the configuration does not have.
    pub fn ruleless(name: &str) -> Kind {
        Kind {
            name: name.to_string(),
            presence_timeout: DEFAULT_PRESENCE_TIMEOUT,
            invite_expiry: None,
            max_participants: None,
            max_open_per_host: None,
            reopen_window: None,
            notify_on_end: false,
            summary_url: None,
            parent_kind: None,
            rules: Vec::new(),
            idle_grace: Span::ZERO,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKind {
    presence_timeout: Option<Span>,
    invite_expiry: Option<Span>,
    max_participants: Option<u32>,
    max_open_per_host: Option<u32>,
    reopen_window: Option<Span>,
    #[serde(default)]
    notify_on_end: bool,
    summary_url: Option<String>,
    parent_kind: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    on: Trigger,
    after: Span,
    #[serde(rename = "do")]
    action: Action,
    warn_before: Option<Span>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: Server,
    #[serde(default)]
    database: Database,
    #[serde(default)]
    sweeper: Sweeper,
    #[serde(default)]
    clock: Clock,
    #[serde(default)]
    auth: Auth,
    rate_limits: Option<BTreeMap<String, String>>,
    #[serde(default)]
    webhooks: Vec<Webhook>,
    #[serde(default)]
    delivery: Delivery,
    #[serde(default)]
    retention: Retention,
    #[serde(default)]
    log: Log,
    #[serde(default)]
    rollout: Rollout,
    kinds: Option<BTreeMap<String, toml::Table>>,
}

/// A whole, validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// `[server]`
    pub server: Server,
    /// `[database]`
    pub database: Database,
    /// `[sweeper]`
    pub sweeper: Sweeper,
    /// `[clock]`
    pub clock: Clock,
    /// `[auth]`
    pub auth: Auth,
    /// `[log]`
    pub log: Log,
    /// `[rate_limits]`: operation → limit.
    pub rate_limits: BTreeMap<String, RateLimit>,
    /// `[[webhooks]]`
    pub webhooks: Vec<Webhook>,
    /// `[delivery]`
    pub delivery: Delivery,
    /// `[retention]`
    pub retention: Retention,
    /// `[rollout]`
    pub rollout: Rollout,
    /// `[kinds.*]`, by name.
    pub kinds: BTreeMap<String, Kind>,
    /// The `[kinds.*]` tables as TOML, written the same way whatever the file's layout: the
    /// rules in force, as instances sharing a database hand them to each other.
    pub kinds_toml: String,
    /// Where it was read from.
    pub source: String,
}

const DEFAULTS: &str = include_str!("defaults.toml");
const DEFAULTS_NAME: &str = "built-in defaults";

impl Default for Config {
    /// The built-in configuration: the five kinds of the seed systems.
    fn default() -> Self {
        // The defaults are part of the build and covered by tests; failing here is a bug in
        // defaults.toml, never in user input.
        Config::parse(DEFAULTS, DEFAULTS_NAME).expect("built-in defaults are valid")
    }
}

impl Config {
    /// Parses and validates `text`, read from `file`. A file without `[kinds]` gets the
    /// built-in kinds; one without `[rate_limits]` the built-in limits.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let err = |place: &str, message: String| ConfigError {
            file: file.to_string(),
            place: place.to_string(),
            message,
        };
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| err("", located_toml_error(text, &e)))?;
        let defaults = if file == DEFAULTS_NAME {
            RawConfig::default()
        } else {
            // Same reasoning as in `Default`: the embedded file is known-good.
            toml::from_str::<RawConfig>(DEFAULTS).expect("built-in defaults parse")
        };

        let raw_kinds = raw.kinds.or(defaults.kinds).unwrap_or_default();
        let kinds_toml = kinds_toml(&raw_kinds);
        let mut kinds = BTreeMap::new();
        for (name, table) in raw_kinds {
            let kind = parse_kind(&name, table).map_err(|(place, m)| err(&place, m))?;
            kinds.insert(name, kind);
        }

        let mut rate_limits = BTreeMap::new();
        for (op, text) in raw.rate_limits.or(defaults.rate_limits).unwrap_or_default() {
            if !RATE_LIMITED_OPERATIONS.contains(&op.as_str()) {
                return Err(err(
                    "[rate_limits]",
                    format!(
                        "unknown operation `{op}` (known: {})",
                        RATE_LIMITED_OPERATIONS.join(", ")
                    ),
                ));
            }
            let limit = text
                .parse()
                .map_err(|m: String| err("[rate_limits]", format!("`{op}`: {m}")))?;
            rate_limits.insert(op, limit);
        }

        let config = Config {
            server: raw.server,
            database: raw.database,
            sweeper: raw.sweeper,
            clock: raw.clock,
            auth: raw.auth,
            log: raw.log,
            rate_limits,
            webhooks: raw.webhooks,
            delivery: raw.delivery,
            retention: raw.retention,
            rollout: raw.rollout,
            kinds,
            kinds_toml,
            source: file.to_string(),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks what spans several sections; run again after environment overrides.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |place: &str, message: String| ConfigError {
            file: self.source.clone(),
            place: place.to_string(),
            message,
        };
        if self.kinds.is_empty() {
            return Err(err("[kinds]", "at least one kind is needed".into()));
        }
        for kind in self.kinds.values() {
            if let Some(parent) = &kind.parent_kind
                && !self.kinds.contains_key(parent)
            {
                return Err(err(
                    &format!("kind `{}`", kind.name),
                    format!("parent_kind `{parent}` is not a configured kind"),
                ));
            }
        }
        if self.server.env == Env::Production && self.clock.mode == ClockMode::Manual {
            return Err(err(
                "[clock]",
                "a manual clock is refused with env = \"production\"".into(),
            ));
        }
        for origin in &self.server.cors_origins {
            let ok = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin.ends_with('/')
                    && origin.split("://").nth(1).is_some_and(|rest| {
                        !rest.is_empty() && !rest.contains('/') && rest.is_ascii()
                    }));
            if !ok {
                return Err(err(
                    "[server]",
                    format!(
                        "cors_origins: `{origin}` is not an origin (scheme://host[:port], no path) or `*`"
                    ),
                ));
            }
        }
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(err(
                "[server]",
                format!(
                    "listen `{}` is not an address like 127.0.0.1:7070",
                    self.server.listen
                ),
            ));
        }
        let url = &self.database.url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres:")
            || url.starts_with("postgresql:"))
        {
            return Err(err(
                "[database]",
                format!("url `{url}` must start with sqlite: or postgres:"),
            ));
        }
        if self.sweeper.mode == SweeperMode::Schedule && self.sweeper.cron.is_none() {
            return Err(err(
                "[sweeper]",
                "mode = \"schedule\" needs a cron expression".into(),
            ));
        }
        if self.sweeper.batch == 0 {
            return Err(err("[sweeper]", "batch must be at least 1".into()));
        }
        for (i, key) in self.auth.api_keys.iter().enumerate() {
            let place = format!("[[auth.api_keys]] #{} `{}`", i + 1, key.name);
            match (&key.key_env, &key.key_sha256) {
                (Some(_), None) => {}
                (None, Some(hex))
                    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {}
                (None, Some(_)) => {
                    return Err(err(&place, "key_sha256 must be 64 hex digits".into()));
                }
                _ => {
                    return Err(err(
                        &place,
                        "give exactly one of key_env and key_sha256".into(),
                    ));
                }
            }
        }
        if self.delivery.retry.is_empty() {
            return Err(err(
                "[delivery]",
                "retry needs at least one entry (the first attempt)".into(),
            ));
        }
        if self.delivery.timeout == Span::ZERO {
            return Err(err("[delivery]", "timeout must be more than zero".into()));
        }
        if self.retention.events < Span::from_secs(3600) {
            return Err(err(
                "[retention]",
                "events must be kept at least an hour".into(),
            ));
        }
        for (i, hook) in self.webhooks.iter().enumerate() {
            let place = format!("[[webhooks]] #{}", i + 1);
            if !(hook.url.starts_with("http://") || hook.url.starts_with("https://")) {
                return Err(err(&place, format!("url `{}` must be http(s)", hook.url)));
            }
            for kind in hook.kinds.iter().flatten() {
                if !self.kinds.contains_key(kind) {
                    return Err(err(&place, format!("kind `{kind}` is not configured")));
                }
            }
        }
        Ok(())
    }

    /// The kind called `name`.
    pub fn kind(&self, name: &str) -> Option<&Kind> {
        self.kinds.get(name)
    }

    /// This configuration with the kinds of `other` (a candidate, or the rules another
    /// instance put in force); every other section stays.
    pub fn with_kinds_of(&self, other: &Config) -> Config {
        Config {
            kinds: other.kinds.clone(),
            kinds_toml: other.kinds_toml.clone(),
            ..self.clone()
        }
    }
}

/// The kinds' tables as one TOML document, keys in order, so equal rules are equal text.
fn kinds_toml(kinds: &BTreeMap<String, toml::Table>) -> String {
    let mut doc = toml::Table::new();
    doc.insert(
        "kinds".into(),
        toml::Value::Table(
            kinds
                .iter()
                .map(|(k, v)| (k.clone(), toml::Value::Table(v.clone())))
                .collect(),
        ),
    );
    // A table of tables always serializes; the fallback is never reached.
    toml::to_string(&doc).unwrap_or_default()
}

fn parse_kind(name: &str, mut table: toml::Table) -> Result<Kind, (String, String)> {
    let place = format!("kind `{name}`");
    let valid_name = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !valid_name {
        return Err((place, "kind names are 1-64 of a-z 0-9 _ -".into()));
    }
    let raw_rules = match table.remove("rules") {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items,
        Some(_) => return Err((place, "`rules` must be a list of [[rules]] tables".into())),
    };
    let raw: RawKind = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| (place.clone(), clean_toml_error(&e)))?;

    let mut rules: Vec<Rule> = Vec::new();
    for (i, item) in raw_rules.into_iter().enumerate() {
        let label = item
            .get("name")
            .and_then(|n| n.as_str())
            .map(|n| format!("{place}, rule `{n}`"))
            .unwrap_or_else(|| format!("{place}, rule #{}", i + 1));
        let r: RawRule = item
            .try_into()
            .map_err(|e: toml::de::Error| (label.clone(), clean_toml_error(&e)))?;
        if r.name.is_empty() || r.name.len() > 64 {
            return Err((label, "rule names are 1-64 characters".into()));
        }
        if rules.iter().any(|other| other.name == r.name) {
            return Err((label, "duplicate rule name".into()));
        }
        if !r.on.allows(r.action) {
            return Err((
                label,
                format!(
                    "`do = \"{}\"` cannot follow `on = \"{}\"`: {}",
                    r.action.as_str(),
                    r.on.as_str(),
                    r.on.why_not(r.action)
                ),
            ));
        }
        if r.on == Trigger::Orphaned && raw.parent_kind.is_none() {
            return Err((label, "`orphaned` needs the kind to set parent_kind".into()));
        }
        if let Some(warn) = r.warn_before
            && warn == Span::ZERO
        {
            return Err((label, "warn_before must be more than zero".into()));
        }
        rules.push(Rule {
            name: r.name,
            on: r.on,
            after: r.after,
            action: r.action,
            warn_before: r.warn_before,
        });
    }

    Ok(Kind {
        name: name.to_string(),
        presence_timeout: raw.presence_timeout.unwrap_or(DEFAULT_PRESENCE_TIMEOUT),
        invite_expiry: raw.invite_expiry,
        max_participants: raw.max_participants,
        max_open_per_host: raw.max_open_per_host,
        reopen_window: raw.reopen_window,
        notify_on_end: raw.notify_on_end,
        summary_url: raw.summary_url,
        parent_kind: raw.parent_kind,
        rules,
        idle_grace: Span::ZERO,
    })
}

/// toml's messages carry a source excerpt that points into a sub-table we re-parsed; keep
/// only the sentence.
fn clean_toml_error(e: &toml::de::Error) -> String {
    e.message().trim().to_string()
}

/// The error with where in `text` it is: `line 3, column 9: unclosed table, expected ]`.
fn located_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = clean_toml_error(e);
    let Some(start) = e.span().map(|s| s.start.min(text.len())) else {
        return message;
    };
    let before = text.get(..start).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .unwrap_or_default()
        .chars()
        .count()
        + 1;
    format!("line {line}, column {column}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syntax_error_says_where_it_is() {
        let e = Config::parse("[server]\nlisten = \"127.0.0.1:1\"\n[kinds.a\n", "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("bad.toml: line 3, column "), "{e}");
        let e = Config::parse("[server]\nlisten = 7\n", "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2, column 10"), "{e}");
    }

    #[test]
    fn built_in_defaults_define_the_five_seed_kinds() {
        let c = Config::default();
        let names: Vec<_> = c.kinds.keys().cloned().collect();
        assert_eq!(
            names,
            [
                "coding",
                "mentoring",
                "reading",
                "repair",
                "request",
                "study"
            ]
        );
        assert_eq!(c.kinds["repair"].max_open_per_host, Some(1));
        assert_eq!(c.rate_limits["end"].count, 20);
    }

    #[test]
    fn an_impossible_rule_is_refused_naming_file_kind_and_rule() {
        let text = r#"
[kinds.booking]
[[kinds.booking.rules]]
name = "oops"
on = "start_missed"
after = "0s"
do = "purge"
"#;
        let e = Config::parse(text, "lapse.toml").unwrap_err().to_string();
        assert!(e.contains("lapse.toml"), "{e}");
        assert!(e.contains("kind `booking`"), "{e}");
        assert!(e.contains("rule `oops`"), "{e}");
    }

    #[test]
    fn unknown_keys_bad_durations_and_duplicates_are_refused() {
        let unknown = "[kinds.a]\ncolour = \"red\"\n";
        assert!(
            Config::parse(unknown, "f")
                .unwrap_err()
                .to_string()
                .contains("colour")
        );
        let top = "[serverr]\nlisten = \"x\"\n";
        assert!(Config::parse(top, "f").is_err());
        let bad = "[kinds.a]\n[[kinds.a.rules]]\nname = \"r\"\non = \"idle\"\nafter = \"soon\"\ndo = \"expire\"\n";
        let e = Config::parse(bad, "f").unwrap_err().to_string();
        assert!(e.contains("rule `r`") && e.contains("soon"), "{e}");
        let dup = "[kinds.a]\n[[kinds.a.rules]]\nname = \"r\"\non = \"idle\"\nafter = \"1h\"\ndo = \"expire\"\n[[kinds.a.rules]]\nname = \"r\"\non = \"idle\"\nafter = \"2h\"\ndo = \"delete\"\n";
        assert!(
            Config::parse(dup, "f")
                .unwrap_err()
                .to_string()
                .contains("duplicate")
        );
    }

    #[test]
    fn every_documented_key_is_accepted() {
        let text = r#"
[server]
listen = "127.0.0.1:7070"
env = "development"
[database]
url = "sqlite://lapse.db"
[sweeper]
mode = "continuous"
batch = 1000
[clock]
mode = "system"
start = "2026-01-01T00:00:00Z"
[auth]
cron_secret_env = "CRON_SECRET"
jwt_hs256_secret_env = "LAPSE_JWT_SECRET"
jwt_issuer = "me"
jwt_audience = "you"
[[auth.api_keys]]
name = "backend"
role = "service"
key_env = "LAPSE_SERVICE_KEY"
[rate_limits]
end = "20/min"
default = "1200/min"
[[webhooks]]
url = "https://app.example/hooks/lapse"
secret_env = "LAPSE_WEBHOOK_SECRET"
events = ["session.*"]
kinds = ["study"]
[rollout]
max_immediate = 100
[kinds.study]
presence_timeout = "90s"
invite_expiry = "1h"
max_participants = 50
max_open_per_host = 1
reopen_window = "5m"
notify_on_end = true
summary_url = "/study/{id}/summary"
[[kinds.study.rules]]
name = "delete-unused"
on = "unused"
after = "30m"
do = "delete"
warn_before = "5m"
"#;
        let c = Config::parse(text, "full.toml").unwrap();
        assert_eq!(c.kinds.len(), 1);
        assert_eq!(c.webhooks.len(), 1);
    }

    #[test]
    fn event_type_globs_match_as_documented() {
        assert!(glob_matches("session.*", "session.created"));
        assert!(glob_matches("*", "participant.left"));
        assert!(glob_matches("*.ending_soon", "session.ending_soon"));
        assert!(!glob_matches("session.*", "participant.joined"));
        assert!(!glob_matches("session.created", "session.created2"));
    }

    #[test]
    fn production_refuses_a_manual_clock() {
        let text = "[server]\nenv = \"production\"\n[clock]\nmode = \"manual\"\n";
        assert!(
            Config::parse(text, "f")
                .unwrap_err()
                .to_string()
                .contains("manual")
        );
    }
}
