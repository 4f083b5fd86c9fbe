//! The one error envelope, `{"status_code", "error": {"type", "message"}}`, and the
//! single mapping from error kind to HTTP status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::db::DbError;
use crate::domain::LimitError;

/// An error as a client sees it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    /// A batch with invalid items: nothing was applied.
    #[error("{0}")]
    InvalidItems(String, Vec<ItemError>),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    Unavailable(String),
    /// Details go to the log, never to the client.
    #[error("internal error")]
    Internal(String),
}

/// The error envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub status_code: u16,
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable snake_case code, e.g. `invalid_request`, `not_found`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub message: String,
    /// Per-item errors of a rejected batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Vec<ItemError>>,
}

/// What is wrong with one item of a batch.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ItemError {
    pub index: usize,
    pub message: String,
}

impl ApiError {
    pub fn not_found(what: &str, id: &str) -> Self {
        ApiError::NotFound(format!("{what} '{id}' not found"))
    }

    fn status_and_kind(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidRequest(_) | ApiError::InvalidItems(..) => {
                (StatusCode::BAD_REQUEST, "invalid_request")
            }
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = self.status_and_kind();
        // The detail of an internal error is logged once, on the request's access-log line.
        let failure = match &self {
            ApiError::Internal(detail) => Some(FailureDetail(detail.clone())),
            _ => None,
        };
        let message = self.to_string();
        let details = match self {
            ApiError::InvalidItems(_, items) => Some(items),
            _ => None,
        };
        let body = ErrorBody {
            status_code: status.as_u16(),
            error: ErrorDetail {
                kind,
                message,
                details,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(failure) = failure {
            response.extensions_mut().insert(failure);
        }
        response
    }
}

impl From<LimitError> for ApiError {
    fn from(e: LimitError) -> Self {
        ApiError::InvalidRequest(e.to_string())
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Conflict(m) => {
                ApiError::Conflict(format!("conflicts with an existing entity: {m}"))
            }
            unreachable if unreachable.is_unreachable() => ApiError::Unavailable(format!(
                "the database is unreachable ({unreachable}); retry once it is back"
            )),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::from(DbError::from(e))
    }
}

/// Unknown routes.
pub async fn not_found_fallback() -> ApiError {
    ApiError::NotFound("no such route".to_owned())
}

/// Known routes called with a method they do not have.
pub async fn method_not_allowed_fallback() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The detail of a 5xx, handed from the error to the access log (never to the client).
#[derive(Debug, Clone)]
pub struct FailureDetail(pub String);
