//! The configuration's plain sections (`[server]`, `[database]`, `[sweeper]`, `[clock]`,
//! `[log]`, `[auth]`, `[rate_limits]`, `[[webhooks]]`, `[delivery]`, `[retention]`,
//! `[rollout]`): each a struct read as it is written, with its defaults. What spans several
//! of them is checked by [`super::Config::validate`].

use serde::{Deserialize, Serialize};

use crate::time::{Span, Timestamp};

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
    /// Most attempts under way to one endpoint at once (1 to [`MAX_DELIVERY_IN_FLIGHT`]).
    pub max_in_flight: u32,
}

/// The most a `[delivery] max_in_flight` may be: an endpoint's deliveries are claimed at
/// most that many at a time.
pub const MAX_DELIVERY_IN_FLIGHT: u32 = 1000;

impl Default for Delivery {
    fn default() -> Self {
        let s = |secs| Span::from_secs(secs);
        Delivery {
            retry: vec![s(0), s(5), s(300), s(1800), s(7200), s(18000), s(36000)],
            timeout: s(10),
            max_in_flight: 32,
        }
    }
}

/// `[retention]`: how long history is kept.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Events and finished webhook deliveries older than this are pruned.
    pub events: Span,
    /// Users' notifications older than this are pruned, read or not.
    pub notifications: Span,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            events: Span::from_secs(30 * 86_400),
            notifications: Span::from_secs(90 * 86_400),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_globs_match_as_documented() {
        assert!(glob_matches("session.*", "session.created"));
        assert!(glob_matches("*", "participant.left"));
        assert!(glob_matches("*.ending_soon", "session.ending_soon"));
        assert!(!glob_matches("session.*", "participant.joined"));
        assert!(!glob_matches("session.created", "session.created2"));
    }
}
