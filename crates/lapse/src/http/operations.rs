//! Operator routes: sweeping, kinds, stats, the manual clock, and liveness probes.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use lapse_core::{Span, Timestamp};
use lapse_engine::{Caller, SweepOptions};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::AppState;
use crate::http::auth::Auth;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Body, Query, flag};

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/sweep", get(sweep).post(sweep))
        .route("/v1/kinds", get(kinds))
        .route("/v1/stats", get(stats))
        .route("/v1/health", get(health))
        .route("/v1/admin/clock", get(clock).post(move_clock))
        .route("/livez", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/readyz", get(ready))
}

#[derive(Deserialize)]
struct SweepQuery {
    dry_run: Option<String>,
    kind: Option<String>,
}

async fn sweep(
    State(app): State<Arc<AppState>>,
    Auth(caller): Auth,
    Query(q): Query<SweepQuery>,
) -> ApiResult<Json<Value>> {
    caller.require_sweep()?;
    let dry_run = flag("dry_run", q.dry_run.as_deref())?;
    if let Some(kind) = &q.kind
        && app.engine.config().kind(kind).is_none()
    {
        return Err(ApiError::validation(
            "kind",
            format!("unknown kind `{kind}`"),
        ));
    }
    let report = app
        .engine
        .sweep_once(&SweepOptions {
            dry_run,
            kind: q.kind,
        })
        .await?;
    Ok(Json(json!(report)))
}

async fn kinds(State(app): State<Arc<AppState>>, Auth(_): Auth) -> Json<Value> {
    let kinds: Vec<_> = app.engine.config().kinds.values().collect();
    Json(json!({ "kinds": kinds }))
}

async fn stats(State(app): State<Arc<AppState>>, Auth(caller): Auth) -> ApiResult<Json<Value>> {
    let counts = app.engine.counts(&caller).await?;
    let mut by_kind: BTreeMap<String, BTreeMap<&str, i64>> = BTreeMap::new();
    let mut by_status: BTreeMap<&str, i64> = BTreeMap::new();
    for c in &counts {
        *by_kind
            .entry(c.kind.clone())
            .or_default()
            .entry(c.status.as_str())
            .or_default() += c.count;
        *by_status.entry(c.status.as_str()).or_default() += c.count;
    }
    let total: i64 = by_status.values().sum();
    let sweeper = app.engine.sweeper_figures().await?;
    Ok(Json(json!({
        "now": app.engine.now(),
        "sessions": { "total": total, "by_status": by_status, "by_kind": by_kind },
        "sweeper": sweeper,
    })))
}

async fn health(
    State(app): State<Arc<AppState>>,
    Auth(caller): Auth,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let report = match app.engine.health(&caller).await {
        Ok(report) => report,
        Err(lapse_engine::EngineError::Store(e)) => {
            tracing::error!(error = %e, "health check could not reach the database");
            let body = json!({
                "health": "unhealthy",
                "problems": [{ "code": "database_unreachable", "detail": "lapse cannot reach its database" }],
                "recommendations": ["Check the database is up and DATABASE_URL points at it."],
            });
            return Ok((axum::http::StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response());
        }
        Err(e) => return Err(e.into()),
    };
    let status = if report.health == lapse_engine::health::Health::Unhealthy {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    } else {
        axum::http::StatusCode::OK
    };
    Ok((status, Json(json!(report))).into_response())
}

fn require_admin(caller: &Caller) -> Result<(), ApiError> {
    caller.require_admin().map_err(ApiError::from)
}

async fn clock(State(app): State<Arc<AppState>>, Auth(caller): Auth) -> ApiResult<Json<Value>> {
    require_admin(&caller)?;
    let clock = app.engine.clock();
    Ok(Json(
        json!({ "now": clock.now(), "mode": if clock.is_manual() { "manual" } else { "system" } }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockBody {
    advance: Option<Span>,
    set: Option<Timestamp>,
}

async fn move_clock(
    State(app): State<Arc<AppState>>,
    Auth(caller): Auth,
    Body(body): Body<ClockBody>,
) -> ApiResult<Json<Value>> {
    require_admin(&caller)?;
    let clock = app.engine.clock();
    let now = match (body.advance, body.set) {
        (Some(by), None) => clock.advance(by),
        (None, Some(to)) => clock.set(to),
        _ => {
            return Err(ApiError::validation(
                "advance",
                "give exactly one of `advance` and `set`",
            ));
        }
    };
    let now = now.map_err(|e| ApiError::from(lapse_engine::EngineError::from(e)))?;
    Ok(Json(json!({ "now": now })))
}

async fn ready(State(app): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    app.engine.sweeper_figures().await.map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "internal",
            "database unreachable",
        )
    })?;
    Ok(Json(json!({ "status": "ready" })))
}
