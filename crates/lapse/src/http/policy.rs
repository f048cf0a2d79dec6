//! Changing rules safely (SPEC §10): a candidate previewed against live sessions, and the
//! configuration file read again and put in force.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use lapse_core::{Config, SessionId, Timestamp};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::AppState;
use crate::http::auth::Auth;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Body, Query, flag};

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/policy/preview", post(preview))
        .route("/v1/admin/config/reload", post(reload))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviewBody {
    /// A whole configuration file, or only its `[kinds.*]` tables.
    config: String,
    /// Judge at this instant instead of now.
    at: Option<String>,
}

#[derive(Deserialize)]
struct PreviewQuery {
    session: Option<String>,
}

/// Reads a candidate: a whole file or only its kinds (every other section takes its default,
/// and only the kinds are compared).
fn candidate(text: &str) -> Result<Config, ApiError> {
    Config::parse(text, "candidate").map_err(|e| ApiError::invalid_config(&e))
}

async fn preview(
    State(app): State<Arc<AppState>>,
    Auth(caller): Auth,
    Query(q): Query<PreviewQuery>,
    Body(body): Body<PreviewBody>,
) -> ApiResult<Json<Value>> {
    let at = body
        .at
        .as_deref()
        .map(|t| {
            t.parse::<Timestamp>()
                .map_err(|_| ApiError::validation("at", "an RFC 3339 time"))
        })
        .transpose()?;
    let session = q
        .session
        .as_deref()
        .map(|id| SessionId::parse(id).map_err(|e| ApiError::validation("session", e)))
        .transpose()?;
    let candidate = candidate(&body.config)?;
    let preview = app
        .engine
        .preview(&caller, &candidate, at, session.as_ref())
        .await?;
    Ok(Json(json!(preview)))
}

#[derive(Deserialize)]
struct ReloadQuery {
    force: Option<String>,
}

async fn reload(
    State(app): State<Arc<AppState>>,
    Auth(caller): Auth,
    Query(q): Query<ReloadQuery>,
) -> ApiResult<Json<Value>> {
    // Before the file is read: what is in it is for admins only.
    caller.require_admin()?;
    let force = flag("force", q.force.as_deref())?;
    let file = crate::settings::read_config(app.config_file.as_deref())
        .map_err(|e| ApiError::invalid_config(&e))?;
    let reloaded = app.engine.reload(&caller, &file, force).await?;
    Ok(Json(json!(reloaded)))
}
