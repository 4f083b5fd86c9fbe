//! Hourly usage rollups [ext]: what each hour × key × team × customer × user × provider ×
//! model used, accumulated in memory between flushes and added to the database by the worker.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use uuid::Uuid;

use super::store::ResolvedKey;
use super::usage::Charge;
use crate::domain::Micros;

const SHARDS: usize = 16;
const HOUR: Micros = 3_600_000_000;

/// One rollup row's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RollupKey {
    pub bucket_start: Micros,
    pub virtual_key_id: Option<Uuid>,
    pub team_id: Option<Uuid>,
    pub customer_id: Option<Uuid>,
    pub user_id: String,
    pub provider: String,
    pub model: String,
}

/// What a rollup row adds up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RollupSums {
    pub requests: i64,
    pub tokens: i64,
    /// Nano-dollars.
    pub cost: i64,
}

/// Rollups not yet written.
#[derive(Debug)]
pub struct Rollups {
    shards: Box<[Mutex<HashMap<RollupKey, RollupSums>>]>,
}

impl Default for Rollups {
    fn default() -> Self {
        Rollups {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl Rollups {
    /// Adds what one update charged. The key's team and customer are those it has now.
    pub fn record(
        &self,
        now: Micros,
        key: Option<&ResolvedKey>,
        user_id: &str,
        provider: &str,
        model: &str,
        charge: &Charge,
    ) {
        let sums = RollupSums {
            requests: charge.requests.unwrap_or(0),
            tokens: charge.tokens.unwrap_or(0),
            cost: charge.cost.unwrap_or(0),
        };
        if sums == RollupSums::default() {
            return;
        }
        let rollup_key = RollupKey {
            bucket_start: now - now.rem_euclid(HOUR),
            virtual_key_id: key.map(|k| k.key.id),
            team_id: key.and_then(|k| k.team.as_ref()).map(|t| t.id),
            customer_id: key
                .and_then(|k| k.team_customer.as_ref().or(k.customer.as_ref()))
                .map(|c| c.id),
            user_id: user_id.to_owned(),
            provider: provider.to_owned(),
            model: model.to_owned(),
        };
        self.add(rollup_key, sums);
    }

    fn add(&self, key: RollupKey, sums: RollupSums) {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        let mut shard = self.shards[(hasher.finish() as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let entry = shard.entry(key).or_default();
        entry.requests += sums.requests;
        entry.tokens += sums.tokens;
        entry.cost += sums.cost;
    }

    /// Takes everything recorded so far.
    pub fn drain(&self) -> Vec<(RollupKey, RollupSums)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            out.extend(shard.drain());
        }
        out
    }

    /// Puts back rows whose write failed, to go with the next flush.
    pub fn restore(&self, rows: Vec<(RollupKey, RollupSums)>) {
        for (key, sums) in rows {
            self.add(key, sums);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_of_one_hour_add_up_and_drain_once() {
        let r = Rollups::default();
        let charge = Charge {
            tokens: Some(10),
            requests: Some(1),
            cost: Some(5),
        };
        r.record(HOUR + 1, None, "u", "openai", "gpt-4o", &charge);
        r.record(2 * HOUR - 1, None, "u", "openai", "gpt-4o", &charge);
        r.record(2 * HOUR, None, "u", "openai", "gpt-4o", &charge);
        let mut rows = r.drain();
        rows.sort_by_key(|(k, _)| k.bucket_start);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0].1,
            RollupSums {
                requests: 2,
                tokens: 20,
                cost: 10
            }
        );
        assert_eq!(rows[1].0.bucket_start, 2 * HOUR);
        assert!(r.drain().is_empty());
        r.restore(rows);
        assert_eq!(r.drain().len(), 2);
    }
}
