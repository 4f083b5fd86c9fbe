//! What one write holds, all taken from one side of the capture: counters with their flush
//! items, rollups and idempotency keys.

use std::sync::Arc;

use super::journal::Dim;
use crate::domain::Micros;
use crate::engine::capture::Side;
use crate::engine::counter::{Counter, FlushItem};
use crate::engine::dedup::DedupKey;
use crate::engine::delta::Delta;
use crate::engine::holds::HoldChanges;
use crate::engine::rollup::{RollupKey, RollupSums};
use crate::engine::{Budget, RateLimit};

/// What one write holds: counters with their items, rollups and idempotency keys, all taken
/// from one side.
#[derive(Default)]
pub(super) struct Items {
    pub(super) side: Side,
    pub(super) budgets: Vec<(Arc<Budget>, FlushItem)>,
    /// Each rate limit with the items of its token and request counters.
    pub(super) rates: Vec<(Arc<RateLimit>, FlushItem, FlushItem)>,
    pub(super) rollups: Vec<(RollupKey, RollupSums)>,
    pub(super) keys: Vec<(DedupKey, Micros)>,
    /// Holds placed and ended since the last write.
    pub(super) holds: HoldChanges,
}

impl Items {
    /// Rolls the windows of the given limits that ended by `now` and takes the items of those
    /// with something to write.
    pub(super) fn collect<'a>(
        budgets: impl Iterator<Item = &'a Arc<Budget>>,
        rates: impl Iterator<Item = &'a Arc<RateLimit>>,
        now: Micros,
        side: Side,
    ) -> Items {
        let mut items = Items {
            side,
            ..Items::default()
        };
        for b in budgets {
            b.counter.roll(&b.rule, now);
            if let Some(item) = b.counter.flush_item(side) {
                items.budgets.push((Arc::clone(b), item));
            }
        }
        for r in rates {
            r.tokens.roll(r.token_rule(), now);
            r.requests.roll(r.request_rule(), now);
            let (t, q) = (r.tokens.flush_item(side), r.requests.flush_item(side));
            if t.is_some() || q.is_some() {
                let idle = |c: &Counter| FlushItem {
                    start: c.raw().1,
                    delta: 0,
                    reset: false,
                };
                items.rates.push((
                    Arc::clone(r),
                    t.unwrap_or_else(|| idle(&r.tokens)),
                    q.unwrap_or_else(|| idle(&r.requests)),
                ));
            }
        }
        items
    }

    /// The counter deltas, as the journal keeps them.
    pub(super) fn deltas(&self) -> Vec<(Dim, uuid::Uuid, Delta)> {
        let mut deltas = Vec::with_capacity(self.budgets.len() + 2 * self.rates.len());
        for (b, item) in &self.budgets {
            deltas.push((Dim::Budget, b.id, (item.start, item.delta)));
        }
        for (r, t, q) in &self.rates {
            deltas.push((Dim::Tokens, r.id, (t.start, t.delta)));
            deltas.push((Dim::Requests, r.id, (q.start, q.delta)));
        }
        deltas
    }

    /// Takes the committed deltas off the counters' pending usage.
    pub(super) fn flushed(&self) {
        for (b, item) in &self.budgets {
            b.counter.flushed(*item, self.side);
        }
        for (r, t, q) in &self.rates {
            r.tokens.flushed(*t, self.side);
            r.requests.flushed(*q, self.side);
        }
    }

    pub(super) fn append(&mut self, mut other: Items) {
        if self.is_empty() {
            self.side = other.side;
        }
        debug_assert_eq!(self.side, other.side, "one write takes one side");
        self.budgets.append(&mut other.budgets);
        self.rates.append(&mut other.rates);
        self.rollups.append(&mut other.rollups);
        self.keys.append(&mut other.keys);
        self.holds.placed.append(&mut other.holds.placed);
        self.holds.ended.append(&mut other.holds.ended);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.budgets.is_empty()
            && self.rates.is_empty()
            && self.rollups.is_empty()
            && self.keys.is_empty()
            && self.holds.is_empty()
    }
}
