//! What makes a usage update valid, and what a valid one applies: its event, its idempotency
//! key and the hold it settles.

use super::{Text, UsageUpdate};
use crate::domain::Money;
use crate::engine::dedup::{dedup_key, DedupKey, Phase};
use crate::engine::usage::UsageEvent;
use crate::http::check::MAX_STRING;

/// A validated update, ready to apply.
#[derive(Debug)]
pub(super) struct Valid<'a> {
    pub(super) event: UsageEvent<'a>,
    pub(super) dedup: Option<DedupKey>,
    /// The hold this update settles (a final phase with a request id).
    pub(super) settles: Option<(&'a str, u64)>,
}

fn text<'a>(field: &str, value: &'a Option<Text<'_>>) -> Result<Option<&'a str>, String> {
    match value.as_ref().map(|t| t.0.as_ref()) {
        Some(v) if v.len() > MAX_STRING => {
            Err(format!("{field}: must be at most {MAX_STRING} bytes"))
        }
        Some(v) if v.contains('\0') => Err(format!("{field}: must not contain NUL characters")),
        Some(v) => Ok(Some(v)),
        None => Ok(None),
    }
}

impl UsageUpdate<'_> {
    pub(super) fn validate(&self) -> Result<Valid<'_>, String> {
        let virtual_key = text("virtual_key", &self.virtual_key)?;
        let provider = text("provider", &self.provider)?.unwrap_or("");
        let model = text("model", &self.model)?.unwrap_or("");
        let user_id = text("user_id", &self.user_id)?;
        let request_id = text("request_id", &self.request_id)?;
        let count = |field: &str, n: Option<i64>| match n {
            Some(n) if n < 0 => Err(format!("{field}: must be an integer ≥ 0")),
            n => Ok(n.unwrap_or(0)),
        };
        let input_tokens = count("input_tokens", self.input_tokens)?;
        let output_tokens = count("output_tokens", self.output_tokens)?;
        let tokens = match self.tokens_used {
            Some(_) => count("tokens_used", self.tokens_used)?,
            None => input_tokens
                .checked_add(output_tokens)
                .ok_or("input_tokens + output_tokens: too large")?,
        };
        let cost = Money::from_usd(self.cost.unwrap_or(0.0)).map_err(|e| format!("cost: {e}"))?;
        let event = UsageEvent {
            virtual_key,
            provider,
            model,
            user_id,
            success: self.success.unwrap_or(true),
            tokens,
            cost,
            cost_given: self.cost.is_some(),
            input_tokens,
            output_tokens,
            is_streaming: self.is_streaming.unwrap_or(false),
            is_final_chunk: self.is_final_chunk.unwrap_or(false),
            has_usage_data: self.has_usage_data.unwrap_or(false),
        };
        let phase = if !event.is_streaming || event.is_final_chunk {
            Some(Phase::Final)
        } else {
            self.chunk_index.map(Phase::Chunk)
        };
        let request_id = request_id.filter(|r| !r.is_empty());
        let attempt = self.attempt.unwrap_or(0);
        let dedup = match (request_id, phase) {
            (Some(id), Some(phase)) => Some(dedup_key(id, attempt, phase)),
            _ => None,
        };
        let settles = match (request_id, phase) {
            (Some(id), Some(Phase::Final)) => Some((id, attempt)),
            _ => None,
        };
        Ok(Valid {
            event,
            dedup,
            settles,
        })
    }
}
