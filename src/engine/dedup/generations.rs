//! Generations: when the current one closes, when closed ones expire, and which go early when
//! the bound is reached.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use super::table::Live;
use super::{Dedup, LOG_EVERY, SWEEP_EVERY};
use crate::domain::Micros;

/// A closed generation: its number, when its keys expire, how many it holds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Closed {
    pub(super) id: u16,
    pub(super) expires_at: Micros,
    pub(super) keys: usize,
}

#[derive(Debug)]
pub(super) struct Generations {
    pub(super) closed: VecDeque<Closed>,
    pub(super) current: u16,
    /// The generation whose number the last sweep of every table started from.
    pub(super) swept_at: u16,
}

impl Dedup {
    /// Closes the current generation when its span or share is full, expires generations
    /// whose window ended and drops the oldest while the bound is reached. Two loads when
    /// there is nothing to do.
    pub(super) fn turn(&self, now: Micros) {
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
    pub(super) fn close(&self, g: &mut Generations, expires_at: Micros) {
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
    pub(super) fn shed(&self, g: &mut Generations, now: Micros, limit: usize) -> usize {
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

    pub(super) fn count_evicted(&self, now: Micros, evicted: usize) {
        if evicted > 0 {
            self.evicted.fetch_add(evicted as u64, Ordering::Relaxed);
            self.log_bound(now, evicted);
        }
    }

    /// Makes the live range of `g` the one claims see.
    pub(super) fn publish(&self, g: &Generations) -> Live {
        let oldest = g.closed.front().map_or(g.current, |c| c.id);
        let live = Live::new(oldest, g.current);
        self.live.store(live.0, Ordering::Release);
        live
    }

    /// Rebuilds tables without their expired slots: every table, or (`all` false) those
    /// mostly expired.
    pub(super) fn sweep(&self, live: Live, all: bool) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            let table = &mut shard.table;
            if all || table.live_count(live) * 3 < table.slots.len() {
                table.rebuild(live, 0);
            }
        }
    }

    pub(super) fn log_bound(&self, now: Micros, evicted: usize) {
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
}
