//! Loading the whole governance state at start.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use super::rows::{corrupt, parse_hash_hex, parse_list_json, parse_opt_uuid, parse_uuid};
use super::{Conn, DbError};
use crate::domain::limits::DimensionSpec;
use crate::domain::{BudgetSpec, Money, RateLimitSpec, ResetDuration, TimeZoneName};
use crate::engine::counter::Counter;
use crate::engine::{
    Budget, Customer, Limits, ModelConfig, Prices, Provider, ProviderConfig, RateLimit, Snapshot,
    Team, User, VirtualKey,
};

/// The counters of a snapshot already in memory, by limit id: a reload keeps them, so that
/// usage (and what is not yet flushed) survives a configuration change on another replica.
#[derive(Default)]
struct Reuse {
    budgets: HashMap<Uuid, Arc<Counter>>,
    rate_limits: HashMap<Uuid, (Arc<Counter>, Arc<Counter>)>,
}

impl Reuse {
    fn of(s: Option<&Snapshot>) -> Reuse {
        let Some(s) = s else {
            return Reuse::default();
        };
        Reuse {
            budgets: s
                .budgets()
                .map(|b| (b.id, Arc::clone(&b.counter)))
                .collect(),
            rate_limits: s
                .rate_limits()
                .map(|r| (r.id, (Arc::clone(&r.tokens), Arc::clone(&r.requests))))
                .collect(),
        }
    }
}

/// Budgets and rate limits by id, for the owners to pick up.
struct LimitRows {
    budgets: HashMap<Uuid, Arc<Budget>>,
    rate_limits: HashMap<Uuid, Arc<RateLimit>>,
}

impl LimitRows {
    fn limits(&self, table: &'static str, row: &AnyRow) -> Result<Limits, DbError> {
        let budget_id = parse_opt_uuid(table, row.try_get("budget_id")?)?;
        let rate_limit_id = parse_opt_uuid(table, row.try_get("rate_limit_id")?)?;
        Ok(Limits {
            budget: budget_id.and_then(|id| self.budgets.get(&id).cloned()),
            rate_limit: rate_limit_id.and_then(|id| self.rate_limits.get(&id).cloned()),
        })
    }
}

fn duration(table: &'static str, text: &str) -> Result<ResetDuration, DbError> {
    ResetDuration::parse(text).map_err(|e| corrupt(table, e.to_string()))
}

fn budget(row: &AnyRow, reuse: &Reuse) -> Result<Budget, DbError> {
    const T: &str = "budgets";
    let spec = BudgetSpec {
        max: Money::from_nanos(row.try_get("max_limit")?),
        duration: duration(T, &row.try_get::<String, _>("reset_duration")?)?,
        calendar_aligned: row.try_get::<i64, _>("calendar_aligned")? != 0,
        timezone: TimeZoneName::parse(&row.try_get::<String, _>("timezone")?)
            .map_err(|m| corrupt(T, m))?,
    };
    let id = parse_uuid(T, &row.try_get::<String, _>("id")?)?;
    let (created, updated) = (row.try_get("created_at")?, row.try_get("updated_at")?);
    Ok(match reuse.budgets.get(&id) {
        Some(counter) => Budget::with_counter(id, spec, Arc::clone(counter), created, updated),
        None => Budget::new(
            id,
            spec,
            row.try_get("current_usage")?,
            row.try_get("last_reset")?,
            created,
            updated,
        ),
    })
}

fn dimension(row: &AnyRow, prefix: &str) -> Result<DimensionSpec, DbError> {
    const T: &str = "rate_limits";
    let max: Option<i64> = row.try_get(format!("{prefix}_max_limit").as_str())?;
    let text: Option<String> = row.try_get(format!("{prefix}_reset_duration").as_str())?;
    Ok(DimensionSpec {
        max,
        duration: text.map(|t| duration(T, &t)).transpose()?,
    })
}

fn rate_limit(row: &AnyRow, reuse: &Reuse) -> Result<RateLimit, DbError> {
    const T: &str = "rate_limits";
    let spec = RateLimitSpec {
        tokens: dimension(row, "token")?,
        requests: dimension(row, "request")?,
    };
    let id = parse_uuid(T, &row.try_get::<String, _>("id")?)?;
    let (created, updated) = (row.try_get("created_at")?, row.try_get("updated_at")?);
    Ok(match reuse.rate_limits.get(&id) {
        Some((t, r)) => {
            RateLimit::with_counters(id, spec, (Arc::clone(t), Arc::clone(r)), created, updated)
        }
        None => RateLimit::new(
            id,
            spec,
            (
                row.try_get("token_current_usage")?,
                row.try_get("token_last_reset")?,
            ),
            (
                row.try_get("request_current_usage")?,
                row.try_get("request_last_reset")?,
            ),
            created,
            updated,
        ),
    })
}

async fn rows(c: &mut Conn, sql: &str) -> Result<Vec<AnyRow>, DbError> {
    Ok(sqlx::query(sql).fetch_all(c).await?)
}

/// Reads the whole governance state. Limits that `reuse` already holds keep its counters.
pub async fn load_snapshot(c: &mut Conn, reuse: Option<&Snapshot>) -> Result<Snapshot, DbError> {
    let reuse = Reuse::of(reuse);
    let mut limits = LimitRows {
        budgets: HashMap::new(),
        rate_limits: HashMap::new(),
    };
    for row in rows(c, "select * from budgets").await? {
        let b = budget(&row, &reuse)?;
        limits.budgets.insert(b.id, Arc::new(b));
    }
    for row in rows(c, "select * from rate_limits").await? {
        let r = rate_limit(&row, &reuse)?;
        limits.rate_limits.insert(r.id, Arc::new(r));
    }

    let mut s = Snapshot::default();
    for row in rows(c, "select * from customers").await? {
        const T: &str = "customers";
        let x = Customer {
            id: parse_uuid(T, &row.try_get::<String, _>("id")?)?,
            name: row.try_get("name")?,
            limits: limits.limits(T, &row)?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        };
        s.customers.insert(x.id, Arc::new(x));
    }
    for row in rows(c, "select * from teams").await? {
        const T: &str = "teams";
        let x = Team {
            id: parse_uuid(T, &row.try_get::<String, _>("id")?)?,
            name: row.try_get("name")?,
            customer_id: parse_opt_uuid(T, row.try_get("customer_id")?)?,
            limits: limits.limits(T, &row)?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        };
        s.teams.insert(x.id, Arc::new(x));
    }
    let mut pcs: HashMap<Uuid, Vec<Arc<ProviderConfig>>> = HashMap::new();
    for row in rows(
        c,
        "select * from provider_configs order by virtual_key_id, position",
    )
    .await?
    {
        const T: &str = "provider_configs";
        let vk = parse_uuid(T, &row.try_get::<String, _>("virtual_key_id")?)?;
        let pc = ProviderConfig {
            id: parse_uuid(T, &row.try_get::<String, _>("id")?)?,
            provider: row.try_get("provider")?,
            weight: row.try_get("weight")?,
            allowed_models: parse_list_json(T, &row.try_get::<String, _>("allowed_models")?)?,
            key_ids: parse_list_json(T, &row.try_get::<String, _>("key_ids")?)?,
            limits: limits.limits(T, &row)?,
        };
        pcs.entry(vk).or_default().push(Arc::new(pc));
    }
    for row in rows(c, "select * from virtual_keys").await? {
        const T: &str = "virtual_keys";
        let id = parse_uuid(T, &row.try_get::<String, _>("id")?)?;
        let x = VirtualKey {
            id,
            name: row.try_get("name")?,
            description: row.try_get("description")?,
            value_hash: parse_hash_hex(T, &row.try_get::<String, _>("value_hash")?)?,
            value_prefix: row.try_get("value_prefix")?,
            is_active: row.try_get::<i64, _>("is_active")? != 0,
            team_id: parse_opt_uuid(T, row.try_get("team_id")?)?,
            customer_id: parse_opt_uuid(T, row.try_get("customer_id")?)?,
            limits: limits.limits(T, &row)?,
            provider_configs: pcs.remove(&id).unwrap_or_default(),
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        };
        s.put_virtual_key(x);
    }
    for row in rows(c, "select * from providers").await? {
        const T: &str = "providers";
        let x = Provider {
            name: row.try_get("name")?,
            limits: limits.limits(T, &row)?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        };
        s.providers.insert(x.name.clone(), Arc::new(x));
    }
    for row in rows(c, "select * from model_configs").await? {
        const T: &str = "model_configs";
        let x = ModelConfig {
            id: parse_uuid(T, &row.try_get::<String, _>("id")?)?,
            model_name: row.try_get("model_name")?,
            provider: row.try_get("provider")?,
            limits: limits.limits(T, &row)?,
            prices: Prices {
                input: row
                    .try_get::<Option<i64>, _>("input_nanos_per_million")?
                    .map(Money::from_nanos),
                output: row
                    .try_get::<Option<i64>, _>("output_nanos_per_million")?
                    .map(Money::from_nanos),
            },
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        };
        s.put_model_config(x);
    }
    for row in rows(c, "select * from users").await? {
        const T: &str = "users";
        let x = User {
            user_id: row.try_get("user_id")?,
            limits: limits.limits(T, &row)?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        };
        s.users.insert(x.user_id.clone(), Arc::new(x));
    }
    Ok(s)
}
