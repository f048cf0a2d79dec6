//! The checks that span several sections of a configuration (a kind's parent among the
//! kinds, a manual clock refused in production, ...), run once a file is read and again
//! after environment overrides.

use super::{ClockMode, Config, ConfigError, Env, MAX_DELIVERY_IN_FLIGHT, SweeperMode};
use crate::time::Span;

impl Config {
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
        if !(1..=MAX_DELIVERY_IN_FLIGHT).contains(&self.delivery.max_in_flight) {
            return Err(err(
                "[delivery]",
                format!("max_in_flight must be from 1 to {MAX_DELIVERY_IN_FLIGHT}"),
            ));
        }
        if self.retention.events < Span::from_secs(3600) {
            return Err(err(
                "[retention]",
                "events must be kept at least an hour".into(),
            ));
        }
        if self.retention.notifications < Span::from_secs(3600) {
            return Err(err(
                "[retention]",
                "notifications must be kept at least an hour".into(),
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
}
