//! `/v1/holds/{request_id}`: a hold as it is, and its early release.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::check::HoldView;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use crate::http::state::AppState;
use crate::telemetry::HoldEvent;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_hold, release_hold))
}

/// Which attempt of the request.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AttemptQuery {
    /// Default 0.
    #[param(minimum = 0)]
    pub attempt: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HoldResponse {
    pub hold: HoldView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Released {
    pub released: bool,
}

fn not_found(request_id: &str, attempt: u64) -> ApiError {
    ApiError::NotFound(format!(
        "no hold for request '{request_id}' attempt {attempt} (settled, released, expired, or \
         never placed)"
    ))
}

/// A hold: what it reserves and until when.
#[utoipa::path(get, path = "/v1/holds/{request_id}", tag = "gateway",
    params(("request_id" = String, Path, description = "The request the hold is for"), AttemptQuery),
    responses((status = 200, body = HoldResponse), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn get_hold(
    State(state): State<AppState>,
    ApiPath(request_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<AttemptQuery>,
) -> Result<ApiJson<HoldResponse>, ApiError> {
    let attempt = q.attempt.unwrap_or(0);
    let hold = state
        .holds
        .get(&request_id, attempt)
        .ok_or_else(|| not_found(&request_id, attempt))?;
    Ok(ApiJson(HoldResponse {
        hold: HoldView::new(&hold),
    }))
}

/// Release a hold early (the request will not be made, or was abandoned): its capacity is
/// free again at once on this replica, and on the others within one flush interval.
#[utoipa::path(delete, path = "/v1/holds/{request_id}", tag = "gateway",
    params(("request_id" = String, Path, description = "The request the hold is for"), AttemptQuery),
    responses((status = 200, body = Released), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn release_hold(
    State(state): State<AppState>,
    ApiPath(request_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<AttemptQuery>,
) -> Result<ApiJson<Released>, ApiError> {
    let attempt = q.attempt.unwrap_or(0);
    state
        .holds
        .end(&request_id, attempt)
        .ok_or_else(|| not_found(&request_id, attempt))?;
    state.metrics.hold_event(HoldEvent::Released);
    Ok(ApiJson(Released { released: true }))
}
