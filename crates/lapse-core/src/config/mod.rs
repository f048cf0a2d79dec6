//! The configuration file (SPEC §4): parsing, validation, and the built-in kinds.
//!
//! Every key of the spec is accepted from the first release, even where its behaviour comes
//! later, and every unknown key is an error. A file is read in two passes so that a mistake
//! inside a kind or a rule is reported with the file, the kind and the rule it is in.
//!
//! - `sections`: the plain sections, each read as written, with its defaults.
//! - `kinds`: the `[kinds.*]` tables and their rules, read one at a time.
//! - `error`: where a mistake is.
//! - `checks`: what spans several sections, checked once the file is read.
//! - here: the whole file and its built-in defaults (`defaults.toml`: the seeds' kinds).

mod checks;
mod error;
mod kinds;
mod sections;

use std::collections::BTreeMap;

use serde::Deserialize;

pub use error::ConfigError;
pub use kinds::Kind;
pub use sections::{
    ApiKey, Auth, Clock, ClockMode, Database, Delivery, Env, KeyRole, Log, LogFormat,
    MAX_DELIVERY_IN_FLIGHT, RATE_LIMITED_OPERATIONS, RateLimit, Retention, Rollout, Server,
    Sweeper, SweeperMode, Webhook, glob_matches,
};

use error::located_toml_error;
use kinds::{kinds_toml, parse_kind};

/// The file as written, before its kinds are read and its sections checked.
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
[retention]
events = "30d"
notifications = "90d"
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
        assert_eq!(
            c.retention.notifications,
            crate::Span::from_secs(90 * 86_400)
        );
    }

    #[test]
    fn history_and_notifications_are_kept_an_hour_at_least() {
        for (key, what) in [("events", "events"), ("notifications", "notifications")] {
            let text = format!("[retention]\n{key} = \"59m\"\n");
            let e = Config::parse(&text, "f").unwrap_err().to_string();
            assert!(
                e.contains(&format!("{what} must be kept at least an hour")),
                "{e}"
            );
            let text = format!("[retention]\n{key} = \"1h\"\n");
            assert!(Config::parse(&text, "f").is_ok());
        }
    }

    #[test]
    fn an_endpoint_takes_from_one_to_a_thousand_attempts_at_once() {
        let parse = |n: u32| Config::parse(&format!("[delivery]\nmax_in_flight = {n}\n"), "f");
        for n in [0, 1001] {
            let e = parse(n).unwrap_err().to_string();
            assert!(e.contains("max_in_flight must be from 1 to 1000"), "{e}");
        }
        assert_eq!(parse(1).unwrap().delivery.max_in_flight, 1);
        assert_eq!(parse(1000).unwrap().delivery.max_in_flight, 1000);
        assert_eq!(Config::parse("", "f").unwrap().delivery.max_in_flight, 32);
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
