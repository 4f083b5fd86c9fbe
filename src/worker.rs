//! The background worker (`docs/durability.md`): every `flush_interval` it rolls expired windows, writes
//! resets and usage deltas to the database, reads back what other replicas wrote, reloads the
//! configuration when another replica changed it, and persists idempotency keys and hourly
//! rollups. `flush_once` is the whole of one tick; the loop only schedules it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::flush::{self, BudgetDelta, RateLimitDelta};
use crate::db::journal::{self, Delta};
use crate::db::marks::{self, Mark};
use crate::db::{Backend, Db, DbError};
use crate::domain::time::now_micros;
use crate::domain::Micros;
use crate::engine::capture::Side;
use crate::engine::counter::FlushItem;
use crate::engine::dedup::{Dedup, DedupKey};
use crate::engine::dirty::Dirty;
use crate::engine::rollup::{RollupKey, RollupSums, Rollups};
use crate::engine::{Budget, RateLimit, Store};

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
    fn took(&self, version: i64) {
        self.own
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(version);
    }

    /// Whether every version in `(seen, current]` is one of this process's own; forgets the
    /// own versions up to `current`.
    fn only_own(&self, seen: i64, current: i64) -> bool {
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

/// Group commit for `ack = "durable"`: writers take a sequence number after applying their
/// update, wake the worker, and wait until a committed flush covers their number.
#[derive(Debug)]
pub struct FlushSignal {
    seq: AtomicU64,
    durable: watch::Sender<u64>,
    wake: Notify,
}

impl Default for FlushSignal {
    fn default() -> Self {
        FlushSignal {
            seq: AtomicU64::new(0),
            durable: watch::channel(0).0,
            wake: Notify::new(),
        }
    }
}

impl FlushSignal {
    /// Waits until everything applied before this call is committed; false on timeout.
    pub async fn durable(&self, timeout: Duration) -> bool {
        let mine = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let mut rx = self.durable.subscribe();
        self.wake.notify_one();
        tokio::time::timeout(timeout, rx.wait_for(|done| *done >= mine))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Whether durable writers wait for a flush.
    fn waiting(&self) -> bool {
        self.seq.load(Ordering::SeqCst) > *self.durable.borrow()
    }
}

/// What one tick did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FlushReport {
    pub budgets_written: usize,
    pub rate_limits_written: usize,
    pub rollups_written: usize,
    pub dedup_keys_written: usize,
    pub counters_read_back: usize,
    /// Journal entries this flush appended (at most one per group commit).
    pub journal_entries_appended: usize,
    /// Journal entries this tick folded into the tables (any process's).
    pub journal_entries_folded: usize,
    pub reloaded: bool,
}

impl FlushReport {
    fn add(&mut self, other: &FlushReport) {
        self.budgets_written += other.budgets_written;
        self.rate_limits_written += other.rate_limits_written;
        self.rollups_written += other.rollups_written;
        self.dedup_keys_written += other.dedup_keys_written;
        self.journal_entries_appended += other.journal_entries_appended;
    }
}

/// Which counter of a limit a journaled delta is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Dim {
    Budget,
    Tokens,
    Requests,
}

/// Entries by id, each with the deltas it holds.
type Unfolded = BTreeMap<i64, Vec<(Dim, Uuid, Delta)>>;

/// This process's side of the usage journal ([`journal`]) and of its commit marks
/// ([`marks`]): its writer id, the number of its last commit, the commit whose outcome is
/// not known yet, and its entries that no fold has taken yet with the counter deltas each
/// holds. Memory counts those deltas as written while the tables do not hold them yet, so a
/// read-back adds them to the totals it reads.
#[derive(Debug)]
pub struct Journal {
    pub writer: i64,
    /// The number of the last commit attempted (PostgreSQL).
    commits: AtomicI64,
    unresolved: std::sync::Mutex<Option<Attempt>>,
    unfolded: std::sync::Mutex<Unfolded>,
}

impl Default for Journal {
    fn default() -> Self {
        Journal {
            // Positive and never 0 (0 is nobody: a fold at startup).
            writer: (rand::random::<u64>() >> 1).max(1) as i64,
            commits: AtomicI64::new(0),
            unresolved: std::sync::Mutex::default(),
            unfolded: std::sync::Mutex::default(),
        }
    }
}

/// A commit that failed without saying whether it happened (the connection died on the way),
/// with what it carried.
struct Attempt {
    mark: Mark,
    journaled: bool,
    items: Items,
}

impl std::fmt::Debug for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempt")
            .field("mark", &self.mark)
            .field("journaled", &self.journaled)
            .finish_non_exhaustive()
    }
}

impl Journal {
    fn entries(&self) -> std::sync::MutexGuard<'_, Unfolded> {
        self.unfolded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn unresolved(&self) -> std::sync::MutexGuard<'_, Option<Attempt>> {
        self.unresolved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The identity of this process's next commit.
    fn next_mark(&self, at: Micros) -> Mark {
        Mark {
            writer: self.writer,
            seq: self.commits.fetch_add(1, Ordering::AcqRel) + 1,
            at,
        }
    }

    fn appended(&self, id: i64, items: &Items) {
        let mut deltas = Vec::with_capacity(items.budgets.len() + 2 * items.rates.len());
        for (b, item) in &items.budgets {
            deltas.push((Dim::Budget, b.id, (item.start, item.delta)));
        }
        for (r, t, q) in &items.rates {
            deltas.push((Dim::Tokens, r.id, (t.start, t.delta)));
            deltas.push((Dim::Requests, r.id, (q.start, q.delta)));
        }
        self.entries().insert(id, deltas);
    }

    fn folded(&self, ids: &[i64]) {
        let mut entries = self.entries();
        for id in ids {
            entries.remove(id);
        }
    }

    fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }

    /// Keeps the entries still `unfolded` in the database (others folded the rest) and
    /// returns their deltas, merged per counter.
    fn still_unfolded(&self, unfolded: &[i64]) -> HashMap<(Dim, Uuid), Delta> {
        let mut entries = self.entries();
        entries.retain(|id, _| unfolded.binary_search(id).is_ok());
        let mut merged: HashMap<(Dim, Uuid), Delta> = HashMap::new();
        for (dim, id, delta) in entries.values().flatten() {
            merged
                .entry((*dim, *id))
                .and_modify(|m| *m = journal::merge(*m, *delta))
                .or_insert(*delta);
        }
        merged
    }
}

/// The largest group commit (counters, rollups and keys) that goes to the journal; a larger
/// one is written to the tables directly, which is cheaper than writing it twice.
const JOURNAL_MAX_ROWS: usize = 4096;

/// Where a flush writes, on a backend with the journal (elsewhere: the tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Tables,
    /// The journal, unless the flush is larger than [`JOURNAL_MAX_ROWS`].
    Journal,
    /// The journal whatever the size: while this process's fold holds the clock row, a write
    /// to the tables would wait for it.
    JournalOnly,
}

/// Everything a flush touches.
#[derive(Debug, Clone)]
pub struct Flusher {
    pub store: Arc<Store>,
    pub db: Db,
    pub dedup: Arc<Dedup>,
    pub rollups: Arc<Rollups>,
    pub versions: Arc<Versions>,
    pub signal: Arc<FlushSignal>,
    /// Whether the last flush reached the database.
    pub db_up: Arc<AtomicBool>,
    /// Held while reloading, so that no admin write interleaves with a reload.
    pub admin_writes: Arc<tokio::sync::Mutex<()>>,
    /// Held for the whole of a flush: two at once would both write a counter's delta.
    pub flushing: Arc<tokio::sync::Mutex<()>>,
    pub journal: Arc<Journal>,
    pub metrics: Arc<crate::telemetry::Metrics>,
}

impl Flusher {
    /// One full tick: every counter's window and delta, read-back, reload, keys, rollups.
    pub async fn flush_once(&self) -> Result<FlushReport, DbError> {
        self.measured(true).await
    }

    /// A tick for durable writers: only the counters changed since the last flush.
    pub async fn flush_dirty(&self) -> Result<FlushReport, DbError> {
        self.measured(false).await
    }

    async fn measured(&self, full: bool) -> Result<FlushReport, DbError> {
        let started = std::time::Instant::now();
        let result = if full {
            self.full_tick().await
        } else {
            let _one_at_a_time = self.flushing.lock().await;
            self.write_changed(Target::Journal).await
        };
        self.db_up.store(result.is_ok(), Ordering::Release);
        match &result {
            Ok(report) => self.metrics.flushed(!full, started.elapsed(), report),
            Err(_) => self.metrics.flush_failures.increment(1),
        }
        if result.is_ok() {
            self.db.after_write().await;
        }
        result
    }

    /// Writes what changed since the last flush: the counters marked dirty, rollups and
    /// idempotency keys (to the journal, for a durable group commit); then tells durable
    /// writers what it covered. Called with `flushing` held.
    async fn write_changed(&self, target: Target) -> Result<FlushReport, DbError> {
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
        let report = self.write_items(items, target).await?;
        self.signal.durable.send_if_modified(|done| {
            let advanced = covered > *done;
            *done = (*done).max(covered);
            advanced
        });
        Ok(report)
    }

    /// One full tick: what changed; then every counter, in slices, for windows that ended
    /// without traffic and deltas a failed flush left behind; then the journal's entries
    /// folded into the tables (while durable group commits go on appending); then the
    /// read-back of other replicas' usage and a reload when the configuration changed
    /// elsewhere.
    async fn full_tick(&self) -> Result<FlushReport, DbError> {
        let mut report = {
            let _one_at_a_time = self.flushing.lock().await;
            self.write_everything().await?
        };
        let folded = self.fold().await?;
        self.journal.folded(&folded.own);
        if !folded.foreign {
            // Only deltas memory counts already: no need to read them back.
            for version in &folded.versions {
                self.versions.took(*version);
            }
        }
        report.journal_entries_folded = folded.entries;
        let _one_at_a_time = self.flushing.lock().await;
        self.read_back(&mut report).await?;
        Ok(report)
    }

    /// Folds the journal, serving durable writers meanwhile (the worker's loop, which would
    /// serve them, is running this tick): between batches, and as they come during one, to
    /// the journal only (the batch's transaction holds the clock row). During a batch, only
    /// if no other flush of this process is running: one waiting for the clock row would
    /// wait for this batch, which would wait for it.
    async fn fold(&self) -> Result<journal::Folded, DbError> {
        let mut fold = journal::Fold::start(&self.db, self.journal.writer).await?;
        loop {
            if self.signal.waiting() {
                let _one_at_a_time = self.flushing.lock().await;
                self.serve_durable_writers(Target::Journal).await?;
            }
            let more = {
                let step = fold.next(&self.db);
                tokio::pin!(step);
                loop {
                    tokio::select! {
                        more = &mut step => break more?,
                        () = self.signal.wake.notified() => {
                            if !self.signal.waiting() {
                                continue;
                            }
                            if let Ok(_one_at_a_time) = self.flushing.try_lock() {
                                self.serve_durable_writers(Target::JournalOnly).await?;
                            }
                        }
                    }
                }
            };
            if !more {
                return Ok(fold.folded);
            }
        }
    }

    /// What changed, then every counter's window and leftover delta, in slices.
    async fn write_everything(&self) -> Result<FlushReport, DbError> {
        let mut report = self.write_changed(Target::Tables).await?;
        let snapshot = self.store.snapshot();
        let budgets: Vec<&Arc<Budget>> = snapshot.budgets().collect();
        let rates: Vec<&Arc<RateLimit>> = snapshot.rate_limits().collect();
        let slices = budgets
            .chunks(SWEEP_SLICE)
            .map(|b| (b, &[][..]))
            .chain(rates.chunks(SWEEP_SLICE).map(|r| (&[][..], r)));
        // What the sweep found goes out in one write at the end (a month's calendar windows
        // all end at once), or sooner when durable writers wait: their commits go between
        // slices, after what the sweep holds so far (a counter's item must be written before
        // it is taken again).
        let mut found = Items::default();
        for (budgets, rates) in slices {
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

    /// Reads back what other replicas wrote since the last read-back, and reloads the
    /// configuration when another replica changed it. One snapshot (repeatable read) holds
    /// the totals and which of this process's journal entries are still unfolded: their
    /// deltas, which memory counts, are added to the totals read.
    async fn read_back(&self, report: &mut FlushReport) -> Result<(), DbError> {
        let snapshot = self.store.snapshot();
        let mut conn = self.db.acquire().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        if self.db.backend() == Backend::Postgres {
            sqlx::query("set transaction isolation level repeatable read")
                .execute(&mut *tx)
                .await?;
        }
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
                let mut ids = journal::unfolded(&mut tx, self.journal.writer).await?;
                ids.sort_unstable();
                self.journal.still_unfolded(&ids)
            };
            // `(usage, last_reset)` read, with this process's unfolded deltas applied.
            let total = |dim: Dim, id: Uuid, used: i64, start: Micros| -> (i64, Micros) {
                let (start, used) = match unfolded.get(&(dim, id)) {
                    Some(delta) => journal::apply((start, used), *delta),
                    None => (start, used),
                };
                (used, start)
            };
            let by_id: HashMap<Uuid, &Arc<Budget>> =
                snapshot.budgets().map(|b| (b.id, b)).collect();
            for t in &budget_totals {
                if let Some(b) = by_id.get(&t.id) {
                    let (used, start) = total(Dim::Budget, t.id, t.used, t.last_reset);
                    b.counter.absorb(&b.rule, used, start);
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
                }
            }
            report.counters_read_back = budget_totals.len() + rate_totals.len();
        }
        tx.commit().await?;
        drop(conn);
        self.versions
            .usage
            .fetch_max(usage_version, Ordering::AcqRel);
        if config_version != self.versions.config.load(Ordering::Acquire) {
            let _writes = self.admin_writes.lock().await;
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

    /// Settles the commit whose outcome a failure left unknown, before anything else is
    /// written (the caller holds `flushing`): if it happened, its deltas count as written,
    /// as after any commit; if not, all it held goes to the current side, to be written with
    /// the next flush. Until it is settled, nothing is written (no side is left), so a delta
    /// is never written twice.
    async fn resolve(&self) -> Result<(), DbError> {
        let Some(attempt) = self.journal.unresolved().take() else {
            return Ok(());
        };
        let resolved = match self.db.acquire().await {
            Ok(mut conn) => marks::resolve(&mut conn, attempt.mark).await,
            Err(e) => Err(e),
        };
        let committed = match resolved {
            Ok(committed) => committed,
            Err(e) => {
                *self.journal.unresolved() = Some(attempt);
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
                self.journal.appended(mark.seq, &items);
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
    fn requeue(&self, items: Items) {
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
    }

    /// A durable group commit in the middle of a full tick, for writers that wait (the
    /// caller holds `flushing`).
    async fn serve_durable_writers(&self, target: Target) -> Result<(), DbError> {
        let started = std::time::Instant::now();
        let changed = self.write_changed(target).await?;
        self.metrics.flushed(true, started.elapsed(), &changed);
        Ok(())
    }

    /// Writes `items` in one transaction (as one journal entry, as `target` says) and, once it
    /// committed, takes their deltas off the counters' pending usage. On failure rollups and
    /// keys go back to be written next time (counter deltas simply stay pending).
    async fn write_items(&self, items: Items, target: Target) -> Result<FlushReport, DbError> {
        let mut report = FlushReport {
            budgets_written: items.budgets.len(),
            rate_limits_written: items.rates.len(),
            rollups_written: items.rollups.len(),
            dedup_keys_written: items.keys.len(),
            ..FlushReport::default()
        };
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
        let writes = flush::FlushWrites {
            budgets: &budgets,
            rates: &rates,
            rollups: &items.rollups,
            keys: &items.keys,
        };
        let journaled = journal::used(self.db.backend())
            && match target {
                Target::Tables => false,
                Target::Journal => writes.rows() <= JOURNAL_MAX_ROWS,
                Target::JournalOnly => true,
            };
        report.journal_entries_appended = usize::from(journaled);
        let mark = marks::used(self.db.backend()).then(|| self.journal.next_mark(now_micros()));
        let written = match mark {
            Some(mark) if journaled => append(&self.db, mark, writes).await.map(|()| {
                self.journal.appended(mark.seq, &items);
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
                        *self.journal.unresolved() = Some(Attempt {
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

    /// Upkeep of idempotency keys in memory, off the async threads: generations whose window
    /// ended (or that the bound dropped) go and mostly empty tables are rebuilt. Returns the
    /// instant before which the database's keys are held by no one.
    pub async fn maintain_dedup(&self) -> Micros {
        let now = now_micros();
        let dedup = Arc::clone(&self.dedup);
        tokio::task::spawn_blocking(move || {
            dedup.maintain(now);
            dedup.purge_before(now)
        })
        .await
        .unwrap_or(now)
    }

    /// Deletes the database's idempotency keys that expire before `before`, a bounded batch
    /// per statement and at most [`PURGE_BATCHES`] batches; every [`PURGE_EVERY`] ticks, old
    /// commit marks too. How many keys went.
    pub async fn purge_dedup(&self, before: Micros, ticks: u64) -> Result<u64, DbError> {
        let mut purged = 0;
        let mut conn = self.db.acquire().await?;
        for _ in 0..PURGE_BATCHES {
            let n = flush::purge_dedup_keys(&mut conn, before).await?;
            purged += n;
            if n < flush::PURGE_BATCH as u64 {
                break;
            }
        }
        if ticks % PURGE_EVERY == 0 && marks::used(self.db.backend()) {
            marks::purge(&mut conn, now_micros() - MARKS_KEPT).await?;
        }
        Ok(purged)
    }
}

/// Most purge statements for idempotency keys per tick: 100 000 rows a second at the default
/// interval, more than a replica can insert.
const PURGE_BATCHES: usize = 10;

/// How long the commit mark of a process that stopped committing is kept: far longer than any
/// commit can take to be settled.
const MARKS_KEPT: Micros = 7 * 24 * 3600 * 1_000_000;

/// Limits visited per slice of a full tick's sweep: small enough that durable writers waiting
/// meanwhile are served within a few milliseconds.
const SWEEP_SLICE: usize = 1024;

/// What one write holds: counters with their items, rollups and idempotency keys, all taken
/// from one side.
#[derive(Default)]
struct Items {
    side: Side,
    budgets: Vec<(Arc<Budget>, FlushItem)>,
    /// Each rate limit with the items of its token and request counters.
    rates: Vec<(Arc<RateLimit>, FlushItem, FlushItem)>,
    rollups: Vec<(RollupKey, RollupSums)>,
    keys: Vec<(DedupKey, Micros)>,
}

impl Items {
    /// Rolls the windows of the given limits that ended by `now` and takes the items of those
    /// with something to write.
    fn collect<'a>(
        budgets: impl Iterator<Item = &'a Arc<Budget>>,
        rates: impl Iterator<Item = &'a Arc<RateLimit>>,
        now: Micros,
        side: Side,
    ) -> Items {
        let mut items = Items {
            side,
            ..Items::default()
        };
        for b in budgets {
            b.counter.roll(&b.rule, now);
            if let Some(item) = b.counter.flush_item(side) {
                items.budgets.push((Arc::clone(b), item));
            }
        }
        for r in rates {
            r.tokens.roll(r.token_rule(), now);
            r.requests.roll(r.request_rule(), now);
            let (t, q) = (r.tokens.flush_item(side), r.requests.flush_item(side));
            if t.is_some() || q.is_some() {
                let idle = |c: &crate::engine::counter::Counter| FlushItem {
                    start: c.raw().1,
                    delta: 0,
                    reset: false,
                };
                items.rates.push((
                    Arc::clone(r),
                    t.unwrap_or_else(|| idle(&r.tokens)),
                    q.unwrap_or_else(|| idle(&r.requests)),
                ));
            }
        }
        items
    }

    /// Takes the committed deltas off the counters' pending usage.
    fn flushed(&self) {
        for (b, item) in &self.budgets {
            b.counter.flushed(*item, self.side);
        }
        for (r, t, q) in &self.rates {
            r.tokens.flushed(*t, self.side);
            r.requests.flushed(*q, self.side);
        }
    }

    fn append(&mut self, mut other: Items) {
        if self.is_empty() {
            self.side = other.side;
        }
        debug_assert_eq!(self.side, other.side, "one write takes one side");
        self.budgets.append(&mut other.budgets);
        self.rates.append(&mut other.rates);
        self.rollups.append(&mut other.rollups);
        self.keys.append(&mut other.keys);
    }

    fn is_empty(&self) -> bool {
        self.budgets.is_empty()
            && self.rates.is_empty()
            && self.rollups.is_empty()
            && self.keys.is_empty()
    }
}

/// Writes one flush in one transaction; the usage version it took (0: none).
async fn write(
    db: &Db,
    writes: flush::FlushWrites<'_>,
    mark: Option<Mark>,
) -> Result<i64, DbError> {
    let mut conn = db.flush_connection().await?;
    let written = flush::commit_flush(conn.conn(), db.backend(), writes, mark).await;
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

/// Longest wait between retries while the database is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Purge old commit marks every this many ticks.
const PURGE_EVERY: u64 = 300;

/// Ticks until `cancel` fires, then runs a final flush (retried a few times).
pub async fn run(flusher: Flusher, interval: Duration, cancel: CancellationToken) {
    let mut backoff = interval;
    let mut ticks: u64 = 0;
    // Full ticks keep their schedule however often durable writers wake the worker between.
    let mut next_full = tokio::time::Instant::now() + backoff;
    // After a failed flush, durable writers that still wait are served again one interval
    // later, not after the full tick's backoff: they have woken the worker already.
    let mut durable_retry: Option<tokio::time::Instant> = None;
    loop {
        let full = tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep_until(next_full) => true,
            () = flusher.signal.wake.notified() => false,
            () = tokio::time::sleep_until(durable_retry.unwrap_or(next_full)),
                if durable_retry.is_some() => false,
        };
        durable_retry = None;
        ticks += u64::from(full);
        let held_after = if full {
            Some(flusher.maintain_dedup().await)
        } else {
            None
        };
        let flushed = if full {
            flusher.flush_once().await
        } else {
            flusher.flush_dirty().await
        };
        match flushed {
            Ok(report) => {
                if backoff != interval {
                    tracing::info!("database reachable again; flushing resumed");
                }
                backoff = interval;
                if full {
                    next_full = tokio::time::Instant::now() + backoff;
                }
                tracing::trace!(?report, "flushed");
                if let Some(before) = held_after {
                    if let Err(e) = flusher.purge_dedup(before, ticks).await {
                        tracing::warn!(error = %e, "purging expired idempotency keys failed");
                    }
                }
            }
            Err(e) => {
                backoff = (backoff * 2).min(MAX_BACKOFF).max(interval);
                next_full = tokio::time::Instant::now() + backoff;
                if flusher.signal.waiting() {
                    durable_retry = Some(tokio::time::Instant::now() + interval);
                }
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "flush failed; usage kept in memory");
            }
        }
    }
    for attempt in 1..=5 {
        match flusher.flush_once().await {
            Ok(_) => {
                tracing::info!("final flush done");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, attempt, "final flush failed");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_durable_writer_waits_for_the_covering_flush() {
        let signal = Arc::new(FlushSignal::default());
        let worker = Arc::clone(&signal);
        tokio::spawn(async move {
            worker.wake.notified().await;
            // A flush that takes a while, then covers everything applied before it began.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let covered = worker.seq.load(Ordering::SeqCst);
            worker.durable.send_replace(covered);
        });
        let started = tokio::time::Instant::now();
        assert!(signal.durable(Duration::from_secs(10)).await);
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_durable_writer_gives_up_when_nothing_commits() {
        let signal = FlushSignal::default();
        let started = tokio::time::Instant::now();
        assert!(!signal.durable(Duration::from_secs(10)).await);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

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
