//! `POST /v1/check`: may this request go out? The HTTP status is the decision's.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use crate::domain::time::{now_micros, rfc3339, MICROS_PER_SECOND};
use crate::domain::{Micros, Money};
use crate::engine::check::{check, CheckInput, Decision, EntityRef, LimitCheck};
use crate::engine::level::{Level, LimitKind};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(check_request))
}

/// Longest accepted string field, in bytes.
pub const MAX_STRING: usize = 256;
const MAX_HEADERS: usize = 128;
const MAX_HEADER_VALUE: usize = 8192;

/// What a gateway asks about; every field is optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct CheckRequest {
    /// The virtual key value the request carries.
    pub virtual_key: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub user_id: Option<String>,
    /// e.g. `chat_completion`; `list_models` and `mcp_tool_execution` skip the model filter.
    pub request_type: Option<String>,
    /// The request's headers, for the `required_headers` rule.
    pub headers: Option<HashMap<String, String>>,
    pub request_id: Option<String>,
}

/// One limit the check evaluated.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckView {
    #[schema(value_type = String, example = "virtual_key")]
    pub level: Level,
    /// The entity's id (a provider's or user's name for those levels).
    pub id: String,
    #[schema(value_type = String, example = "budget")]
    pub kind: LimitKind,
    /// Dollars for budgets; tokens or requests otherwise.
    pub used: f64,
    pub max: f64,
    pub resets_at: String,
    pub exceeded: bool,
}

/// The decision; `status_code` is also the HTTP status.
#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionBody {
    pub allowed: bool,
    /// `allow`, or the reason: `budget_exceeded`, `rate_limited`, `token_limited`,
    /// `request_limited`, `virtual_key_not_found`, `virtual_key_blocked`, `provider_blocked`,
    /// `model_blocked`, `virtual_key_required`, `missing_required_headers`.
    pub decision: &'static str,
    pub status_code: u16,
    pub message: String,
    pub virtual_key_id: Option<String>,
    pub virtual_key_name: Option<String>,
    pub team_id: Option<String>,
    pub team_name: Option<String>,
    pub customer_id: Option<String>,
    pub customer_name: Option<String>,
    /// Provider key ids the request is restricted to (from the key's provider config).
    pub include_only_key_ids: Vec<String>,
    pub checks: Vec<CheckView>,
}

fn amount(kind: LimitKind, n: i64) -> f64 {
    match kind {
        LimitKind::Budget => Money::from_nanos(n).to_usd(),
        LimitKind::Tokens | LimitKind::Requests => n as f64,
    }
}

fn check_view(c: &LimitCheck<'_>) -> CheckView {
    CheckView {
        level: c.level,
        id: match c.id {
            EntityRef::Id(id) => id.to_string(),
            EntityRef::Name(name) => name.to_owned(),
        },
        kind: c.kind,
        used: amount(c.kind, c.used),
        max: amount(c.kind, c.max),
        resets_at: rfc3339(c.resets_at),
        exceeded: c.exceeded,
    }
}

impl DecisionBody {
    pub fn new(d: &Decision<'_>) -> Self {
        let key = d.key.map(|r| r.as_ref());
        let customer = key.and_then(|r| r.team_customer.as_ref().or(r.customer.as_ref()));
        DecisionBody {
            allowed: d.verdict.status() == 200,
            decision: d.verdict.code(),
            status_code: d.verdict.status(),
            message: d.message.to_string(),
            virtual_key_id: key.map(|r| r.key.id.to_string()),
            virtual_key_name: key.map(|r| r.key.name.clone()),
            team_id: key.and_then(|r| r.team.as_ref()).map(|t| t.id.to_string()),
            team_name: key.and_then(|r| r.team.as_ref()).map(|t| t.name.clone()),
            customer_id: customer.map(|c| c.id.to_string()),
            customer_name: customer.map(|c| c.name.clone()),
            include_only_key_ids: d.include_only_key_ids.to_vec(),
            checks: d.checks.iter().map(check_view).collect(),
        }
    }
}

/// Seconds until `at`, rounded up, at least 1.
fn retry_after(at: Micros, now: Micros) -> u64 {
    let micros = (at - now).max(1) as u64;
    micros.div_ceil(MICROS_PER_SECOND as u64).max(1)
}

fn validate(req: &CheckRequest) -> Result<(), ApiError> {
    let fields = [
        ("virtual_key", &req.virtual_key),
        ("provider", &req.provider),
        ("model", &req.model),
        ("user_id", &req.user_id),
        ("request_type", &req.request_type),
        ("request_id", &req.request_id),
    ];
    for (name, value) in fields {
        if value.as_ref().is_some_and(|v| v.len() > MAX_STRING) {
            return Err(ApiError::InvalidRequest(format!(
                "{name}: must be at most {MAX_STRING} bytes"
            )));
        }
    }
    if let Some(headers) = &req.headers {
        if headers.len() > MAX_HEADERS {
            return Err(ApiError::InvalidRequest(format!(
                "headers: at most {MAX_HEADERS} entries"
            )));
        }
        if headers
            .iter()
            .any(|(k, v)| k.len() > MAX_STRING || v.len() > MAX_HEADER_VALUE)
        {
            return Err(ApiError::InvalidRequest(format!(
                "headers: names must be at most {MAX_STRING} bytes and values at most {MAX_HEADER_VALUE}"
            )));
        }
    }
    Ok(())
}

/// Check whether a request may go out, against every limit that governs it.
#[utoipa::path(post, path = "/v1/check", tag = "gateway",
    request_body = CheckRequest,
    responses(
        (status = 200, description = "Allowed", body = DecisionBody),
        (status = 400, description = "Missing required headers, or an invalid body (error envelope)", body = DecisionBody),
        (status = 401, description = "Virtual key required, or no valid token (error envelope)", body = DecisionBody),
        (status = 402, description = "Budget exceeded", body = DecisionBody),
        (status = 403, description = "Key not found or blocked, provider or model blocked", body = DecisionBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 429, description = "Rate limited", body = DecisionBody),
    ))]
pub async fn check_request(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CheckRequest>,
) -> Result<Response, ApiError> {
    validate(&req)?;
    let now = now_micros();
    let input = CheckInput {
        virtual_key: req.virtual_key.as_deref(),
        provider: req.provider.as_deref().unwrap_or(""),
        model: req.model.as_deref().unwrap_or(""),
        user_id: req.user_id.as_deref(),
        request_type: req.request_type.as_deref(),
    };
    let header_names: Vec<&str> = req
        .headers
        .iter()
        .flat_map(|h| h.keys().map(String::as_str))
        .collect();
    let snapshot = state.store.guard();
    let decision = check(&snapshot, &state.policy, &input, &header_names, now);
    let body = DecisionBody::new(&decision);
    let retry = decision.retry_at.map(|at| retry_after(at, now));
    drop(snapshot);
    let status = StatusCode::from_u16(body.status_code).unwrap_or(StatusCode::OK);
    let mut response = (status, ApiJson(body)).into_response();
    if let Some(seconds) = retry {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after(1_500_000, 0), 2);
        assert_eq!(retry_after(1_000_000, 0), 1);
        assert_eq!(retry_after(0, 5), 1);
    }
}
