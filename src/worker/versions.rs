//! The versions of the shared clock this process has seen, and the read-back they drive: what
//! other replicas wrote since, and a reload when another replica changed the configuration.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use uuid::Uuid;

use super::journal::Dim;
use super::{FlushReport, Worker};
use crate::db::flush;
use crate::db::DbError;
use crate::domain::time::now_micros;
use crate::domain::Micros;
use crate::engine::counter::Counter;
use crate::engine::delta;
use crate::engine::dirty::Dirty;
use crate::engine::level::LimitKind;
use crate::engine::{Budget, RateLimit, Snapshot};

/// The counter of `kind` of the limit `limit` in `s`.
pub(crate) fn counter_of(s: &Snapshot, kind: LimitKind, limit: Uuid) -> Option<Arc<Counter>> {
    match kind {
        LimitKind::Budget => s.find_budget(limit).map(|b| Arc::clone(&b.counter)),
        LimitKind::Tokens => s.find_rate_limit(limit).map(|r| Arc::clone(&r.tokens)),
        LimitKind::Requests => s.find_rate_limit(limit).map(|r| Arc::clone(&r.requests)),
    }
}

/// The versions this process has seen of the shared clock.
#[derive(Debug, Default)]
pub struct Versions {
    /// Configuration as of this version is in memory.
    config: AtomicI64,
    /// Usage written up to this version has been read back.
    usage: AtomicI64,
    /// Usage versions this process's own flushes took and no read-back has passed yet.
    own: std::sync::Mutex<Vec<i64>>,
}

impl Versions {
    pub(super) fn took(&self, version: i64) {
        self.own
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(version);
    }

    /// Whether every version in `(seen, current]` is one of this process's own; forgets the
    /// own versions up to `current`.
    pub(super) fn only_own(&self, seen: i64, current: i64) -> bool {
        let mut own = self
            .own
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let in_range = own.iter().filter(|v| **v > seen && **v <= current).count() as i64;
        own.retain(|v| *v > current);
        in_range == current - seen
    }

    /// The versions read at start, with the state loaded then.
    pub fn start_at(&self, config: i64, usage: i64) {
        self.config.store(config, Ordering::Release);
        self.usage.store(usage, Ordering::Release);
    }

    /// An admin change of this process committed as `version`: when it directly follows the
    /// last version seen, memory is already current.
    pub fn config_committed(&self, version: i64) {
        let _ =
            self.config
                .compare_exchange(version - 1, version, Ordering::AcqRel, Ordering::Acquire);
    }
}

impl Worker {
    /// Reads back what other replicas wrote since the last read-back, and reloads the
    /// configuration when another replica changed it. One snapshot (repeatable read) holds
    /// the totals and which of this process's journal entries are still unfolded: their
    /// deltas, which memory counts, are added to the totals read.
    pub(super) async fn read_back(&self, report: &mut FlushReport) -> Result<(), DbError> {
        let snapshot = self.store.snapshot();
        let mut conn = self.db.acquire().await?;
        let mut tx = self.db.read_snapshot(&mut conn).await?;
        let (config_version, usage_version) = flush::clock(&mut tx).await?;
        let seen_usage = self.versions.usage.load(Ordering::Acquire);
        // When every usage version since the last read-back was taken by this process's own
        // flushes (durable group commits included), memory already holds every total: nothing
        // to read. Otherwise read every row newer than what was seen, ours included (a later
        // write of ours may hide another replica's in between).
        let only_own = self.versions.only_own(seen_usage, usage_version);
        if usage_version > seen_usage && !only_own {
            let budget_totals = flush::budgets_since(&mut tx, seen_usage).await?;
            let rate_totals = flush::rate_limits_since(&mut tx, seen_usage).await?;
            let unfolded = if self.journal.is_empty() {
                HashMap::new()
            } else {
                let mut ids =
                    crate::db::postgres::journal::unfolded(&mut tx, self.journal.writer).await?;
                ids.sort_unstable();
                self.journal.still_unfolded(&ids)
            };
            // `(usage, last_reset)` read, with this process's unfolded deltas applied.
            let total = |dim: Dim, id: Uuid, used: i64, start: Micros| -> (i64, Micros) {
                let (start, used) = match unfolded.get(&(dim, id)) {
                    Some(delta) => delta::apply((start, used), *delta),
                    None => (start, used),
                };
                (used, start)
            };
            let by_id: HashMap<Uuid, &Arc<Budget>> =
                snapshot.budgets().map(|b| (b.id, b)).collect();
            let mut touched = Vec::with_capacity(budget_totals.len() + rate_totals.len());
            for t in &budget_totals {
                if let Some(b) = by_id.get(&t.id) {
                    let (used, start) = total(Dim::Budget, t.id, t.used, t.last_reset);
                    b.counter.absorb(&b.rule, used, start);
                    touched.push(Dirty::Budget(Arc::clone(b)));
                }
            }
            let by_id: HashMap<Uuid, &Arc<RateLimit>> =
                snapshot.rate_limits().map(|r| (r.id, r)).collect();
            for t in &rate_totals {
                if let Some(r) = by_id.get(&t.id) {
                    let (used, start) = total(Dim::Tokens, t.id, t.tokens.0, t.tokens.1);
                    r.tokens.absorb(r.token_rule(), used, start);
                    let (used, start) = total(Dim::Requests, t.id, t.requests.0, t.requests.1);
                    r.requests.absorb(r.request_rule(), used, start);
                    touched.push(Dirty::RateLimit(Arc::clone(r)));
                }
            }
            self.touch(touched);
            report.counters_read_back = budget_totals.len() + rate_totals.len();
        }
        let holds = crate::db::holds::load(&mut tx).await?;
        let ended = crate::db::holds::ended_elsewhere(&mut tx, self.holds.writer()).await?;
        tx.commit().await?;
        self.holds
            .absorb(holds, &ended, now_micros(), |kind, limit| {
                counter_of(&snapshot, kind, limit)
            });
        drop(conn);
        self.versions
            .usage
            .fetch_max(usage_version, Ordering::AcqRel);
        if config_version != self.versions.config.load(Ordering::Acquire) {
            let _writes = self.config_lock.lock().await;
            let current = self.store.snapshot();
            let fresh = self.db.load(Some(&current)).await?;
            self.store.replace(fresh);
            self.versions
                .config
                .store(config_version, Ordering::Release);
            report.reloaded = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_back_is_skipped_only_when_every_new_version_is_ours() {
        let v = Versions::default();
        for own in [3, 4, 6] {
            v.took(own);
        }
        assert!(!v.only_own(2, 6), "version 5 is another replica's");
        v.took(7);
        v.took(8);
        assert!(v.only_own(6, 8));
        assert!(v.only_own(8, 8), "nothing new");
        v.took(10);
        assert!(!v.only_own(8, 10), "9 is not ours");
        assert!(v.own.lock().unwrap().is_empty());
    }

    #[test]
    fn only_the_next_version_marks_memory_current() {
        let v = Versions::default();
        v.start_at(5, 0);
        v.config_committed(6);
        assert_eq!(v.config.load(Ordering::Acquire), 6);
        v.config_committed(8);
        assert_eq!(
            v.config.load(Ordering::Acquire),
            6,
            "version 7 came from elsewhere: reload"
        );
    }
}
