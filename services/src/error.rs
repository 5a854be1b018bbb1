//! The one error type of the HTTP handlers and how it becomes a JSON response.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error a handler returns; each variant maps to one HTTP status and a stable code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or fails validation (400).
    #[error("{0}")]
    BadRequest(String),
    /// No or bad credentials (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated but not allowed (403).
    #[error("{0}")]
    Forbidden(String),
    /// The resource does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// The request is well formed but cannot be processed (422).
    #[error("{0}")]
    Unprocessable(String),
    /// A transient failure: database busy, dependency down, injected fault (503).
    #[error("{0}")]
    Unavailable(String),
    /// A database error (500 unless it is transient).
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// Anything else that is our fault (500).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn status_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Db(e) if crate::db::is_transient(e) => {
                (StatusCode::SERVICE_UNAVAILABLE, "db_busy")
            }
            ApiError::Db(_) => (StatusCode::INTERNAL_SERVER_ERROR, "db_error"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_code();
        if status.is_server_error() {
            tracing::warn!(error = %self, code, "request failed");
        }
        // Database details stay in the log; the client gets the stable code.
        let message = match &self {
            ApiError::Db(_) => "database error".to_string(),
            other => other.to_string(),
        };
        (
            status,
            Json(json!({ "error": { "code": code, "message": message } })),
        )
            .into_response()
    }
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;
