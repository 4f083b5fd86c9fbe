//! `/api/governance/virtual-keys`: the keys gateways present, with their provider configs.
//! A key's secret value is shown once, in the create response; only its SHA-256 is kept.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::admin::{self, lookup, AdminWrite, Entity};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::limits::patch_limits;
use super::page::PageQuery;
use super::teams::{customer_ref, filter_id};
use super::{text_field, Message};
use crate::db::{self, Conn, DbError};
use crate::domain::time::now_micros;
use crate::domain::Patch;
use crate::engine::{Limits, Snapshot, VirtualKey};
use crate::http::state::AppState;

mod body;
#[cfg(test)]
mod tests;

pub use body::*;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_virtual_keys, create_virtual_key))
        .routes(routes!(
            get_virtual_key,
            update_virtual_key,
            delete_virtual_key
        ))
}

/// List virtual keys (values are never shown).
#[utoipa::path(get, path = "/api/governance/virtual-keys", tag = "governance",
    params(PageQuery, VirtualKeyFilter),
    responses((status = 200, body = VirtualKeyList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list_virtual_keys(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<PageQuery>,
    ApiQuery(f): ApiQuery<VirtualKeyFilter>,
) -> Result<ApiJson<VirtualKeyList>, ApiError> {
    let team = filter_id("team_id", &f.team_id)?;
    let customer = filter_id("customer_id", &f.customer_id)?;
    let s = state.store.snapshot();
    let now = now_micros();
    let mut all: Vec<&Arc<VirtualKey>> = s
        .virtual_keys
        .values()
        .filter(|k| {
            q.matches(&k.name)
                && (team.is_none() || k.team_id == team)
                && (customer.is_none() || k.customer_id == customer)
        })
        .collect();
    all.sort_by_key(|k| (k.created_at, k.id));
    let page = q.page(all)?.map(|k| VirtualKeyView::new(k, now));
    Ok(ApiJson(page.into()))
}

/// Create a virtual key. The response is the only one that shows the full `value`.
#[utoipa::path(post, path = "/api/governance/virtual-keys", tag = "governance",
    request_body = CreateVirtualKey,
    responses((status = 200, body = VirtualKeyMessage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_virtual_key(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateVirtualKey>,
) -> Result<ApiJson<VirtualKeyMessage>, ApiError> {
    let name = text_field("name", &body.name)?;
    let description = description(body.description.unwrap_or_default())?;
    if body.team_id.is_some() && body.customer_id.is_some() {
        return Err(ApiError::InvalidRequest(
            "a virtual key belongs to a team or to a customer, not both".to_owned(),
        ));
    }
    let value = match body.value {
        Some(v) => {
            validate_value(&v)?;
            v
        }
        None => generate_value(),
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
    let configs = provider_configs(
        &[],
        body.provider_configs.unwrap_or_default(),
        now,
        &mut w.changes,
    )?;
    let s = &w.snapshot;
    let team_id = body
        .team_id
        .as_deref()
        .map(|t| team_ref(s, t))
        .transpose()?;
    let customer_id = body
        .customer_id
        .as_deref()
        .map(|c| customer_ref(s, c))
        .transpose()?;
    check_name_free(s, &name, None)?;
    let value_hash = VirtualKey::hash_value(&value);
    if s.keys_by_hash.contains_key(&value_hash) {
        return Err(ApiError::Conflict(
            "a virtual key with this value already exists".to_owned(),
        ));
    }
    let vk = VirtualKey {
        id: Uuid::new_v4(),
        name,
        description,
        value_hash,
        value_prefix: display_prefix(&value),
        is_active: body.is_active.unwrap_or(true),
        team_id,
        customer_id,
        limits,
        provider_configs: configs,
        created_at: now,
        updated_at: now,
    };
    let mut view = w.put(vk, None, |k, _| VirtualKeyView::new(k, now)).await?;
    view.value = Some(value);
    Ok(ApiJson(VirtualKeyMessage {
        message: "Virtual key created successfully".to_owned(),
        virtual_key: view,
    }))
}

/// Get a virtual key.
#[utoipa::path(get, path = "/api/governance/virtual-keys/{id}", tag = "governance",
    params(("id" = String, Path, description = "Virtual key id")),
    responses((status = 200, body = VirtualKeyResponse), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn get_virtual_key(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<VirtualKeyResponse>, ApiError> {
    let s = state.store.snapshot();
    Ok(ApiJson(VirtualKeyResponse {
        virtual_key: VirtualKeyView::new(lookup::<VirtualKey>(&s, &id)?, now_micros()),
    }))
}

/// Update a virtual key. Absent fields stay; changed limits keep their usage.
#[utoipa::path(put, path = "/api/governance/virtual-keys/{id}", tag = "governance",
    params(("id" = String, Path, description = "Virtual key id")),
    request_body = UpdateVirtualKey,
    responses((status = 200, body = VirtualKeyMessage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update_virtual_key(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateVirtualKey>,
) -> Result<ApiJson<VirtualKeyMessage>, ApiError> {
    if Uuid::parse_str(&id).is_ok()
        && matches!(body.team_id, Patch::Value(_))
        && matches!(body.customer_id, Patch::Value(_))
    {
        return Err(ApiError::InvalidRequest(
            "a virtual key belongs to a team or to a customer, not both".to_owned(),
        ));
    }
    let mut w = AdminWrite::begin(&state).await;
    let old = w.find::<VirtualKey>(&id)?;
    let now = w.now;
    let s = &w.snapshot;
    let (mut team_id, mut customer_id) = (old.team_id, old.customer_id);
    match &body.team_id {
        Patch::Absent => {}
        Patch::Null => team_id = None,
        Patch::Value(raw) => {
            team_id = Some(team_ref(s, raw)?);
            customer_id = None;
        }
    }
    match &body.customer_id {
        Patch::Absent => {}
        Patch::Null => customer_id = None,
        Patch::Value(raw) => {
            customer_id = Some(customer_ref(s, raw)?);
            team_id = None;
        }
    }
    let name = match &body.name {
        Some(n) => text_field("name", n)?,
        None => old.name.clone(),
    };
    check_name_free(s, &name, Some(old.id))?;
    let description = description(
        body.description
            .clone()
            .unwrap_or_else(|| old.description.clone()),
    )?;
    let limits = patch_limits(
        &old.limits,
        body.budget,
        body.rate_limit,
        "",
        now,
        &mut w.changes,
    )?;
    let configs = match body.provider_configs {
        Patch::Absent => old.provider_configs.clone(),
        Patch::Null => provider_configs(&old.provider_configs, Vec::new(), now, &mut w.changes)?,
        Patch::Value(list) => provider_configs(&old.provider_configs, list, now, &mut w.changes)?,
    };
    let vk = VirtualKey {
        id: old.id,
        name,
        description,
        value_hash: old.value_hash,
        value_prefix: old.value_prefix.clone(),
        is_active: body.is_active.unwrap_or(old.is_active),
        team_id,
        customer_id,
        limits,
        provider_configs: configs,
        created_at: old.created_at,
        updated_at: now,
    };
    let view = w
        .put(vk, Some(&old), |k, _| VirtualKeyView::new(k, now))
        .await?;
    Ok(ApiJson(VirtualKeyMessage {
        message: "Virtual key updated successfully".to_owned(),
        virtual_key: view,
    }))
}

/// Delete a virtual key with its provider configs, budgets and rate limits.
#[utoipa::path(delete, path = "/api/governance/virtual-keys/{id}", tag = "governance",
    params(("id" = String, Path, description = "Virtual key id")),
    responses((status = 200, body = Message), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn delete_virtual_key(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<Message>, ApiError> {
    admin::delete::<VirtualKey>(&state, &id).await
}

impl Entity for VirtualKey {
    const KIND: &'static str = "virtual key";
    const TITLE: &'static str = "Virtual key";
    type Key = Uuid;

    fn parse_key(raw: &str) -> Option<Uuid> {
        Uuid::parse_str(raw).ok()
    }

    fn key(&self) -> Uuid {
        self.id
    }

    fn find<'s>(s: &'s Snapshot, key: &Uuid) -> Option<&'s Arc<VirtualKey>> {
        s.virtual_keys.get(key)
    }

    fn limits(&self) -> Vec<&Limits> {
        std::iter::once(&self.limits)
            .chain(self.provider_configs.iter().map(|pc| &pc.limits))
            .collect()
    }

    /// The key's row, then its provider configs: those no longer listed go, the listed ones
    /// are written in their order.
    async fn upsert(&self, old: Option<&VirtualKey>, c: &mut Conn) -> Result<(), DbError> {
        db::upsert_virtual_key(c, self).await?;
        let listed: HashSet<Uuid> = self.provider_configs.iter().map(|pc| pc.id).collect();
        for pc in old.map_or(&[][..], |o| &o.provider_configs[..]) {
            if !listed.contains(&pc.id) {
                db::delete_provider_config(c, pc.id).await?;
            }
        }
        for (position, pc) in self.provider_configs.iter().enumerate() {
            db::upsert_provider_config(c, self.id, position, pc).await?;
        }
        Ok(())
    }

    async fn delete(&self, c: &mut Conn) -> Result<(), DbError> {
        db::delete_virtual_key(c, self.id).await
    }

    fn publish(self, s: &mut Snapshot) {
        s.put_virtual_key(self);
    }

    fn unpublish(key: &Uuid, s: &mut Snapshot) {
        s.remove_virtual_key(*key);
    }
}
