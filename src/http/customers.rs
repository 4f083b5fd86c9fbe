//! `/api/governance/customers`: the top of the hierarchy.

use std::sync::Arc;

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
use super::teams::TeamView;
use super::virtual_keys::VirtualKeyView;
use super::{text_field, Message};
use crate::db;
use crate::domain::time::{now_micros, serialize_rfc3339};
use crate::domain::{Micros, Patch};
use crate::engine::{Customer, Limits, Snapshot};
use crate::http::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_customers, create_customer))
        .routes(routes!(get_customer, update_customer, delete_customer))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateCustomer {
    #[schema(min_length = 1, max_length = 256, pattern = "\\S")]
    pub name: String,
    pub budget: Option<BudgetBody>,
    pub rate_limit: Option<RateLimitBody>,
}

/// Absent fields stay as they are; `null` (or `{}`) removes a budget or rate limit.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateCustomer {
    #[schema(min_length = 1, max_length = 256, pattern = "\\S")]
    pub name: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<BudgetBody>)]
    pub budget: Patch<BudgetBody>,
    #[serde(default)]
    #[schema(value_type = Option<RateLimitBody>)]
    pub rate_limit: Patch<RateLimitBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerView {
    pub id: Uuid,
    pub name: String,
    #[serde(flatten)]
    pub limits: LimitsView,
    /// Teams that belong to this customer.
    pub teams: Vec<TeamView>,
    /// Virtual keys attached to this customer directly (not through a team).
    pub virtual_keys: Vec<VirtualKeyView>,
    #[serde(serialize_with = "serialize_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Micros,
    #[serde(serialize_with = "serialize_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Micros,
}

impl CustomerView {
    pub fn new(c: &Customer, s: &Snapshot, now: Micros) -> Self {
        let mut teams: Vec<_> = s
            .teams
            .values()
            .filter(|t| t.customer_id == Some(c.id))
            .collect();
        teams.sort_by_key(|t| (t.created_at, t.id));
        let mut keys: Vec<_> = s
            .virtual_keys
            .values()
            .filter(|k| k.customer_id == Some(c.id))
            .collect();
        keys.sort_by_key(|k| (k.created_at, k.id));
        CustomerView {
            id: c.id,
            name: c.name.clone(),
            limits: LimitsView::new(&c.limits, now),
            teams: teams.into_iter().map(|t| TeamView::new(t, now)).collect(),
            virtual_keys: keys
                .into_iter()
                .map(|k| VirtualKeyView::new(k, now))
                .collect(),
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

page_response!(
    /// A page of customers.
    CustomerList,
    customers,
    CustomerView
);

#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerResponse {
    pub customer: CustomerView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerMessage {
    pub message: String,
    pub customer: CustomerView,
}

/// List customers.
#[utoipa::path(get, path = "/api/governance/customers", tag = "governance",
    params(PageQuery),
    responses((status = 200, body = CustomerList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list_customers(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<ApiJson<CustomerList>, ApiError> {
    let s = state.store.snapshot();
    let now = now_micros();
    let mut all: Vec<&Arc<Customer>> = s
        .customers
        .values()
        .filter(|c| q.matches(&c.name))
        .collect();
    all.sort_by_key(|c| (c.created_at, c.id));
    let page = q.page(all)?.map(|c| CustomerView::new(c, &s, now));
    Ok(ApiJson(page.into()))
}

/// Create a customer.
#[utoipa::path(post, path = "/api/governance/customers", tag = "governance",
    request_body = CreateCustomer,
    responses((status = 200, body = CustomerMessage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn create_customer(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateCustomer>,
) -> Result<ApiJson<CustomerMessage>, ApiError> {
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
    let customer = Customer {
        id: Uuid::new_v4(),
        name,
        limits,
        created_at: now,
        updated_at: now,
    };
    let view = w
        .put(customer, None, |c, s| CustomerView::new(c, s, now))
        .await?;
    Ok(ApiJson(CustomerMessage {
        message: "Customer created successfully".to_owned(),
        customer: view,
    }))
}

/// Get a customer, with its teams and directly attached virtual keys.
#[utoipa::path(get, path = "/api/governance/customers/{id}", tag = "governance",
    params(("id" = String, Path, description = "Customer id")),
    responses((status = 200, body = CustomerResponse), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn get_customer(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<CustomerResponse>, ApiError> {
    let s = state.store.snapshot();
    let c = lookup::<Customer>(&s, &id)?;
    Ok(ApiJson(CustomerResponse {
        customer: CustomerView::new(c, &s, now_micros()),
    }))
}

/// Update a customer. Absent fields stay; a changed budget or rate limit keeps its usage.
#[utoipa::path(put, path = "/api/governance/customers/{id}", tag = "governance",
    params(("id" = String, Path, description = "Customer id")),
    request_body = UpdateCustomer,
    responses((status = 200, body = CustomerMessage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn update_customer(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateCustomer>,
) -> Result<ApiJson<CustomerMessage>, ApiError> {
    let mut w = AdminWrite::begin(&state).await;
    let old = w.find::<Customer>(&id)?;
    let now = w.now;
    let limits = patch_limits(
        &old.limits,
        body.budget,
        body.rate_limit,
        "",
        now,
        &mut w.changes,
    )?;
    let customer = Customer {
        id: old.id,
        name: match &body.name {
            Some(n) => text_field("name", n)?,
            None => old.name.clone(),
        },
        limits,
        created_at: old.created_at,
        updated_at: now,
    };
    let view = w
        .put(customer, Some(&old), |c, s| CustomerView::new(c, s, now))
        .await?;
    Ok(ApiJson(CustomerMessage {
        message: "Customer updated successfully".to_owned(),
        customer: view,
    }))
}

/// Delete a customer. Its teams and keys stay, detached; its budget and rate limit go.
#[utoipa::path(delete, path = "/api/governance/customers/{id}", tag = "governance",
    params(("id" = String, Path, description = "Customer id")),
    responses((status = 200, body = Message), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn delete_customer(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<Message>, ApiError> {
    admin::delete::<Customer>(&state, &id).await
}

entity!(
    Customer,
    "customer",
    "Customer",
    by id in customers,
    db::upsert_customer,
    db::delete_customer,
    put_customer,
    remove_customer
);
