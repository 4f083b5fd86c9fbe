//! Usage (`docs/semantics.md`): what one finished request, or one streaming
//! chunk, adds to every counter that governs it.

use super::capture::{Entered, Side};
use super::check::{hierarchy, model_configs, prices_for};
use super::entities::{Limits, VirtualKey};
use std::sync::Arc;

use super::dirty::DirtySet;
use super::store::{ResolvedKey, Snapshot};
use crate::domain::{Micros, Money};

/// One usage report, validated.
#[derive(Debug, Clone, Copy, Default)]
pub struct UsageEvent<'a> {
    pub virtual_key: Option<&'a str>,
    pub provider: &'a str,
    pub model: &'a str,
    pub user_id: Option<&'a str>,
    pub success: bool,
    pub tokens: i64,
    pub cost: Money,
    /// Whether the gateway sent `cost`; without one, `input_tokens` and `output_tokens` are
    /// priced at the model's prices ([`UsageEvent::priced`]).
    pub cost_given: bool,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub is_streaming: bool,
    pub is_final_chunk: bool,
    pub has_usage_data: bool,
}

/// What an event charges, after the streaming rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Charge {
    pub tokens: Option<i64>,
    pub requests: Option<i64>,
    pub cost: Option<i64>,
}

impl UsageEvent<'_> {
    /// The event with its cost at the model's prices (the provider's model config, else the
    /// model's global one) when the gateway sent no cost but split token counts; a cost the
    /// gateway sends always wins.
    pub fn priced(mut self, s: &Snapshot) -> Self {
        if !self.cost_given
            && (self.input_tokens > 0 || self.output_tokens > 0)
            && !self.model.is_empty()
        {
            if let Some(prices) = prices_for(s, self.model, self.provider) {
                self.cost = prices.cost(self.input_tokens, self.output_tokens);
            }
        }
        self
    }

    /// The streaming rules: tokens and cost when not streaming or when the chunk carries
    /// usage data; one request when not streaming or on the final chunk; cost only when > 0.
    pub fn charge(&self) -> Charge {
        if !self.success {
            return Charge::default();
        }
        let usage = !self.is_streaming || self.has_usage_data;
        let request = !self.is_streaming || self.is_final_chunk;
        Charge {
            tokens: usage.then_some(self.tokens),
            requests: request.then_some(1),
            cost: (usage && self.cost.nanos() > 0).then_some(self.cost.nanos()),
        }
    }
}

/// How an event was applied.
#[derive(Debug, Clone)]
pub struct Applied<'a> {
    /// The event named a virtual key that no key has (nothing was charged at key level).
    pub unknown_key: bool,
    /// The key charged, with its hierarchy.
    pub key: Option<&'a Arc<ResolvedKey>>,
}

fn charge_limits(limits: &Limits, charge: &Charge, now: Micros, dirty: &DirtySet, side: Side) {
    if let Some(rl) = &limits.rate_limit {
        if let Some(t) = charge.tokens {
            rl.add_tokens(now, t, side);
        }
        if let Some(r) = charge.requests {
            rl.add_requests(now, r, side);
        }
        if charge.tokens.is_some() || charge.requests.is_some() {
            dirty.mark_rate_limit(rl, side);
        }
    }
    if let (Some(b), Some(cost)) = (&limits.budget, charge.cost) {
        b.add(now, cost, side);
        dirty.mark_budget(b, side);
    }
}

/// Applies one event to the counters of `s`, resolving the key's hierarchy as it is now, on
/// the side of the update `entered` (see [`super::capture`]).
pub fn apply<'a>(
    s: &'a Snapshot,
    event: &UsageEvent<'_>,
    now: Micros,
    entered: &Entered<'_>,
) -> Applied<'a> {
    apply_charge(s, event, &event.charge(), now, entered)
}

/// Applies `charge` to every counter that governs the subject of `event` (its provider,
/// model, user and key), whatever the event's own streaming rules would charge: for callers
/// that count requests and tokens themselves (the Envoy rate limit service's hits).
pub fn apply_charge<'a>(
    s: &'a Snapshot,
    event: &UsageEvent<'_>,
    charge: &Charge,
    now: Micros,
    entered: &Entered<'_>,
) -> Applied<'a> {
    let side = entered.side();
    let nothing = Applied {
        unknown_key: false,
        key: None,
    };
    let charge = *charge;
    if charge == Charge::default() {
        return nothing;
    }
    let (provider, model) = (event.provider, event.model);
    if !provider.is_empty() && !model.is_empty() {
        if let Some(p) = s.providers.get(provider) {
            charge_limits(&p.limits, &charge, now, &s.dirty, side);
        }
        for (_, limits) in model_configs(s, model, provider) {
            charge_limits(limits, &charge, now, &s.dirty, side);
        }
    }
    if let Some(u) = event
        .user_id
        .filter(|u| !u.is_empty())
        .and_then(|u| s.users.get(u))
    {
        charge_limits(&u.limits, &charge, now, &s.dirty, side);
    }
    let Some(value) = event.virtual_key.filter(|v| !v.is_empty()) else {
        return nothing;
    };
    match s.keys_by_hash.get(&VirtualKey::hash_value(value)) {
        Some(key) => {
            for (_, _, limits) in hierarchy(key, provider) {
                charge_limits(limits, &charge, now, &s.dirty, side);
            }
            Applied {
                unknown_key: false,
                key: Some(key),
            }
        }
        None => Applied {
            unknown_key: true,
            key: None,
        },
    }
}
