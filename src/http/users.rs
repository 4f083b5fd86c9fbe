//! `/api/governance/users/{user_id}`: budgets and rate limits of one end user.

use std::sync::Arc;

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath};
use super::limits::{patch_limits, LimitsView};
use super::providers::LimitsBody;
use super::AdminTx;
use super::{text_field, Message};
use crate::db::{self, LimitChanges};
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
    let u = s
        .users
        .get(&user_id)
        .ok_or_else(|| ApiError::not_found("user", &user_id))?;
    Ok(ApiJson(UserResponse {
        user: UserView::new(u, now_micros()),
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
    let _w = state.worker.lock_config().await;
    let s = state.store.snapshot();
    let old = s.users.get(&user_id);
    let now = now_micros();
    let mut changes = LimitChanges::default();
    let base = old.map(|o| o.limits.clone()).unwrap_or_default();
    let limits = patch_limits(&base, body.budget, body.rate_limit, "", now, &mut changes)?;
    let user = User {
        user_id,
        limits,
        created_at: old.map_or(now, |o| o.created_at),
        updated_at: now,
    };
    let mut tx = AdminTx::begin(&state).await?;
    changes.write_upserts(&mut tx).await?;
    db::upsert_user(&mut tx, &user).await?;
    changes.write_deletes(&mut tx).await?;
    tx.commit(&state).await?;
    changes.publish();
    let view = UserView::new(&user, now);
    let message = if old.is_some() {
        "User updated successfully"
    } else {
        "User created successfully"
    };
    state
        .store
        .update(|s| s.users.insert(user.user_id.clone(), Arc::new(user)));
    Ok(ApiJson(UserMessage {
        message: message.to_owned(),
        user: view,
    }))
}

/// Remove a user's governance with its budget and rate limit.
#[utoipa::path(delete, path = "/api/governance/users/{user_id}", tag = "governance",
    params(("user_id" = String, Path, description = "The caller's user id")),
    responses((status = 200, body = Message), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn delete_user(
    State(state): State<AppState>,
    ApiPath(user_id): ApiPath<String>,
) -> Result<ApiJson<Message>, ApiError> {
    let _w = state.worker.lock_config().await;
    let s = state.store.snapshot();
    let old = s
        .users
        .get(&user_id)
        .ok_or_else(|| ApiError::not_found("user", &user_id))?;
    let mut changes = LimitChanges::default();
    changes.remove_all(&old.limits);
    let mut tx = AdminTx::begin(&state).await?;
    db::delete_user(&mut tx, &user_id).await?;
    changes.write_deletes(&mut tx).await?;
    tx.commit(&state).await?;
    state.store.update(|s| s.users.remove(&user_id));
    Ok(ApiJson(Message {
        message: "User deleted successfully".to_owned(),
    }))
}
