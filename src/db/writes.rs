//! Writes of the admin API, each a small query run inside the caller's transaction.

use std::sync::Arc;

use uuid::Uuid;

use super::rows::{hash_hex, list_json, opt_uuid_text, uuid_text};
use super::{Conn, DbError};
use crate::domain::Micros;
use crate::engine::{
    Budget, Customer, Limits, ModelConfig, Provider, ProviderConfig, RateLimit, Team, User,
    VirtualKey,
};

/// The budget and rate-limit rows one admin change creates, changes or removes.
#[derive(Debug, Default)]
pub struct LimitChanges {
    pub insert_budgets: Vec<Arc<Budget>>,
    pub update_budgets: Vec<Arc<Budget>>,
    pub delete_budgets: Vec<Uuid>,
    pub insert_rate_limits: Vec<Arc<RateLimit>>,
    pub update_rate_limits: Vec<Arc<RateLimit>>,
    pub delete_rate_limits: Vec<Uuid>,
}

impl LimitChanges {
    /// Records that every limit of `limits` goes away with its owner.
    pub fn remove_all(&mut self, limits: &Limits) {
        if let Some(b) = &limits.budget {
            self.delete_budgets.push(b.id);
        }
        if let Some(r) = &limits.rate_limit {
            self.delete_rate_limits.push(r.id);
        }
    }

    /// Records that every limit of `limits` is new.
    pub fn insert_all(&mut self, limits: &Limits) {
        if let Some(b) = &limits.budget {
            self.insert_budgets.push(Arc::clone(b));
        }
        if let Some(r) = &limits.rate_limit {
            self.insert_rate_limits.push(Arc::clone(r));
        }
    }

    /// After the commit: counters follow the new durations of changed limits.
    pub fn publish(&self) {
        for b in &self.update_budgets {
            b.publish_rule();
        }
        for r in &self.update_rate_limits {
            r.publish_rules();
        }
    }

    /// Inserts and updates: run before the owners' rows, which reference them.
    pub async fn write_upserts(&self, c: &mut Conn) -> Result<(), DbError> {
        for b in &self.insert_budgets {
            insert_budget(c, b).await?;
        }
        for b in &self.update_budgets {
            update_budget(c, b).await?;
        }
        for r in &self.insert_rate_limits {
            insert_rate_limit(c, r).await?;
        }
        for r in &self.update_rate_limits {
            update_rate_limit(c, r).await?;
        }
        Ok(())
    }

    /// Deletes: run after the owners' rows no longer reference them.
    pub async fn write_deletes(&self, c: &mut Conn) -> Result<(), DbError> {
        for id in &self.delete_budgets {
            sqlx::query("delete from budgets where id = $1")
                .bind(uuid_text(*id))
                .execute(&mut *c)
                .await?;
        }
        for id in &self.delete_rate_limits {
            sqlx::query("delete from rate_limits where id = $1")
                .bind(uuid_text(*id))
                .execute(&mut *c)
                .await?;
        }
        Ok(())
    }
}

async fn insert_budget(c: &mut Conn, b: &Budget) -> Result<(), DbError> {
    let view = b.counter_state();
    sqlx::query(
        "insert into budgets (id, max_limit, reset_duration, calendar_aligned, timezone, \
         current_usage, last_reset, created_at, updated_at) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(uuid_text(b.id))
    .bind(b.spec.max.nanos())
    .bind(b.spec.duration.as_str().to_owned())
    .bind(i64::from(b.spec.calendar_aligned))
    .bind(b.spec.timezone.name().to_owned())
    .bind(view.0)
    .bind(view.1)
    .bind(b.created_at)
    .bind(b.updated_at)
    .execute(c)
    .await?;
    Ok(())
}

/// Writes a budget's configuration; its usage columns belong to the counters' flush.
async fn update_budget(c: &mut Conn, b: &Budget) -> Result<(), DbError> {
    sqlx::query(
        "update budgets set max_limit = $2, reset_duration = $3, calendar_aligned = $4, \
         timezone = $5, updated_at = $6 where id = $1",
    )
    .bind(uuid_text(b.id))
    .bind(b.spec.max.nanos())
    .bind(b.spec.duration.as_str().to_owned())
    .bind(i64::from(b.spec.calendar_aligned))
    .bind(b.spec.timezone.name().to_owned())
    .bind(b.updated_at)
    .execute(c)
    .await?;
    Ok(())
}

/// Zeroes a budget and starts its window at `now` (the reset endpoint).
/// Other replicas read the reset back, as they read usage.
pub async fn reset_budget(c: &mut Conn, id: Uuid, now: Micros) -> Result<(), DbError> {
    let version = super::flush::next_usage_version(c).await?;
    sqlx::query(
        "update budgets set current_usage = 0, last_reset = $2, usage_version = $3 where id = $1",
    )
    .bind(uuid_text(id))
    .bind(now)
    .bind(version)
    .execute(c)
    .await?;
    Ok(())
}

async fn insert_rate_limit(c: &mut Conn, r: &RateLimit) -> Result<(), DbError> {
    let (tokens, requests) = r.counter_states();
    sqlx::query(
        "insert into rate_limits (id, token_max_limit, token_reset_duration, token_current_usage, \
         token_last_reset, request_max_limit, request_reset_duration, request_current_usage, \
         request_last_reset, created_at, updated_at) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(uuid_text(r.id))
    .bind(r.spec.tokens.max)
    .bind(
        r.spec
            .tokens
            .duration
            .as_ref()
            .map(|d| d.as_str().to_owned()),
    )
    .bind(tokens.0)
    .bind(tokens.1)
    .bind(r.spec.requests.max)
    .bind(
        r.spec
            .requests
            .duration
            .as_ref()
            .map(|d| d.as_str().to_owned()),
    )
    .bind(requests.0)
    .bind(requests.1)
    .bind(r.created_at)
    .bind(r.updated_at)
    .execute(c)
    .await?;
    Ok(())
}

async fn update_rate_limit(c: &mut Conn, r: &RateLimit) -> Result<(), DbError> {
    sqlx::query(
        "update rate_limits set token_max_limit = $2, token_reset_duration = $3, \
         request_max_limit = $4, request_reset_duration = $5, updated_at = $6 where id = $1",
    )
    .bind(uuid_text(r.id))
    .bind(r.spec.tokens.max)
    .bind(
        r.spec
            .tokens
            .duration
            .as_ref()
            .map(|d| d.as_str().to_owned()),
    )
    .bind(r.spec.requests.max)
    .bind(
        r.spec
            .requests
            .duration
            .as_ref()
            .map(|d| d.as_str().to_owned()),
    )
    .bind(r.updated_at)
    .execute(c)
    .await?;
    Ok(())
}

/// Zeroes both dimensions of a rate limit and starts their windows at `now`.
/// Other replicas read the reset back, as they read usage.
pub async fn reset_rate_limit(c: &mut Conn, id: Uuid, now: Micros) -> Result<(), DbError> {
    let version = super::flush::next_usage_version(c).await?;
    sqlx::query(
        "update rate_limits set token_current_usage = 0, token_last_reset = $2, \
         request_current_usage = 0, request_last_reset = $2, usage_version = $3 where id = $1",
    )
    .bind(uuid_text(id))
    .bind(now)
    .bind(version)
    .execute(c)
    .await?;
    Ok(())
}

fn budget_id(l: &Limits) -> Option<String> {
    l.budget.as_ref().map(|b| uuid_text(b.id))
}

fn rate_limit_id(l: &Limits) -> Option<String> {
    l.rate_limit.as_ref().map(|r| uuid_text(r.id))
}

pub async fn upsert_customer(c: &mut Conn, x: &Customer) -> Result<(), DbError> {
    sqlx::query(
        "insert into customers (id, name, budget_id, rate_limit_id, created_at, updated_at) \
         values ($1, $2, $3, $4, $5, $6) \
         on conflict (id) do update set name = excluded.name, budget_id = excluded.budget_id, \
         rate_limit_id = excluded.rate_limit_id, updated_at = excluded.updated_at",
    )
    .bind(uuid_text(x.id))
    .bind(x.name.clone())
    .bind(budget_id(&x.limits))
    .bind(rate_limit_id(&x.limits))
    .bind(x.created_at)
    .bind(x.updated_at)
    .execute(c)
    .await?;
    Ok(())
}

/// Deletes a customer; the schema detaches its teams and keys.
pub async fn delete_customer(c: &mut Conn, id: Uuid) -> Result<(), DbError> {
    sqlx::query("delete from customers where id = $1")
        .bind(uuid_text(id))
        .execute(c)
        .await?;
    Ok(())
}

pub async fn upsert_team(c: &mut Conn, x: &Team) -> Result<(), DbError> {
    sqlx::query(
        "insert into teams (id, name, customer_id, budget_id, rate_limit_id, created_at, updated_at) \
         values ($1, $2, $3, $4, $5, $6, $7) \
         on conflict (id) do update set name = excluded.name, customer_id = excluded.customer_id, \
         budget_id = excluded.budget_id, rate_limit_id = excluded.rate_limit_id, \
         updated_at = excluded.updated_at",
    )
    .bind(uuid_text(x.id))
    .bind(x.name.clone())
    .bind(opt_uuid_text(x.customer_id))
    .bind(budget_id(&x.limits))
    .bind(rate_limit_id(&x.limits))
    .bind(x.created_at)
    .bind(x.updated_at)
    .execute(c)
    .await?;
    Ok(())
}

/// Deletes a team; the schema detaches its keys.
pub async fn delete_team(c: &mut Conn, id: Uuid) -> Result<(), DbError> {
    sqlx::query("delete from teams where id = $1")
        .bind(uuid_text(id))
        .execute(c)
        .await?;
    Ok(())
}

pub async fn upsert_virtual_key(c: &mut Conn, x: &VirtualKey) -> Result<(), DbError> {
    sqlx::query(
        "insert into virtual_keys (id, name, description, value_hash, value_prefix, is_active, \
         team_id, customer_id, budget_id, rate_limit_id, created_at, updated_at) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         on conflict (id) do update set name = excluded.name, description = excluded.description, \
         is_active = excluded.is_active, team_id = excluded.team_id, \
         customer_id = excluded.customer_id, budget_id = excluded.budget_id, \
         rate_limit_id = excluded.rate_limit_id, updated_at = excluded.updated_at",
    )
    .bind(uuid_text(x.id))
    .bind(x.name.clone())
    .bind(x.description.clone())
    .bind(hash_hex(&x.value_hash))
    .bind(x.value_prefix.clone())
    .bind(i64::from(x.is_active))
    .bind(opt_uuid_text(x.team_id))
    .bind(opt_uuid_text(x.customer_id))
    .bind(budget_id(&x.limits))
    .bind(rate_limit_id(&x.limits))
    .bind(x.created_at)
    .bind(x.updated_at)
    .execute(c)
    .await?;
    Ok(())
}

/// Deletes a key; the schema deletes its provider configs.
pub async fn delete_virtual_key(c: &mut Conn, id: Uuid) -> Result<(), DbError> {
    sqlx::query("delete from virtual_keys where id = $1")
        .bind(uuid_text(id))
        .execute(c)
        .await?;
    Ok(())
}

pub async fn upsert_provider_config(
    c: &mut Conn,
    virtual_key_id: Uuid,
    position: usize,
    x: &ProviderConfig,
) -> Result<(), DbError> {
    sqlx::query(
        "insert into provider_configs (id, virtual_key_id, position, provider, weight, \
         allowed_models, key_ids, budget_id, rate_limit_id) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         on conflict (id) do update set position = excluded.position, \
         provider = excluded.provider, weight = excluded.weight, \
         allowed_models = excluded.allowed_models, key_ids = excluded.key_ids, \
         budget_id = excluded.budget_id, rate_limit_id = excluded.rate_limit_id",
    )
    .bind(uuid_text(x.id))
    .bind(uuid_text(virtual_key_id))
    .bind(position as i64)
    .bind(x.provider.clone())
    .bind(x.weight)
    .bind(list_json(&x.allowed_models))
    .bind(list_json(&x.key_ids))
    .bind(budget_id(&x.limits))
    .bind(rate_limit_id(&x.limits))
    .execute(c)
    .await?;
    Ok(())
}

pub async fn delete_provider_config(c: &mut Conn, id: Uuid) -> Result<(), DbError> {
    sqlx::query("delete from provider_configs where id = $1")
        .bind(uuid_text(id))
        .execute(c)
        .await?;
    Ok(())
}

pub async fn upsert_provider(c: &mut Conn, x: &Provider) -> Result<(), DbError> {
    sqlx::query(
        "insert into providers (name, budget_id, rate_limit_id, created_at, updated_at) \
         values ($1, $2, $3, $4, $5) \
         on conflict (name) do update set budget_id = excluded.budget_id, \
         rate_limit_id = excluded.rate_limit_id, updated_at = excluded.updated_at",
    )
    .bind(x.name.clone())
    .bind(budget_id(&x.limits))
    .bind(rate_limit_id(&x.limits))
    .bind(x.created_at)
    .bind(x.updated_at)
    .execute(c)
    .await?;
    Ok(())
}

pub async fn delete_provider(c: &mut Conn, name: &str) -> Result<(), DbError> {
    sqlx::query("delete from providers where name = $1")
        .bind(name.to_owned())
        .execute(c)
        .await?;
    Ok(())
}

pub async fn upsert_model_config(c: &mut Conn, x: &ModelConfig) -> Result<(), DbError> {
    sqlx::query(
        "insert into model_configs (id, model_name, provider, budget_id, rate_limit_id, \
         created_at, updated_at) values ($1, $2, $3, $4, $5, $6, $7) \
         on conflict (id) do update set model_name = excluded.model_name, \
         provider = excluded.provider, budget_id = excluded.budget_id, \
         rate_limit_id = excluded.rate_limit_id, updated_at = excluded.updated_at",
    )
    .bind(uuid_text(x.id))
    .bind(x.model_name.clone())
    .bind(x.provider.clone())
    .bind(budget_id(&x.limits))
    .bind(rate_limit_id(&x.limits))
    .bind(x.created_at)
    .bind(x.updated_at)
    .execute(c)
    .await?;
    Ok(())
}

pub async fn delete_model_config(c: &mut Conn, id: Uuid) -> Result<(), DbError> {
    sqlx::query("delete from model_configs where id = $1")
        .bind(uuid_text(id))
        .execute(c)
        .await?;
    Ok(())
}

pub async fn upsert_user(c: &mut Conn, x: &User) -> Result<(), DbError> {
    sqlx::query(
        "insert into users (user_id, budget_id, rate_limit_id, created_at, updated_at) \
         values ($1, $2, $3, $4, $5) \
         on conflict (user_id) do update set budget_id = excluded.budget_id, \
         rate_limit_id = excluded.rate_limit_id, updated_at = excluded.updated_at",
    )
    .bind(x.user_id.clone())
    .bind(budget_id(&x.limits))
    .bind(rate_limit_id(&x.limits))
    .bind(x.created_at)
    .bind(x.updated_at)
    .execute(c)
    .await?;
    Ok(())
}

pub async fn delete_user(c: &mut Conn, user_id: &str) -> Result<(), DbError> {
    sqlx::query("delete from users where user_id = $1")
        .bind(user_id.to_owned())
        .execute(c)
        .await?;
    Ok(())
}
