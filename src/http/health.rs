//! `/healthz` (the process is up), `/readyz` (the database answers and state is loaded) and
//! `/metrics` (Prometheus).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use crate::http::state::AppState;
use crate::telemetry::{Gauges, ENTITY_KINDS};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, body = Health)))]
pub async fn healthz() -> ApiJson<Health> {
    ApiJson(Health { status: "ok" })
}

/// Readiness: the database answers and the state is loaded; 503 with the reason otherwise.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    if !state.worker.db_up() {
        return ApiError::Unavailable(
            "database unreachable: the last flush failed; usage is kept in memory and will be \
             written when it is back"
                .to_owned(),
        )
        .into_response();
    }
    let ping = tokio::time::timeout(std::time::Duration::from_secs(2), state.db.ping()).await;
    match ping
        .map_err(|_| "timed out".to_owned())
        .and_then(|r| r.map_err(|e| e.to_string()))
    {
        Ok(()) => (StatusCode::OK, ApiJson(Health { status: "ok" })).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            ApiError::Unavailable(format!("database unreachable: {e}")).into_response()
        }
    }
}

/// Prometheus metrics in the text exposition format. `docs/operations.md` lists every series.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain; version=0.0.4", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.metrics.render(&gauges(&state));
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// The gauges' values now.
fn gauges(state: &AppState) -> Gauges {
    let snapshot = state.store.snapshot();
    let pending_deltas = snapshot
        .budgets()
        .filter(|b| b.counter.pending() != 0)
        .count()
        + snapshot
            .rate_limits()
            .map(|r| usize::from(r.tokens.pending() != 0) + usize::from(r.requests.pending() != 0))
            .sum::<usize>();
    let entities = ENTITY_KINDS.map(|kind| match kind {
        "customer" => snapshot.customers.len(),
        "team" => snapshot.teams.len(),
        "virtual_key" => snapshot.virtual_keys.len(),
        "provider" => snapshot.providers.len(),
        "model_config" => snapshot.model_configs.len(),
        _ => snapshot.users.len(),
    });
    Gauges {
        pending_deltas,
        database_up: state.worker.db_up(),
        entities,
        dedup_keys: state.dedup.len(),
        dedup_bytes: state.dedup.bytes(),
        holds: state.holds.len(),
        dedup_evicted: state.dedup.evicted(),
        dedup_unwritten: state.dedup.unqueued(),
    }
}
