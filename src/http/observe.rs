//! The outermost middleware: the request id, the request timeout, one access-log line and the
//! HTTP metrics of every request (one layer for all four: each layer costs per request).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, FailureDetail};
use crate::telemetry::Metrics;

/// The `x-request-id` header: taken from the caller when it is a sane token, else generated,
/// and echoed in the response.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A request's id, in the request's extensions for handlers that want it.
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

/// A caller's id is kept when it is 1–128 visible ASCII characters.
fn caller_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic())
}

fn generate_request_id() -> HeaderValue {
    let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    let mut buf = uuid::Uuid::encode_buffer();
    HeaderValue::from_str(id.simple().encode_lower(&mut buf))
        .expect("a UUID is a valid header value")
}

/// What the [`observe`] middleware needs.
#[derive(Debug, Clone)]
pub struct Observe {
    pub metrics: Arc<Metrics>,
    /// Longest a request may take (reading its body included); 408 after.
    pub request_timeout: Duration,
}

/// The middleware.
pub async fn observe(State(observe): State<Observe>, mut req: Request, next: Next) -> Response {
    let Observe {
        metrics,
        request_timeout,
    } = observe;
    let started = Instant::now();
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .filter(|v| caller_request_id(v))
        .cloned()
        .unwrap_or_else(generate_request_id);
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let mut response = match tokio::time::timeout(request_timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::RequestTimeout(format!(
            "the request took longer than {} ms",
            request_timeout.as_millis()
        ))
        .into_response(),
    };
    let took = started.elapsed();
    let status = response.status().as_u16();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    metrics.request(route, &method, status, took);
    let duration_ms = took.as_micros() as f64 / 1000.0;
    let request_id = id.to_str().unwrap_or("");
    match response.extensions_mut().remove::<FailureDetail>() {
        Some(FailureDetail(error)) => tracing::error!(
            target: "heimdall::access",
            method = %method, route, status, duration_ms, request_id, error,
            "request failed"
        ),
        None => tracing::info!(
            target: "heimdall::access",
            method = %method, route, status, duration_ms, request_id,
            "request"
        ),
    }
    response.headers_mut().insert(REQUEST_ID.clone(), id);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_request_ids_are_kept_only_when_sane() {
        assert!(caller_request_id(&HeaderValue::from_static("req-42_abc")));
        assert!(!caller_request_id(&HeaderValue::from_static("")));
        assert!(!caller_request_id(&HeaderValue::from_static("has space")));
        let long = "a".repeat(129);
        assert!(!caller_request_id(&HeaderValue::from_str(&long).unwrap()));
        let generated = generate_request_id();
        assert_eq!(generated.len(), 32);
        assert!(caller_request_id(&generated));
    }
}
