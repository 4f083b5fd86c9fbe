//! Idempotency of usage updates: the keys `(request_id, attempt, phase)` seen within the
//! dedup window, held compactly and within a bound.
//!
//! A key is the first 128 bits of a SHA-256 digest. It costs one 16-byte slot in an
//! open-addressing table (sharded, linear probing): 111 of its bits and a 16-bit
//! *generation*. Expiry is per generation, not per key: a generation is a span of time (a
//! 32nd of the window, or shorter when keys come fast) and all its keys expire together, one
//! window after it closed, by moving the oldest live generation on. An expired key's slot is
//! reused by the next key that probes past it; a table 3/4 full is rebuilt from its live keys
//! at half load (linear probing past 3/4 gets slow: an absent key's probe then averages 8.5
//! slots, and 32 at 7/8). A key therefore costs 16 bytes / load: 21–32 bytes.
//!
//! The bound: at most `max_keys` keys are held. When a new key would pass it, the oldest
//! generation goes whole, before its time: those keys' window shortens, and a retry of one of
//! them would be applied again. What goes is counted and logged at most once a minute. Keys
//! waiting to be written to the database are bounded too (a long outage): past that bound the
//! oldest are dropped from the queue, still recognised here but not after a restart.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use sha2::{Digest, Sha256};

use super::capture::Side;
use crate::domain::Micros;
use generations::Generations;
use table::{tag, Live, Table};

mod generations;
mod table;

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

const SHARDS: usize = 64;
/// Generations per window, when keys come slowly.
const GENERATIONS_PER_WINDOW: i64 = 32;
/// A generation also closes once it holds this fraction of the bound, so that the bound
/// drops about that much at once.
const GENERATION_SHARE: usize = 16;
/// Every this many generations, slots of expired generations are cleared from every table,
/// long before their 16-bit numbers come round again.
const SWEEP_EVERY: u16 = 1 << 14;
const GEN_MASK: u128 = 0xFFFF;
/// Set in every slot that holds a key, so that a used slot is never 0.
const USED: u128 = 1 << 127;
const MIN_SLOTS: usize = 16;
/// Bytes of one queued key (digest and expiry).
const QUEUED_BYTES: usize = std::mem::size_of::<(DedupKey, Micros)>();

fn shard_of(key: DedupKey) -> usize {
    ((key >> 121) as usize) & (SHARDS - 1)
}

#[derive(Debug, Default)]
struct Shard {
    table: Table,
    /// Keys of applied updates not yet taken by a flush of each side.
    unsaved: [Vec<(DedupKey, Micros)>; 2],
}

/// The keys seen recently.
#[derive(Debug)]
pub struct Dedup {
    shards: Box<[Mutex<Shard>]>,
    generations: Mutex<Generations>,
    live: AtomicU32,
    /// When the current generation closes (by time).
    closes_at: AtomicI64,
    /// Keys in the current generation, and in the closed ones.
    current_keys: AtomicUsize,
    closed_keys: AtomicUsize,
    window: Micros,
    span: Micros,
    max_keys: usize,
    generation_keys: usize,
    queue_max: usize,
    /// Keys dropped before their window ended (the bound), and keys dropped from the queue
    /// to the database.
    evicted: AtomicU64,
    unqueued: AtomicU64,
    /// Expiry instants up to which keys were dropped early: the database need not keep them.
    evicted_until: AtomicI64,
    /// When the bound was last logged.
    logged_at: AtomicI64,
    /// Whether generations expired or went since the last compaction.
    shrunk: std::sync::atomic::AtomicBool,
}

/// Logs about the bound at most this often.
const LOG_EVERY: Micros = 60_000_000;

impl Dedup {
    /// Keys live for `window`; at most `max_keys` are held.
    pub fn new(window: Micros, max_keys: usize) -> Self {
        let window = window.max(1);
        let max_keys = max_keys.max(GENERATION_SHARE);
        Dedup {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            generations: Mutex::new(Generations {
                closed: VecDeque::new(),
                current: 0,
                swept_at: 0,
            }),
            live: AtomicU32::new(Live::new(0, 0).0),
            closes_at: AtomicI64::new(Micros::MIN),
            current_keys: AtomicUsize::new(0),
            closed_keys: AtomicUsize::new(0),
            window,
            span: (window / GENERATIONS_PER_WINDOW).max(1),
            max_keys,
            generation_keys: max_keys / GENERATION_SHARE,
            queue_max: (max_keys / 8 / SHARDS).max(1024),
            evicted: AtomicU64::new(0),
            unqueued: AtomicU64::new(0),
            evicted_until: AtomicI64::new(Micros::MIN),
            logged_at: AtomicI64::new(Micros::MIN),
            shrunk: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn shard(&self, key: DedupKey) -> MutexGuard<'_, Shard> {
        self.shards[shard_of(key)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn generations(&self) -> MutexGuard<'_, Generations> {
        self.generations.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.closed_keys.load(Ordering::Relaxed) + self.current_keys.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Claims `key` at `now`: the instant it expires when it is new, `None` when it was
    /// already seen within the window (a duplicate). Not queued for the database: see
    /// [`Dedup::claim_for`].
    pub fn claim(&self, key: DedupKey, now: Micros) -> Option<Micros> {
        self.claim_on(key, now, None)
    }

    /// Claims `key` for an update on `side` and, when it is new, queues it there for the
    /// flush; true when new. The update holds its side (see [`super::capture`]), so the flush
    /// that writes the key writes the whole of the update's usage with it.
    pub fn claim_for(&self, key: DedupKey, now: Micros, side: Side) -> bool {
        self.claim_on(key, now, Some(side)).is_some()
    }

    fn claim_on(&self, key: DedupKey, now: Micros, queue: Option<Side>) -> Option<Micros> {
        self.turn(now);
        let live = Live(self.live.load(Ordering::Acquire));
        let expires = now.saturating_add(self.window);
        let dropped = {
            let mut shard = self.shard(key);
            if !shard.table.claim(tag(key), live) {
                return None;
            }
            match queue {
                Some(side) => {
                    shard.unsaved[side].push((key, expires));
                    self.bound_queue(&mut shard.unsaved[side])
                }
                None => 0,
            }
        };
        self.current_keys.fetch_add(1, Ordering::Relaxed);
        if dropped > 0 {
            self.unqueued.fetch_add(dropped as u64, Ordering::Relaxed);
        }
        Some(expires)
    }

    /// Drops the older half of a queue past its bound; how many went.
    fn bound_queue(&self, queue: &mut Vec<(DedupKey, Micros)>) -> usize {
        if queue.len() <= self.queue_max {
            return 0;
        }
        let dropped = queue.len() / 2;
        queue.drain(..dropped);
        dropped
    }

    /// Loads keys persisted earlier (at start), ordered by expiry, without queueing them:
    /// each goes to a closed generation that expires with it (within a span). Past the bound,
    /// the oldest go.
    pub fn load(&self, keys: impl IntoIterator<Item = (DedupKey, Micros)>, now: Micros) {
        let mut bucket_end = Micros::MIN;
        let mut last = Micros::MIN;
        for (key, expires) in keys {
            debug_assert!(expires >= last, "keys come by expiry");
            last = expires;
            if expires > bucket_end
                || self.current_keys.load(Ordering::Relaxed) >= self.generation_keys
            {
                self.close_loaded(bucket_end, now);
                let span_end = expires.saturating_add(self.span - 1) / self.span * self.span;
                bucket_end = bucket_end.max(span_end);
            }
            let live = Live(self.live.load(Ordering::Acquire));
            if self.shard(key).table.claim(tag(key), live) {
                self.current_keys.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.close_loaded(bucket_end, now);
        self.closes_at
            .store(now.saturating_add(self.span), Ordering::Relaxed);
    }

    /// Closes the generation a load filled as expiring at `expires_at`, and drops the oldest
    /// while the bound is passed.
    fn close_loaded(&self, expires_at: Micros, now: Micros) {
        let mut g = self.generations();
        self.close(&mut g, expires_at);
        let evicted = self.shed(&mut g, now, self.max_keys);
        self.publish(&g);
        drop(g);
        self.count_evicted(now, evicted);
    }

    /// Takes the keys queued on `side`, for the flush to persist.
    pub fn take_unsaved(&self, side: Side) -> Vec<(DedupKey, Micros)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            // Taken whole, so that a queue that grew during a burst gives its memory back.
            let queued = std::mem::take(&mut shard.unsaved[side]);
            if out.is_empty() {
                out = queued;
            } else {
                out.extend(queued);
            }
        }
        out
    }

    /// Gives back keys whose write failed, for the next flush of `side`.
    pub fn restore_unsaved(&self, side: Side, keys: Vec<(DedupKey, Micros)>) {
        let mut dropped = 0;
        for (key, expires) in keys {
            let mut shard = self.shard(key);
            shard.unsaved[side].push((key, expires));
            dropped += self.bound_queue(&mut shard.unsaved[side]);
        }
        if dropped > 0 {
            self.unqueued.fetch_add(dropped as u64, Ordering::Relaxed);
        }
    }

    /// The worker's upkeep, once a tick: expires generations whose window ended, and when
    /// some went, gives back the memory of tables now mostly empty. Every [`SWEEP_EVERY`]
    /// generations it clears expired slots from every table, before generation numbers
    /// come round.
    pub fn maintain(&self, now: Micros) {
        self.turn(now);
        let (live, all) = {
            let mut g = self.generations();
            let all = g.current.wrapping_sub(g.swept_at) >= SWEEP_EVERY;
            if all {
                g.swept_at = g.current;
            }
            (Live(self.live.load(Ordering::Acquire)), all)
        };
        if all || self.shrunk.swap(false, Ordering::Relaxed) {
            self.sweep(live, all);
        }
    }

    /// Bytes the keys take: the tables' slots and the queues to the database.
    pub fn bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|p| p.into_inner());
                s.table.slots.capacity() * 16
                    + (s.unsaved[0].capacity() + s.unsaved[1].capacity()) * QUEUED_BYTES
            })
            .sum()
    }

    /// Keys dropped before their window ended, because of the bound.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Keys not written to the database because its queue was full.
    pub fn unqueued(&self) -> u64 {
        self.unqueued.load(Ordering::Relaxed)
    }

    /// Rows whose keys expire at or before this instant are held by no one: expired, or
    /// dropped here by the bound.
    pub fn purge_before(&self, now: Micros) -> Micros {
        now.max(self.evicted_until.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests;
