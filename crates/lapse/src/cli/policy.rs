//! `lapse check-config NEW.toml --against` and `lapse explain ID --with NEW.toml`: a rules
//! change judged against the configured database before it is made (SPEC §10).

use std::path::{Path, PathBuf};

use anyhow::Context;
use lapse_core::SessionId;
use lapse_core::explain::RuleExplanation;
use lapse_core::policy::Preview;

use super::cli_admin;
use super::tables::{self, table};
use crate::app::{Rules, open_engine};
use crate::settings::{Environment, Settings};

/// The preview as a table of rules, then the sessions that would fire at once.
pub fn preview_text(preview: &Preview, width: Option<usize>) -> String {
    let mut out = String::new();
    if preview.changes.is_empty() {
        out.push_str("no kind's rules change\n");
        return out;
    }
    let rows: Vec<Vec<String>> = preview
        .changes
        .iter()
        .map(|c| {
            let n = &c.sessions;
            vec![
                c.kind.clone(),
                c.rule.clone(),
                format!("{:?}", c.change).to_lowercase(),
                n.earlier.to_string(),
                n.later.to_string(),
                n.unchanged.to_string(),
                n.fire_now.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "KIND",
            "RULE",
            "CHANGE",
            "EARLIER",
            "LATER",
            "UNCHANGED",
            "FIRE NOW",
        ],
        &rows,
        1,
        width,
    ));
    let fire: Vec<Vec<String>> = preview
        .changes
        .iter()
        .flat_map(|c| {
            c.fire_now.iter().map(move |f| {
                vec![
                    f.session.to_string(),
                    format!("{}/{}", c.kind, f.new.rule),
                    f.current
                        .as_ref()
                        .map_or("never".to_string(), |d| format!("{} ({})", d.at, d.rule)),
                    f.new.at.to_string(),
                ]
            })
        })
        .collect();
    out.push('\n');
    if fire.is_empty() {
        out.push_str(&format!("nothing would fire at once at {}\n", preview.now));
    } else {
        out.push_str(&format!(
            "{} session(s) would fire at once at {} (the first 100 per rule):\n",
            preview.fire_now_total, preview.now
        ));
        out.push_str(&table(
            &["SESSION", "RULE", "DEADLINE NOW", "NEW DEADLINE"],
            &fire,
            0,
            width,
        ));
    }
    out
}

/// One policy's explanation of a session, a line per rule.
pub fn explain_lines(rules: &[RuleExplanation]) -> String {
    let mut out = String::new();
    if rules.is_empty() {
        out.push_str("  (no rules)\n");
    }
    for r in rules {
        let mark = if r.due {
            "DUE "
        } else if r.applies {
            "wait"
        } else {
            " -  "
        };
        out.push_str(&format!(
            "  {mark} {} (on {} → {}): {}\n",
            r.rule,
            r.on.as_str(),
            r.action,
            r.why
        ));
    }
    out
}

/// `lapse check-config [FILE] [--against] [--json]`: the file checked; with `--against`, its
/// rules judged against the configured database's sessions (exit 3 when some would fire at
/// once).
pub(super) async fn check_config(
    config: Option<&Path>,
    file: Option<PathBuf>,
    against: bool,
    json: bool,
    env: Environment,
) -> anyhow::Result<i32> {
    let database = config.map(Path::to_path_buf);
    let file = file.or(database.clone());
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
            print!("{}", preview_text(&preview, tables::width()));
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

/// `lapse explain ID [--with NEW.toml]`: why each rule of the session's kind does or does not
/// apply, under the rules in force and, with `--with`, under the new ones.
pub(super) async fn explain(
    config: Option<&Path>,
    env: Environment,
    id: String,
    with: Option<PathBuf>,
) -> anyhow::Result<i32> {
    let settings = Settings::load(config, env)?;
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
        print!("{}", explain_lines(&e.rules));
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
    print!("{}", explain_lines(&both.current));
    println!("under {}:", candidate.source);
    print!("{}", explain_lines(&both.new));
    Ok(0)
}
