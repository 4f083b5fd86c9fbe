//! The limits whose counters changed since the last flush, so that a flush woken early by
//! durable writers visits only those instead of every counter.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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
    shards: Box<[Mutex<Vec<Dirty>>]>,
    next: AtomicUsize,
}

impl Default for DirtySet {
    fn default() -> Self {
        DirtySet {
            shards: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
            next: AtomicUsize::new(0),
        }
    }
}

impl DirtySet {
    /// Records a limit whose counter just went from clean to dirty.
    pub fn push(&self, dirty: Dirty) {
        let shard = self.next.fetch_add(1, Ordering::Relaxed) % SHARDS;
        self.shards[shard]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(dirty);
    }

    /// Marks a budget's counter dirty, queueing it when it was clean.
    pub fn mark_budget(&self, b: &Arc<Budget>) {
        if b.counter.mark_dirty() {
            self.push(Dirty::Budget(Arc::clone(b)));
        }
    }

    /// Marks a rate limit dirty, queueing it when it was clean. One mark stands for both
    /// dimensions, kept on the token counter.
    pub fn mark_rate_limit(&self, r: &Arc<RateLimit>) {
        if r.tokens.mark_dirty() {
            self.push(Dirty::RateLimit(Arc::clone(r)));
        }
    }

    /// Takes every recorded limit.
    pub fn drain(&self) -> Vec<Dirty> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.append(&mut shard.lock().unwrap_or_else(|p| p.into_inner()));
        }
        out
    }
}
