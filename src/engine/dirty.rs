//! The limits whose counters changed since the last flush, so that a flush woken early by
//! durable writers visits only those instead of every counter; one queue per side (see
//! [`super::capture`]), with the capture that keeps an update on one side.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::capture::{Capture, Entered, Side};
use super::entities::{Budget, RateLimit};

const SHARDS: usize = 16;

/// A limit with unflushed usage.
#[derive(Debug, Clone)]
pub enum Dirty {
    Budget(Arc<Budget>),
    RateLimit(Arc<RateLimit>),
}

#[derive(Debug)]
pub struct DirtySet {
    /// `SHARDS` queues for side 0, then `SHARDS` for side 1.
    shards: Box<[Mutex<Vec<Dirty>>]>,
    next: AtomicUsize,
    capture: Capture,
}

impl Default for DirtySet {
    fn default() -> Self {
        DirtySet {
            shards: (0..2 * SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
            next: AtomicUsize::new(0),
            capture: Capture::default(),
        }
    }
}

impl DirtySet {
    /// Starts an update: everything it changes goes to the side this returns.
    pub fn enter(&self) -> Entered<'_> {
        self.capture.enter()
    }

    /// Ends the current side for a flush (see [`Capture::flip`]); take the side returned once
    /// it is [`settled`](DirtySet::settled).
    pub fn flip(&self) -> Side {
        self.capture.flip()
    }

    /// Whether the updates in progress on `side` are done.
    pub fn settled(&self, side: Side) -> bool {
        self.capture.settled(side)
    }

    /// The side updates go to now.
    pub fn current(&self) -> Side {
        self.capture.current()
    }

    /// Records a limit whose counter just went from clean to dirty on `side`.
    fn push(&self, dirty: Dirty, side: Side) {
        let shard = side * SHARDS + self.next.fetch_add(1, Ordering::Relaxed) % SHARDS;
        self.shards[shard]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(dirty);
    }

    /// Marks a budget's counter dirty on `side`, queueing it when it was clean.
    pub fn mark_budget(&self, b: &Arc<Budget>, side: Side) {
        if b.counter.mark_dirty(side) {
            self.push(Dirty::Budget(Arc::clone(b)), side);
        }
    }

    /// Marks a rate limit dirty, queueing it when it was clean. One mark stands for both
    /// dimensions, kept on the token counter.
    pub fn mark_rate_limit(&self, r: &Arc<RateLimit>, side: Side) {
        if r.tokens.mark_dirty(side) {
            self.push(Dirty::RateLimit(Arc::clone(r)), side);
        }
    }

    /// Takes every limit recorded on `side`.
    pub fn drain(&self, side: Side) -> Vec<Dirty> {
        let mut out = Vec::new();
        for shard in &self.shards[side * SHARDS..(side + 1) * SHARDS] {
            out.append(&mut shard.lock().unwrap_or_else(|p| p.into_inner()));
        }
        out
    }
}
