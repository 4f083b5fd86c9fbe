//! Holds on the wire: what a check's `reserve` asks for, and the views of a hold and of what
//! a request can still afford.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::CheckRequest;
use crate::config::Config;
use crate::domain::time::serialize_rfc3339;
use crate::domain::{Micros, Money};
use crate::engine::check::LimitCheck;
use crate::engine::holds::{Amounts, Hold};
use crate::engine::level::LimitKind;
use crate::http::error::ApiError;

/// What a hold reserves: cost (USD) on budgets, tokens on token limits; one request on request
/// limits always.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct ReserveBody {
    /// Dollars, finite ≥ 0; default 0.
    #[schema(minimum = 0)]
    pub cost: Option<f64>,
    /// Default 0.
    #[schema(minimum = 0)]
    pub tokens: Option<i64>,
}

/// The most a request can still spend.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct Affordable {
    /// Dollars.
    pub cost: Option<f64>,
    pub tokens: Option<i64>,
}

impl Affordable {
    pub(super) fn of(checks: &[LimitCheck<'_>]) -> Affordable {
        let room = |kind: LimitKind| {
            checks
                .iter()
                .filter(|c| c.kind == kind)
                .map(|c| c.max.saturating_sub(c.used).saturating_sub(c.held).max(0))
                .min()
        };
        Affordable {
            cost: room(LimitKind::Budget).map(|n| Money::from_nanos(n).to_usd()),
            tokens: room(LimitKind::Tokens),
        }
    }
}

/// A hold, as `/v1/check` and `/v1/holds/…` show it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HoldView {
    pub request_id: String,
    pub attempt: u64,
    #[serde(serialize_with = "serialize_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Micros,
    pub reserved: ReservedView,
}

/// What a hold sets aside on each counter of its kind.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct ReservedView {
    /// Dollars, on every budget.
    pub cost: f64,
    /// On every token limit.
    pub tokens: i64,
    /// On every request limit (always 1).
    pub requests: i64,
}

impl HoldView {
    pub fn new(h: &Hold) -> HoldView {
        HoldView {
            request_id: h.request_id.clone(),
            attempt: h.attempt,
            expires_at: h.expires_at,
            reserved: ReservedView {
                cost: Money::from_nanos(h.reserved.cost).to_usd(),
                tokens: h.reserved.tokens,
                requests: h.reserved.requests,
            },
        }
    }
}

/// A valid `reserve`: whose hold, how much, until when.
pub(super) struct Reservation<'a> {
    pub(super) request_id: &'a str,
    pub(super) attempt: u64,
    pub(super) amounts: Amounts,
    pub(super) ttl: Micros,
}

/// The reservation a valid body asks for, if any (400 for a bad one).
pub(super) fn reservation<'a>(
    req: &'a CheckRequest,
    config: &Config,
) -> Result<Option<Reservation<'a>>, ApiError> {
    let bad = |m: String| Err(ApiError::InvalidRequest(m));
    let ttl = match &req.hold_ttl {
        None => config.hold_ttl,
        Some(text) => match crate::config::parse_duration(text) {
            Ok(ttl) if ttl > config.hold_max_ttl => {
                return bad(format!(
                    "hold_ttl: must be at most hold_max_ttl ({} s)",
                    config.hold_max_ttl.as_secs()
                ))
            }
            Ok(ttl) => ttl,
            Err(e) => return bad(format!("hold_ttl: {e}")),
        },
    };
    if req.attempt.is_some_and(|a| a > i64::MAX as u64) {
        return bad(format!("attempt: must be at most {}", i64::MAX));
    }
    let Some(reserve) = &req.reserve else {
        return Ok(None);
    };
    let Some(request_id) = req.request_id.as_deref().filter(|r| !r.is_empty()) else {
        return bad("reserve: needs a request_id (the hold is that request's)".to_owned());
    };
    let cost = match Money::from_usd(reserve.cost.unwrap_or(0.0)) {
        Ok(cost) => cost.nanos(),
        Err(e) => return bad(format!("reserve.cost: {e}")),
    };
    let tokens = reserve.tokens.unwrap_or(0);
    if tokens < 0 {
        return bad("reserve.tokens: must be an integer ≥ 0".to_owned());
    }
    Ok(Some(Reservation {
        request_id,
        attempt: req.attempt.unwrap_or(0),
        amounts: Amounts {
            cost,
            tokens,
            requests: 1,
        },
        ttl: ttl.as_micros().min(i64::MAX as u128) as Micros,
    }))
}
