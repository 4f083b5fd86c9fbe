//! `/api/governance/budgets` and `/api/governance/rate-limits`: every limit with its live
//! usage, and the explicit resets.

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::admin::AdminWrite;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath};
use super::limits::{BudgetView, RateLimitView};
use super::path_id;
use crate::db;
use crate::domain::time::now_micros;
use crate::http::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_budgets))
        .routes(routes!(list_rate_limits))
        .routes(routes!(reset_budget))
        .routes(routes!(reset_rate_limit))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BudgetList {
    pub budgets: Vec<BudgetView>,
    pub count: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RateLimitList {
    pub rate_limits: Vec<RateLimitView>,
    pub count: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BudgetMessage {
    pub message: String,
    pub budget: BudgetView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RateLimitMessage {
    pub message: String,
    pub rate_limit: RateLimitView,
}

/// List every budget, whoever owns it, with live usage.
#[utoipa::path(get, path = "/api/governance/budgets", tag = "governance",
    responses((status = 200, body = BudgetList), (status = 401, body = ErrorBody)))]
pub async fn list_budgets(State(state): State<AppState>) -> ApiJson<BudgetList> {
    let s = state.store.snapshot();
    let now = now_micros();
    let mut budgets: Vec<_> = s.budgets().collect();
    budgets.sort_by_key(|b| (b.created_at, b.id));
    let budgets: Vec<_> = budgets
        .into_iter()
        .map(|b| BudgetView::new(b, now))
        .collect();
    ApiJson(BudgetList {
        count: budgets.len(),
        budgets,
    })
}

/// List every rate limit, whoever owns it, with live usage.
#[utoipa::path(get, path = "/api/governance/rate-limits", tag = "governance",
    responses((status = 200, body = RateLimitList), (status = 401, body = ErrorBody)))]
pub async fn list_rate_limits(State(state): State<AppState>) -> ApiJson<RateLimitList> {
    let s = state.store.snapshot();
    let now = now_micros();
    let mut limits: Vec<_> = s.rate_limits().collect();
    limits.sort_by_key(|r| (r.created_at, r.id));
    let rate_limits: Vec<_> = limits
        .into_iter()
        .map(|r| RateLimitView::new(r, now))
        .collect();
    ApiJson(RateLimitList {
        count: rate_limits.len(),
        rate_limits,
    })
}

/// Zero a budget's usage and start a new window now.
#[utoipa::path(post, path = "/api/governance/budgets/{id}/reset", tag = "governance",
    params(("id" = String, Path, description = "Budget id")),
    responses((status = 200, body = BudgetMessage), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn reset_budget(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<BudgetMessage>, ApiError> {
    let key = path_id("budget", &id)?;
    let w = AdminWrite::begin(&state).await;
    let budget = w
        .snapshot
        .find_budget(key)
        .ok_or_else(|| ApiError::not_found("budget", &id))?;
    let now = w.now;
    let mut tx = w.transaction().await?;
    db::reset_budget(&mut tx, key, now).await?;
    tx.commit(&state).await?;
    budget.reset(now);
    Ok(ApiJson(BudgetMessage {
        message: "Budget reset successfully".to_owned(),
        budget: BudgetView::new(budget, now),
    }))
}

/// Zero both dimensions of a rate limit and start new windows now.
#[utoipa::path(post, path = "/api/governance/rate-limits/{id}/reset", tag = "governance",
    params(("id" = String, Path, description = "Rate limit id")),
    responses((status = 200, body = RateLimitMessage), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn reset_rate_limit(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<RateLimitMessage>, ApiError> {
    let key = path_id("rate limit", &id)?;
    let w = AdminWrite::begin(&state).await;
    let limit = w
        .snapshot
        .find_rate_limit(key)
        .ok_or_else(|| ApiError::not_found("rate limit", &id))?;
    let now = w.now;
    let mut tx = w.transaction().await?;
    db::reset_rate_limit(&mut tx, key, now).await?;
    tx.commit(&state).await?;
    limit.reset(now);
    Ok(ApiJson(RateLimitMessage {
        message: "Rate limit reset successfully".to_owned(),
        rate_limit: RateLimitView::new(limit, now),
    }))
}
