//! `/api/governance/providers`: budgets and rate limits of a provider, across every key.

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::admin::{self, entity, lookup, put_named};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath};
use super::limits::{LimitsBody, LimitsView};
use super::{text_field, Message};
use crate::db;
use crate::domain::time::{now_micros, serialize_rfc3339};
use crate::domain::Micros;
use crate::engine::Provider;
use crate::http::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_providers))
        .routes(routes!(get_provider, update_provider, delete_provider))
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
    Ok(ApiJson(ProviderResponse {
        provider: ProviderView::new(lookup::<Provider>(&s, &name)?, now_micros()),
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
    let (message, provider) = put_named(&state, name, body, |e: &Provider, now| {
        ProviderView::new(e, now)
    })
    .await?;
    Ok(ApiJson(ProviderMessage { message, provider }))
}

/// Remove a provider's governance with its budget and rate limit.
#[utoipa::path(delete, path = "/api/governance/providers/{name}", tag = "governance",
    params(("name" = String, Path, description = "Provider name, e.g. openai")),
    responses((status = 200, body = Message), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn delete_provider(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<ApiJson<Message>, ApiError> {
    admin::delete::<Provider>(&state, &name).await
}

entity!(
    Provider,
    "provider",
    "Provider",
    by name name in providers,
    db::upsert_provider,
    db::delete_provider
);
