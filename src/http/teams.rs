//! `/api/governance/teams`: teams, optionally under a customer.

use std::sync::Arc;

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
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
use crate::domain::{Micros, Patch};
use crate::engine::{Limits, Snapshot, Team};
use crate::http::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_teams, create_team))
        .routes(routes!(get_team, update_team, delete_team))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateTeam {
    #[schema(min_length = 1, max_length = 256, pattern = "\\S")]
    pub name: String,
    pub customer_id: Option<String>,
    pub budget: Option<BudgetBody>,
    pub rate_limit: Option<RateLimitBody>,
}

/// Absent fields stay as they are; `"customer_id": null` detaches; `null` (or `{}`) removes a
/// budget or rate limit.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateTeam {
    #[schema(min_length = 1, max_length = 256, pattern = "\\S")]
    pub name: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub customer_id: Patch<String>,
    #[serde(default)]
    #[schema(value_type = Option<BudgetBody>)]
    pub budget: Patch<BudgetBody>,
    #[serde(default)]
    #[schema(value_type = Option<RateLimitBody>)]
    pub rate_limit: Patch<RateLimitBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TeamView {
    pub id: Uuid,
    pub name: String,
    pub customer_id: Option<Uuid>,
    #[serde(flatten)]
    pub limits: LimitsView,
    #[serde(serialize_with = "serialize_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Micros,
    #[serde(serialize_with = "serialize_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Micros,
}

impl TeamView {
    pub fn new(t: &Team, now: Micros) -> Self {
        TeamView {
            id: t.id,
            name: t.name.clone(),
            customer_id: t.customer_id,
            limits: LimitsView::new(&t.limits, now),
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TeamFilter {
    /// Only teams of this customer.
    pub customer_id: Option<String>,
}

page_response!(
    /// A page of teams.
    TeamList,
    teams,
    TeamView
);

#[derive(Debug, Serialize, ToSchema)]
pub struct TeamResponse {
    pub team: TeamView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TeamMessage {
    pub message: String,
    pub team: TeamView,
}

/// Parses a customer reference from a body and checks that the customer exists.
pub fn customer_ref(s: &Snapshot, raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw)
        .ok()
        .filter(|id| s.customers.contains_key(id))
        .ok_or_else(|| ApiError::InvalidRequest(format!("customer_id: customer '{raw}' not found")))
}

/// Parses a filter id from a query string.
pub fn filter_id(field: &str, raw: &Option<String>) -> Result<Option<Uuid>, ApiError> {
    raw.as_deref()
        .map(|r| {
            Uuid::parse_str(r)
                .map_err(|_| ApiError::InvalidRequest(format!("{field}: '{r}' is not a valid id")))
        })
        .transpose()
}

/// List teams.
#[utoipa::path(get, path = "/api/governance/teams", tag = "governance",
    params(PageQuery, TeamFilter),
    responses((status = 200, body = TeamList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list_teams(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<PageQuery>,
    ApiQuery(f): ApiQuery<TeamFilter>,
) -> Result<ApiJson<TeamList>, ApiError> {
    let customer = filter_id("customer_id", &f.customer_id)?;
    let s = state.store.snapshot();
    let now = now_micros();
    let mut all: Vec<&Arc<Team>> = s
        .teams
        .values()
        .filter(|t| q.matches(&t.name) && (customer.is_none() || t.customer_id == customer))
        .collect();
    all.sort_by_key(|t| (t.created_at, t.id));
    let page = q.page(all)?.map(|t| TeamView::new(t, now));
    Ok(ApiJson(page.into()))
}

/// Create a team.
#[utoipa::path(post, path = "/api/governance/teams", tag = "governance",
    request_body = CreateTeam,
    responses((status = 200, body = TeamMessage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn create_team(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateTeam>,
) -> Result<ApiJson<TeamMessage>, ApiError> {
    let name = text_field("name", &body.name)?;
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
    let customer_id = body
        .customer_id
        .as_deref()
        .map(|c| customer_ref(&w.snapshot, c))
        .transpose()?;
    let team = Team {
        id: Uuid::new_v4(),
        name,
        customer_id,
        limits,
        created_at: now,
        updated_at: now,
    };
    let team = w.put(team, None, |t, _| TeamView::new(t, now)).await?;
    Ok(ApiJson(TeamMessage {
        message: "Team created successfully".to_owned(),
        team,
    }))
}

/// Get a team.
#[utoipa::path(get, path = "/api/governance/teams/{id}", tag = "governance",
    params(("id" = String, Path, description = "Team id")),
    responses((status = 200, body = TeamResponse), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn get_team(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<TeamResponse>, ApiError> {
    let s = state.store.snapshot();
    Ok(ApiJson(TeamResponse {
        team: TeamView::new(lookup::<Team>(&s, &id)?, now_micros()),
    }))
}

/// Update a team. Absent fields stay; a changed budget or rate limit keeps its usage.
#[utoipa::path(put, path = "/api/governance/teams/{id}", tag = "governance",
    params(("id" = String, Path, description = "Team id")),
    request_body = UpdateTeam,
    responses((status = 200, body = TeamMessage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn update_team(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateTeam>,
) -> Result<ApiJson<TeamMessage>, ApiError> {
    let mut w = AdminWrite::begin(&state).await;
    let old = w.find::<Team>(&id)?;
    let now = w.now;
    let customer_id = match &body.customer_id {
        Patch::Absent => old.customer_id,
        Patch::Null => None,
        Patch::Value(raw) => Some(customer_ref(&w.snapshot, raw)?),
    };
    let name = match &body.name {
        Some(n) => text_field("name", n)?,
        None => old.name.clone(),
    };
    let limits = patch_limits(
        &old.limits,
        body.budget,
        body.rate_limit,
        "",
        now,
        &mut w.changes,
    )?;
    let team = Team {
        id: old.id,
        name,
        customer_id,
        limits,
        created_at: old.created_at,
        updated_at: now,
    };
    let team = w
        .put(team, Some(&old), |t, _| TeamView::new(t, now))
        .await?;
    Ok(ApiJson(TeamMessage {
        message: "Team updated successfully".to_owned(),
        team,
    }))
}

/// Delete a team. Its keys stay, detached; its budget and rate limit go.
#[utoipa::path(delete, path = "/api/governance/teams/{id}", tag = "governance",
    params(("id" = String, Path, description = "Team id")),
    responses((status = 200, body = Message), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn delete_team(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<Message>, ApiError> {
    admin::delete::<Team>(&state, &id).await
}

entity!(
    Team,
    "team",
    "Team",
    by id in teams,
    db::upsert_team,
    db::delete_team,
    put_team,
    remove_team
);
