//! One shard's open-addressing table of key tags (linear probing), and the word that says
//! which generations are live.

use super::{DedupKey, GEN_MASK, MIN_SLOTS, USED};

/// What a slot holds of a key: every bit but the lowest 16 (the generation's) and the top
/// one (always set).
pub(super) fn tag(key: DedupKey) -> u128 {
    (key | USED) & !GEN_MASK
}

/// Where a tag's probe starts in a table of `len` slots (from bits the slot keeps).
fn home(tag: u128, len: usize) -> usize {
    ((u128::from((tag >> 16) as u64) * len as u128) >> 64) as usize
}

/// The live generations, in one word for the hot path: the oldest in the high half, the
/// current one in the low half. Numbers wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Live(pub(super) u32);

impl Live {
    pub(super) fn new(oldest: u16, current: u16) -> Live {
        Live(u32::from(oldest) << 16 | u32::from(current))
    }

    pub(super) fn current(self) -> u16 {
        self.0 as u16
    }

    pub(super) fn oldest(self) -> u16 {
        (self.0 >> 16) as u16
    }

    pub(super) fn holds(self, generation: u16) -> bool {
        self.current().wrapping_sub(generation) <= self.current().wrapping_sub(self.oldest())
    }
}

/// One shard's slots: 0 is empty, anything else a key's tag with its generation.
#[derive(Debug, Default)]
pub(super) struct Table {
    pub(super) slots: Vec<u128>,
    /// Slots not empty (live or expired).
    pub(super) used: usize,
}

impl Table {
    /// Records `tag` in the current generation unless a live slot has it; true when new.
    pub(super) fn claim(&mut self, tag: u128, live: Live) -> bool {
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
    pub(super) fn rebuild(&mut self, live: Live, room: usize) {
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

    pub(super) fn live_count(&self, live: Live) -> usize {
        self.slots
            .iter()
            .filter(|s| **s != 0 && live.holds((**s & GEN_MASK) as u16))
            .count()
    }
}
