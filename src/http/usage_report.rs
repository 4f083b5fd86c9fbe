//! `GET /api/governance/usage`: what was used per hour or day, grouped by key, team,
//! customer, user, provider or model — from the hourly rollups the worker writes.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiQuery};
use crate::db::report::{usage_report, Dimension, ReportQuery};
use crate::domain::time::{now_micros, parse_rfc3339, rfc3339};
use crate::domain::Money;
use crate::http::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_usage))
}

const HOUR: i64 = 3_600_000_000;
const DAY: i64 = 24 * HOUR;
/// The longest range one report covers.
const MAX_RANGE: i64 = 400 * DAY;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// Start (inclusive, RFC 3339); default 24 hours before `to`.
    pub from: Option<String>,
    /// End (exclusive, RFC 3339); default now.
    pub to: Option<String>,
    /// `hour` (default) or `day` (UTC days).
    pub bucket: Option<String>,
    /// Comma list of `virtual_key`, `team`, `customer`, `user`, `provider`, `model`.
    pub group_by: Option<String>,
    pub virtual_key_id: Option<String>,
    pub team_id: Option<String>,
    pub customer_id: Option<String>,
    pub user_id: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
}

/// One bucket of usage; the grouped fields are present as asked (`null`: none).
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageRow {
    pub bucket_start: String,
    /// Present when grouped by `virtual_key`.
    pub virtual_key_id: Option<String>,
    pub team_id: Option<String>,
    pub customer_id: Option<String>,
    pub user_id: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub requests: i64,
    pub tokens: i64,
    /// Dollars.
    pub cost: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    #[schema(value_type = Vec<UsageRow>)]
    pub usage: Vec<Value>,
    pub count: usize,
}

fn instant(field: &str, raw: &Option<String>) -> Result<Option<i64>, ApiError> {
    raw.as_deref()
        .map(|r| {
            parse_rfc3339(r).ok_or_else(|| {
                ApiError::InvalidRequest(format!("{field}: '{r}' is not an RFC 3339 instant"))
            })
        })
        .transpose()
}

fn parse(q: &UsageQuery) -> Result<ReportQuery, ApiError> {
    let to = instant("to", &q.to)?.unwrap_or_else(now_micros);
    let from = instant("from", &q.from)?.unwrap_or(to - DAY);
    if from >= to {
        return Err(ApiError::InvalidRequest(
            "from: must be before to".to_owned(),
        ));
    }
    if to - from > MAX_RANGE {
        return Err(ApiError::InvalidRequest(
            "to: a report covers at most 400 days".to_owned(),
        ));
    }
    let bucket = match q.bucket.as_deref() {
        None | Some("hour") => HOUR,
        Some("day") => DAY,
        Some(other) => {
            return Err(ApiError::InvalidRequest(format!(
                "bucket: '{other}' is not one of hour, day"
            )))
        }
    };
    let mut group_by = Vec::new();
    for name in q
        .group_by
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
    {
        if name.is_empty() {
            continue;
        }
        let dim = Dimension::ALL
            .into_iter()
            .find(|d| d.name() == name)
            .ok_or_else(|| {
                ApiError::InvalidRequest(format!(
                    "group_by: '{name}' is not one of virtual_key, team, customer, user, provider, model"
                ))
            })?;
        if !group_by.contains(&dim) {
            group_by.push(dim);
        }
    }
    let mut filters = Vec::new();
    let given = [
        (Dimension::VirtualKey, &q.virtual_key_id),
        (Dimension::Team, &q.team_id),
        (Dimension::Customer, &q.customer_id),
        (Dimension::User, &q.user_id),
        (Dimension::Provider, &q.provider),
        (Dimension::Model, &q.model),
    ];
    for (dim, value) in given {
        if let Some(v) = value {
            if v.len() > 256 {
                return Err(ApiError::InvalidRequest(format!(
                    "{}: must be at most 256 bytes",
                    dim.column()
                )));
            }
            super::no_nul(dim.column(), v)?;
            filters.push((dim, v.clone()));
        }
    }
    Ok(ReportQuery {
        from,
        to,
        bucket,
        group_by,
        filters,
    })
}

/// Usage per hour or day, grouped as asked, from the rollups (current within one flush
/// interval). Sums equal what the counters were charged.
#[utoipa::path(get, path = "/api/governance/usage", tag = "governance",
    params(UsageQuery),
    responses((status = 200, body = UsageReport), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn get_usage(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> Result<ApiJson<UsageReport>, ApiError> {
    let query = parse(&q)?;
    let mut conn = state.db.acquire().await?;
    let rows = usage_report(&mut conn, &query).await?;
    let usage: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            let mut item = Map::new();
            item.insert(
                "bucket_start".into(),
                Value::String(rfc3339(r.bucket_start)),
            );
            for (dim, value) in query.group_by.iter().zip(r.groups) {
                let value = if value.is_empty() {
                    Value::Null
                } else {
                    Value::String(value)
                };
                item.insert(dim.column().into(), value);
            }
            item.insert("requests".into(), r.requests.into());
            item.insert("tokens".into(), r.tokens.into());
            item.insert("cost".into(), Money::from_nanos(r.cost).to_usd().into());
            Value::Object(item)
        })
        .collect();
    Ok(ApiJson(UsageReport {
        count: usage.len(),
        usage,
    }))
}
