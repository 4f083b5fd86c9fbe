//! `POST /v1/usage` and `POST /v1/usage/batch`: what requests used. Updates are validated
//! whole before anything is applied, deduplicated by `(request_id, attempt, phase)`, then
//! applied to the in-memory counters.

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody, ItemError};
use super::extract::{ApiJson, ApiJsonBytes};
use crate::config::AckMode;
use crate::domain::time::now_micros;
use crate::domain::Micros;
use crate::engine::capture::Entered;
use crate::engine::store::Snapshot;
use crate::engine::usage::{apply_charge, Charge, UsageEvent};
use crate::http::state::AppState;
use crate::telemetry::HoldEvent;

mod validate;

use validate::Valid;

pub fn router(batch_max_body_bytes: usize) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(record_usage))
        .routes(routes!(record_usage_batch).layer(DefaultBodyLimit::max(batch_max_body_bytes)))
}

/// A string of a request body, borrowed from the body when it holds no escapes: a batch of
/// a thousand updates then allocates nothing for its strings.
#[derive(Debug, Clone, Default)]
pub struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Visit)
    }
}

/// A usage update, with Bifrost's field names. Unknown fields are ignored.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct UsageUpdate<'a> {
    #[serde(borrow)]
    #[schema(value_type = Option<String>)]
    pub virtual_key: Option<Text<'a>>,
    #[serde(borrow)]
    #[schema(value_type = Option<String>)]
    pub provider: Option<Text<'a>>,
    #[serde(borrow)]
    #[schema(value_type = Option<String>)]
    pub model: Option<Text<'a>>,
    /// Default true; a failed request records nothing.
    pub success: Option<bool>,
    /// An integer ≥ 0; when absent, `input_tokens` + `output_tokens`.
    pub tokens_used: Option<i64>,
    /// Prompt tokens, an integer ≥ 0: with `output_tokens`, priced at the model config's
    /// prices when the update has no `cost`.
    pub input_tokens: Option<i64>,
    /// Completion tokens, an integer ≥ 0.
    pub output_tokens: Option<i64>,
    /// Dollars, a finite number ≥ 0. When absent, `input_tokens` and `output_tokens` are priced
    /// at the model config's prices (if it has any).
    pub cost: Option<f64>,
    /// Makes the update idempotent, with `attempt` and the phase.
    #[serde(borrow)]
    #[schema(value_type = Option<String>)]
    pub request_id: Option<Text<'a>>,
    #[serde(borrow)]
    #[schema(value_type = Option<String>)]
    pub user_id: Option<Text<'a>>,
    pub is_streaming: Option<bool>,
    pub is_final_chunk: Option<bool>,
    pub has_usage_data: Option<bool>,
    /// Retry attempt of the request, default 0.
    pub attempt: Option<u64>,
    /// Index of a non-final streaming chunk; such chunks are deduplicated only with it.
    pub chunk_index: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageAccepted {
    pub accepted: bool,
    /// A repeat of an update already recorded: nothing changed.
    pub duplicate: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UsageBatch<'a> {
    #[serde(borrow)]
    #[schema(value_type = Vec<UsageUpdate>)]
    pub updates: Vec<&'a RawValue>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchAccepted {
    /// Updates applied.
    pub accepted: usize,
    /// Updates skipped as repeats.
    pub duplicates: usize,
}

#[derive(Deserialize)]
struct TypedBatch<'a> {
    #[serde(borrow)]
    updates: Vec<UsageUpdate<'a>>,
}

/// Updates that parsed, by index, and an error for each item that did not.
type Parsed<'a> = (Vec<(usize, UsageUpdate<'a>)>, Vec<ItemError>);

/// Deserializes a body, with the error envelope's wording.
fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            ApiError::InvalidRequest(format!("invalid body: {e}"))
        } else {
            ApiError::InvalidRequest(format!("malformed JSON: {e}"))
        }
    })
}

/// Parses a batch item by item: the updates that parse, and an error for each that does not.
fn per_item(body: &[u8]) -> Result<Parsed<'_>, ApiError> {
    let batch: UsageBatch<'_> = parse(body)?;
    let mut parsed = Vec::with_capacity(batch.updates.len());
    let mut errors = Vec::new();
    for (index, raw) in batch.updates.iter().enumerate() {
        match serde_json::from_str::<UsageUpdate>(raw.get()) {
            Ok(update) => parsed.push((index, update)),
            Err(e) => errors.push(ItemError {
                index,
                message: e.to_string(),
            }),
        }
    }
    Ok((parsed, errors))
}

/// Applies one valid update unless it is a repeat; true when applied. Everything it changes
/// (its idempotency key included) goes to the side of `entered`, so that one flush writes its
/// key, counters and rollup together.
fn record(
    state: &AppState,
    snapshot: &Snapshot,
    entered: &Entered<'_>,
    valid: &Valid<'_>,
    now: Micros,
) -> Option<Charge> {
    let event = valid.event.priced(snapshot);
    if let Some((request_id, attempt)) = valid.settles {
        settle(state, request_id, attempt, &event);
    }
    if let Some(key) = valid.dedup {
        if !state.dedup.claim_for(key, now, entered.side()) {
            return None;
        }
    }
    let charge = event.charge();
    charge_subject(state, snapshot, entered, &event, &charge, now);
    Some(charge)
}

/// Applies `charge` to the counters of `event`'s subject and to the hourly rollups.
pub fn charge_subject(
    state: &AppState,
    snapshot: &Snapshot,
    entered: &Entered<'_>,
    event: &UsageEvent<'_>,
    charge: &Charge,
    now: Micros,
) {
    let applied = apply_charge(snapshot, event, charge, now, entered);
    if applied.unknown_key {
        tracing::debug!("usage for an unknown virtual key: key levels skipped");
    }
    state.rollups.record(
        entered.side(),
        now,
        applied.key.map(|k| k.as_ref()),
        event.user_id.unwrap_or(""),
        event.provider,
        event.model,
        charge,
    );
}

/// Ends the hold of a request whose final usage arrived: its capacity is freed, and the usage
/// is charged as any other (also above what was reserved).
fn settle(state: &AppState, request_id: &str, attempt: u64, event: &UsageEvent<'_>) {
    let Some(hold) = state.holds.end(request_id, attempt) else {
        return;
    };
    state.metrics.hold_event(HoldEvent::Settled);
    let charge = event.charge();
    state.metrics.hold_overrun(
        charge.cost.unwrap_or(0) > hold.reserved.cost,
        charge.tokens.unwrap_or(0) > hold.reserved.tokens,
    );
}

/// With `ack = "durable"`, waits until the flush that holds everything applied so far has
/// committed.
pub(crate) async fn acknowledge(state: &AppState) -> Result<(), ApiError> {
    if state.config.ack == AckMode::Buffered {
        return Ok(());
    }
    if state.worker.durable(DURABLE_TIMEOUT).await {
        Ok(())
    } else {
        Err(ApiError::Unavailable(
            "usage was applied in memory but could not be made durable in time (database \
             unreachable); retry with the same request_id"
                .to_owned(),
        ))
    }
}

/// How long a durable acknowledgement waits for its flush.
pub const DURABLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Record what one request (or one streaming chunk) used.
#[utoipa::path(post, path = "/v1/usage", tag = "gateway",
    request_body = UsageUpdate,
    responses((status = 202, body = UsageAccepted), (status = 503, description = "ack = durable and the database is unreachable", body = ErrorBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub async fn record_usage(
    State(state): State<AppState>,
    ApiJsonBytes(body): ApiJsonBytes,
) -> Result<(StatusCode, ApiJson<UsageAccepted>), ApiError> {
    let rejected = |e: ApiError| {
        state.metrics.usage_rejected.increment(1);
        e
    };
    let update: UsageUpdate<'_> = parse(&body).map_err(rejected)?;
    let valid = update
        .validate()
        .map_err(|e| rejected(ApiError::InvalidRequest(e)))?;
    let recorded = {
        let snapshot = state.store.guard();
        let entered = snapshot.dirty.enter();
        record(&state, &snapshot, &entered, &valid, now_micros())
    };
    let applied = match recorded {
        Some(charge) => {
            state.metrics.usage_accepted.increment(1);
            state
                .metrics
                .charged(valid.event.provider, valid.event.model, &charge);
            true
        }
        None => {
            state.metrics.usage_duplicate.increment(1);
            false
        }
    };
    acknowledge(&state).await?;
    Ok((
        StatusCode::ACCEPTED,
        ApiJson(UsageAccepted {
            accepted: true,
            duplicate: !applied,
        }),
    ))
}

/// Parses and validates a batch whole, then hands its valid updates to `apply`. A batch with
/// any invalid item is rejected with per-item details (and how many items it carried).
fn with_valid_batch<R>(
    body: &[u8],
    max_items: usize,
    apply: impl FnOnce(&[Valid<'_>]) -> R,
) -> Result<R, (ApiError, usize)> {
    // The common case parses in one pass; only a batch with a malformed item is parsed again
    // item by item, to say which items are wrong.
    let (parsed, mut errors): Parsed = match serde_json::from_slice::<TypedBatch>(body) {
        Ok(batch) => (batch.updates.into_iter().enumerate().collect(), Vec::new()),
        Err(_) => per_item(body).map_err(|e| (e, 1))?,
    };
    let items = parsed.len() + errors.len();
    if items > max_items {
        return Err((
            ApiError::InvalidRequest(format!(
                "updates: at most {max_items} items per batch, got {items}"
            )),
            items,
        ));
    }
    let mut valid = Vec::with_capacity(parsed.len());
    for (index, update) in &parsed {
        match update.validate() {
            Ok(v) => valid.push(v),
            Err(message) => errors.push(ItemError {
                index: *index,
                message,
            }),
        }
    }
    errors.sort_by_key(|e| e.index);
    if !errors.is_empty() {
        let message = format!("{} invalid update(s); nothing was applied", errors.len());
        return Err((ApiError::InvalidItems(message, errors), items));
    }
    Ok(apply(&valid))
}

/// Decodes and validates one `/v1/usage` body as the handler does, without applying it: what
/// it would charge. For fuzzing.
pub fn decode_usage(body: &[u8]) -> Result<Charge, ApiError> {
    let update: UsageUpdate<'_> = parse(body)?;
    let valid = update.validate().map_err(ApiError::InvalidRequest)?;
    Ok(valid.event.charge())
}

/// Decodes and validates one `/v1/usage/batch` body as the handler does, without applying it:
/// how many updates it holds. For fuzzing.
pub fn decode_usage_batch(body: &[u8], max_items: usize) -> Result<usize, ApiError> {
    with_valid_batch(body, max_items, |valid| valid.len()).map_err(|(e, _)| e)
}

/// Record many updates at once. The batch is validated whole first: one invalid item rejects
/// it with per-item details, and nothing is applied.
#[utoipa::path(post, path = "/v1/usage/batch", tag = "gateway",
    request_body = UsageBatch,
    responses((status = 202, body = BatchAccepted), (status = 503, description = "ack = durable and the database is unreachable", body = ErrorBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub async fn record_usage_batch(
    State(state): State<AppState>,
    ApiJsonBytes(body): ApiJsonBytes,
) -> Result<(StatusCode, ApiJson<BatchAccepted>), ApiError> {
    let max = state.config.batch_max_items;
    let counted = with_valid_batch(&body, max, |valid| {
        let now = now_micros();
        // Metrics are summed per provider and model first: a batch usually names a few.
        let mut charged = crate::telemetry::ChargeTally::default();
        {
            // The whole batch on one side: one flush writes all of it.
            let snapshot = state.store.guard();
            let entered = snapshot.dirty.enter();
            for v in valid {
                if let Some(charge) = record(&state, &snapshot, &entered, v, now) {
                    charged.add(v.event.provider, v.event.model, &charge);
                }
            }
        }
        let accepted = charged.updates();
        charged.report(&state.metrics);
        state
            .metrics
            .usage_duplicate
            .increment((valid.len() - accepted) as u64);
        (accepted, valid.len() - accepted)
    });
    let (accepted, duplicates) = counted.map_err(|(e, rejected)| {
        state.metrics.usage_rejected.increment(rejected as u64);
        e
    })?;
    acknowledge(&state).await?;
    Ok((
        StatusCode::ACCEPTED,
        ApiJson(BatchAccepted {
            accepted,
            duplicates,
        }),
    ))
}

#[cfg(test)]
mod tests;
