//! Extractors that turn axum's own rejections (malformed JSON, wrong content type, bad query
//! strings, oversized bodies) into the same problem documents as every other error.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use lapse_core::{SessionId, UserId};
use serde::de::DeserializeOwned;

use crate::http::error::ApiError;

/// A JSON body; rejections become problems with the status axum chose (400/413/415/422).
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Body(v)),
            Err(rejection) => Err(json_problem(rejection)),
        }
    }
}

fn json_problem(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let detail = match &rejection {
        JsonRejection::MissingJsonContentType(_) => {
            "send the body as JSON with `Content-Type: application/json`".to_string()
        }
        JsonRejection::BytesRejection(_) if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
            "the body is larger than 64 KiB".to_string()
        }
        other => other.body_text(),
    };
    ApiError::new(status, "validation_failed", detail)
}

/// A query string; a bad one is a 400 problem.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(rejection) => Err(query_problem(rejection)),
        }
    }
}

fn query_problem(rejection: QueryRejection) -> ApiError {
    ApiError::bad_request(rejection.body_text())
}

/// Reads a session id from the path.
pub fn session_id(text: &str) -> Result<SessionId, ApiError> {
    SessionId::parse(text).map_err(|e| ApiError::validation("id", e))
}

/// Reads a user id from the path or a body.
pub fn user_id(field: &'static str, text: &str) -> Result<UserId, ApiError> {
    UserId::parse(text).map_err(|e| ApiError::validation(field, e))
}

/// Reads an optional boolean flag (`true`/`false`/`1`/`0`).
pub fn flag(field: &'static str, value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "{field}: `{other}` is not true or false"
        ))),
    }
}

/// Path parameters; an undecodable one is a 400 problem.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(rejection) => Err(ApiError::bad_request(rejection.body_text())),
        }
    }
}
