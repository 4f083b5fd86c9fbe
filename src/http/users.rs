//! `/api/governance/users/{user_id}`: budgets and rate limits of one end user.

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
use crate::engine::User;
use crate::http::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_user, update_user, delete_user))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub user_id: String,
    #[serde(flatten)]
    pub limits: LimitsView,
    #[serde(serialize_with = "serialize_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Micros,
    #[serde(serialize_with = "serialize_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Micros,
}

impl UserView {
    fn new(u: &User, now: Micros) -> Self {
        UserView {
            user_id: u.user_id.clone(),
            limits: LimitsView::new(&u.limits, now),
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserResponse {
    pub user: UserView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserMessage {
    pub message: String,
    pub user: UserView,
}

/// Get a user's governance.
#[utoipa::path(get, path = "/api/governance/users/{user_id}", tag = "governance",
    params(("user_id" = String, Path, description = "The caller's user id")),
    responses((status = 200, body = UserResponse), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn get_user(
    State(state): State<AppState>,
    ApiPath(user_id): ApiPath<String>,
) -> Result<ApiJson<UserResponse>, ApiError> {
    let s = state.store.snapshot();
    Ok(ApiJson(UserResponse {
        user: UserView::new(lookup::<User>(&s, &user_id)?, now_micros()),
    }))
}

/// Create or update a user's budget and rate limit. Changed limits keep their usage.
#[utoipa::path(put, path = "/api/governance/users/{user_id}", tag = "governance",
    params(("user_id" = String, Path, description = "The caller's user id")),
    request_body = LimitsBody,
    responses((status = 200, body = UserMessage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn update_user(
    State(state): State<AppState>,
    ApiPath(user_id): ApiPath<String>,
    ApiJson(body): ApiJson<LimitsBody>,
) -> Result<ApiJson<UserMessage>, ApiError> {
    let user_id = text_field("user_id", &user_id)?;
    let (message, user) =
        put_named(&state, user_id, body, |e: &User, now| UserView::new(e, now)).await?;
    Ok(ApiJson(UserMessage { message, user }))
}

/// Remove a user's governance with its budget and rate limit.
#[utoipa::path(delete, path = "/api/governance/users/{user_id}", tag = "governance",
    params(("user_id" = String, Path, description = "The caller's user id")),
    responses((status = 200, body = Message), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn delete_user(
    State(state): State<AppState>,
    ApiPath(user_id): ApiPath<String>,
) -> Result<ApiJson<Message>, ApiError> {
    admin::delete::<User>(&state, &user_id).await
}

entity!(
    User,
    "user",
    "User",
    by name user_id in users,
    db::upsert_user,
    db::delete_user
);
