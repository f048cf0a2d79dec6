//! `GET /v1/sessions/{id}/export?format=json|markdown|csv`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::export::{Format, render};
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
    let format: Format = q
        .format
        .as_deref()
        .unwrap_or("json")
        .parse()
        .map_err(|e: String| ApiError::validation("format", e))?;
    let id = session_id(&id)?;
    let session = app.engine.get(&caller, &id).await?;
    let events = app.engine.session_events(&caller, &id, 0, 1000).await?;
    let body = render(format, &session, &events);
    Ok(([(header::CONTENT_TYPE, format.content_type())], body).into_response())
}
