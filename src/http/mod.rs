//! The HTTP surface: each resource module exposes its routes with their OpenAPI description;
//! this module composes them and adds the layers (tracing, body limit, auth, fallbacks).

pub mod admin;
pub mod alerts;
pub mod auth;
pub mod budgets;
pub mod check;
pub mod customers;
pub mod error;
pub mod extract;
pub mod health;
pub mod holds;
pub mod limits;
pub mod model_configs;
pub mod observe;
pub mod page;
pub mod providers;
pub mod serve;
pub mod state;
pub mod teams;
pub mod ui;
pub mod usage;
pub mod usage_report;
pub mod users;
pub mod virtual_keys;

use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::http::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Heimdall",
        description = "Governance for LLM API gateways: budgets, rate limits and usage accounting \
                       for customers, teams, virtual keys, users, providers and models.",
        license(name = "Apache-2.0")
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "gateway", description = "Gateway API: checks before, usage after each LLM call"),
        (name = "governance", description = "Admin API (Bifrost-compatible)"),
        (name = "operations", description = "Health, readiness, API description")
    )
)]
struct ApiDoc;

/// Declares the bearer-token scheme every non-public route uses.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

fn api_router(batch_max_body_bytes: usize) -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(health::router())
        .merge(check::router())
        .merge(usage::router(batch_max_body_bytes))
        .merge(holds::router())
        .merge(customers::router())
        .merge(teams::router())
        .merge(virtual_keys::router())
        .merge(budgets::router())
        .merge(providers::router())
        .merge(model_configs::router())
        .merge(users::router())
        .merge(usage_report::router())
        .merge(alerts::router())
}

/// The OpenAPI document, as served at `/openapi.json` and printed by `heimdall openapi`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router(0).split_for_parts().1
}

/// The whole application router.
pub fn router(state: AppState) -> Router {
    let (api, doc) = api_router(state.config.batch_max_body_bytes).split_for_parts();
    let max_body = state.config.max_body_bytes;
    // Layers run outside in: observe (request id, request timeout, access log, metrics) →
    // catch panics → body limit → auth → the handler.
    api.merge(SwaggerUi::new("/docs").url("/openapi.json", doc))
        .merge(ui::router())
        .fallback(error::not_found_fallback)
        .method_not_allowed_fallback(error::method_not_allowed_fallback)
        .layer(axum::middleware::from_fn_with_state(
            std::sync::Arc::clone(&state.auth),
            auth::require_token,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(CatchPanicLayer::custom(panicked))
        .layer(axum::middleware::from_fn_with_state(
            observe::Observe {
                metrics: std::sync::Arc::clone(&state.metrics),
                request_timeout: state.config.request_timeout,
            },
            observe::observe,
        ))
        .with_state(state)
}

/// A handler that panicked answers 500 in the envelope; the process keeps serving.
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a handler panicked".to_owned());
    error::ApiError::Internal(format!("panic: {detail}")).into_response()
}

/// Validates a required text field: non-blank and at most 256 bytes.
pub fn text_field(field: &str, value: &str) -> Result<String, error::ApiError> {
    if value.trim().is_empty() {
        return Err(error::ApiError::InvalidRequest(format!(
            "{field}: must not be empty"
        )));
    }
    if value.len() > 256 {
        return Err(error::ApiError::InvalidRequest(format!(
            "{field}: must be at most 256 bytes"
        )));
    }
    no_nul(field, value)?;
    Ok(value.to_owned())
}

/// Rejects NUL characters, which PostgreSQL cannot store in text.
pub fn no_nul(field: &str, value: &str) -> Result<(), error::ApiError> {
    if value.contains('\0') {
        return Err(error::ApiError::InvalidRequest(format!(
            "{field}: must not contain NUL characters"
        )));
    }
    Ok(())
}

/// Parses an id from a path; anything that is not a UUID names no entity.
pub fn path_id(what: &str, raw: &str) -> Result<uuid::Uuid, error::ApiError> {
    uuid::Uuid::parse_str(raw).map_err(|_| error::ApiError::not_found(what, raw))
}

/// The body of a successful delete.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Message {
    pub message: String,
}
