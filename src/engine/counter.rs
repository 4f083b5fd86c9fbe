//! One usage counter: an amount used in the current window, and that window's bounds, in
//! atomics so that readers never lock. Money counts nano-dollars, rate limits count tokens or
//! requests.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::domain::{Micros, WindowRule};

/// A counter shared by every snapshot of the entity that owns it, so that config changes keep
/// the usage (SPEC §5).
#[derive(Debug)]
pub struct Counter {
    used: AtomicI64,
    /// Start of the current window (`last_reset`).
    start: AtomicI64,
    /// End (exclusive) of the current window, cached so that expiry is one comparison.
    end: AtomicI64,
}

/// What a counter shows at one instant: an expired window counts as 0 at once, before anything
/// has persisted the reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterView {
    pub used: i64,
    pub last_reset: Micros,
    pub resets_at: Micros,
}

impl Counter {
    /// A counter as persisted: `used` in the window that started at `last_reset`.
    pub fn new(used: i64, last_reset: Micros, rule: &WindowRule) -> Self {
        Counter {
            used: AtomicI64::new(used),
            start: AtomicI64::new(last_reset),
            end: AtomicI64::new(rule.end_of(last_reset)),
        }
    }

    /// The counter's state at `now`, without changing it.
    pub fn view(&self, rule: &WindowRule, now: Micros) -> CounterView {
        let start = self.start.load(Ordering::Acquire);
        let end = self.end.load(Ordering::Acquire);
        if now < end {
            return CounterView {
                used: self.used.load(Ordering::Acquire),
                last_reset: start,
                resets_at: end,
            };
        }
        let rolled = rule.roll(start, now).unwrap_or(start);
        CounterView {
            used: 0,
            last_reset: rolled,
            resets_at: rule.end_of(rolled),
        }
    }

    /// The stored usage and window start, as they are (expired or not): what is persisted.
    pub fn raw(&self) -> (i64, Micros) {
        (
            self.used.load(Ordering::Acquire),
            self.start.load(Ordering::Acquire),
        )
    }

    /// Starts the window that contains `now` if the current one has ended; the usage of the
    /// ended window is dropped. Lock-free: one thread wins the compare-and-swap on the window
    /// end and subtracts what it read *before* winning, so increments that other threads make
    /// in the new window meanwhile are kept.
    pub fn roll(&self, rule: &WindowRule, now: Micros) {
        let end = self.end.load(Ordering::Acquire);
        if now < end {
            return;
        }
        let used = self.used.load(Ordering::Acquire);
        let start = self.start.load(Ordering::Acquire);
        let Some(new_start) = rule.roll(start, now) else {
            return;
        };
        let new_end = rule.end_of(new_start);
        if self
            .end
            .compare_exchange(end, new_end, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.start.store(new_start, Ordering::Release);
            self.used.fetch_sub(used, Ordering::AcqRel);
        }
    }

    /// Adds to the usage of the window that contains `now`.
    pub fn add(&self, rule: &WindowRule, now: Micros, amount: i64) {
        self.roll(rule, now);
        self.used.fetch_add(amount, Ordering::AcqRel);
    }

    /// Zeroes the counter and starts a new window at `now` (the admin reset endpoint).
    pub fn reset(&self, rule: &WindowRule, now: Micros) {
        self.used.store(0, Ordering::Release);
        self.start.store(now, Ordering::Release);
        self.end.store(rule.end_of(now), Ordering::Release);
    }

    /// Re-derives the window end after the duration changed; usage and window start stay.
    pub fn set_rule(&self, rule: &WindowRule) {
        let start = self.start.load(Ordering::Acquire);
        self.end.store(rule.end_of(start), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ResetDuration;

    fn minute() -> WindowRule {
        WindowRule::rolling(&ResetDuration::parse("1m").unwrap())
    }

    const MIN: i64 = 60_000_000;

    #[test]
    fn usage_in_a_new_window_starts_from_zero() {
        let c = Counter::new(0, 0, &minute());
        c.add(&minute(), 10, 5);
        c.add(&minute(), 2 * MIN + 1, 7);
        let v = c.view(&minute(), 2 * MIN + 2);
        assert_eq!((v.used, v.last_reset), (7, 2 * MIN));
    }

    #[test]
    fn an_expired_window_shows_zero_before_any_reset_runs() {
        let c = Counter::new(0, 0, &minute());
        c.add(&minute(), 0, 42);
        assert_eq!(c.view(&minute(), MIN - 1).used, 42);
        let v = c.view(&minute(), 2 * MIN + 5);
        assert_eq!(v.used, 0);
        assert_eq!(v.last_reset, 2 * MIN);
        assert_eq!(v.resets_at, 3 * MIN);
    }

    #[test]
    fn reset_restores_capacity_and_starts_a_new_window() {
        let c = Counter::new(10, 0, &minute());
        c.reset(&minute(), 30_000_000);
        let v = c.view(&minute(), 30_000_001);
        assert_eq!(
            (v.used, v.last_reset, v.resets_at),
            (0, 30_000_000, 30_000_000 + MIN)
        );
    }

    #[test]
    fn a_longer_duration_keeps_usage_and_moves_the_end() {
        let c = Counter::new(7, 0, &minute());
        let hour = WindowRule::rolling(&ResetDuration::parse("1h").unwrap());
        c.set_rule(&hour);
        let v = c.view(&hour, 2 * MIN);
        assert_eq!((v.used, v.resets_at), (7, 60 * MIN));
    }
}
