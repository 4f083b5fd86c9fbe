//! Hourly usage rollups: what each hour × key × team × customer × user × provider ×
//! model used, accumulated in memory between flushes and added to the database by the worker.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use uuid::Uuid;

use super::capture::Side;
use super::store::ResolvedKey;
use super::usage::Charge;
use crate::domain::Micros;

const SHARDS: usize = 16;
const HOUR: Micros = 3_600_000_000;

/// One rollup row's identity, ordered as the table's primary key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
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

/// Rollups not yet written, by a hash of their key: recording an update for a row that
/// exists already compares the key in place and allocates nothing.
#[derive(Debug)]
pub struct Rollups {
    shards: Box<[Mutex<Shard>]>,
}

/// Rows by the hash of their key (rows whose keys collide share a bucket).
type Shard = HashMap<u64, Vec<(RollupKey, RollupSums)>>;

/// A rollup key borrowed from an update.
#[derive(Debug, Hash)]
struct KeyRef<'a> {
    bucket_start: Micros,
    virtual_key_id: Option<Uuid>,
    team_id: Option<Uuid>,
    customer_id: Option<Uuid>,
    user_id: &'a str,
    provider: &'a str,
    model: &'a str,
}

impl KeyRef<'_> {
    fn hash64(&self) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut hasher);
        hasher.finish()
    }

    fn matches(&self, k: &RollupKey) -> bool {
        self.bucket_start == k.bucket_start
            && self.virtual_key_id == k.virtual_key_id
            && self.team_id == k.team_id
            && self.customer_id == k.customer_id
            && self.user_id == k.user_id
            && self.provider == k.provider
            && self.model == k.model
    }

    fn to_owned_key(&self) -> RollupKey {
        RollupKey {
            bucket_start: self.bucket_start,
            virtual_key_id: self.virtual_key_id,
            team_id: self.team_id,
            customer_id: self.customer_id,
            user_id: self.user_id.to_owned(),
            provider: self.provider.to_owned(),
            model: self.model.to_owned(),
        }
    }
}

impl RollupKey {
    fn as_ref(&self) -> KeyRef<'_> {
        KeyRef {
            bucket_start: self.bucket_start,
            virtual_key_id: self.virtual_key_id,
            team_id: self.team_id,
            customer_id: self.customer_id,
            user_id: &self.user_id,
            provider: &self.provider,
            model: &self.model,
        }
    }
}

impl Default for Rollups {
    fn default() -> Self {
        Rollups {
            shards: (0..2 * SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }
}

impl Rollups {
    /// Adds what one update charged, on its side (see [`super::capture`]). The key's team and
    /// customer are those it has now.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        side: Side,
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
        let rollup_key = KeyRef {
            bucket_start: now - now.rem_euclid(HOUR),
            virtual_key_id: key.map(|k| k.key.id),
            team_id: key.and_then(|k| k.team.as_ref()).map(|t| t.id),
            customer_id: key
                .and_then(|k| k.team_customer.as_ref().or(k.customer.as_ref()))
                .map(|c| c.id),
            user_id,
            provider,
            model,
        };
        self.add(side, &rollup_key, sums);
    }

    fn add(&self, side: Side, key: &KeyRef<'_>, sums: RollupSums) {
        let hash = key.hash64();
        let mut shard = self.shards[side * SHARDS + (hash as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let rows = shard.entry(hash).or_default();
        let at = match rows.iter().position(|(k, _)| key.matches(k)) {
            Some(at) => at,
            None => {
                rows.push((key.to_owned_key(), RollupSums::default()));
                rows.len() - 1
            }
        };
        let entry = &mut rows[at].1;
        entry.requests += sums.requests;
        entry.tokens += sums.tokens;
        entry.cost += sums.cost;
    }

    /// Takes everything recorded on `side`.
    pub fn drain(&self, side: Side) -> Vec<(RollupKey, RollupSums)> {
        let mut out = Vec::new();
        for shard in &self.shards[side * SHARDS..(side + 1) * SHARDS] {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            out.extend(shard.drain().flat_map(|(_, rows)| rows));
        }
        out
    }

    /// Puts back rows whose write failed on `side`, to go with the next flush of that side.
    pub fn restore(&self, side: Side, rows: Vec<(RollupKey, RollupSums)>) {
        for (key, sums) in rows {
            self.add(side, &key.as_ref(), sums);
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
        r.record(0, HOUR + 1, None, "u", "openai", "gpt-4o", &charge);
        r.record(0, 2 * HOUR - 1, None, "u", "openai", "gpt-4o", &charge);
        r.record(0, 2 * HOUR, None, "u", "openai", "gpt-4o", &charge);
        let mut rows = r.drain(0);
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
        assert!(r.drain(0).is_empty());
        r.restore(0, rows);
        assert_eq!(r.drain(0).len(), 2);
    }
}
