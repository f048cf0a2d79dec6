//! The event log (`/v1/events`, a session's timeline) and users' notification inboxes.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lapse_core::EventType;
use lapse_core::store::EventQuery;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::auth::Auth;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Path, Query, flag, session_id, user_id};
use crate::http::{AppState, page_limit, sse};

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/events", get(events))
        .route("/v1/sessions/{id}/events", get(session_events))
        .route("/v1/users/{user}/notifications", get(notifications))
        .route("/v1/users/{user}/notifications/{nid}/read", post(mark_read))
}

#[derive(Deserialize)]
struct EventsQuery {
    after: Option<i64>,
    limit: Option<u32>,
    kind: Option<String>,
    #[serde(rename = "type")]
    types: Option<String>,
    session: Option<String>,
}

fn event_types(text: Option<&str>) -> Result<Vec<EventType>, ApiError> {
    text.into_iter()
        .flat_map(|t| t.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            EventType::parse(t)
                .ok_or_else(|| ApiError::validation("type", format!("unknown event type `{t}`")))
        })
        .collect()
}

async fn events(
    State(app): State<Arc<AppState>>,
    Auth(caller): Auth,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Response> {
    let wants_stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.trim()
                .parse::<i64>()
                .map_err(|_| ApiError::validation("Last-Event-ID", "must be an event's seq"))
        })
        .transpose()?;
    let after = resume.or(q.after).unwrap_or(0).max(0);
    let query = EventQuery {
        after,
        limit: page_limit(q.limit, 100, 1000)?,
        kind: q.kind,
        types: event_types(q.types.as_deref())?,
        session: q.session.as_deref().map(session_id).transpose()?,
    };
    if wants_stream {
        return Ok(
            sse::stream(app.engine.clone(), caller, query, app.shutdown.clone())
                .await?
                .into_response(),
        );
    }
    let events = app.engine.events(&caller, &query).await?;
    let next_after = events.last().map_or(after, |e| e.seq);
    Ok(Json(json!({ "events": events, "next_after": next_after })).into_response())
}

#[derive(Deserialize)]
struct TimelineQuery {
    after: Option<i64>,
    limit: Option<u32>,
}

async fn session_events(
    State(app): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    Query(q): Query<TimelineQuery>,
) -> ApiResult<Json<Value>> {
    let after = q.after.unwrap_or(0).max(0);
    let limit = page_limit(q.limit, 100, 1000)?;
    let events = app
        .engine
        .session_events(&caller, &session_id(&id)?, after, limit)
        .await?;
    let next_after = events.last().map_or(after, |e| e.seq);
    Ok(Json(json!({ "events": events, "next_after": next_after })))
}

#[derive(Deserialize)]
struct InboxQuery {
    unread: Option<String>,
    limit: Option<u32>,
}

async fn notifications(
    State(app): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path(user): Path<String>,
    Query(q): Query<InboxQuery>,
) -> ApiResult<Json<Value>> {
    let user = user_id("user", &user)?;
    let unread = flag("unread", q.unread.as_deref())?;
    let limit = page_limit(q.limit, 100, 1000)?;
    let list = app
        .engine
        .notifications(&caller, &user, unread, limit)
        .await?;
    Ok(Json(json!({ "notifications": list })))
}

async fn mark_read(
    State(app): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path((user, nid)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let user = user_id("user", &user)?;
    let n = app.engine.mark_read(&caller, &user, &nid).await?;
    Ok(Json(json!(n)))
}
