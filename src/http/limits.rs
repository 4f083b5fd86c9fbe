//! Budgets and rate limits on the wire: the bodies admins send, the views they get back, and
//! the one place where a body becomes a new or changed limit (keeping usage on change).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::ApiError;
use crate::db::LimitChanges;
use crate::domain::time::{serialize_opt_rfc3339, serialize_rfc3339};
use crate::domain::{BudgetSpec, LimitError, Micros, Patch, RateLimitSpec};
use crate::engine::level::LimitKind;
use crate::engine::watch::forecast;
use crate::engine::{Budget, Counter, CounterView, Limits, RateLimit};

/// Where a limit is heading at the recent rate (`docs/semantics.md` § Forecast); `null` when
/// nothing was used for an hour.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct ForecastView {
    /// Dollars (budgets), tokens or requests per hour, over about the last hour.
    pub rate_per_hour: f64,
    /// When the limit runs out at that rate; `null` when its window resets first.
    #[serde(serialize_with = "serialize_opt_rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub exhausted_at: Option<Micros>,
}

impl ForecastView {
    fn of(
        kind: LimitKind,
        counter: &Counter,
        view: &CounterView,
        max: Option<i64>,
        now: Micros,
    ) -> Option<Self> {
        let f = forecast(kind, counter, view, max?, now)?;
        Some(ForecastView {
            rate_per_hour: f.rate_per_hour,
            exhausted_at: f.exhausted_at,
        })
    }
}

/// Limits of a governance subject (a provider or a user). Absent fields stay as they are;
/// `null` (or `{}`) removes.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct LimitsBody {
    #[serde(default)]
    #[schema(value_type = Option<BudgetBody>)]
    pub budget: Patch<BudgetBody>,
    #[serde(default)]
    #[schema(value_type = Option<RateLimitBody>)]
    pub rate_limit: Patch<RateLimitBody>,
}

/// A budget as sent by an admin. On create, `max_limit` and `reset_duration` are required; on
/// update, absent fields stay as they are. `{}` means "no budget".
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct BudgetBody {
    /// Dollars per window, > 0.
    #[schema(exclusive_minimum = 0)]
    pub max_limit: Option<f64>,
    /// e.g. `30s`, `1h`, `1d`, `1M`, `1h30m`, `monthly`.
    #[schema(pattern = r"^(daily|weekly|monthly|yearly|([0-9]+(\.[0-9]+)?[smhdwMY])+)$")]
    pub reset_duration: Option<String>,
    /// Calendar periods (d, w, M, Y only) instead of rolling windows.
    pub calendar_aligned: Option<bool>,
    /// IANA time zone of calendar periods; default `UTC`.
    pub timezone: Option<String>,
}

impl BudgetBody {
    fn is_empty(&self) -> bool {
        self.max_limit.is_none()
            && self.reset_duration.is_none()
            && self.calendar_aligned.is_none()
            && self.timezone.is_none()
    }
}

/// A rate limit as sent by an admin: two independent dimensions, each optional. On update,
/// absent fields stay and `null` clears. `{}` means "no rate limit".
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct RateLimitBody {
    #[serde(default)]
    #[schema(value_type = Option<i64>, minimum = 1)]
    pub token_max_limit: Patch<i64>,
    #[serde(default)]
    #[schema(value_type = Option<String>, pattern = r"^(daily|weekly|monthly|yearly|([0-9]+(\.[0-9]+)?[smhdwMY])+)$")]
    pub token_reset_duration: Patch<String>,
    #[serde(default)]
    #[schema(value_type = Option<i64>, minimum = 1)]
    pub request_max_limit: Patch<i64>,
    #[serde(default)]
    #[schema(value_type = Option<String>, pattern = r"^(daily|weekly|monthly|yearly|([0-9]+(\.[0-9]+)?[smhdwMY])+)$")]
    pub request_reset_duration: Patch<String>,
}

impl RateLimitBody {
    fn is_empty(&self) -> bool {
        [
            self.token_max_limit.as_ref().map_unit(),
            self.token_reset_duration.as_ref().map_unit(),
            self.request_max_limit.as_ref().map_unit(),
            self.request_reset_duration.as_ref().map_unit(),
        ]
        .iter()
        .all(|p| *p == Patch::Absent)
    }
}

trait MapUnit {
    fn map_unit(self) -> Patch<()>;
}

impl<T> MapUnit for Patch<T> {
    fn map_unit(self) -> Patch<()> {
        match self {
            Patch::Absent => Patch::Absent,
            Patch::Null => Patch::Null,
            Patch::Value(_) => Patch::Value(()),
        }
    }
}

/// A budget with its live usage.
#[derive(Debug, Serialize, ToSchema)]
pub struct BudgetView {
    pub id: Uuid,
    pub max_limit: f64,
    pub reset_duration: String,
    pub calendar_aligned: bool,
    pub timezone: String,
    /// Dollars used in the current window (0 once the window has expired).
    pub current_usage: f64,
    /// Dollars set aside by holds of requests in flight (not usage; counts as used).
    pub current_held: f64,
    pub forecast: Option<ForecastView>,
    #[serde(serialize_with = "serialize_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub last_reset: Micros,
    #[serde(serialize_with = "serialize_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub resets_at: Micros,
    #[serde(serialize_with = "serialize_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Micros,
    #[serde(serialize_with = "serialize_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Micros,
}

impl BudgetView {
    pub fn new(b: &Budget, now: Micros) -> Self {
        let v = b.view(now);
        BudgetView {
            id: b.id,
            max_limit: b.spec.max.to_usd(),
            reset_duration: b.spec.duration.as_str().to_owned(),
            calendar_aligned: b.spec.calendar_aligned,
            timezone: b.spec.timezone.name().to_owned(),
            current_usage: crate::domain::Money::from_nanos(v.used).to_usd(),
            current_held: crate::domain::Money::from_nanos(v.held).to_usd(),
            forecast: ForecastView::of(
                LimitKind::Budget,
                &b.counter,
                &v,
                Some(b.spec.max.nanos()),
                now,
            ),
            last_reset: v.last_reset,
            resets_at: v.resets_at,
            created_at: b.created_at,
            updated_at: b.updated_at,
        }
    }
}

/// A rate limit with its live usage. A dimension without a limit shows `null` for its max,
/// duration and reset instant.
#[derive(Debug, Serialize, ToSchema)]
pub struct RateLimitView {
    pub id: Uuid,
    pub token_max_limit: Option<i64>,
    pub token_reset_duration: Option<String>,
    pub token_current_usage: i64,
    /// Tokens set aside by holds of requests in flight.
    pub token_current_held: i64,
    #[serde(serialize_with = "serialize_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub token_last_reset: Micros,
    #[serde(serialize_with = "serialize_opt_rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub token_resets_at: Option<Micros>,
    pub request_max_limit: Option<i64>,
    pub request_reset_duration: Option<String>,
    pub request_current_usage: i64,
    /// Requests set aside by holds of requests in flight.
    pub request_current_held: i64,
    #[serde(serialize_with = "serialize_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub request_last_reset: Micros,
    #[serde(serialize_with = "serialize_opt_rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub request_resets_at: Option<Micros>,
    /// The token dimension's forecast.
    pub token_forecast: Option<ForecastView>,
    /// The request dimension's forecast.
    pub request_forecast: Option<ForecastView>,
    /// The forecast of the dimension that runs out first (or, when neither does this window,
    /// the busier one relative to its max).
    pub forecast: Option<ForecastView>,
    #[serde(serialize_with = "serialize_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Micros,
    #[serde(serialize_with = "serialize_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Micros,
}

impl RateLimitView {
    pub fn new(r: &RateLimit, now: Micros) -> Self {
        let t = r.token_view(now);
        let q = r.request_view(now);
        let token_forecast =
            ForecastView::of(LimitKind::Tokens, &r.tokens, &t, r.spec.tokens.max, now);
        let request_forecast = ForecastView::of(
            LimitKind::Requests,
            &r.requests,
            &q,
            r.spec.requests.max,
            now,
        );
        RateLimitView {
            id: r.id,
            token_max_limit: r.spec.tokens.max,
            token_reset_duration: r
                .spec
                .tokens
                .duration
                .as_ref()
                .map(|d| d.as_str().to_owned()),
            token_current_usage: t.used,
            token_current_held: t.held,
            token_last_reset: t.last_reset,
            token_resets_at: r.token_rule.as_ref().map(|_| t.resets_at),
            request_max_limit: r.spec.requests.max,
            request_reset_duration: r
                .spec
                .requests
                .duration
                .as_ref()
                .map(|d| d.as_str().to_owned()),
            request_current_usage: q.used,
            request_current_held: q.held,
            request_last_reset: q.last_reset,
            request_resets_at: r.request_rule.as_ref().map(|_| q.resets_at),
            token_forecast,
            request_forecast,
            forecast: first_out(token_forecast, request_forecast, r),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Of two dimensions' forecasts, the one that runs out first, else the faster relative to its
/// max.
fn first_out(
    tokens: Option<ForecastView>,
    requests: Option<ForecastView>,
    r: &RateLimit,
) -> Option<ForecastView> {
    match (tokens, requests) {
        (Some(t), Some(q)) => Some(match (t.exhausted_at, q.exhausted_at) {
            (Some(a), Some(b)) => {
                if a <= b {
                    t
                } else {
                    q
                }
            }
            (Some(_), None) => t,
            (None, Some(_)) => q,
            (None, None) => {
                let share = |f: ForecastView, max: Option<i64>| {
                    f.rate_per_hour / max.unwrap_or(i64::MAX).max(1) as f64
                };
                if share(t, r.spec.tokens.max) >= share(q, r.spec.requests.max) {
                    t
                } else {
                    q
                }
            }
        }),
        (t, q) => t.or(q),
    }
}

/// The `budget_id`, `rate_limit_id`, `budget` and `rate_limit` fields every entity view has.
#[derive(Debug, Serialize, ToSchema)]
pub struct LimitsView {
    pub budget_id: Option<Uuid>,
    pub rate_limit_id: Option<Uuid>,
    pub budget: Option<BudgetView>,
    pub rate_limit: Option<RateLimitView>,
}

impl LimitsView {
    pub fn new(l: &Limits, now: Micros) -> Self {
        LimitsView {
            budget_id: l.budget.as_ref().map(|b| b.id),
            rate_limit_id: l.rate_limit.as_ref().map(|r| r.id),
            budget: l.budget.as_ref().map(|b| BudgetView::new(b, now)),
            rate_limit: l.rate_limit.as_ref().map(|r| RateLimitView::new(r, now)),
        }
    }
}

/// Prefixes a validation message with where the limit sits (`provider_configs[0].`), if not
/// on the entity itself.
fn located(prefix: &str, e: LimitError) -> ApiError {
    ApiError::InvalidRequest(format!("{prefix}{e}"))
}

/// Applies the `budget` and `rate_limit` fields of a create or update body to an owner's
/// current limits. A changed limit keeps its counters (usage and window); every row to write
/// is recorded in `changes`.
pub fn patch_limits(
    current: &Limits,
    budget: Patch<BudgetBody>,
    rate_limit: Patch<RateLimitBody>,
    prefix: &str,
    now: Micros,
    changes: &mut LimitChanges,
) -> Result<Limits, ApiError> {
    let budget = match (budget, &current.budget) {
        (Patch::Absent, existing) => existing.clone(),
        (Patch::Null, None) => None,
        (Patch::Value(body), None) if body.is_empty() => None,
        (Patch::Null, Some(old)) => {
            changes.delete_budgets.push(old.id);
            None
        }
        (Patch::Value(body), Some(old)) if body.is_empty() => {
            changes.delete_budgets.push(old.id);
            None
        }
        (Patch::Value(body), Some(old)) => {
            let spec = old
                .spec
                .patched(
                    body.max_limit,
                    body.reset_duration.as_deref(),
                    body.calendar_aligned,
                    body.timezone.as_deref(),
                )
                .map_err(|e| located(prefix, e))?;
            let next = Arc::new(old.respec(spec, now));
            changes.update_budgets.push(Arc::clone(&next));
            Some(next)
        }
        (Patch::Value(body), None) => {
            let max = body
                .max_limit
                .ok_or_else(|| located(prefix, LimitError::new("max_limit", "is required")))?;
            let duration = body
                .reset_duration
                .as_deref()
                .ok_or_else(|| located(prefix, LimitError::new("reset_duration", "is required")))?;
            let spec = BudgetSpec::new(
                max,
                duration,
                body.calendar_aligned.unwrap_or(false),
                body.timezone.as_deref(),
            )
            .map_err(|e| located(prefix, e))?;
            let next = Arc::new(Budget::new(Uuid::new_v4(), spec, 0, now, now, now));
            changes.insert_budgets.push(Arc::clone(&next));
            Some(next)
        }
    };
    let rate_limit = match (rate_limit, &current.rate_limit) {
        (Patch::Absent, existing) => existing.clone(),
        (Patch::Null, None) => None,
        (Patch::Value(body), None) if body.is_empty() => None,
        (Patch::Null, Some(old)) => {
            changes.delete_rate_limits.push(old.id);
            None
        }
        (Patch::Value(body), Some(old)) if body.is_empty() => {
            changes.delete_rate_limits.push(old.id);
            None
        }
        (Patch::Value(body), Some(old)) => {
            let spec = old
                .spec
                .patched(
                    body.token_max_limit,
                    body.token_reset_duration,
                    body.request_max_limit,
                    body.request_reset_duration,
                )
                .map_err(|e| located(prefix, e))?;
            let next = Arc::new(old.respec(spec, now));
            changes.update_rate_limits.push(Arc::clone(&next));
            Some(next)
        }
        (Patch::Value(body), None) => {
            let spec = RateLimitSpec::default()
                .patched(
                    body.token_max_limit,
                    body.token_reset_duration,
                    body.request_max_limit,
                    body.request_reset_duration,
                )
                .map_err(|e| located(prefix, e))?;
            let next = Arc::new(RateLimit::new(
                Uuid::new_v4(),
                spec,
                (0, now),
                (0, now),
                now,
                now,
            ));
            changes.insert_rate_limits.push(Arc::clone(&next));
            Some(next)
        }
    };
    Ok(Limits { budget, rate_limit })
}
