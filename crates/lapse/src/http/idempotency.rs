//! `Idempotency-Key` on POST: the first response to a key is kept (per actor, 24 hours), and
//! the same request with the same key gets it again instead of acting twice. The same key with
//! a different request is refused.

use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::http::error::ApiError;
use crate::http::{AppState, MAX_BODY_BYTES, auth};

/// Longest key accepted.
const MAX_KEY: usize = 255;

/// The middleware.
pub async fn idempotency(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let Some(key) = req.headers().get("idempotency-key").cloned() else {
        return next.run(req).await;
    };
    let key = match key.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= MAX_KEY => k.to_string(),
        _ => {
            return ApiError::validation("Idempotency-Key", "1-255 visible ASCII characters")
                .into_response();
        }
    };
    // Unauthenticated requests go on to be refused by the handler as usual.
    let Ok(caller) = auth::caller_of(&app, req.uri().path(), req.headers()) else {
        return next.run(req).await;
    };
    let actor = auth::actor_label(&caller);
    let (parts, body) = req.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_BODY_BYTES).await else {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "validation_failed",
            "the body is larger than 64 KiB",
        )
        .into_response();
    };
    let mut hasher = Sha256::new();
    hasher.update(parts.method.as_str());
    hasher.update(parts.uri.to_string());
    hasher.update(&bytes);
    let hash = format!("{:x}", hasher.finalize());

    match app.engine.idempotent_response(&actor, &key).await {
        Ok(Some(first)) if first.request_hash == hash => {
            let status = StatusCode::from_u16(first.status).unwrap_or(StatusCode::OK);
            let mut response = (status, first.body).into_response();
            if let Ok(ct) = HeaderValue::from_str(&first.content_type) {
                response.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return response;
        }
        Ok(Some(_)) => {
            return ApiError::validation(
                "Idempotency-Key",
                "this key was already used with a different request",
            )
            .into_response();
        }
        Ok(None) => {}
        Err(e) => return ApiError::from(e).into_response(),
    }

    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    if response.status().is_server_error() {
        return response; // nothing happened; a retry should try again
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = to_bytes(body, usize::MAX).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if let Err(e) = app
        .engine
        .remember_response(
            &actor,
            &key,
            hash,
            parts.status.as_u16(),
            content_type,
            text,
        )
        .await
    {
        tracing::warn!(error = %e, "could not remember an idempotent response");
    }
    Response::from_parts(parts, Body::from(bytes))
}
