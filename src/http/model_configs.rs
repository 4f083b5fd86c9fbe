//! `/api/governance/model-configs`: budgets and rate limits of a model, on one provider or on
//! every provider.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::admin::{self, entity, lookup, AdminWrite};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::limits::{patch_limits, BudgetBody, LimitsView, RateLimitBody};
use super::page::{page_response, PageQuery};
use super::{text_field, Message};
use crate::db;
use crate::domain::time::{now_micros, serialize_rfc3339};
use crate::domain::{Micros, Money, Patch};
use crate::engine::{Limits, ModelConfig, Prices, Snapshot};
use crate::http::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_model_configs, create_model_config))
        .routes(routes!(
            get_model_config,
            update_model_config,
            delete_model_config
        ))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateModelConfig {
    #[schema(min_length = 1, max_length = 256, pattern = "\\S")]
    pub model_name: String,
    /// The provider this config applies to; every provider when absent.
    pub provider: Option<String>,
    pub budget: Option<BudgetBody>,
    pub rate_limit: Option<RateLimitBody>,
    /// USD per million input (prompt) tokens, ≥ 0: prices usage that reports token counts
    /// without a cost.
    #[schema(minimum = 0)]
    pub input_cost_per_million_tokens: Option<f64>,
    /// USD per million output (completion) tokens, ≥ 0.
    #[schema(minimum = 0)]
    pub output_cost_per_million_tokens: Option<f64>,
}

/// Absent fields stay as they are; `"provider": null` makes the config apply to every
/// provider; `null` (or `{}`) removes a budget or rate limit.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateModelConfig {
    pub model_name: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub provider: Patch<String>,
    #[serde(default)]
    #[schema(value_type = Option<BudgetBody>)]
    pub budget: Patch<BudgetBody>,
    #[serde(default)]
    #[schema(value_type = Option<RateLimitBody>)]
    pub rate_limit: Patch<RateLimitBody>,
    /// `null` removes the price.
    #[serde(default)]
    #[schema(value_type = Option<f64>, minimum = 0)]
    pub input_cost_per_million_tokens: Patch<f64>,
    #[serde(default)]
    #[schema(value_type = Option<f64>, minimum = 0)]
    pub output_cost_per_million_tokens: Patch<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelConfigView {
    pub id: Uuid,
    pub model_name: String,
    pub provider: Option<String>,
    #[serde(flatten)]
    pub limits: LimitsView,
    /// USD per million input tokens; null when not priced.
    pub input_cost_per_million_tokens: Option<f64>,
    /// USD per million output tokens; null when not priced.
    pub output_cost_per_million_tokens: Option<f64>,
    #[serde(serialize_with = "serialize_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Micros,
    #[serde(serialize_with = "serialize_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Micros,
}

impl ModelConfigView {
    fn new(m: &ModelConfig, now: Micros) -> Self {
        ModelConfigView {
            id: m.id,
            model_name: m.model_name.clone(),
            provider: m.provider.clone(),
            limits: LimitsView::new(&m.limits, now),
            input_cost_per_million_tokens: m.prices.input.map(Money::to_usd),
            output_cost_per_million_tokens: m.prices.output.map(Money::to_usd),
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

page_response!(
    /// A page of model configs.
    ModelConfigList,
    model_configs,
    ModelConfigView
);

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelConfigResponse {
    pub model_config: ModelConfigView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelConfigMessage {
    pub message: String,
    pub model_config: ModelConfigView,
}

/// A price from a body (dollars per million tokens: finite, ≥ 0), or what `old` had when the
/// field is absent.
fn patch_price(
    field: &str,
    old: Option<Money>,
    patch: Patch<f64>,
) -> Result<Option<Money>, ApiError> {
    match patch {
        Patch::Absent => Ok(old),
        Patch::Null => Ok(None),
        Patch::Value(usd) => Money::from_usd(usd)
            .map(Some)
            .map_err(|e| ApiError::InvalidRequest(format!("{field}: {e}"))),
    }
}

fn check_unique(
    s: &Snapshot,
    model: &str,
    provider: Option<&str>,
    except: Option<Uuid>,
) -> Result<(), ApiError> {
    match s.model_config_for(model, provider) {
        Some(existing) if Some(existing.id) != except => Err(ApiError::Conflict(format!(
            "a model config for '{model}' on {} already exists",
            provider.map_or("every provider".to_owned(), |p| format!("provider '{p}'"))
        ))),
        _ => Ok(()),
    }
}

/// List model configs (`search` matches the model name).
#[utoipa::path(get, path = "/api/governance/model-configs", tag = "governance",
    params(PageQuery),
    responses((status = 200, body = ModelConfigList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list_model_configs(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<ApiJson<ModelConfigList>, ApiError> {
    let s = state.store.snapshot();
    let now = now_micros();
    let mut all: Vec<_> = s
        .model_configs
        .values()
        .filter(|m| q.matches(&m.model_name))
        .collect();
    all.sort_by_key(|m| (m.created_at, m.id));
    let page = q.page(all)?.map(|m| ModelConfigView::new(m, now));
    Ok(ApiJson(page.into()))
}

/// Create a model config; one per (model_name, provider).
#[utoipa::path(post, path = "/api/governance/model-configs", tag = "governance",
    request_body = CreateModelConfig,
    responses((status = 200, body = ModelConfigMessage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_model_config(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateModelConfig>,
) -> Result<ApiJson<ModelConfigMessage>, ApiError> {
    let model_name = text_field("model_name", &body.model_name)?;
    let provider = body
        .provider
        .as_deref()
        .map(|p| text_field("provider", p))
        .transpose()?;
    let prices = Prices {
        input: patch_price(
            "input_cost_per_million_tokens",
            None,
            body.input_cost_per_million_tokens.into(),
        )?,
        output: patch_price(
            "output_cost_per_million_tokens",
            None,
            body.output_cost_per_million_tokens.into(),
        )?,
    };
    let mut w = AdminWrite::begin(&state).await;
    let now = w.now;
    let limits = patch_limits(
        &Limits::default(),
        body.budget.into(),
        body.rate_limit.into(),
        "",
        now,
        &mut w.changes,
    )?;
    check_unique(&w.snapshot, &model_name, provider.as_deref(), None)?;
    let config = ModelConfig {
        id: Uuid::new_v4(),
        model_name,
        provider,
        limits,
        prices,
        created_at: now,
        updated_at: now,
    };
    Ok(ApiJson(ModelConfigMessage {
        message: "Model config created successfully".to_owned(),
        model_config: w
            .put(config, None, |m, _| ModelConfigView::new(m, now))
            .await?,
    }))
}

/// Get a model config.
#[utoipa::path(get, path = "/api/governance/model-configs/{id}", tag = "governance",
    params(("id" = String, Path, description = "Model config id")),
    responses((status = 200, body = ModelConfigResponse), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn get_model_config(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<ModelConfigResponse>, ApiError> {
    let s = state.store.snapshot();
    Ok(ApiJson(ModelConfigResponse {
        model_config: ModelConfigView::new(lookup::<ModelConfig>(&s, &id)?, now_micros()),
    }))
}

/// Update a model config. Absent fields stay; changed limits keep their usage.
#[utoipa::path(put, path = "/api/governance/model-configs/{id}", tag = "governance",
    params(("id" = String, Path, description = "Model config id")),
    request_body = UpdateModelConfig,
    responses((status = 200, body = ModelConfigMessage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update_model_config(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateModelConfig>,
) -> Result<ApiJson<ModelConfigMessage>, ApiError> {
    let mut w = AdminWrite::begin(&state).await;
    let old = w.find::<ModelConfig>(&id)?;
    let model_name = match &body.model_name {
        Some(n) => text_field("model_name", n)?,
        None => old.model_name.clone(),
    };
    let provider = match body.provider {
        Patch::Absent => old.provider.clone(),
        Patch::Null => None,
        Patch::Value(p) => Some(text_field("provider", &p)?),
    };
    let prices = Prices {
        input: patch_price(
            "input_cost_per_million_tokens",
            old.prices.input,
            body.input_cost_per_million_tokens,
        )?,
        output: patch_price(
            "output_cost_per_million_tokens",
            old.prices.output,
            body.output_cost_per_million_tokens,
        )?,
    };
    check_unique(&w.snapshot, &model_name, provider.as_deref(), Some(old.id))?;
    let now = w.now;
    let limits = patch_limits(
        &old.limits,
        body.budget,
        body.rate_limit,
        "",
        now,
        &mut w.changes,
    )?;
    let config = ModelConfig {
        id: old.id,
        model_name,
        provider,
        limits,
        prices,
        created_at: old.created_at,
        updated_at: now,
    };
    Ok(ApiJson(ModelConfigMessage {
        message: "Model config updated successfully".to_owned(),
        model_config: w
            .put(config, Some(&old), |m, _| ModelConfigView::new(m, now))
            .await?,
    }))
}

/// Delete a model config with its budget and rate limit.
#[utoipa::path(delete, path = "/api/governance/model-configs/{id}", tag = "governance",
    params(("id" = String, Path, description = "Model config id")),
    responses((status = 200, body = Message), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn delete_model_config(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<Message>, ApiError> {
    admin::delete::<ModelConfig>(&state, &id).await
}

entity!(
    ModelConfig,
    "model config",
    "Model config",
    by id in model_configs,
    db::upsert_model_config,
    db::delete_model_config,
    put_model_config,
    remove_model_config
);
