//! Every failure leaves lapse as `application/problem+json`, mapped here and nowhere else.
//! Internal details (database errors) are logged once and never sent to clients.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use lapse_core::lifecycle::OpError;
use lapse_engine::EngineError;
use serde_json::{Value, json};

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    extra: Vec<(&'static str, Value)>,
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a status, a spec code and a detail.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
            extra: Vec::new(),
            retry_after: None,
        }
    }

    /// Adds a `Retry-After` header (seconds).
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// 422 `validation_failed` naming `field`.
    pub fn validation(field: &'static str, message: impl std::fmt::Display) -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            format!("{field}: {message}"),
        )
        .with("field", json!(field))
    }

    /// 400 `validation_failed`, for requests that cannot be read at all.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "validation_failed", detail)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    /// 403 `forbidden`.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// 404 `not_found`.
    pub fn not_found(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    /// Adds a member to the problem document.
    pub fn with(mut self, key: &'static str, value: Value) -> Self {
        self.extra.push((key, value));
        self
    }

    fn title(&self) -> &'static str {
        match self.code {
            "unauthorized" => "Unauthorized",
            "forbidden" => "Forbidden",
            "not_host" => "Only the host may do this",
            "not_self" => "Only the user themselves may do this",
            "not_found" => "Not found",
            "validation_failed" => "Invalid request",
            "invalid_transition" => "Not allowed in the session's state",
            "invite_expired" => "Invitation expired",
            "session_full" => "Session full",
            "host_has_open_session" => "Host already has an open session",
            "rate_limited" => "Too many requests",
            "conflict" => "Conflict",
            "database_unavailable" => "Database unavailable",
            "invalid_config" => "Invalid configuration",
            "rollout_refused" => "Too much would change at once",
            _ => "Internal error",
        }
    }
}

impl ApiError {
    /// 422 `invalid_config`: the message `lapse check-config` prints, with the kind and rule
    /// it is in.
    pub fn invalid_config(e: &lapse_core::config::ConfigError) -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_config",
            e.to_string(),
        )
        .with("kind", json!(e.kind()))
        .with("rule", json!(e.rule()))
        .with("message", json!(e.message))
    }
}

impl From<lapse_engine::policy::ReloadError> for ApiError {
    fn from(e: lapse_engine::policy::ReloadError) -> Self {
        use lapse_engine::policy::ReloadError;
        match e {
            ReloadError::Engine(e) => e.into(),
            ReloadError::RolloutRefused {
                fire_now,
                max,
                ref preview,
            } => {
                let preview = json!(preview);
                ApiError::new(StatusCode::CONFLICT, "rollout_refused", e.to_string())
                    .with("fire_now_total", json!(fire_now))
                    .with("max_immediate", json!(max))
                    .with("preview", preview)
            }
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        use StatusCode as S;
        let code = lapse_engine::ops::error_code(&e);
        let detail = e.to_string();
        match e {
            EngineError::NotFound(_) | EngineError::Op(OpError::NotParticipant(_)) => {
                ApiError::new(S::NOT_FOUND, code, detail)
            }
            EngineError::Forbidden(_) | EngineError::NotHost(_) | EngineError::NotSelf(_) => {
                ApiError::new(S::FORBIDDEN, code, detail)
            }
            EngineError::Op(OpError::Validation { field, message }) => {
                ApiError::validation(field, message)
            }
            EngineError::Clock(_) => ApiError::new(S::UNPROCESSABLE_ENTITY, code, detail),
            EngineError::Op(OpError::InviteExpired(_)) => ApiError::new(S::GONE, code, detail),
            EngineError::Op(_) | EngineError::Conflict(_) => {
                ApiError::new(S::CONFLICT, code, detail)
            }
            EngineError::HostHasOpenSession { blocking, .. } => {
                ApiError::new(S::CONFLICT, code, detail).with(
                    "blocking_session",
                    json!({ "id": blocking.0, "status": blocking.1 }),
                )
            }
            // Logged once per outage by the engine, not once per request.
            EngineError::Store(err) if err.is_unavailable() => ApiError::new(
                S::SERVICE_UNAVAILABLE,
                code,
                "lapse cannot reach its database right now; nothing was changed, try again",
            )
            .retry_after(1),
            EngineError::Store(err) => {
                tracing::error!(error = %err, "storage failed");
                ApiError::new(
                    S::SERVICE_UNAVAILABLE,
                    "internal",
                    "lapse could not reach its database; nothing was changed, try again",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": format!("https://lapse.dev/problems/{}", self.code.replace('_', "-")),
            "title": self.title(),
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
        });
        for (key, value) in self.extra {
            body[key] = value;
        }
        let mut response = (self.status, Json(body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The result type of handlers.
pub type ApiResult<T> = Result<T, ApiError>;
