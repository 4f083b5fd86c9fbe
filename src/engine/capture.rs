//! Whole updates per flush. One usage update changes several counters, a rollup row and its
//! idempotency key, one after another; a flush that read them in between would write part of
//! the update. Should the process then die before the next flush, the gateway's retry would
//! find either the key stored without all of the usage (a duplicate: usage lost) or usage
//! stored without the key (applied again: usage counted twice).
//!
//! So pending usage, dirty marks, rollups and new keys are kept on two sides. An update
//! [`enters`](Capture::enter) the current side (counted in progress there) and makes all its
//! changes there. A flush [`flips`](Capture::flip) the current side, waits (yielding) until the
//! side it left is [`settled`](Capture::settled) — the updates in progress on it take
//! microseconds — and then takes it: every update on it is complete, and none comes after.
//! Updates never wait for a flush.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

/// One of the two sides, 0 or 1 (an index into per-side arrays).
pub type Side = usize;

/// The current side and the updates in progress on each.
#[derive(Debug, Default)]
pub struct Capture {
    current: AtomicUsize,
    in_progress: [AtomicUsize; 2],
}

/// An update in progress on one side; the side is not settled until it is dropped. Never
/// hold it across an `.await`: a flush would wait for it.
#[derive(Debug)]
pub struct Entered<'a> {
    capture: &'a Capture,
    side: Side,
}

impl Entered<'_> {
    pub fn side(&self) -> Side {
        self.side
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.capture.in_progress[self.side].fetch_sub(1, SeqCst);
    }
}

impl Capture {
    /// Starts an update on the current side. Never waits: an update that finds the side
    /// changed under it moves to the new one.
    pub fn enter(&self) -> Entered<'_> {
        loop {
            let side = self.current.load(SeqCst);
            self.in_progress[side].fetch_add(1, SeqCst);
            // The flip stores the new side, then reads the count; this adds to the count, then
            // reads the side. With both sequentially consistent, either the flip sees this
            // update (and waits for it) or this update sees the new side (and moves).
            if self.current.load(SeqCst) == side {
                return Entered {
                    capture: self,
                    side,
                };
            }
            self.in_progress[side].fetch_sub(1, SeqCst);
        }
    }

    /// Makes the other side current; returns the side left. Updates already on it may still
    /// be finishing: take it once [`Capture::settled`] says so.
    pub fn flip(&self) -> Side {
        let left = self.current.load(SeqCst);
        self.current.store(1 - left, SeqCst);
        left
    }

    /// Whether no update is in progress on `side` any more (after a flip: for good, until
    /// the next flip).
    pub fn settled(&self, side: Side) -> bool {
        self.in_progress[side].load(SeqCst) == 0
    }

    /// The side updates go to now.
    pub fn current(&self) -> Side {
        self.current.load(SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_side_left_settles_once_its_updates_are_done() {
        let c = Capture::default();
        let entered = c.enter();
        let left = c.flip();
        assert_eq!(left, 0);
        assert!(!c.settled(left), "an update is still on the side left");
        let next = c.enter();
        assert_eq!(next.side(), 1, "new updates go to the other side");
        drop(entered);
        assert!(c.settled(left));
        assert!(!c.settled(1));
        drop(next);
        assert!(c.settled(1));
    }

    #[test]
    fn updates_racing_a_flip_end_up_on_one_side_each() {
        use std::sync::Arc;
        let c = Arc::new(Capture::default());
        let counts = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (c, counts) = (Arc::clone(&c), Arc::clone(&counts));
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        let e = c.enter();
                        counts[e.side()].fetch_add(1, SeqCst);
                    }
                })
            })
            .collect();
        let mut taken = 0;
        for _ in 0..200 {
            let left = c.flip();
            while !c.settled(left) {
                std::hint::spin_loop();
            }
            // Nothing adds to the side left once it is settled.
            let n = counts[left].swap(0, SeqCst);
            assert_eq!(counts[left].load(SeqCst), 0);
            taken += n;
        }
        for t in threads {
            t.join().unwrap();
        }
        taken += counts[0].load(SeqCst) + counts[1].load(SeqCst);
        assert_eq!(taken, 40_000);
    }
}
