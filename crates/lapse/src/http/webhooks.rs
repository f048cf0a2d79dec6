//! The webhook delivery log: what was sent where, what came back, and a manual retry.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use lapse_core::store::DeliveryStatus;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::auth::Auth;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Path, Query};
use crate::http::{AppState, page_limit};

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/webhooks/endpoints", get(endpoints))
        .route("/v1/webhooks/deliveries", get(list))
        .route("/v1/webhooks/deliveries/{id}/retry", post(retry))
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
    limit: Option<u32>,
}

async fn list(
    State(app): State<Arc<AppState>>,
    Auth(caller): Auth,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let status = q
        .status
        .as_deref()
        .map(|s| {
            DeliveryStatus::parse(s)
                .ok_or_else(|| ApiError::validation("status", "one of pending, delivered, dead"))
        })
        .transpose()?;
    let limit = page_limit(q.limit, 100, 1000)?;
    let deliveries = app.engine.deliveries(&caller, status, limit).await?;
    Ok(Json(json!({ "deliveries": deliveries })))
}

async fn endpoints(State(app): State<Arc<AppState>>, Auth(caller): Auth) -> ApiResult<Json<Value>> {
    let endpoints = app.engine.webhook_endpoints(&caller).await?;
    Ok(Json(json!({ "endpoints": endpoints })))
}

async fn retry(
    State(app): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(app.engine.retry_delivery(&caller, &id).await?)))
}
