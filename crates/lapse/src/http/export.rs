//! `GET /v1/sessions/{id}/export`: a session with its participants, summary and timeline, as
//! JSON, Markdown or CSV (seed 000's "export to markdown").

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use lapse_core::Session;
use lapse_core::event::Event;
use serde::Deserialize;
use serde_json::json;

use crate::http::AppState;
use crate::http::auth::Auth;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Path, Query, session_id};

pub fn router() -> Router<Arc<AppState>> {
    Router::new().route("/v1/sessions/{id}/export", get(export))
}

#[derive(Deserialize)]
struct ExportQuery {
    format: Option<String>,
}

async fn export(
    State(app): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    Query(q): Query<ExportQuery>,
) -> ApiResult<Response> {
    let format = q.format.unwrap_or_else(|| "json".into());
    if !matches!(format.as_str(), "json" | "markdown" | "csv") {
        return Err(ApiError::validation("format", "one of json, markdown, csv"));
    }
    let id = session_id(&id)?;
    let session = app.engine.get(&caller, &id).await?;
    let events = app.engine.session_events(&caller, &id, 0, 1000).await?;
    Ok(match format.as_str() {
        "markdown" => (
            [(header::CONTENT_TYPE, "text/markdown; charset=utf-8")],
            markdown(&session, &events),
        )
            .into_response(),
        "csv" => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            csv(&session, &events),
        )
            .into_response(),
        _ => Json(json!({
            "session": session,
            "participants": session.participants,
            "summary": session.summary,
            "timeline": events,
        }))
        .into_response(),
    })
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
