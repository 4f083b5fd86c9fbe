//! Idempotency of usage updates [ext]: the keys `(request_id, attempt, phase)` seen within the
//! dedup window, in sharded maps so that concurrent updates rarely share a lock.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::capture::Side;
use crate::domain::Micros;

const SHARDS: usize = 64;

/// A 128-bit digest of an idempotency key: fixed-size whatever the request id's length.
pub type DedupKey = u128;

/// Which part of a request an update reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A non-streaming update, or a stream's final chunk.
    Final,
    /// A non-final streaming chunk that carries its index.
    Chunk(u64),
}

/// The digest of `(request_id, attempt, phase)`.
pub fn dedup_key(request_id: &str, attempt: u64, phase: Phase) -> DedupKey {
    let mut h = Sha256::new();
    h.update((request_id.len() as u64).to_le_bytes());
    h.update(request_id.as_bytes());
    h.update(attempt.to_le_bytes());
    match phase {
        Phase::Final => h.update([0u8]),
        Phase::Chunk(i) => {
            h.update([1u8]);
            h.update(i.to_le_bytes());
        }
    }
    let digest = h.finalize();
    u128::from_le_bytes(digest[..16].try_into().expect("16 bytes"))
}

#[derive(Debug, Default)]
struct Shard {
    /// Key → instant it expires.
    seen: HashMap<DedupKey, Micros>,
    /// Sweep expired keys once the map grows past this.
    sweep_at: usize,
    /// Keys of applied updates since the last flush of each side took them.
    unsaved: [Vec<(DedupKey, Micros)>; 2],
}

/// The keys seen recently.
#[derive(Debug)]
pub struct Dedup {
    shards: Box<[Mutex<Shard>]>,
    window: Micros,
}

impl Dedup {
    pub fn new(window: Micros) -> Self {
        Dedup {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            window,
        }
    }

    fn shard(&self, key: DedupKey) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[(key as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Claims `key` at `now`: the instant it expires when it is new, `None` when it was
    /// already seen within the window (a duplicate). A claimed key is not persisted until
    /// [`Dedup::applied`] says its update is in the counters and rollups.
    pub fn claim(&self, key: DedupKey, now: Micros) -> Option<Micros> {
        let mut shard = self.shard(key);
        if let Some(&expires) = shard.seen.get(&key) {
            if now < expires {
                return None;
            }
        }
        let expires = now.saturating_add(self.window);
        shard.seen.insert(key, expires);
        if shard.seen.len() > shard.sweep_at {
            shard.seen.retain(|_, expires| now < *expires);
            shard.sweep_at = (shard.seen.len() * 2).max(1024);
        }
        Some(expires)
    }

    /// Queues a claimed key for the flush once its update is applied, on the update's side:
    /// the flush that persists the key persists the whole of its usage (see
    /// [`super::capture`]).
    pub fn applied(&self, key: DedupKey, expires: Micros, side: Side) {
        self.shard(key).unsaved[side].push((key, expires));
    }

    /// Loads keys persisted earlier (at start), without marking them unsaved.
    pub fn preload(&self, keys: impl IntoIterator<Item = (DedupKey, Micros)>) {
        for (key, expires) in keys {
            self.shard(key).seen.insert(key, expires);
        }
    }

    /// Takes the keys queued on `side`, for the flush to persist.
    pub fn take_unsaved(&self, side: Side) -> Vec<(DedupKey, Micros)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            out.append(&mut shard.unsaved[side]);
        }
        out
    }

    /// Gives back keys whose write failed, for the next flush of `side`.
    pub fn restore_unsaved(&self, side: Side, keys: Vec<(DedupKey, Micros)>) {
        for (key, expires) in keys {
            self.shard(key).unsaved[side].push((key, expires));
        }
    }

    /// Drops every expired key.
    pub fn purge(&self, now: Micros) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.seen.retain(|_, expires| now < *expires);
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).seen.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeat_within_the_window_is_a_duplicate() {
        let d = Dedup::new(100);
        let k = dedup_key("req-1", 0, Phase::Final);
        assert_eq!(d.claim(k, 0), Some(100));
        assert_eq!(d.claim(k, 99), None);
        assert!(
            d.claim(k, 100).is_some(),
            "after the window the key is new again"
        );
    }

    #[test]
    fn attempts_and_phases_are_distinct_keys() {
        let keys = [
            dedup_key("req-1", 0, Phase::Final),
            dedup_key("req-1", 1, Phase::Final),
            dedup_key("req-1", 0, Phase::Chunk(0)),
            dedup_key("req-1", 0, Phase::Chunk(1)),
            dedup_key("req-2", 0, Phase::Final),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn new_keys_wait_for_the_flush_and_preloaded_ones_do_not() {
        let d = Dedup::new(10);
        d.preload([(7, 100)]);
        assert!(
            d.claim(7, 5).is_none(),
            "a persisted key is still a duplicate after a restart"
        );
        let expires = d.claim(8, 5).unwrap();
        assert!(
            d.take_unsaved(0).is_empty(),
            "a claimed key waits until its update is applied"
        );
        d.applied(8, expires, 1);
        assert!(d.take_unsaved(0).is_empty(), "keys stay on their side");
        assert_eq!(d.take_unsaved(1), vec![(8, 15)]);
        assert!(d.take_unsaved(1).is_empty());
    }

    #[test]
    fn purge_drops_expired_keys_only() {
        let d = Dedup::new(10);
        d.claim(1, 0);
        d.claim(2, 5);
        d.purge(12);
        assert_eq!(d.len(), 1);
    }
}
