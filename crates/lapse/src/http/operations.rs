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
        .route("/metrics", get(metrics))
}

#[derive(Deserialize)]
struct SweepQuery {
    dry_run: Option<String>,
    kind: Option<String>,
    /// Only rules due at or before this instant (what a preview at that instant listed).
    until: Option<String>,
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
    let due_by = q
        .until
        .as_deref()
        .map(|t| {
            t.parse::<lapse_core::Timestamp>()
                .map_err(|_| ApiError::validation("until", "an RFC 3339 time"))
        })
        .transpose()?;
    let opts = SweepOptions {
        dry_run,
        due_by,
        kind: q.kind,
        progress: None,
        stop: app.shutdown.clone(),
    };
    if opts.dry_run {
        // It writes nothing: a client that stops waiting may take it down with it.
        return Ok(Json(json!(app.engine.sweep_once(&opts).await?)));
    }
    // One at a time: a sweep asked for while another runs waits for it, so its answer comes
    // once everything due by then is swept, and a cron job retrying a slow sweep cannot pile
    // sweeps up on the database. A request that gives up while waiting starts none.
    let turn = app.hand_sweep.clone().lock_owned().await;
    let engine = app.engine.clone();
    // The sweep runs to its end even if the client stops waiting (a cron job's time limit):
    // dropped halfway, it would leave its claimed rows to wait out their lease.
    let sweep = tokio::spawn(async move {
        let _turn = turn;
        // Asked for by hand (a cron credential, an operator): every heartbeat accepted so far
        // is written first, so the database holds them once the answer comes, for `lapse
        // sweep` and reports beside it. The continuous sweeper writes only the beats of what
        // it decides.
        engine.flush_heartbeats().await?;
        engine.sweep_once(&opts).await
    });
    let report = sweep.await.map_err(|e| {
        tracing::error!(error = %e, "a sweep asked for by hand did not finish");
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "internal",
            "the sweep stopped early; what it applied stays applied, the rest stays due",
        )
    })??;
    Ok(Json(json!(report)))
}

async fn kinds(State(app): State<Arc<AppState>>, Auth(caller): Auth) -> ApiResult<Json<Value>> {
    // A cron credential only sweeps and reads stats and health.
    caller.require_sessions()?;
    let config = app.engine.config();
    let kinds: Vec<_> = config.kinds.values().collect();
    Ok(Json(json!({ "kinds": kinds })))
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
    let last_seq = app.engine.last_event_seq(&caller).await?;
    Ok(Json(json!({
        "now": app.engine.now(),
        "sessions": { "total": total, "by_status": by_status, "by_kind": by_kind },
        "sweeper": sweeper,
        "events": { "last_seq": last_seq },
        "rules_version": app.engine.policy().version,
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
    app.engine.ready().await?;
    Ok(Json(json!({ "status": "ready" })))
}

/// `GET /metrics`: Prometheus text exposition, no credentials (like the probes).
async fn metrics(State(app): State<Arc<AppState>>) -> ApiResult<axum::response::Response> {
    use std::fmt::Write as _;

    use axum::response::IntoResponse;
    // Read at most once every few seconds, whoever asks (see `Engine::counted`).
    let counted = app.engine.counted().await?;
    let every = lapse_engine::health::COUNTS_FRESH_FOR.secs();
    let sweeper = app.engine.sweeper_figures().await?;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let sessions: Vec<(String, f64)> = counted
        .sessions
        .iter()
        .map(|c| {
            (
                format!("{{kind=\"{}\",status=\"{}\"}}", c.kind, c.status.as_str()),
                c.count as f64,
            )
        })
        .collect();
    metric(
        "lapse_sessions",
        "gauge",
        &format!("Sessions by kind and status (counted at most every {every} s)."),
        &sessions,
    );
    let one = |v: f64| vec![(String::new(), v)];
    metric(
        "lapse_sweeps_total",
        "counter",
        "Sweeps run by this instance.",
        &one(sweeper.sweeps as f64),
    );
    metric(
        "lapse_rules_applied_total",
        "counter",
        "Rules applied by this instance's sweeps.",
        &one(sweeper.applied as f64),
    );
    metric(
        "lapse_sweep_errors_total",
        "counter",
        "Sessions a sweep could not process.",
        &one(sweeper.errors as f64),
    );
    metric(
        "lapse_rearmed_total",
        "counter",
        "Due rows re-armed because activity had moved.",
        &one(sweeper.rearmed as f64),
    );
    metric(
        "lapse_last_sweep_duration_seconds",
        "gauge",
        "How long the last sweep took.",
        &one(sweeper.last_duration_ms.unwrap_or(0) as f64 / 1000.0),
    );
    metric(
        "lapse_heartbeats_pending",
        "gauge",
        "Heartbeats waiting for the next flush.",
        &one(sweeper.pending_heartbeats as f64),
    );
    metric(
        "lapse_last_heartbeat_flush_duration_seconds",
        "gauge",
        "How long the heartbeat flusher's last flush took (over 1 s: beats may be written after their idle grace).",
        &one(sweeper.last_flush_duration_ms.unwrap_or(0) as f64 / 1000.0),
    );
    let until = sweeper.next_deadline.map_or(0.0, |at| {
        (at.millis() - app.engine.now().millis()) as f64 / 1000.0
    });
    metric(
        "lapse_next_deadline_seconds",
        "gauge",
        "Seconds until the next stored deadline (negative: overdue).",
        &one(until),
    );
    metric(
        "lapse_overdue_sessions",
        "gauge",
        &format!("Sessions with rules due for over a minute (counted at most every {every} s)."),
        &one(counted.health.overdue as f64),
    );
    let webhooks: Vec<(String, f64)> = counted
        .webhooks()
        .iter()
        .map(|(status, n)| (format!("{{status=\"{status}\"}}"), *n as f64))
        .collect();
    metric(
        "lapse_webhook_deliveries",
        "gauge",
        &format!("Webhook deliveries waiting or given up (counted at most every {every} s)."),
        &webhooks,
    );
    metric(
        "lapse_rules_version",
        "gauge",
        "The version of the rules in force this instance decides under (instances differ only briefly after a reload).",
        &one(app.engine.policy().version as f64),
    );
    metric(
        "lapse_database_up",
        "gauge",
        "1 while the database answers, 0 during an outage.",
        &one(if app.engine.database_unavailable() {
            0.0
        } else {
            1.0
        }),
    );
    let histogram = |out: &mut String, name: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    };
    histogram(
        &mut out,
        "lapse_expiry_lag_seconds",
        "How late this instance's sweeps applied rules: the sweep's instant minus the deadline.",
    );
    app.engine
        .expiry_lag()
        .render("lapse_expiry_lag_seconds", "", &mut out);
    histogram(
        &mut out,
        "lapse_http_request_duration_seconds",
        "Time to answer a request (to its head, for event streams), by method, route and status.",
    );
    app.requests
        .render("lapse_http_request_duration_seconds", &mut out);
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response())
}
