//! A session with its participants, summary and timeline as a document: JSON, Markdown or
//! CSV (seed 000's "export to markdown"). Served at `GET /v1/sessions/{id}/export` and printed
//! by `lapse export`.

use std::fmt::Write as _;
use std::str::FromStr;

use lapse_core::Session;
use lapse_core::event::Event;
use serde_json::json;

/// An export format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Everything, as JSON.
    Json,
    /// A page for people.
    Markdown,
    /// The timeline, for spreadsheets.
    Csv,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "json" => Ok(Format::Json),
            "markdown" | "md" => Ok(Format::Markdown),
            "csv" => Ok(Format::Csv),
            other => Err(format!(
                "`{other}` is not a format: use json, markdown or csv"
            )),
        }
    }
}

impl Format {
    /// The media type of the rendered document.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Markdown => "text/markdown; charset=utf-8",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }
}

/// Renders `session` and its timeline.
pub fn render(format: Format, session: &Session, events: &[Event]) -> String {
    match format {
        Format::Markdown => markdown(session, events),
        Format::Csv => csv(session, events),
        Format::Json => {
            let doc = json!({
                "session": session,
                "participants": session.participants,
                "summary": session.summary,
                "timeline": events,
            });
            serde_json::to_string_pretty(&doc).unwrap_or_default()
        }
    }
}

/// The document a person reads.
pub fn markdown(s: &Session, events: &[Event]) -> String {
    let mut out = String::new();
    let title = if s.title.is_empty() {
        s.id.as_str()
    } else {
        s.title.as_str()
    };
    let _ = writeln!(out, "# {title}\n");
    let _ = writeln!(
        out,
        "- id: `{}`\n- kind: {}\n- host: {}\n- status: {}",
        s.id,
        s.kind,
        s.host,
        s.status.as_str()
    );
    let _ = writeln!(out, "- created: {}", s.created_at);
    if let Some(t) = s.started_at {
        let _ = writeln!(out, "- started: {t}");
    }
    if let Some(t) = s.ended_at {
        let _ = writeln!(out, "- ended: {t}");
    }
    if let Some(sum) = &s.summary {
        let _ = writeln!(out, "\n## Summary\n");
        let _ = writeln!(
            out,
            "- duration: {} min ({} s)",
            sum.duration_minutes, sum.duration_seconds
        );
        let _ = writeln!(out, "- participants: {}", sum.participants);
        for (name, n) in &sum.counters {
            let _ = writeln!(out, "- {name}: {n}");
        }
        let _ = writeln!(out, "- ended by: {} ({})", sum.ended_by, sum.end_reason);
    }
    let _ = writeln!(
        out,
        "\n## Participants\n\n| user | role | state | joined | left |\n|---|---|---|---|---|"
    );
    for p in &s.participants {
        let left = p.left_at.map(|t| t.to_string()).unwrap_or_default();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {left} |",
            p.user,
            p.role.as_str(),
            p.state.as_str(),
            p.joined_at
        );
    }
    let _ = writeln!(out, "\n## Timeline\n\n| at | event | by |\n|---|---|---|");
    for e in events {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            e.at,
            e.event_type.as_str(),
            e.actor
        );
    }
    out
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// The timeline as rows, for spreadsheets.
pub fn csv(s: &Session, events: &[Event]) -> String {
    let mut out = String::from("seq,at,applied_at,type,session_id,kind,actor,rule\n");
    for e in events {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{}",
            e.seq,
            e.at,
            e.applied_at,
            e.event_type.as_str(),
            csv_field(s.id.as_str()),
            csv_field(&e.kind),
            csv_field(&e.actor),
            csv_field(e.rule.as_deref().unwrap_or("")),
        );
    }
    out
}
