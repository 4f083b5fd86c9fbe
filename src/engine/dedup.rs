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

/// What a slot holds of a key: every bit but the lowest 16 (the generation's) and the top
/// one (always set).
fn tag(key: DedupKey) -> u128 {
    (key | USED) & !GEN_MASK
}

/// Where a tag's probe starts in a table of `len` slots (from bits the slot keeps).
fn home(tag: u128, len: usize) -> usize {
    ((u128::from((tag >> 16) as u64) * len as u128) >> 64) as usize
}

fn shard_of(key: DedupKey) -> usize {
    ((key >> 121) as usize) & (SHARDS - 1)
}

/// The live generations, in one word for the hot path: the oldest in the high half, the
/// current one in the low half. Numbers wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Live(u32);

impl Live {
    fn new(oldest: u16, current: u16) -> Live {
        Live(u32::from(oldest) << 16 | u32::from(current))
    }

    fn current(self) -> u16 {
        self.0 as u16
    }

    fn oldest(self) -> u16 {
        (self.0 >> 16) as u16
    }

    fn holds(self, generation: u16) -> bool {
        self.current().wrapping_sub(generation) <= self.current().wrapping_sub(self.oldest())
    }
}

/// One shard's slots: 0 is empty, anything else a key's tag with its generation.
#[derive(Debug, Default)]
struct Table {
    slots: Vec<u128>,
    /// Slots not empty (live or expired).
    used: usize,
}

impl Table {
    /// Records `tag` in the current generation unless a live slot has it; true when new.
    fn claim(&mut self, tag: u128, live: Live) -> bool {
        if (self.used + 1) * 4 > self.slots.len() * 3 {
            self.rebuild(live, 1);
        }
        let len = self.slots.len();
        let mut i = home(tag, len);
        let mut reusable = None;
        loop {
            let slot = self.slots[i];
            if slot == 0 {
                let at = reusable.unwrap_or_else(|| {
                    self.used += 1;
                    i
                });
                self.slots[at] = tag | u128::from(live.current());
                return true;
            }
            let generation = (slot & GEN_MASK) as u16;
            if slot & !GEN_MASK == tag {
                if live.holds(generation) {
                    return false;
                }
                self.slots[i] = tag | u128::from(live.current());
                return true;
            }
            if reusable.is_none() && !live.holds(generation) {
                reusable = Some(i);
            }
            i = if i + 1 == len { 0 } else { i + 1 };
        }
    }

    /// Keeps only live slots, in a table sized for them (and `room` more) at half load.
    fn rebuild(&mut self, live: Live, room: usize) {
        let kept: Vec<u128> = self
            .slots
            .iter()
            .copied()
            .filter(|s| *s != 0 && live.holds((*s & GEN_MASK) as u16))
            .collect();
        let len = ((kept.len() + room) * 2 + 1).max(MIN_SLOTS);
        self.slots = vec![0; len];
        self.used = kept.len();
        for slot in kept {
            let mut i = home(slot & !GEN_MASK, len);
            while self.slots[i] != 0 {
                i = if i + 1 == len { 0 } else { i + 1 };
            }
            self.slots[i] = slot;
        }
    }

    fn live_count(&self, live: Live) -> usize {
        self.slots
            .iter()
            .filter(|s| **s != 0 && live.holds((**s & GEN_MASK) as u16))
            .count()
    }
}

#[derive(Debug, Default)]
struct Shard {
    table: Table,
    /// Keys of applied updates not yet taken by a flush of each side.
    unsaved: [Vec<(DedupKey, Micros)>; 2],
}

/// A closed generation: its number, when its keys expire, how many it holds.
#[derive(Debug, Clone, Copy)]
struct Closed {
    id: u16,
    expires_at: Micros,
    keys: usize,
}

#[derive(Debug)]
struct Generations {
    closed: VecDeque<Closed>,
    current: u16,
    /// The generation whose number the last sweep of every table started from.
    swept_at: u16,
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

    /// Closes the current generation when its span or share is full, expires generations
    /// whose window ended and drops the oldest while the bound is reached. Two loads when
    /// there is nothing to do.
    fn turn(&self, now: Micros) {
        if now < self.closes_at.load(Ordering::Relaxed)
            && self.current_keys.load(Ordering::Relaxed) < self.generation_keys
            && self.len() < self.max_keys
        {
            return;
        }
        let mut g = self.generations();
        let closes_at = self.closes_at.load(Ordering::Relaxed);
        if now >= closes_at || self.current_keys.load(Ordering::Relaxed) >= self.generation_keys {
            // Every claim turns first, so the keys came before the span's end (or now, if the
            // generation closes early because it is full).
            self.close(&mut g, now.min(closes_at).saturating_add(self.window));
            self.closes_at
                .store(now.saturating_add(self.span), Ordering::Relaxed);
        }
        // A new key is about to come: room for it.
        let evicted = self.shed(&mut g, now, self.max_keys - 1);
        let live = self.publish(&g);
        // The worker's upkeep sweeps long before this; should it not have run, the hot
        // path does, before a stale generation number can come round.
        if g.current.wrapping_sub(g.swept_at) >= 2 * SWEEP_EVERY {
            g.swept_at = g.current;
            self.sweep(live, true);
        }
        drop(g);
        self.count_evicted(now, evicted);
    }

    /// Closes the current generation, its keys expiring at `expires_at` (nothing to close
    /// when it holds none).
    fn close(&self, g: &mut Generations, expires_at: Micros) {
        let keys = self.current_keys.swap(0, Ordering::Relaxed);
        if keys == 0 {
            return;
        }
        self.closed_keys.fetch_add(keys, Ordering::Relaxed);
        let id = g.current;
        g.closed.push_back(Closed {
            id,
            expires_at,
            keys,
        });
        g.current = id.wrapping_add(1);
    }

    /// Drops the oldest closed generations while they have expired or more than `limit` keys
    /// are held; how many keys went before their time.
    fn shed(&self, g: &mut Generations, now: Micros, limit: usize) -> usize {
        let mut evicted = 0;
        while let Some(oldest) = g.closed.front().copied() {
            let expired = oldest.expires_at <= now;
            if !expired && self.len() <= limit {
                break;
            }
            g.closed.pop_front();
            self.closed_keys.fetch_sub(oldest.keys, Ordering::Relaxed);
            self.shrunk.store(true, Ordering::Relaxed);
            if !expired {
                evicted += oldest.keys;
                self.evicted_until
                    .fetch_max(oldest.expires_at, Ordering::Relaxed);
            }
        }
        evicted
    }

    fn count_evicted(&self, now: Micros, evicted: usize) {
        if evicted > 0 {
            self.evicted.fetch_add(evicted as u64, Ordering::Relaxed);
            self.log_bound(now, evicted);
        }
    }

    /// Makes the live range of `g` the one claims see.
    fn publish(&self, g: &Generations) -> Live {
        let oldest = g.closed.front().map_or(g.current, |c| c.id);
        let live = Live::new(oldest, g.current);
        self.live.store(live.0, Ordering::Release);
        live
    }

    /// Rebuilds tables without their expired slots: every table, or (`all` false) those
    /// mostly expired.
    fn sweep(&self, live: Live, all: bool) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            let table = &mut shard.table;
            if all || table.live_count(live) * 3 < table.slots.len() {
                table.rebuild(live, 0);
            }
        }
    }

    fn log_bound(&self, now: Micros, evicted: usize) {
        let last = self.logged_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= LOG_EVERY
            && self
                .logged_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                evicted,
                evicted_total = self.evicted.load(Ordering::Relaxed),
                max_keys = self.max_keys,
                "idempotency keys reached dedup_max_keys: the oldest were dropped before \
                 their window ended (retries of those updates would count again)"
            );
        }
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
mod tests {
    use super::*;

    #[test]
    fn a_repeat_within_the_window_is_a_duplicate() {
        let d = Dedup::new(3200, 1_000_000);
        let k = dedup_key("req-1", 0, Phase::Final);
        assert_eq!(d.claim(k, 0), Some(3200));
        assert_eq!(d.claim(k, 3199), None);
        assert!(
            d.claim(k, 3200 + 2 * d.span).is_some(),
            "a span after the window the key is new again"
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
    fn new_keys_are_queued_for_the_flush_and_loaded_ones_are_not() {
        let d = Dedup::new(10, 1000);
        d.load([(key(7), 100)], 5);
        assert!(
            d.claim(key(7), 5).is_none(),
            "a persisted key is still a duplicate after a restart"
        );
        assert!(d.claim_for(key(8), 5, 1));
        assert!(d.take_unsaved(0).is_empty(), "keys stay on their side");
        assert_eq!(d.take_unsaved(1), vec![(key(8), 15)]);
        assert!(
            d.take_unsaved(0).is_empty(),
            "a loaded key is in the database already"
        );
        assert!(d.take_unsaved(1).is_empty());
    }

    fn key(i: u64) -> DedupKey {
        dedup_key(&format!("r{i}"), 0, Phase::Final)
    }

    #[test]
    fn loaded_keys_expire_with_their_own_expiry() {
        let window = 3200;
        let d = Dedup::new(window, 1_000_000);
        // Persisted by a run that stopped at 1000: one key from 100, one from 900.
        d.load([(key(1), 100 + window), (key(2), 900 + window)], 1000);
        assert!(d.claim(key(1), 1000).is_none());
        assert!(d.claim(key(2), 1000).is_none());
        let after_first = 100 + window + d.span + 1;
        assert!(d.claim(key(1), after_first).is_some(), "its window is over");
        assert!(d.claim(key(2), after_first).is_none(), "its window is not");
    }

    #[test]
    fn the_bound_drops_the_oldest_keys_first() {
        let d = Dedup::new(1_000_000_000, 1600);
        for i in 0..5000 {
            assert!(d.claim(key(i), 1).is_some());
            assert!(d.len() <= 1600, "{} keys held", d.len());
        }
        assert!(d.evicted() >= 3400, "{} evicted", d.evicted());
        for i in 4800..5000 {
            assert!(d.claim(key(i), 2).is_none(), "recent key {i} is remembered");
        }
        for i in 0..200 {
            assert!(d.claim(key(i), 2).is_some(), "old key {i} went first");
        }
        assert!(d.purge_before(2) > 2, "the database may drop what went");
    }

    #[test]
    fn a_key_costs_close_to_its_sixteen_bytes() {
        let d = Dedup::new(1_000_000_000, 10_000_000);
        for i in 0..200_000 {
            d.claim(key(i), 1);
        }
        let per_key = d.bytes() as f64 / d.len() as f64;
        assert!((16.0..=33.0).contains(&per_key), "{per_key} bytes per key");
    }

    #[test]
    fn memory_is_given_back_when_keys_expire() {
        let d = Dedup::new(3200, 10_000_000);
        for i in 0..100_000 {
            d.claim(key(i), 1);
        }
        let full = d.bytes();
        d.maintain(3200 + 3 * d.span);
        assert_eq!(d.len(), 0);
        assert!(d.bytes() * 10 < full, "{} of {full} bytes kept", d.bytes());
    }

    #[test]
    fn generation_numbers_coming_round_do_not_bring_keys_back() {
        // A span of one microsecond: every claim one tick later opens a generation.
        let d = Dedup::new(32, 1_000_000);
        assert!(d.claim(key(0), 0).is_some());
        for t in 1..=70_000 {
            d.claim(key(t as u64), t);
            if t % 1000 == 0 {
                d.maintain(t);
            }
        }
        assert!(
            d.claim(key(0), 70_001).is_some(),
            "expired 70 000 generations ago, not a duplicate"
        );
    }

    #[test]
    fn the_queue_to_the_database_is_bounded() {
        let d = Dedup::new(1000, 16_000);
        for i in 0..200_000 {
            assert!(d.claim_for(key(i), 0, 0));
        }
        assert!(d.unqueued() > 0);
        let queued = d.take_unsaved(0).len();
        assert_eq!(queued, 200_000 - d.unqueued() as usize);
        assert!(queued <= 64 * 1024, "{queued} queued");
    }

    proptest::proptest! {
        /// Against a model that remembers every key exactly: a key seen less than a window ago
        /// is always a duplicate; one seen more than a window and two spans ago never is.
        #[test]
        fn matches_a_model_within_the_window(
            steps in proptest::collection::vec((0u64..64, 0i64..40), 1..400)
        ) {
            let window = 320;
            let d = Dedup::new(window, 1_000_000);
            let mut seen: std::collections::HashMap<u64, Micros> = Default::default();
            let mut now = 0;
            for (k, dt) in steps {
                now += dt;
                let claimed = d.claim(key(k), now).is_some();
                match seen.get(&k) {
                    Some(&at) if now - at < window => proptest::prop_assert!(!claimed),
                    Some(&at) if now - at > window + 2 * d.span => proptest::prop_assert!(claimed),
                    None => proptest::prop_assert!(claimed),
                    _ => {}
                }
                if claimed {
                    seen.insert(k, now);
                }
            }
        }
    }
}
