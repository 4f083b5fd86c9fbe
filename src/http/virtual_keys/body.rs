//! What a virtual key looks like on the wire (bodies, views) and what its fields must be: the
//! secret value, names, references, descriptions and the provider-config list.

use std::collections::HashSet;
use std::sync::Arc;

use rand::Rng;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::db::LimitChanges;
use crate::domain::time::serialize_rfc3339;
use crate::domain::{Micros, Patch};
use crate::engine::{ProviderConfig, Snapshot, VirtualKey};
use crate::http::error::ApiError;
use crate::http::limits::{patch_limits, BudgetBody, LimitsView, RateLimitBody};
use crate::http::page::page_response;
use crate::http::text_field;

pub(super) const VALUE_PREFIX: &str = "sk-hd-";
pub(super) const VALUE_ALPHABET: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
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

pub(super) fn generate_value() -> String {
    let mut rng = rand::rngs::OsRng;
    let random: String = (0..32)
        .map(|_| VALUE_ALPHABET[rng.gen_range(0..VALUE_ALPHABET.len())] as char)
        .collect();
    format!("{VALUE_PREFIX}{random}")
}

/// What may be shown of a value: the generated prefix and four characters, or at most half
/// of a supplied value.
pub(super) fn display_prefix(value: &str) -> String {
    let shown = if value.starts_with(VALUE_PREFIX) {
        VALUE_PREFIX.len() + 4
    } else {
        10
    }
    .min(value.len() / 2);
    format!("{}…", &value[..shown])
}

pub(super) fn validate_value(value: &str) -> Result<(), ApiError> {
    if value.len() < 8 || value.len() > 256 || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::InvalidRequest(
            "value: must be 8 to 256 printable ASCII characters without spaces".to_owned(),
        ));
    }
    Ok(())
}

pub(super) fn text_list(field: &str, items: Vec<String>) -> Result<Vec<String>, ApiError> {
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

pub(super) fn team_ref(s: &Snapshot, raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw)
        .ok()
        .filter(|id| s.teams.contains_key(id))
        .ok_or_else(|| ApiError::InvalidRequest(format!("team_id: team '{raw}' not found")))
}

pub(super) fn check_name_free(
    s: &Snapshot,
    name: &str,
    except: Option<Uuid>,
) -> Result<(), ApiError> {
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
pub(super) fn provider_configs(
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

pub(super) fn description(text: String) -> Result<String, ApiError> {
    if text.len() > 4096 {
        return Err(ApiError::InvalidRequest(
            "description: must be at most 4096 bytes".into(),
        ));
    }
    crate::http::no_nul("description", &text)?;
    Ok(text)
}
