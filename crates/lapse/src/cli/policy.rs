//! `lapse check-config NEW.toml --against` and `lapse explain ID --with NEW.toml`: a rules
//! change judged against the configured database before it is made (SPEC §10).

use lapse_core::explain::RuleExplanation;
use lapse_core::policy::Preview;

use super::remote::table;

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
