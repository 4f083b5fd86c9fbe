//! Entity rows of the admin API, each written by a small query inside the caller's
//! transaction (their limits: [`super::limits`]).

use uuid::Uuid;

use super::rows::{hash_hex, list_json, opt_uuid_text, uuid_text};
use super::{Conn, DbError};
use crate::domain::Money;
use crate::engine::{
    Customer, Limits, ModelConfig, Provider, ProviderConfig, Team, User, VirtualKey,
};

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
         input_nanos_per_million, output_nanos_per_million, created_at, updated_at) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         on conflict (id) do update set model_name = excluded.model_name, \
         provider = excluded.provider, budget_id = excluded.budget_id, \
         rate_limit_id = excluded.rate_limit_id, \
         input_nanos_per_million = excluded.input_nanos_per_million, \
         output_nanos_per_million = excluded.output_nanos_per_million, \
         updated_at = excluded.updated_at",
    )
    .bind(uuid_text(x.id))
    .bind(x.model_name.clone())
    .bind(x.provider.clone())
    .bind(budget_id(&x.limits))
    .bind(rate_limit_id(&x.limits))
    .bind(x.prices.input.map(Money::nanos))
    .bind(x.prices.output.map(Money::nanos))
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
