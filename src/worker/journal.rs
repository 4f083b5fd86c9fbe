//! This process's side of the usage journal (`db::journal`) and of its commit marks
//! (`db::marks`): which of its entries no fold has taken yet, and what they hold.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};

use uuid::Uuid;

use crate::db::postgres::marks::Mark;
use crate::domain::Micros;
use crate::engine::delta::{self, Delta};

/// Which counter of a limit a journaled delta is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Dim {
    Budget,
    Tokens,
    Requests,
}

/// Entries by id, each with the deltas it holds.
type Unfolded = BTreeMap<i64, Vec<(Dim, Uuid, Delta)>>;

/// This process's side of the usage journal and of its commit marks: its writer id, the number of its last commit, the commit whose outcome is
/// not known yet, and its entries that no fold has taken yet with the counter deltas each
/// holds. Memory counts those deltas as written while the tables do not hold them yet, so a
/// read-back adds them to the totals it reads.
#[derive(Debug)]
pub struct Journal {
    pub writer: i64,
    /// The number of the last commit attempted (PostgreSQL).
    commits: AtomicI64,
    unfolded: std::sync::Mutex<Unfolded>,
}

impl Journal {
    /// The journal of the process whose writer id is `writer`.
    pub fn new(writer: i64) -> Self {
        Journal {
            writer,
            commits: AtomicI64::new(0),
            unfolded: std::sync::Mutex::default(),
        }
    }
}

impl Journal {
    pub(super) fn entries(&self) -> std::sync::MutexGuard<'_, Unfolded> {
        self.unfolded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The identity of this process's next commit.
    pub(super) fn next_mark(&self, at: Micros) -> Mark {
        Mark {
            writer: self.writer,
            seq: self.commits.fetch_add(1, Ordering::AcqRel) + 1,
            at,
        }
    }

    /// Entry `id` of this process holds `deltas`.
    pub(super) fn appended(&self, id: i64, deltas: Vec<(Dim, Uuid, Delta)>) {
        self.entries().insert(id, deltas);
    }

    pub(super) fn folded(&self, ids: &[i64]) {
        let mut entries = self.entries();
        for id in ids {
            entries.remove(id);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }

    /// Keeps the entries still `unfolded` in the database (others folded the rest) and
    /// returns their deltas, merged per counter.
    pub(super) fn still_unfolded(&self, unfolded: &[i64]) -> HashMap<(Dim, Uuid), Delta> {
        let mut entries = self.entries();
        entries.retain(|id, _| unfolded.binary_search(id).is_ok());
        let mut merged: HashMap<(Dim, Uuid), Delta> = HashMap::new();
        for (dim, id, delta) in entries.values().flatten() {
            merged
                .entry((*dim, *id))
                .and_modify(|m| *m = delta::merge(*m, *delta))
                .or_insert(*delta);
        }
        merged
    }
}
