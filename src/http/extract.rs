//! Our own extractors, so that malformed bodies, bad query strings and oversized requests get
//! the JSON error envelope instead of axum's plain-text rejections.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::ApiError;

/// `axum::Json` with our rejection.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
            "expected a request body with content-type application/json".to_owned(),
        ),
        JsonRejection::JsonDataError(e) => {
            ApiError::InvalidRequest(format!("invalid body: {}", inner(&e)))
        }
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::InvalidRequest(format!("malformed JSON: {}", inner(&e)))
        }
        _ if status == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge("request body is too large".to_owned())
        }
        other => ApiError::InvalidRequest(other.body_text()),
    }
}

/// The serde message without axum's generic preamble.
fn inner(e: &dyn std::error::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(next) = source.source() {
        source = next;
    }
    source.to_string()
}

/// `axum::extract::Query` with our rejection.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => Err(
                ApiError::InvalidRequest(format!("invalid query string: {}", inner(&e))),
            ),
            Err(other) => Err(ApiError::InvalidRequest(other.body_text())),
        }
    }
}

/// `axum::extract::Path` with our rejection.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(e) => Err(ApiError::InvalidRequest(format!(
                "invalid path: {}",
                e.body_text()
            ))),
        }
    }
}

/// The raw body of a JSON request (content type checked, size limited), for handlers that
/// parse it themselves.
pub struct ApiJsonBytes(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiJsonBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim();
                mime == "application/json"
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType(
                "expected a request body with content-type application/json".to_owned(),
            ));
        }
        match axum::body::Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(ApiJsonBytes(bytes)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(
                ApiError::PayloadTooLarge("request body is too large".to_owned()),
            ),
            Err(e) => Err(ApiError::InvalidRequest(e.body_text())),
        }
    }
}
