//! The journal's entry: one group commit's deltas, rollups and keys as JSON, and entries merged
//! into one write (one delta per counter, one sum per rollup row, each key once) for a fold.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db::dedup::{join_key, split_key};
use crate::db::flush::{BudgetDelta, FlushWrites, RateLimitDelta};
use crate::db::holds::{HoldWrites, StoredHold};
use crate::db::DbError;
use crate::domain::Micros;
use crate::engine::counter::FlushItem;
use crate::engine::dedup::DedupKey;
use crate::engine::delta::{self, Delta};
use crate::engine::holds::Hold;
use crate::engine::rollup::{RollupKey, RollupSums};

/// The format of entries this build writes; entries of another format are refused by folds.
pub(super) const FORMAT: u32 = 1;

/// One rollup row of an entry: bucket, key, team, customer, user, provider, model,
/// requests, tokens, cost.
type RollupRow = (
    Micros,
    Option<Uuid>,
    Option<Uuid>,
    Option<Uuid>,
    String,
    String,
    String,
    i64,
    i64,
    i64,
);

/// One group commit, as stored (JSON).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Entry {
    pub(super) v: u32,
    /// Budgets: id, window start, delta.
    #[serde(default)]
    b: Vec<(Uuid, Micros, i64)>,
    /// Rate limits: id, tokens' window start and delta, requests' window start and delta.
    #[serde(default)]
    r: Vec<(Uuid, Micros, i64, Micros, i64)>,
    #[serde(default)]
    u: Vec<RollupRow>,
    /// Idempotency keys: the two halves of the key, expiry.
    #[serde(default)]
    k: Vec<(i64, i64, Micros)>,
    /// Holds placed, holds ended, and ended holds of other processes (notes for them).
    #[serde(default)]
    h: Vec<StoredHold>,
    #[serde(default)]
    x: Vec<StoredHold>,
    #[serde(default)]
    n: Vec<StoredHold>,
}

impl Entry {
    pub(super) fn of(writes: &FlushWrites<'_>) -> Entry {
        Entry {
            v: FORMAT,
            b: writes
                .budgets
                .iter()
                .map(|d| (d.id, d.item.start, d.item.delta))
                .collect(),
            r: writes
                .rates
                .iter()
                .map(|d| {
                    (
                        d.id,
                        d.tokens.start,
                        d.tokens.delta,
                        d.requests.start,
                        d.requests.delta,
                    )
                })
                .collect(),
            u: writes
                .rollups
                .iter()
                .map(|(k, s)| {
                    (
                        k.bucket_start,
                        k.virtual_key_id,
                        k.team_id,
                        k.customer_id,
                        k.user_id.clone(),
                        k.provider.clone(),
                        k.model.clone(),
                        s.requests,
                        s.tokens,
                        s.cost,
                    )
                })
                .collect(),
            k: writes
                .keys
                .iter()
                .map(|(key, expires)| {
                    let (hi, lo) = split_key(*key);
                    (hi, lo, *expires)
                })
                .collect(),
            h: writes
                .holds
                .placed
                .iter()
                .map(|h| StoredHold::of(h))
                .collect(),
            x: writes
                .holds
                .ended
                .iter()
                .map(|h| StoredHold::of(h))
                .collect(),
            n: writes
                .holds
                .notes
                .iter()
                .map(|h| StoredHold::of(h))
                .collect(),
        }
    }
}

pub(super) fn corrupt(message: String) -> DbError {
    DbError::Corrupt {
        table: "usage_journal",
        message,
    }
}

#[derive(Debug, Default)]
pub(super) struct Merged {
    budgets: HashMap<Uuid, Delta>,
    rates: HashMap<Uuid, (Delta, Delta)>,
    rollups: BTreeMap<RollupKey, RollupSums>,
    keys: HashMap<DedupKey, Micros>,
    /// In the order of the entries: a hold placed in one and ended in a later one goes in,
    /// then out.
    placed: Vec<Arc<Hold>>,
    ended: Vec<Arc<Hold>>,
    notes: Vec<Arc<Hold>>,
}

impl Merged {
    pub(super) fn add(&mut self, entry: Entry) -> Result<(), DbError> {
        for (list, stored) in [
            (&mut self.placed, entry.h),
            (&mut self.ended, entry.x),
            (&mut self.notes, entry.n),
        ] {
            for h in stored {
                list.push(Arc::new(h.hold()?));
            }
        }
        for (id, start, delta) in entry.b {
            self.budgets
                .entry(id)
                .and_modify(|d| *d = delta::merge(*d, (start, delta)))
                .or_insert((start, delta));
        }
        for (id, ts, td, rs, rd) in entry.r {
            self.rates
                .entry(id)
                .and_modify(|(t, q)| {
                    *t = delta::merge(*t, (ts, td));
                    *q = delta::merge(*q, (rs, rd));
                })
                .or_insert(((ts, td), (rs, rd)));
        }
        for (bucket, vk, team, customer, user, provider, model, requests, tokens, cost) in entry.u {
            let key = RollupKey {
                bucket_start: bucket,
                virtual_key_id: vk,
                team_id: team,
                customer_id: customer,
                user_id: user,
                provider,
                model,
            };
            let sums = self.rollups.entry(key).or_default();
            sums.requests = sums.requests.saturating_add(requests);
            sums.tokens = sums.tokens.saturating_add(tokens);
            sums.cost = sums.cost.saturating_add(cost);
        }
        for (hi, lo, expires) in entry.k {
            let expiry = self.keys.entry(join_key(hi, lo)).or_insert(expires);
            *expiry = (*expiry).max(expires);
        }
        Ok(())
    }

    pub(super) fn writes(self) -> OwnedWrites {
        let item = |(start, delta): Delta| FlushItem {
            start,
            delta,
            reset: false,
        };
        OwnedWrites {
            budgets: self
                .budgets
                .into_iter()
                .map(|(id, d)| BudgetDelta { id, item: item(d) })
                .collect(),
            rates: self
                .rates
                .into_iter()
                .map(|(id, (t, q))| RateLimitDelta {
                    id,
                    tokens: item(t),
                    requests: item(q),
                })
                .collect(),
            rollups: self.rollups.into_iter().collect(),
            keys: self.keys.into_iter().collect(),
            placed: self.placed,
            ended: self.ended,
            notes: self.notes,
        }
    }
}

pub(super) struct OwnedWrites {
    budgets: Vec<BudgetDelta>,
    rates: Vec<RateLimitDelta>,
    rollups: Vec<(RollupKey, RollupSums)>,
    keys: Vec<(DedupKey, Micros)>,
    placed: Vec<Arc<Hold>>,
    ended: Vec<Arc<Hold>>,
    notes: Vec<Arc<Hold>>,
}

impl OwnedWrites {
    pub(super) fn as_flush(&self) -> FlushWrites<'_> {
        FlushWrites {
            budgets: &self.budgets,
            rates: &self.rates,
            rollups: &self.rollups,
            keys: &self.keys,
            holds: HoldWrites {
                placed: &self.placed,
                ended: &self.ended,
                notes: &self.notes,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_through_json() {
        let id = Uuid::new_v4();
        let rollup = RollupKey {
            bucket_start: 3_600_000_000,
            virtual_key_id: Some(id),
            team_id: None,
            customer_id: None,
            user_id: "o'brien \"x\" \\ \n ü".into(),
            provider: String::new(),
            model: "gpt,4".into(),
        };
        let budgets = [BudgetDelta {
            id,
            item: FlushItem {
                start: 5,
                delta: -2,
                reset: true,
            },
        }];
        let rollups = [(
            rollup.clone(),
            RollupSums {
                requests: 1,
                tokens: 2,
                cost: 3,
            },
        )];
        let keys = [(u128::MAX - 7, 99)];
        let writes = FlushWrites {
            budgets: &budgets,
            rates: &[],
            rollups: &rollups,
            keys: &keys,
            holds: Default::default(),
        };
        let text = serde_json::to_string(&Entry::of(&writes)).unwrap();
        let mut merged = Merged::default();
        merged.add(serde_json::from_str(&text).unwrap()).unwrap();
        let back = merged.writes();
        assert_eq!(back.budgets.len(), 1);
        assert_eq!(
            (back.budgets[0].item.start, back.budgets[0].item.delta),
            (5, -2)
        );
        assert_eq!(back.rollups, rollups.to_vec());
        assert_eq!(back.keys, keys.to_vec());
    }
}
