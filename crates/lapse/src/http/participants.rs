//! Joining, leaving, heartbeats and activity.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, post};
use axum::{Json, Router};
use lapse_core::Role;
use lapse_core::lifecycle::Via;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::AppState;
use crate::http::auth::Auth;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Body, Path, session_id, user_id};

/// Most beats in one batch.
const MAX_BATCH: usize = 1000;

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/sessions/{id}/participants", post(join))
        .route("/v1/sessions/{id}/participants/{user}", delete(leave))
        .route("/v1/sessions/{id}/heartbeat", post(heartbeat))
        .route("/v1/heartbeats", post(heartbeats))
        .route("/v1/sessions/{id}/activity", post(activity))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinBody {
    user: String,
    role: Option<Role>,
    via: Option<String>,
}

async fn join(
    State(app): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    Body(body): Body<JoinBody>,
) -> ApiResult<impl IntoResponse> {
    let user = user_id("user", &body.user)?;
    let via = match body.via.as_deref() {
        None | Some("direct") | Some("link") => Via::Direct,
        Some("invite") => Via::Invite,
        Some(other) => {
            return Err(ApiError::validation(
                "via",
                format!("`{other}` is not `invite` or `direct`"),
            ));
        }
    };
    let p = app
        .engine
        .join(&caller, &session_id(&id)?, &user, body.role, via)
        .await?;
    Ok((StatusCode::CREATED, Json(p)))
}

async fn leave(
    State(app): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path((id, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    app.engine
        .leave(&caller, &session_id(&id)?, &user_id("user", &user)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BeatBody {
    user: String,
}

async fn heartbeat(
    State(app): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    Body(body): Body<BeatBody>,
) -> ApiResult<StatusCode> {
    app.engine
        .heartbeat(&caller, &session_id(&id)?, &user_id("user", &body.user)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Beat {
    session: String,
    user: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    beats: Vec<Beat>,
}

async fn heartbeats(
    State(app): State<Arc<AppState>>,
    Auth(caller): Auth,
    Body(body): Body<BatchBody>,
) -> ApiResult<Json<Value>> {
    if body.beats.len() > MAX_BATCH {
        return Err(ApiError::validation(
            "beats",
            format!("at most {MAX_BATCH} per batch"),
        ));
    }
    let beats: Vec<(String, String)> = body
        .beats
        .into_iter()
        .map(|b| (b.session, b.user))
        .collect();
    let (accepted, rejected) = app.engine.heartbeats(&caller, &beats).await?;
    Ok(Json(json!({ "accepted": accepted, "rejected": rejected })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivityBody {
    user: Option<String>,
    #[serde(rename = "type")]
    activity: String,
    /// A JSON number: `3.0` is the integer 3 to a JSON Schema validator, so to lapse too.
    count: Option<serde_json::Number>,
}

/// `n` as a whole number, if it is one (`3` or `3.0`, not `3.5`).
fn whole(n: &serde_json::Number) -> Option<i64> {
    n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .map(|f| f as i64)
    })
}

async fn activity(
    State(app): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    Body(body): Body<ActivityBody>,
) -> ApiResult<StatusCode> {
    let user = body
        .user
        .as_deref()
        .map(|u| user_id("user", u))
        .transpose()?;
    let count = match &body.count {
        None => 1,
        Some(n) => whole(n).ok_or_else(|| ApiError::validation("count", "a whole number"))?,
    };
    app.engine
        .activity(
            &caller,
            &session_id(&id)?,
            user.as_ref(),
            &body.activity,
            count,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
