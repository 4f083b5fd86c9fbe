//! What the hot paths hand to the metrics: usage charged by a batch, summed before it is
//! recorded, and what happened to a hold.

use std::collections::HashMap;

use super::Metrics;
use crate::engine::usage::Charge;

/// What happened to a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldEvent {
    Placed,
    Refused,
    Settled,
    Released,
    Expired,
}

pub(super) const HOLD_EVENTS: [HoldEvent; 5] = [
    HoldEvent::Placed,
    HoldEvent::Refused,
    HoldEvent::Settled,
    HoldEvent::Released,
    HoldEvent::Expired,
];

impl HoldEvent {
    pub(super) fn label(self) -> &'static str {
        match self {
            HoldEvent::Placed => "placed",
            HoldEvent::Refused => "refused",
            HoldEvent::Settled => "settled",
            HoldEvent::Released => "released",
            HoldEvent::Expired => "expired",
        }
    }
}

/// Usage charged by a batch, summed per provider and model before it reaches the metrics.
#[derive(Debug, Default)]
pub struct ChargeTally<'a> {
    sums: HashMap<(&'a str, &'a str), Charge>,
    updates: usize,
}

impl<'a> ChargeTally<'a> {
    pub fn add(&mut self, provider: &'a str, model: &'a str, charge: &Charge) {
        self.updates += 1;
        let sum = self.sums.entry((provider, model)).or_default();
        let plus = |a: Option<i64>, b: Option<i64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
        };
        sum.tokens = plus(sum.tokens, charge.tokens);
        sum.requests = plus(sum.requests, charge.requests);
        sum.cost = plus(sum.cost, charge.cost);
    }

    /// How many updates were added.
    pub fn updates(&self) -> usize {
        self.updates
    }

    pub fn report(self, metrics: &Metrics) {
        metrics.usage_accepted.increment(self.updates as u64);
        for ((provider, model), charge) in &self.sums {
            metrics.charged(provider, model, charge);
        }
    }
}
