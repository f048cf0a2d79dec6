//! `/v1/sessions`: create, list, read, update, delete, and the manual actions.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use lapse_core::lifecycle::Patch;
use lapse_core::store::SessionQuery;
use lapse_core::{SessionId, Status, Timestamp, UserId};
use lapse_engine::ops::CreateRequest;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::http::auth::Auth;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Body, Path, Query, session_id};
use crate::http::{AppState, page_limit};

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/sessions", post(create).get(list))
        .route("/v1/sessions/{id}", get(read).patch(update).delete(delete))
        .route("/v1/sessions/{id}/start", post(start))
        .route("/v1/sessions/{id}/end", post(end))
        .route("/v1/sessions/{id}/cancel", post(cancel))
        .route("/v1/sessions/{id}/reopen", post(reopen))
        .route("/v1/sessions/{id}/summary", get(summary))
        .route("/v1/sessions/{id}/explain", get(explain))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    id: Option<SessionId>,
    kind: String,
    title: Option<String>,
    metadata: Option<Map<String, Value>>,
    host: Option<UserId>,
    parent: Option<SessionId>,
    scheduled_start: Option<Timestamp>,
    scheduled_end: Option<Timestamp>,
}

async fn create(
    State(app): State<Arc<AppState>>,
    Auth(caller): Auth,
    Body(body): Body<CreateBody>,
) -> ApiResult<impl IntoResponse> {
    let session = app
        .engine
        .create(
            &caller,
            CreateRequest {
                id: body.id,
                kind: body.kind,
                title: body.title,
                metadata: body.metadata,
                host: body.host,
                parent: body.parent,
                scheduled_start: body.scheduled_start,
                scheduled_end: body.scheduled_end,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(session)))
}

#[derive(Deserialize)]
struct ListQuery {
    kind: Option<String>,
    status: Option<String>,
    host: Option<String>,
    participant: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
    /// Only sessions with a rule due at or before this instant, earliest first.
    due_before: Option<String>,
}

async fn list(
    State(app): State<Arc<AppState>>,
    Auth(caller): Auth,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let limit = page_limit(q.limit, 50, 500)?;
    let status = q
        .status
        .as_deref()
        .map(|s| {
            Status::parse(s).ok_or_else(|| {
                ApiError::validation(
                    "status",
                    "one of pending, active, completed, cancelled, expired",
                )
            })
        })
        .transpose()?;
    let user = |field: &'static str, v: Option<String>| {
        v.map(|u| UserId::parse(&u).map_err(|e| ApiError::validation(field, e)))
            .transpose()
    };
    if let Some(before) = &q.due_before {
        let before: lapse_core::Timestamp = before
            .parse()
            .map_err(|_| ApiError::validation("due_before", "an RFC 3339 time"))?;
        if q.cursor.is_some() {
            return Err(ApiError::validation(
                "cursor",
                "a due_before listing is one page, earliest first (raise limit, up to 500)",
            ));
        }
        let host = user("host", q.host)?;
        let participant = user("participant", q.participant)?;
        let sessions = app
            .engine
            .list_due(&caller, before, q.kind.as_deref(), limit)
            .await?;
        // The other filters thin the page.
        let sessions: Vec<_> = sessions
            .into_iter()
            .filter(|s| status.is_none_or(|st| st == s.status))
            .filter(|s| host.as_ref().is_none_or(|h| h == &s.host))
            .filter(|s| {
                participant
                    .as_ref()
                    .is_none_or(|p| s.participants.iter().any(|x| &x.user == p))
            })
            .collect();
        return Ok(Json(json!({ "sessions": sessions, "next_cursor": null })));
    }
    let query = SessionQuery {
        kind: q.kind,
        status,
        host: user("host", q.host)?,
        participant: user("participant", q.participant)?,
        after: q
            .cursor
            .map(|c| SessionId::parse(&c).map_err(|e| ApiError::validation("cursor", e)))
            .transpose()?,
        limit,
        ..SessionQuery::default()
    };
    let (sessions, next_cursor) = app.engine.list(&caller, query).await?;
    Ok(Json(
        json!({ "sessions": sessions, "next_cursor": next_cursor }),
    ))
}

async fn read(
    State(app): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(app.engine.get(&caller, &session_id(&id)?).await?))
}

/// `null` clears a field, absence keeps it.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    title: Option<String>,
    metadata: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "present")]
    scheduled_start: Option<Option<Timestamp>>,
    #[serde(default, deserialize_with = "present")]
    scheduled_end: Option<Option<Timestamp>>,
}

async fn update(
    State(app): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    Body(body): Body<UpdateBody>,
) -> ApiResult<impl IntoResponse> {
    let patch = Patch {
        title: body.title,
        metadata: body.metadata,
        scheduled_start: body.scheduled_start,
        scheduled_end: body.scheduled_end,
    };
    Ok(Json(
        app.engine.update(&caller, &session_id(&id)?, patch).await?,
    ))
}

async fn delete(
    State(app): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    app.engine.delete(&caller, &session_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn start(
    State(app): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(app.engine.start(&caller, &session_id(&id)?).await?))
}

async fn end(
    State(app): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let ended = app.engine.end(&caller, &session_id(&id)?).await?;
    let summary = ended.session.summary.clone();
    Ok(Json(
        json!({ "success": true, "session": ended.session, "summary": summary }),
    ))
}

async fn cancel(
    State(app): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(app.engine.cancel(&caller, &session_id(&id)?).await?))
}

async fn reopen(
    State(app): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(app.engine.reopen(&caller, &session_id(&id)?).await?))
}

async fn summary(
    State(app): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = session_id(&id)?;
    let s = app.engine.get(&caller, &id).await?;
    match s.summary {
        Some(summary) => Ok(Json(summary)),
        None => Err(ApiError::not_found(format!(
            "session `{id}` has no summary until it ends (it is {})",
            s.status.as_str()
        ))),
    }
}

async fn explain(
    State(app): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(app.engine.explain(&caller, &session_id(&id)?).await?))
}
