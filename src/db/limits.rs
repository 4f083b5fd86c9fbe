//! Budget and rate-limit rows: what one admin change inserts, updates and deletes of them
//! ([`LimitChanges`]), and admin resets.

use std::sync::Arc;

use uuid::Uuid;

use super::rows::uuid_text;
use super::{Conn, DbError};
use crate::domain::Micros;
use crate::engine::{Budget, Limits, RateLimit};

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
