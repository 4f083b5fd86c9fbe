//! One usage counter: an amount used in the current window, and that window's bounds, in
//! atomics so that readers never lock. Money counts nano-dollars, rate limits count tokens or
//! requests.
//!
//! Persistence is by deltas: `pending` is what this process added and has not yet written;
//! `base` is the total the database last reported for the current window (what other
//! replicas add arrives there at the next read-back). The usage is `base + pending`, so an
//! increment is a single atomic add.
//!
//! Pending usage and the dirty mark come in two sides (see [`super::capture`]): updates add
//! to the side that is current when they start, and a flush takes the side it has just left,
//! which no update touches any more, so it never takes part of an update.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;

use super::capture::Side;
use super::trend::Trend;
use crate::domain::{Micros, WindowRule};

/// A counter shared by every snapshot of the entity that owns it, so that config changes keep
/// the usage.
#[derive(Debug)]
pub struct Counter {
    /// Added here and not yet flushed (current window only).
    pending: [AtomicI64; 2],
    /// Start of the current window (`last_reset`).
    start: AtomicI64,
    /// End (exclusive) of the current window, cached so that expiry is one comparison.
    end: AtomicI64,
    /// The database's total for the current window when last read or written.
    base: AtomicI64,
    /// The window start the database has (as far as this process wrote or read it).
    persisted_start: AtomicI64,
    /// Set when usage is added, cleared by the flush that takes it: a counter is queued for
    /// the next flush once per flush, not once per increment.
    dirty: [AtomicBool; 2],
    /// Capacity holds set aside (requests in flight): this process's, and the other replicas'
    /// as far as it has learned them. Windows do not clear it.
    held: AtomicI64,
    /// Serialises window changes with the flush bookkeeping. Taken only when a window ends
    /// (once per window) and by the worker; plain increments never take it.
    window: Mutex<()>,
    /// The recent rate, fed by the worker ([`Counter::observe`]) and read by admin views.
    trend: Mutex<Trend>,
}

/// What a counter shows at one instant: an expired window counts as 0 at once, before anything
/// has persisted the reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterView {
    pub used: i64,
    /// Set aside by holds (any replica's): not usage, but no longer free.
    pub held: i64,
    pub last_reset: Micros,
    pub resets_at: Micros,
}

/// What a flush must write for one counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushItem {
    /// The window the delta belongs to.
    pub start: Micros,
    /// Added since the last flush.
    pub delta: i64,
    /// The database still has an older window: reset it to `start` first.
    pub reset: bool,
}

impl Counter {
    /// A counter as persisted: `used` in the window that started at `last_reset`.
    pub fn new(used: i64, last_reset: Micros, rule: &WindowRule) -> Self {
        Counter {
            pending: [AtomicI64::new(0), AtomicI64::new(0)],
            start: AtomicI64::new(last_reset),
            end: AtomicI64::new(rule.end_of(last_reset)),
            base: AtomicI64::new(used),
            persisted_start: AtomicI64::new(last_reset),
            dirty: [AtomicBool::new(false), AtomicBool::new(false)],
            held: AtomicI64::new(0),
            window: Mutex::new(()),
            trend: Mutex::new(Trend::from(used, last_reset)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The counter's state at `now`, without changing it.
    pub fn view(&self, rule: &WindowRule, now: Micros) -> CounterView {
        self.view_with(rule, now, true)
    }

    /// [`Counter::view`], reading what holds set aside only when `held` (with no hold live
    /// anywhere it is 0, and the read is saved).
    pub fn view_with(&self, rule: &WindowRule, now: Micros, held: bool) -> CounterView {
        let start = self.start.load(Ordering::Acquire);
        let end = self.end.load(Ordering::Acquire);
        let held = if held { self.held() } else { 0 };
        if now < end {
            return CounterView {
                used: self.used(),
                held,
                last_reset: start,
                resets_at: end,
            };
        }
        let rolled = rule.roll(start, now).unwrap_or(start);
        CounterView {
            used: 0,
            held,
            last_reset: rolled,
            resets_at: rule.end_of(rolled),
        }
    }

    /// Takes the counter's state at `now` into its trend (the worker, once per tick) and
    /// returns it.
    pub fn observe(&self, rule: &WindowRule, now: Micros) -> CounterView {
        let view = self.view_with(rule, now, true);
        let mut trend = self.trend.lock().unwrap_or_else(|p| p.into_inner());
        if !trend.unchanged(view.used, view.last_reset) {
            trend.observe(view.used, view.last_reset, now);
        }
        view
    }

    /// The recent rate as last observed.
    pub fn trend(&self) -> Trend {
        *self.trend.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Capacity set aside by holds, this process's and the others' it knows of.
    pub fn held(&self) -> i64 {
        self.held.load(Ordering::Acquire)
    }

    /// Sets aside `amount` for a hold, this process's or another's (negative: gives it back).
    pub fn hold(&self, amount: i64) {
        self.held.fetch_add(amount, Ordering::AcqRel);
    }

    fn used(&self) -> i64 {
        self.base.load(Ordering::Acquire) + self.pending()
    }

    /// What this process added and has not yet written, on both sides.
    pub fn pending(&self) -> i64 {
        self.pending[0].load(Ordering::Acquire) + self.pending[1].load(Ordering::Acquire)
    }

    /// The stored usage and window start, as they are (expired or not).
    pub fn raw(&self) -> (i64, Micros) {
        (self.used(), self.start.load(Ordering::Acquire))
    }

    /// Drops what is pending on both sides (the window it was for is gone). Increments made
    /// meanwhile by other threads are kept: only what was read is subtracted.
    fn drop_pending(&self) {
        for side in &self.pending {
            let pending = side.load(Ordering::Acquire);
            side.fetch_sub(pending, Ordering::AcqRel);
        }
    }

    /// Starts the window that contains `now` if the current one has ended; the usage of the
    /// ended window, and what of it was not flushed, is dropped.
    pub fn roll(&self, rule: &WindowRule, now: Micros) {
        if now < self.end.load(Ordering::Acquire) {
            return;
        }
        let _window = self.lock();
        if now < self.end.load(Ordering::Acquire) {
            return;
        }
        let start = self.start.load(Ordering::Acquire);
        let Some(new_start) = rule.roll(start, now) else {
            return;
        };
        self.start.store(new_start, Ordering::Release);
        self.end.store(rule.end_of(new_start), Ordering::Release);
        self.base.store(0, Ordering::Release);
        self.drop_pending();
    }

    /// Adds to the usage of the window that contains `now`, on the update's `side`.
    pub fn add(&self, rule: &WindowRule, now: Micros, amount: i64, side: Side) {
        self.roll(rule, now);
        // Sequentially consistent with the mark below and the flush's clear-then-read: see
        // [`Counter::mark_dirty`].
        self.pending[side].fetch_add(amount, Ordering::SeqCst);
    }

    /// Marks `side` of the counter dirty after an [`add`](Counter::add); true when it was
    /// clean (the caller queues it for the flush of that side).
    ///
    /// The flush clears the mark, then reads `pending`; an increment adds to `pending`, then
    /// reads the mark. Each side writes one location and reads the other, so with anything
    /// weaker than sequential consistency both could read the old value: the flush misses the
    /// increment while the increment sees the mark still set and queues nothing. The counter
    /// would then stay marked and unqueued, written only by full ticks, and durable writers
    /// would be acknowledged by group commits that do not hold their updates. All four
    /// accesses are `SeqCst`, which forbids that outcome.
    pub fn mark_dirty(&self, side: Side) -> bool {
        !self.dirty[side].load(Ordering::SeqCst) && !self.dirty[side].swap(true, Ordering::SeqCst)
    }

    /// Clears the mark of `side` before the flush reads it: later increments mark it again.
    pub fn clear_dirty(&self, side: Side) {
        self.dirty[side].store(false, Ordering::SeqCst);
    }

    /// Zeroes the counter and starts a new window at `now` (the admin reset endpoint, which
    /// writes the same to the database itself).
    pub fn reset(&self, rule: &WindowRule, now: Micros) {
        let _window = self.lock();
        for side in &self.pending {
            side.store(0, Ordering::Release);
        }
        self.base.store(0, Ordering::Release);
        self.start.store(now, Ordering::Release);
        self.end.store(rule.end_of(now), Ordering::Release);
        self.persisted_start.store(now, Ordering::Release);
    }

    /// Re-derives the window end after the duration changed; usage and window start stay.
    pub fn set_rule(&self, rule: &WindowRule) {
        let _window = self.lock();
        let start = self.start.load(Ordering::Acquire);
        self.end.store(rule.end_of(start), Ordering::Release);
    }

    /// What a flush of `side` must write for this counter, if anything.
    pub fn flush_item(&self, side: Side) -> Option<FlushItem> {
        // Most counters have nothing to write: tell without taking the lock.
        if self.pending[side].load(Ordering::SeqCst) == 0
            && self.persisted_start.load(Ordering::Acquire) == self.start.load(Ordering::Acquire)
        {
            return None;
        }
        let _window = self.lock();
        let start = self.start.load(Ordering::Acquire);
        let item = FlushItem {
            start,
            delta: self.pending[side].load(Ordering::SeqCst),
            reset: self.persisted_start.load(Ordering::Acquire) != start,
        };
        (item.delta != 0 || item.reset).then_some(item)
    }

    /// Records that `item`, taken from `side`, is committed: the delta is no longer pending
    /// and is part of the database's total. A window that changed meanwhile already dropped
    /// it.
    pub fn flushed(&self, item: FlushItem, side: Side) {
        let _window = self.lock();
        if self.start.load(Ordering::Acquire) != item.start {
            return;
        }
        if item.reset {
            self.persisted_start.store(item.start, Ordering::Release);
        }
        // Base first: a reader in between over-counts for an instant, never under-counts.
        self.base.fetch_add(item.delta, Ordering::AcqRel);
        self.pending[side].fetch_sub(item.delta, Ordering::AcqRel);
    }

    /// Moves the delta of `item`, taken from `from` and not written, to side `to`, so that it
    /// is written with the updates of that side (unless its window ended meanwhile, which
    /// dropped it).
    pub fn requeue(&self, item: FlushItem, from: Side, to: Side) {
        let _window = self.lock();
        if self.start.load(Ordering::Acquire) != item.start || from == to {
            return;
        }
        // The destination first: a reader in between over-counts for an instant.
        self.pending[to].fetch_add(item.delta, Ordering::SeqCst);
        self.pending[from].fetch_sub(item.delta, Ordering::SeqCst);
    }

    /// Takes in the database's total for the window that started at `db_start`: what other
    /// replicas added becomes visible here; a newer window (another replica rolled it first)
    /// is adopted, dropping what was pending for the old one.
    pub fn absorb(&self, rule: &WindowRule, db_total: i64, db_start: Micros) {
        let _window = self.lock();
        let start = self.start.load(Ordering::Acquire);
        if db_start == start {
            self.base.store(db_total, Ordering::Release);
            self.persisted_start.store(start, Ordering::Release);
        } else if db_start > start {
            self.start.store(db_start, Ordering::Release);
            self.end.store(rule.end_of(db_start), Ordering::Release);
            self.base.store(db_total, Ordering::Release);
            self.drop_pending();
            self.persisted_start.store(db_start, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests;
