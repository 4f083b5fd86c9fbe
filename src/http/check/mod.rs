//! `POST /v1/check`: may this request go out? The HTTP status is the decision's.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use crate::config::AckMode;
use crate::domain::time::{now_micros, serialize_rfc3339, MICROS_PER_SECOND};
use crate::domain::{Micros, Money};
use crate::engine::check::Verdict;
use crate::engine::check::{check, CheckInput, Decision, EntityRef, LimitCheck};
use crate::engine::level::{Level, LimitKind};
use crate::engine::reserve::place as reserve_holds;
use crate::http::state::AppState;
use crate::http::usage::DURABLE_TIMEOUT;
use crate::telemetry::HoldEvent;

mod json;
mod reserve;

pub use json::write_decision;
use reserve::reservation;
pub use reserve::{Affordable, HoldView, ReserveBody, ReservedView};

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
    /// Needed with `reserve`: the hold is the request's (and `attempt`'s).
    pub request_id: Option<String>,
    /// The attempt of `request_id` (default 0), as usage reports it.
    #[schema(minimum = 0)]
    pub attempt: Option<u64>,
    /// Sets capacity aside for this request until its usage settles it (all or nothing
    /// across every counter the check evaluates).
    pub reserve: Option<ReserveBody>,
    /// How long the hold lasts unless settled (default config `hold_ttl`, at most
    /// `hold_max_ttl`), e.g. `5m`.
    pub hold_ttl: Option<String>,
}

impl CheckRequest {
    /// What the engine checks.
    pub fn input(&self) -> CheckInput<'_> {
        CheckInput {
            virtual_key: self.virtual_key.as_deref(),
            provider: self.provider.as_deref().unwrap_or(""),
            model: self.model.as_deref().unwrap_or(""),
            user_id: self.user_id.as_deref(),
            request_type: self.request_type.as_deref(),
            reserve: self.reserve.is_some(),
            holds: true,
        }
    }

    /// The names of the headers the request carries.
    pub fn header_names(&self) -> Vec<&str> {
        self.headers
            .iter()
            .flat_map(|h| h.keys().map(String::as_str))
            .collect()
    }
}

/// The id of the entity a limit belongs to, serialized without allocating.
#[derive(Debug, Clone, Copy)]
pub struct IdView<'a>(EntityRef<'a>);

impl Serialize for IdView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            EntityRef::Id(id) => id.serialize(s),
            EntityRef::Name(name) => s.serialize_str(name),
        }
    }
}

/// One limit the check evaluated.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckView<'a> {
    #[schema(value_type = String, example = "virtual_key")]
    pub level: Level,
    /// The entity's id (a provider's or user's name for those levels).
    #[schema(value_type = String)]
    pub id: IdView<'a>,
    #[schema(value_type = String, example = "budget")]
    pub kind: LimitKind,
    /// Dollars for budgets; tokens or requests otherwise.
    #[schema(value_type = f64)]
    pub used: Amount,
    /// Set aside by holds of requests in flight, in the unit of `used`; counts as used.
    #[schema(value_type = f64)]
    pub held: Amount,
    #[schema(value_type = f64)]
    pub max: Amount,
    #[serde(serialize_with = "serialize_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub resets_at: Micros,
    pub exceeded: bool,
}

/// The decision; `status_code` is also the HTTP status.
#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionBody<'a> {
    pub allowed: bool,
    /// `allow`, or the reason: `budget_exceeded`, `rate_limited`, `token_limited`,
    /// `request_limited`, `virtual_key_not_found`, `virtual_key_blocked`, `provider_blocked`,
    /// `model_blocked`, `virtual_key_required`, `missing_required_headers`.
    pub decision: &'static str,
    pub status_code: u16,
    pub message: &'a str,
    pub virtual_key_id: Option<Uuid>,
    pub virtual_key_name: Option<&'a str>,
    pub team_id: Option<Uuid>,
    pub team_name: Option<&'a str>,
    pub customer_id: Option<Uuid>,
    pub customer_name: Option<&'a str>,
    /// Provider key ids the request is restricted to (from the key's provider config).
    pub include_only_key_ids: &'a [String],
    pub checks: Vec<CheckView<'a>>,
    /// The most the tightest counter still admits: `max - used - held`, at least 0; `null`
    /// when nothing limits it.
    pub max_affordable: Affordable,
    /// The hold a `reserve` placed (or the one this request and attempt hold already).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold: Option<HoldView>,
}

/// A used or maximum amount: dollars for budgets, a count for tokens and requests.
#[derive(Debug, Clone, Copy)]
pub enum Amount {
    Usd(f64),
    Count(i64),
}

impl Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Amount::Usd(v) => s.serialize_f64(v),
            Amount::Count(n) => s.serialize_i64(n),
        }
    }
}

fn amount(kind: LimitKind, n: i64) -> Amount {
    match kind {
        LimitKind::Budget => Amount::Usd(Money::from_nanos(n).to_usd()),
        LimitKind::Tokens | LimitKind::Requests => Amount::Count(n),
    }
}

fn check_view<'a>(c: &LimitCheck<'a>) -> CheckView<'a> {
    CheckView {
        level: c.level,
        id: IdView(c.id),
        kind: c.kind,
        used: amount(c.kind, c.used),
        held: amount(c.kind, c.held),
        max: amount(c.kind, c.max),
        resets_at: c.resets_at,
        exceeded: c.exceeded,
    }
}

impl<'a> DecisionBody<'a> {
    pub fn new(d: &'a Decision<'a>) -> Self {
        let key = d.key.map(|r| r.as_ref());
        let customer = key.and_then(|r| r.team_customer.as_ref().or(r.customer.as_ref()));
        let team = key.and_then(|r| r.team.as_ref());
        DecisionBody {
            allowed: d.verdict.status() == 200,
            decision: d.verdict.code(),
            status_code: d.verdict.status(),
            message: &d.message,
            virtual_key_id: key.map(|r| r.key.id),
            virtual_key_name: key.map(|r| r.key.name.as_str()),
            team_id: team.map(|t| t.id),
            team_name: team.map(|t| t.name.as_str()),
            customer_id: customer.map(|c| c.id),
            customer_name: customer.map(|c| c.name.as_str()),
            include_only_key_ids: d.include_only_key_ids,
            checks: d.checks.iter().map(check_view).collect(),
            max_affordable: Affordable::of(&d.checks),
            hold: d.hold.as_deref().map(HoldView::new),
        }
    }
}

/// What `/v1/check` answers with a 400 or 401: a decision (`missing_required_headers`,
/// `virtual_key_required`), or the error envelope (an invalid body, a missing or wrong token).
/// Only a schema: responses are built as one or the other.
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub enum DecisionOrError {
    Decision(DecisionBody<'static>),
    Error(ErrorBody),
}

/// Seconds until `at`, rounded up, at least 1.
pub(crate) fn retry_after(at: Micros, now: Micros) -> u64 {
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
        if value.as_ref().is_some_and(|v| v.contains('\0')) {
            return Err(ApiError::InvalidRequest(format!(
                "{name}: must not contain NUL characters"
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

/// Decodes and validates one `/v1/check` body as the handler does. For fuzzing.
pub fn decode_check(body: &[u8]) -> Result<CheckRequest, ApiError> {
    let req: CheckRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidRequest(format!("invalid body: {e}")))?;
    validate(&req)?;
    Ok(req)
}

/// Check whether a request may go out, against every limit that governs it.
#[utoipa::path(post, path = "/v1/check", tag = "gateway",
    request_body = CheckRequest,
    responses(
        (status = 200, description = "Allowed", body = DecisionBody),
        (status = 400, description = "Missing required headers, or an invalid body (error envelope)", body = DecisionOrError),
        (status = 401, description = "Virtual key required, or no valid token (error envelope)", body = DecisionOrError),
        (status = 402, description = "Budget exceeded", body = DecisionBody),
        (status = 403, description = "Key not found or blocked, provider or model blocked", body = DecisionBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 429, description = "Rate limited", body = DecisionBody),
        (status = 503, description = "ack = durable: a hold was placed but could not be committed in time (retry with the same request_id and attempt)", body = ErrorBody),
    ))]
pub async fn check_request(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CheckRequest>,
) -> Result<Response, ApiError> {
    validate(&req)?;
    let reserve = reservation(&req, &state.config)?;
    let now = now_micros();
    let mut input = req.input();
    input.holds = !state.holds.is_empty();
    let header_names = req.header_names();
    let snapshot = state.store.guard();
    let mut decision = check(&snapshot, &state.policy, &input, &header_names, now);
    let mut placed = false;
    if let Some(r) = &reserve {
        let allowed = decision.verdict == Verdict::Allow;
        placed = reserve_holds(
            &state.holds,
            &mut decision,
            r.request_id,
            r.attempt,
            r.amounts,
            now.saturating_add(r.ttl),
            now,
        );
        if placed {
            state.metrics.hold_event(HoldEvent::Placed);
        } else if allowed && decision.hold.is_none() {
            state.metrics.hold_event(HoldEvent::Refused);
        }
    }
    state.metrics.decision(decision.verdict);
    let retry = decision.retry_at.map(|at| retry_after(at, now));
    let status = StatusCode::from_u16(decision.verdict.status()).unwrap_or(StatusCode::OK);
    let mut json = Vec::with_capacity(384 + 192 * decision.checks.len());
    write_decision(&decision, &mut json);
    let mut response = (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        json,
    )
        .into_response();
    drop(decision);
    drop(snapshot);
    if let Some(seconds) = retry {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    if placed
        && state.config.ack == AckMode::Durable
        && !state.worker.durable(DURABLE_TIMEOUT).await
    {
        return Err(ApiError::Unavailable(
            "the hold was placed in memory but could not be made durable in time (database \
             unreachable); retry with the same request_id and attempt"
                .to_owned(),
        ));
    }
    Ok(response)
}

#[cfg(test)]
mod tests;
