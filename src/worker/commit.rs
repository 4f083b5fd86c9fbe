//! One write: what it takes from memory (one side of the capture, `engine::capture`), where it
//! commits (the tables, or the journal for a durable group commit), and what happens when its
//! outcome is unknown.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::items::Items;
use super::{FlushReport, Worker};
use crate::db::flush::{self, BudgetDelta, RateLimitDelta};
use crate::db::holds::HoldWrites;
use crate::db::postgres::journal;
use crate::db::postgres::marks::{self, Mark};
use crate::db::{Db, DbError};
use crate::domain::time::now_micros;
use crate::engine::dirty::Dirty;
use crate::engine::holds::Hold;
use crate::engine::{Budget, RateLimit};

/// The largest group commit (counters, rollups and keys) that goes to the journal; a larger
/// one is written to the tables directly, which is cheaper than writing it twice.
const JOURNAL_MAX_ROWS: usize = 4096;

/// Where a flush writes, on a backend with the journal (elsewhere: the tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    Tables,
    /// The journal, unless the flush is larger than [`JOURNAL_MAX_ROWS`].
    Journal,
    /// The journal whatever the size: while this process's fold holds the clock row, a write
    /// to the tables would wait for it.
    JournalOnly,
}

/// Limits visited per slice of a full tick's sweep: small enough that durable writers waiting
/// meanwhile are served within a few milliseconds.
const SWEEP_SLICE: usize = 1024;

/// Most limits one write of the sweep carries: after a long downtime every window has ended,
/// and the resets go out in transactions of this size, not in one holding every row.
const SWEEP_WRITE_MAX: usize = 20_000;

/// A commit that failed without saying whether it happened (the connection died on the way),
/// with what it carried.
pub(super) struct Attempt {
    pub(super) mark: Mark,
    pub(super) journaled: bool,
    pub(super) items: Items,
}

impl std::fmt::Debug for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempt")
            .field("mark", &self.mark)
            .field("journaled", &self.journaled)
            .finish_non_exhaustive()
    }
}

impl Worker {
    fn unresolved(&self) -> std::sync::MutexGuard<'_, Option<Attempt>> {
        self.unresolved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes what changed since the last flush: the counters marked dirty, rollups and
    /// idempotency keys (to the journal, for a durable group commit); then tells durable
    /// writers what it covered. Called with `flushing` held.
    pub(super) async fn write_changed(&self, target: Target) -> Result<FlushReport, DbError> {
        self.resolve().await?;
        let now = now_micros();
        // Everything applied up to here is in the counters read below.
        let covered = self.signal.seq.load(Ordering::SeqCst);
        let snapshot = self.store.snapshot();
        // Updates go to the other side from here on; the side left holds whole updates only,
        // every one applied before `covered` among them (see `engine::capture`).
        let side = snapshot.dirty.flip();
        while !snapshot.dirty.settled(side) {
            // Updates in progress on it finish within microseconds; they never wait for us.
            tokio::task::yield_now().await;
        }
        let keys = self.dedup.take_unsaved(side);
        let rollups = self.rollups.drain(side);
        let mut budgets: Vec<Arc<Budget>> = Vec::new();
        let mut rates: Vec<Arc<RateLimit>> = Vec::new();
        for d in snapshot.dirty.drain(side) {
            match d {
                Dirty::Budget(b) => {
                    b.counter.clear_dirty(side);
                    budgets.push(b);
                }
                Dirty::RateLimit(r) => {
                    r.tokens.clear_dirty(side);
                    rates.push(r);
                }
            }
        }
        budgets.sort_by_key(|b| b.id);
        budgets.dedup_by_key(|b| b.id);
        rates.sort_by_key(|r| r.id);
        rates.dedup_by_key(|r| r.id);
        let mut items = Items::collect(budgets.iter(), rates.iter(), now, side);
        items.rollups = rollups;
        items.keys = keys;
        items.holds = self.holds.take_changes();
        let report = self.write_items(items, target).await?;
        self.signal.durable.send_if_modified(|done| {
            let advanced = covered > *done;
            *done = (*done).max(covered);
            advanced
        });
        Ok(report)
    }

    /// What changed, then every counter's window and leftover delta, in slices.
    pub(super) async fn write_everything(&self) -> Result<FlushReport, DbError> {
        let mut report = self.write_changed(Target::Tables).await?;
        let snapshot = self.store.snapshot();
        let budgets: Vec<&Arc<Budget>> = snapshot.budgets().collect();
        let rates: Vec<&Arc<RateLimit>> = snapshot.rate_limits().collect();
        let slices = budgets
            .chunks(SWEEP_SLICE)
            .map(|b| (b, &[][..]))
            .chain(rates.chunks(SWEEP_SLICE).map(|r| (&[][..], r)));
        // What the sweep found goes out in few writes (a month's calendar windows all end at
        // once), each of at most SWEEP_WRITE_MAX limits, or sooner when durable writers wait:
        // their commits go between slices, after what the sweep holds so far (a counter's item
        // must be written before it is taken again).
        let mut found = Items::default();
        for (budgets, rates) in slices {
            if found.budgets.len() + found.rates.len() >= SWEEP_WRITE_MAX {
                report.add(
                    &self
                        .write_items(std::mem::take(&mut found), Target::Tables)
                        .await?,
                );
            }
            if self.signal.waiting() {
                report.add(
                    &self
                        .write_items(std::mem::take(&mut found), Target::Tables)
                        .await?,
                );
                self.serve_durable_writers(Target::Journal).await?;
            }
            // The side the last flip left: no update changes it (durable writers' commits
            // above flip again, after `found` was written).
            let side = 1 - snapshot.dirty.current();
            found.append(Items::collect(
                budgets.iter().copied(),
                rates.iter().copied(),
                now_micros(),
                side,
            ));
        }
        report.add(&self.write_items(found, Target::Tables).await?);
        Ok(report)
    }

    /// Settles the commit whose outcome a failure left unknown, before anything else is
    /// written (the caller holds `flushing`): if it happened, its deltas count as written,
    /// as after any commit; if not, all it held goes to the current side, to be written with
    /// the next flush. Until it is settled, nothing is written (no side is left), so a delta
    /// is never written twice.
    pub(super) async fn resolve(&self) -> Result<(), DbError> {
        let Some(attempt) = self.unresolved().take() else {
            return Ok(());
        };
        let resolved = match self.db.acquire().await {
            Ok(mut conn) => marks::resolve(&mut conn, attempt.mark).await,
            Err(e) => Err(e),
        };
        let committed = match resolved {
            Ok(committed) => committed,
            Err(e) => {
                *self.unresolved() = Some(attempt);
                return Err(e);
            }
        };
        let Attempt {
            mark,
            journaled,
            items,
        } = attempt;
        tracing::info!(
            commit = mark.seq,
            committed,
            "a commit whose outcome was unknown is settled"
        );
        self.metrics.commit_resolved(committed);
        if committed {
            if journaled {
                self.journal.appended(mark.seq, items.deltas());
            }
            items.flushed();
        } else {
            self.requeue(items);
        }
        Ok(())
    }

    /// Gives everything a write that did not happen held to the current side: counter
    /// deltas (marked dirty there), rollups and keys, together, so that the next flush
    /// writes them whole and a durable writer waiting for one of them is acknowledged only
    /// by a commit that holds its update.
    pub(super) fn requeue(&self, items: Items) {
        let snapshot = self.store.snapshot();
        let to = snapshot.dirty.current();
        let from = items.side;
        for (b, item) in &items.budgets {
            b.counter.requeue(*item, from, to);
            snapshot.dirty.mark_budget(b, to);
        }
        for (r, t, q) in &items.rates {
            r.tokens.requeue(*t, from, to);
            r.requests.requeue(*q, from, to);
            snapshot.dirty.mark_rate_limit(r, to);
        }
        self.rollups.restore(to, items.rollups);
        self.dedup.restore_unsaved(to, items.keys);
        self.holds.restore(items.holds);
    }

    /// A durable group commit in the middle of a full tick, for writers that wait (the
    /// caller holds `flushing`).
    pub(super) async fn serve_durable_writers(&self, target: Target) -> Result<(), DbError> {
        let started = std::time::Instant::now();
        let changed = self.write_changed(target).await?;
        self.metrics
            .flushed(true, started.elapsed(), changed.rows());
        Ok(())
    }

    /// Writes `items` in one transaction (as one journal entry, as `target` says) and, once it
    /// committed, takes their deltas off the counters' pending usage. On failure rollups and
    /// keys go back to be written next time (counter deltas simply stay pending).
    pub(super) async fn write_items(
        &self,
        items: Items,
        target: Target,
    ) -> Result<FlushReport, DbError> {
        let mut report = FlushReport {
            budgets_written: items.budgets.len(),
            rate_limits_written: items.rates.len(),
            rollups_written: items.rollups.len(),
            dedup_keys_written: items.keys.len(),
            ..FlushReport::default()
        };
        self.touch(
            items
                .budgets
                .iter()
                .map(|(b, _)| Dirty::Budget(Arc::clone(b)))
                .chain(
                    items
                        .rates
                        .iter()
                        .map(|(r, _, _)| Dirty::RateLimit(Arc::clone(r))),
                ),
        );
        if items.is_empty() {
            return Ok(report);
        }
        let budgets: Vec<BudgetDelta> = items
            .budgets
            .iter()
            .map(|(b, item)| BudgetDelta {
                id: b.id,
                item: *item,
            })
            .collect();
        let rates: Vec<RateLimitDelta> = items
            .rates
            .iter()
            .map(|(r, t, q)| RateLimitDelta {
                id: r.id,
                tokens: *t,
                requests: *q,
            })
            .collect();
        let me = self.holds.writer();
        let notes: Vec<Arc<Hold>> = items
            .holds
            .ended
            .iter()
            .filter(|h| h.writer != me)
            .cloned()
            .collect();
        let writes = flush::FlushWrites {
            budgets: &budgets,
            rates: &rates,
            rollups: &items.rollups,
            keys: &items.keys,
            holds: HoldWrites {
                placed: &items.holds.placed,
                ended: &items.holds.ended,
                notes: &notes,
            },
        };
        let journaled = self.db.journals()
            && match target {
                Target::Tables => false,
                Target::Journal => writes.rows() <= JOURNAL_MAX_ROWS,
                Target::JournalOnly => true,
            };
        report.journal_entries_appended = usize::from(journaled);
        let mark = self
            .db
            .journals()
            .then(|| self.journal.next_mark(now_micros()));
        let written = match mark {
            Some(mark) if journaled => append(&self.db, mark, writes).await.map(|()| {
                self.journal.appended(mark.seq, items.deltas());
                0
            }),
            _ => write(&self.db, writes, mark).await,
        };
        let version = match written {
            Ok(version) => version,
            Err(e) => {
                match mark {
                    // Whether it committed is settled before the next write.
                    Some(mark) => {
                        *self.unresolved() = Some(Attempt {
                            mark,
                            journaled,
                            items,
                        });
                    }
                    // SQLite reports every commit's outcome: this one did not happen.
                    None => self.requeue(items),
                }
                return Err(e);
            }
        };
        if version > 0 {
            self.versions.took(version);
        }
        items.flushed();
        Ok(report)
    }
}

/// Writes one flush in one transaction; the usage version it took (0: none).
async fn write(
    db: &Db,
    writes: flush::FlushWrites<'_>,
    mark: Option<Mark>,
) -> Result<i64, DbError> {
    let mut conn = db.flush_connection().await?;
    let written = db.commit_flush(conn.conn(), writes, mark).await;
    if written.is_err() {
        // Rolled back already, unless the connection broke or the rollback failed: either
        // way it is not used again, in case a transaction is still open on it.
        conn.discard();
    }
    written
}

/// Appends one group commit to the journal.
async fn append(db: &Db, mark: Mark, writes: flush::FlushWrites<'_>) -> Result<(), DbError> {
    let mut conn = db.flush_connection().await?;
    let appended = journal::append(conn.conn(), mark, &writes).await;
    if appended.is_err() {
        conn.discard();
    }
    appended
}
