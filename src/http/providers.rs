//! `/api/governance/providers`: budgets and rate limits of a provider, across every key.

use std::sync::Arc;

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath};
use super::limits::{patch_limits, BudgetBody, LimitsView, RateLimitBody};
use super::AdminTx;
use super::{text_field, Message};
use crate::db::{self, LimitChanges};
use crate::domain::time::{now_micros, serialize_rfc3339};
use crate::domain::{Micros, Patch};
use crate::engine::Provider;
use crate::http::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_providers))
        .routes(routes!(get_provider, update_provider, delete_provider))
}

/// Limits of a governance subject (a provider or a user). Absent fields stay as they are;
/// `null` (or `{}`) removes.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct LimitsBody {
    #[serde(default)]
    #[schema(value_type = Option<BudgetBody>)]
    pub budget: Patch<BudgetBody>,
    #[serde(default)]
    #[schema(value_type = Option<RateLimitBody>)]
    pub rate_limit: Patch<RateLimitBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderView {
    pub provider: String,
    #[serde(flatten)]
    pub limits: LimitsView,
    #[serde(serialize_with = "serialize_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Micros,
    #[serde(serialize_with = "serialize_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Micros,
}

impl ProviderView {
    fn new(p: &Provider, now: Micros) -> Self {
        ProviderView {
            provider: p.name.clone(),
            limits: LimitsView::new(&p.limits, now),
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderList {
    pub providers: Vec<ProviderView>,
    pub count: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderResponse {
    pub provider: ProviderView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderMessage {
    pub message: String,
    pub provider: ProviderView,
}

/// List provider governance.
#[utoipa::path(get, path = "/api/governance/providers", tag = "governance",
    responses((status = 200, body = ProviderList), (status = 401, body = ErrorBody)))]
pub async fn list_providers(State(state): State<AppState>) -> ApiJson<ProviderList> {
    let s = state.store.snapshot();
    let now = now_micros();
    let mut all: Vec<_> = s.providers.values().collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    let providers: Vec<_> = all.into_iter().map(|p| ProviderView::new(p, now)).collect();
    ApiJson(ProviderList {
        count: providers.len(),
        providers,
    })
}

/// Get one provider's governance.
#[utoipa::path(get, path = "/api/governance/providers/{name}", tag = "governance",
    params(("name" = String, Path, description = "Provider name, e.g. openai")),
    responses((status = 200, body = ProviderResponse), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn get_provider(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<ApiJson<ProviderResponse>, ApiError> {
    let s = state.store.snapshot();
    let p = s
        .providers
        .get(&name)
        .ok_or_else(|| ApiError::not_found("provider", &name))?;
    Ok(ApiJson(ProviderResponse {
        provider: ProviderView::new(p, now_micros()),
    }))
}

/// Create or update a provider's budget and rate limit. Changed limits keep their usage.
#[utoipa::path(put, path = "/api/governance/providers/{name}", tag = "governance",
    params(("name" = String, Path, description = "Provider name, e.g. openai")),
    request_body = LimitsBody,
    responses((status = 200, body = ProviderMessage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn update_provider(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<LimitsBody>,
) -> Result<ApiJson<ProviderMessage>, ApiError> {
    let name = text_field("provider", &name)?;
    let _w = state.worker.lock_config().await;
    let s = state.store.snapshot();
    let old = s.providers.get(&name);
    let now = now_micros();
    let mut changes = LimitChanges::default();
    let base = old.map(|o| o.limits.clone()).unwrap_or_default();
    let limits = patch_limits(&base, body.budget, body.rate_limit, "", now, &mut changes)?;
    let provider = Provider {
        name,
        limits,
        created_at: old.map_or(now, |o| o.created_at),
        updated_at: now,
    };
    let mut tx = AdminTx::begin(&state).await?;
    changes.write_upserts(&mut tx).await?;
    db::upsert_provider(&mut tx, &provider).await?;
    changes.write_deletes(&mut tx).await?;
    tx.commit(&state).await?;
    changes.publish();
    let view = ProviderView::new(&provider, now);
    let message = if old.is_some() {
        "Provider updated successfully"
    } else {
        "Provider created successfully"
    };
    state.store.update(|s| {
        s.providers
            .insert(provider.name.clone(), Arc::new(provider))
    });
    Ok(ApiJson(ProviderMessage {
        message: message.to_owned(),
        provider: view,
    }))
}

/// Remove a provider's governance with its budget and rate limit.
#[utoipa::path(delete, path = "/api/governance/providers/{name}", tag = "governance",
    params(("name" = String, Path, description = "Provider name, e.g. openai")),
    responses((status = 200, body = Message), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn delete_provider(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<ApiJson<Message>, ApiError> {
    let _w = state.worker.lock_config().await;
    let s = state.store.snapshot();
    let old = s
        .providers
        .get(&name)
        .ok_or_else(|| ApiError::not_found("provider", &name))?;
    let mut changes = LimitChanges::default();
    changes.remove_all(&old.limits);
    let mut tx = AdminTx::begin(&state).await?;
    db::delete_provider(&mut tx, &name).await?;
    changes.write_deletes(&mut tx).await?;
    tx.commit(&state).await?;
    state.store.update(|s| s.providers.remove(&name));
    Ok(ApiJson(Message {
        message: "Provider deleted successfully".to_owned(),
    }))
}
