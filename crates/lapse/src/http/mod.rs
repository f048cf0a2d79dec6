//! The HTTP API (SPEC §6). One module per resource, each with its own `router()`; handlers
//! parse input, call the engine, and shape the answer. None of them touches the store.

pub mod auth;
pub mod error;
mod events;
mod export;
pub mod extract;
mod idempotency;
pub mod limits;
pub mod openapi;
mod operations;
mod participants;
pub mod policy;
pub mod serve;
mod sessions;
mod sse;
mod stream_conn;
pub mod trace;
mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use lapse_engine::Engine;

use crate::http::error::ApiError;

/// Largest request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler can reach.
pub struct AppState {
    /// The engine: the only door to sessions.
    pub engine: Arc<Engine>,
    /// Accepted credentials.
    pub credentials: auth::Credentials,
    /// `[rate_limits]`.
    pub limiter: limits::Limiter,
    /// `[server] max_in_flight`.
    pub in_flight: Option<limits::InFlight>,
    /// Cancelled when lapse begins to shut down: event streams end, a sweep asked for over
    /// HTTP stops after its current batch.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Request latencies for `/metrics`.
    pub requests: trace::Requests,
    /// The configuration file a reload reads again (`None`: the built-in defaults).
    pub config_file: Option<std::path::PathBuf>,
    /// Held by the sweep asked for over HTTP that is under way (see `operations::sweep`).
    pub hand_sweep: Arc<tokio::sync::Mutex<()>>,
}

/// Browser pages of `[server] cors_origins` may call lapse: every method the API has, the
/// headers its clients send, and the ones they read back.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderName, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        // Checked at load (`Config::validate`): visible ASCII, so valid header values.
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let names = |list: &[&'static str]| {
        list.iter()
            .map(|h| HeaderName::from_static(h))
            .collect::<Vec<_>>()
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers(names(&[
                "authorization",
                "content-type",
                "x-api-key",
                "x-actor",
                "idempotency-key",
                "last-event-id",
                "x-request-id",
            ]))
            .expose_headers(names(&[
                "retry-after",
                "x-request-id",
                "idempotent-replayed",
            ]))
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// The whole API.
pub fn router(state: Arc<AppState>) -> Router {
    let cors = cors(&state.engine.config().server.cors_origins);
    Router::new()
        .merge(sessions::router())
        .merge(participants::router())
        .merge(events::router())
        .merge(export::router())
        .merge(operations::router())
        .merge(webhooks::router())
        .merge(policy::router())
        .route("/openapi.json", axum::routing::get(openapi::serve))
        .route("/admin", axum::routing::get(admin_page))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "not_found",
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            idempotency::idempotency,
        ))
        // A request refused for want of a place costs next to nothing.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::in_flight,
        ))
        // A browser's preflight is answered before anything else is asked of it.
        .layer(tower::util::option_layer(cors))
        // Outermost: every request gets its id and its log line, refusals too.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            trace::log_request,
        ))
        .with_state(state)
}

/// `GET /admin`: seed 004's cleanup tool as a page; its data calls carry the key typed in.
async fn admin_page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("assets/admin.html"))
}

/// Page sizes: default and most.
pub(crate) fn page_limit(limit: Option<u32>, default: u32, max: u32) -> Result<u32, ApiError> {
    match limit {
        None => Ok(default),
        Some(0) => Err(ApiError::validation("limit", "must be at least 1")),
        Some(n) if n > max => Err(ApiError::validation("limit", format!("at most {max}"))),
        Some(n) => Ok(n),
    }
}
