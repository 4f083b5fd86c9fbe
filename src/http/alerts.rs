//! `GET /api/governance/alerts`: the threshold alert deliveries, newest first, with their
//! state (`docs/alerts.md`). Read from the database, so every replica lists the same.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiQuery};
use crate::alerts::display_url;
use crate::db::alerts::{DELIVERED, PENDING};
use crate::domain::time::{serialize_opt_rfc3339, serialize_rfc3339};
use crate::domain::Micros;
use crate::http::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_alerts))
}

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1_000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AlertsQuery {
    /// `pending` (not yet accepted by the receiver) or `delivered`; all when absent.
    #[param(pattern = "^(pending|delivered)$")]
    pub status: Option<String>,
    /// Deliveries per page, 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Deliveries to skip.
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

/// One delivery: what was sent (`alert`, the signed body) and how sending went.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertDelivery {
    pub id: String,
    /// The receiver's address (without credentials or query).
    pub webhook: String,
    /// `pending` or `delivered`.
    pub status: String,
    /// Attempts made so far.
    pub attempts: i64,
    /// Why the last attempt failed (`null` once delivered).
    pub last_error: Option<String>,
    #[serde(serialize_with = "serialize_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Micros,
    /// When the receiver answered 2xx.
    #[serde(serialize_with = "serialize_opt_rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub delivered_at: Option<Micros>,
    /// When a pending delivery is tried next.
    #[serde(serialize_with = "serialize_opt_rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_attempt_at: Option<Micros>,
    /// The body POSTed to the receiver: `id`, `type`, `threshold`, `level`, `entity_id`,
    /// `entity_name`, `limit_id`, `kind`, `used`, `max`, `window_start`, `resets_at`,
    /// `forecast_exhausted_at`, `at`.
    #[schema(value_type = Object)]
    pub alert: Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AlertList {
    pub alerts: Vec<AlertDelivery>,
    pub count: usize,
    pub total_count: i64,
    pub limit: i64,
    pub offset: i64,
}

/// List threshold alert deliveries, newest first.
#[utoipa::path(get, path = "/api/governance/alerts", tag = "governance", params(AlertsQuery),
    responses((status = 200, body = AlertList), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn list_alerts(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<AlertsQuery>,
) -> Result<ApiJson<AlertList>, ApiError> {
    let status = match q.status.as_deref() {
        None => None,
        Some(s @ (PENDING | DELIVERED)) => Some(s),
        Some(other) => {
            return Err(ApiError::InvalidRequest(format!(
                "status: must be 'pending' or 'delivered', got '{other}'"
            )))
        }
    };
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::InvalidRequest(format!(
            "limit: must be between 1 and {MAX_LIMIT}"
        )));
    }
    let offset = q.offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::InvalidRequest(
            "offset: must not be negative".to_owned(),
        ));
    }
    let (rows, total_count) = state.db.list_deliveries(status, limit, offset).await?;
    let alerts: Vec<AlertDelivery> = rows
        .into_iter()
        .map(|r| AlertDelivery {
            webhook: display_url(&r.webhook),
            alert: serde_json::from_str(&r.body).unwrap_or(Value::Null),
            next_attempt_at: (r.status == PENDING).then_some(r.next_attempt_at),
            id: r.id,
            status: r.status,
            attempts: r.attempts,
            last_error: r.last_error,
            created_at: r.created_at,
            delivered_at: r.delivered_at,
        })
        .collect();
    Ok(ApiJson(AlertList {
        count: alerts.len(),
        alerts,
        total_count,
        limit,
        offset,
    }))
}
