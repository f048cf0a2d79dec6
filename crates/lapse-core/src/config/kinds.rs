//! `[kinds.*]`: a session type and its rules, read table by table so that a mistake is
//! reported with the kind and the rule it is in.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::clean_toml_error;
use crate::rules::{Action, Rule, Trigger};
use crate::time::Span;

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

/// The kinds' tables as one TOML document, keys in order, so equal rules are equal text.
pub(super) fn kinds_toml(kinds: &BTreeMap<String, toml::Table>) -> String {
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

pub(super) fn parse_kind(name: &str, mut table: toml::Table) -> Result<Kind, (String, String)> {
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
