//! Whole updates per flush. One usage update changes several counters, a rollup row and its
//! idempotency key, one after another; a flush that read them in between would write part of
//! the update. Should the process then die before the next flush, the gateway's retry would
//! find either the key stored without all of the usage (a duplicate: usage lost) or usage
//! stored without the key (applied again: usage counted twice).
//!
//! So pending usage, dirty marks, rollups and new keys are kept on two sides. An update
//! [`enters`](Capture::enter) the current side under a shared gate and makes all its changes
//! there. A flush [`flips`](Capture::flip) the current side under the exclusive gate, which
//! waits only for the updates in progress (microseconds), and then takes the side it left:
//! every update on it is complete, and none comes after.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

/// One of the two sides, 0 or 1 (an index into per-side arrays).
pub type Side = usize;

/// The gate and the current side.
#[derive(Debug, Default)]
pub struct Capture {
    gate: RwLock<()>,
    current: AtomicUsize,
}

/// An update in progress on one side: the flip waits for it. Hold it for the whole update and
/// never across an `.await`; do not enter again while holding it (a flip waiting between the
/// two would wait for ever).
#[derive(Debug)]
pub struct Entered<'a> {
    _gate: RwLockReadGuard<'a, ()>,
    side: Side,
}

impl Entered<'_> {
    pub fn side(&self) -> Side {
        self.side
    }
}

impl Capture {
    /// Starts an update on the current side.
    pub fn enter(&self) -> Entered<'_> {
        let gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        Entered {
            _gate: gate,
            side: self.current.load(Ordering::Acquire),
        }
    }

    /// Makes the other side current once the updates in progress are done; returns the side
    /// left, which no update changes until the next flip.
    pub fn flip(&self) -> Side {
        let _gate = self.gate.write().unwrap_or_else(|p| p.into_inner());
        let left = self.current.load(Ordering::Acquire);
        self.current.store(1 - left, Ordering::Release);
        left
    }

    /// The side updates go to now.
    pub fn current(&self) -> Side {
        self.current.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[test]
    fn a_flip_alternates_the_sides() {
        let c = Capture::default();
        assert_eq!(c.enter().side(), 0);
        assert_eq!(c.flip(), 0);
        assert_eq!(c.enter().side(), 1);
        assert_eq!(c.flip(), 1);
        assert_eq!(c.current(), 0);
    }

    #[test]
    fn a_flip_waits_for_the_update_in_progress() {
        let c = Arc::new(Capture::default());
        let entered = c.enter();
        let flipped = Arc::new(AtomicBool::new(false));
        let flipper = {
            let (c, flipped) = (Arc::clone(&c), Arc::clone(&flipped));
            std::thread::spawn(move || {
                let left = c.flip();
                flipped.store(true, Ordering::SeqCst);
                left
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            !flipped.load(Ordering::SeqCst),
            "the side cannot be left while an update is on it"
        );
        drop(entered);
        assert_eq!(flipper.join().unwrap(), 0);
        assert!(flipped.load(Ordering::SeqCst));
    }
}
