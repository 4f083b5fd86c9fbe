//! `/api/governance/virtual-keys`: the keys gateways present, with their provider configs.
//! A key's secret value is shown once, in the create response; only its SHA-256 is kept.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::State;
use rand::Rng;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::admin::{self, lookup, AdminWrite, Entity};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::limits::{patch_limits, BudgetBody, LimitsView, RateLimitBody};
use super::page::{page_response, PageQuery};
use super::teams::{customer_ref, filter_id};
use super::{text_field, Message};
use crate::db::{self, Conn, DbError, LimitChanges};
use crate::domain::time::{now_micros, serialize_rfc3339};
use crate::domain::{Micros, Patch};
use crate::engine::{Limits, ProviderConfig, Snapshot, VirtualKey};
use crate::http::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_virtual_keys, create_virtual_key))
        .routes(routes!(
            get_virtual_key,
            update_virtual_key,
            delete_virtual_key
        ))
}

const VALUE_PREFIX: &str = "sk-hd-";
const VALUE_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const MAX_LIST_ITEMS: usize = 1000;

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateVirtualKey {
    /// Unique among keys.
    #[schema(min_length = 1, max_length = 256, pattern = "\\S")]
    pub name: String,
    pub description: Option<String>,
    /// The secret value; generated (`sk-hd-…`) when absent. 8–256 printable characters.
    pub value: Option<String>,
    /// Default true.
    pub is_active: Option<bool>,
    /// The team the key belongs to (not together with `customer_id`).
    pub team_id: Option<String>,
    /// The customer the key belongs to directly (not together with `team_id`).
    pub customer_id: Option<String>,
    pub budget: Option<BudgetBody>,
    pub rate_limit: Option<RateLimitBody>,
    pub provider_configs: Option<Vec<ProviderConfigBody>>,
}

/// Absent fields stay as they are; `null` clears (`team_id`, `customer_id`, `budget`,
/// `rate_limit`). Setting `team_id` detaches the key from its customer and vice versa.
/// `provider_configs`, when present, replaces the list.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateVirtualKey {
    #[schema(min_length = 1, max_length = 256, pattern = "\\S")]
    pub name: Option<String>,
    pub description: Option<String>,
    pub is_active: Option<bool>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub team_id: Patch<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub customer_id: Patch<String>,
    #[serde(default)]
    #[schema(value_type = Option<BudgetBody>)]
    pub budget: Patch<BudgetBody>,
    #[serde(default)]
    #[schema(value_type = Option<RateLimitBody>)]
    pub rate_limit: Patch<RateLimitBody>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<ProviderConfigBody>>)]
    pub provider_configs: Patch<Vec<ProviderConfigBody>>,
}

/// A provider config. Without `id` it is created (`provider` required); with the `id` of one
/// of the key's configs it updates that config (absent fields stay).
#[derive(Debug, Deserialize, ToSchema)]
pub struct ProviderConfigBody {
    pub id: Option<String>,
    pub provider: Option<String>,
    /// Default 1; ≥ 0.
    pub weight: Option<f64>,
    /// Models this key may use on the provider; empty: all.
    pub allowed_models: Option<Vec<String>>,
    pub key_ids: Option<Vec<String>>,
    #[serde(default)]
    #[schema(value_type = Option<BudgetBody>)]
    pub budget: Patch<BudgetBody>,
    #[serde(default)]
    #[schema(value_type = Option<RateLimitBody>)]
    pub rate_limit: Patch<RateLimitBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderConfigView {
    pub id: Uuid,
    pub provider: String,
    pub weight: f64,
    pub allowed_models: Vec<String>,
    pub key_ids: Vec<String>,
    #[serde(flatten)]
    pub limits: LimitsView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VirtualKeyView {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    /// The full secret: only in the create response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The first characters of the value, e.g. `sk-hd-AbCd…`.
    pub value_prefix: String,
    pub is_active: bool,
    pub team_id: Option<Uuid>,
    pub customer_id: Option<Uuid>,
    #[serde(flatten)]
    pub limits: LimitsView,
    pub provider_configs: Vec<ProviderConfigView>,
    #[serde(serialize_with = "serialize_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Micros,
    #[serde(serialize_with = "serialize_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Micros,
}

impl VirtualKeyView {
    pub fn new(k: &VirtualKey, now: Micros) -> Self {
        VirtualKeyView {
            id: k.id,
            name: k.name.clone(),
            description: k.description.clone(),
            value: None,
            value_prefix: k.value_prefix.clone(),
            is_active: k.is_active,
            team_id: k.team_id,
            customer_id: k.customer_id,
            limits: LimitsView::new(&k.limits, now),
            provider_configs: k
                .provider_configs
                .iter()
                .map(|pc| ProviderConfigView {
                    id: pc.id,
                    provider: pc.provider.clone(),
                    weight: pc.weight,
                    allowed_models: pc.allowed_models.clone(),
                    key_ids: pc.key_ids.clone(),
                    limits: LimitsView::new(&pc.limits, now),
                })
                .collect(),
            created_at: k.created_at,
            updated_at: k.updated_at,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VirtualKeyFilter {
    /// Only keys of this team.
    pub team_id: Option<String>,
    /// Only keys attached directly to this customer.
    pub customer_id: Option<String>,
}

page_response!(
    /// A page of virtual keys.
    VirtualKeyList,
    virtual_keys,
    VirtualKeyView
);

#[derive(Debug, Serialize, ToSchema)]
pub struct VirtualKeyResponse {
    pub virtual_key: VirtualKeyView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VirtualKeyMessage {
    pub message: String,
    pub virtual_key: VirtualKeyView,
}

fn generate_value() -> String {
    let mut rng = rand::rngs::OsRng;
    let random: String = (0..32)
        .map(|_| VALUE_ALPHABET[rng.gen_range(0..VALUE_ALPHABET.len())] as char)
        .collect();
    format!("{VALUE_PREFIX}{random}")
}

/// What may be shown of a value: the generated prefix and four characters, or at most half
/// of a supplied value.
fn display_prefix(value: &str) -> String {
    let shown = if value.starts_with(VALUE_PREFIX) {
        VALUE_PREFIX.len() + 4
    } else {
        10
    }
    .min(value.len() / 2);
    format!("{}…", &value[..shown])
}

fn validate_value(value: &str) -> Result<(), ApiError> {
    if value.len() < 8 || value.len() > 256 || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::InvalidRequest(
            "value: must be 8 to 256 printable ASCII characters without spaces".to_owned(),
        ));
    }
    Ok(())
}

fn text_list(field: &str, items: Vec<String>) -> Result<Vec<String>, ApiError> {
    if items.len() > MAX_LIST_ITEMS {
        return Err(ApiError::InvalidRequest(format!(
            "{field}: at most {MAX_LIST_ITEMS} items"
        )));
    }
    items
        .into_iter()
        .map(|item| text_field(field, &item))
        .collect()
}

fn team_ref(s: &Snapshot, raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw)
        .ok()
        .filter(|id| s.teams.contains_key(id))
        .ok_or_else(|| ApiError::InvalidRequest(format!("team_id: team '{raw}' not found")))
}

fn check_name_free(s: &Snapshot, name: &str, except: Option<Uuid>) -> Result<(), ApiError> {
    if s.virtual_keys
        .values()
        .any(|k| k.name == name && Some(k.id) != except)
    {
        return Err(ApiError::Conflict(format!(
            "a virtual key named '{name}' already exists"
        )));
    }
    Ok(())
}

/// Builds a key's provider-config list from a body, against its current list. Configs not
/// listed are removed with their limits (see [`Entity::upsert`] of a key); listed ones keep
/// their counters.
fn provider_configs(
    current: &[Arc<ProviderConfig>],
    bodies: Vec<ProviderConfigBody>,
    now: Micros,
    changes: &mut LimitChanges,
) -> Result<Vec<Arc<ProviderConfig>>, ApiError> {
    if bodies.len() > MAX_LIST_ITEMS {
        return Err(ApiError::InvalidRequest(format!(
            "provider_configs: at most {MAX_LIST_ITEMS} items"
        )));
    }
    let mut seen = HashSet::new();
    let mut next = Vec::with_capacity(bodies.len());
    for (i, body) in bodies.into_iter().enumerate() {
        let at = format!("provider_configs[{i}].");
        let bad = |m: String| ApiError::InvalidRequest(format!("{at}{m}"));
        let old = match &body.id {
            Some(raw) => {
                let old = Uuid::parse_str(raw)
                    .ok()
                    .and_then(|id| current.iter().find(|pc| pc.id == id))
                    .ok_or_else(|| {
                        bad(format!("id: '{raw}' is not a provider config of this key"))
                    })?;
                if !seen.insert(old.id) {
                    return Err(bad(format!("id: '{raw}' is listed twice")));
                }
                Some(old)
            }
            None => None,
        };
        let provider = match (&body.provider, old) {
            (Some(p), _) => text_field(&format!("{at}provider"), p)?,
            (None, Some(old)) => old.provider.clone(),
            (None, None) => return Err(bad("provider: is required".to_owned())),
        };
        let weight = body.weight.or(old.map(|o| o.weight)).unwrap_or(1.0);
        if !weight.is_finite() || weight < 0.0 {
            return Err(bad("weight: must be a finite number ≥ 0".to_owned()));
        }
        let allowed_models = match body.allowed_models {
            Some(list) => text_list(&format!("{at}allowed_models"), list)?,
            None => old.map(|o| o.allowed_models.clone()).unwrap_or_default(),
        };
        let key_ids = match body.key_ids {
            Some(list) => text_list(&format!("{at}key_ids"), list)?,
            None => old.map(|o| o.key_ids.clone()).unwrap_or_default(),
        };
        let base = old.map(|o| o.limits.clone()).unwrap_or_default();
        let limits = patch_limits(&base, body.budget, body.rate_limit, &at, now, changes)?;
        next.push(Arc::new(ProviderConfig {
            id: old.map(|o| o.id).unwrap_or_else(Uuid::new_v4),
            provider,
            weight,
            allowed_models,
            key_ids,
            limits,
        }));
    }
    for pc in current {
        if !seen.contains(&pc.id) {
            changes.remove_all(&pc.limits);
        }
    }
    Ok(next)
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

fn description(text: String) -> Result<String, ApiError> {
    if text.len() > 4096 {
        return Err(ApiError::InvalidRequest(
            "description: must be at most 4096 bytes".into(),
        ));
    }
    super::no_nul("description", &text)?;
    Ok(text)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_values_have_the_prefix_and_32_url_safe_characters() {
        let v = generate_value();
        assert!(v.starts_with("sk-hd-"));
        assert_eq!(v.len(), 6 + 32);
        assert!(v[6..].bytes().all(|b| VALUE_ALPHABET.contains(&b)));
        assert_ne!(generate_value(), v);
    }

    #[test]
    fn display_prefixes_never_show_more_than_half_a_value() {
        assert_eq!(
            display_prefix("sk-hd-AbCdEfGhIjKlMnOpQrStUvWxYz012345"),
            "sk-hd-AbCd…"
        );
        assert_eq!(display_prefix("my-own-key"), "my-ow…");
    }
}
