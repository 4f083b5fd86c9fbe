//! The background worker (`docs/durability.md`): every `flush_interval` it rolls expired
//! windows, writes resets and usage deltas to the database, reads back what other replicas
//! wrote, reloads the configuration when another replica changed it, and persists idempotency
//! keys and hourly rollups. Between ticks it serves durable writers with group commits.
//!
//! - [`commit`]: what one write takes from memory and how it commits (tables or journal), and
//!   settling a commit whose outcome is unknown.
//! - [`journal`]: this process's side of the usage journal, and folding it into the tables.
//! - [`versions`]: the shared clock, the read-back and the reload.
//! - [`signal`]: the group commit that durable writers wait for.
//! - [`upkeep`]: idempotency keys in memory and in the database.

mod commit;
mod items;
mod journal;
mod signal;
mod upkeep;
mod versions;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::alerts::Alerts;
use crate::db::postgres::journal as db_journal;
use crate::db::{Db, DbError};
use crate::domain::time::now_micros;
use crate::engine::dedup::Dedup;
use crate::engine::dirty::Dirty;
use crate::engine::holds::Holds;
use crate::engine::rollup::Rollups;
use crate::engine::watch::Watch;
use crate::engine::Store;
use crate::telemetry::{FlushRows, HoldEvent, Metrics};
use commit::Target;
use journal::Journal;
use signal::FlushSignal;
pub(crate) use versions::counter_of;
use versions::Versions;

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

impl FlushReport {
    /// The rows one write sent, for the metrics.
    fn rows(&self) -> FlushRows {
        FlushRows {
            budgets: self.budgets_written,
            rate_limits: self.rate_limits_written,
            rollups: self.rollups_written,
            dedup_keys: self.dedup_keys_written,
            journal_appended: self.journal_entries_appended,
            journal_folded: self.journal_entries_folded,
        }
    }
}

/// The worker's handle: everything a flush touches, shared with the handlers that need a part
/// of it (durable writers wait on its signal, admin writes take its configuration lock,
/// `/readyz` asks whether the database answered). Cloning it clones references.
#[derive(Debug, Clone)]
pub struct Worker {
    store: Arc<Store>,
    db: Db,
    dedup: Arc<Dedup>,
    rollups: Arc<Rollups>,
    versions: Arc<Versions>,
    signal: Arc<FlushSignal>,
    /// Whether the last flush reached the database.
    db_up: Arc<AtomicBool>,
    /// Held by admin writes and while reloading, so that the database and memory see
    /// configuration changes in one order. A tokio mutex: admin writes hold it across their
    /// transaction.
    config_lock: Arc<tokio::sync::Mutex<()>>,
    /// Held for the whole of a flush: two at once would both write a counter's delta.
    flushing: Arc<tokio::sync::Mutex<()>>,
    journal: Arc<Journal>,
    holds: Arc<Holds>,
    /// The commit whose outcome a failure left unknown, with what it carried.
    unresolved: Arc<std::sync::Mutex<Option<commit::Attempt>>>,
    metrics: Arc<Metrics>,
    /// Feeds every counter's trend and finds threshold crossings, once per full tick.
    watch: Arc<std::sync::Mutex<Watch>>,
    /// Where crossings go, when webhooks are configured.
    alerts: Option<Alerts>,
    /// Limits whose counters were written, rolled or read back since the last watch: the only
    /// ones whose usage can have changed.
    touched: Arc<std::sync::Mutex<Vec<Dirty>>>,
}

impl Worker {
    /// A worker for this state, which was loaded at the clock's `(config, usage)` versions.
    pub fn new(
        store: Arc<Store>,
        db: Db,
        dedup: Arc<Dedup>,
        rollups: Arc<Rollups>,
        holds: Arc<Holds>,
        metrics: Arc<Metrics>,
        loaded_at: (i64, i64),
    ) -> Worker {
        let versions = Versions::default();
        versions.start_at(loaded_at.0, loaded_at.1);
        Worker {
            store,
            db,
            dedup,
            rollups,
            versions: Arc::new(versions),
            signal: Arc::new(FlushSignal::default()),
            db_up: Arc::new(AtomicBool::new(true)),
            config_lock: Arc::new(tokio::sync::Mutex::new(())),
            flushing: Arc::new(tokio::sync::Mutex::new(())),
            journal: Arc::new(Journal::new(holds.writer())),
            holds,
            unresolved: Arc::default(),
            metrics,
            watch: Arc::default(),
            alerts: None,
            touched: Arc::default(),
        }
    }

    /// This worker, offering the crossings of the webhooks' thresholds to `alerts`.
    pub fn with_alerts(mut self, alerts: Alerts) -> Worker {
        self.watch = Arc::new(std::sync::Mutex::new(Watch::new(alerts.thresholds())));
        self.alerts = Some(alerts);
        self
    }

    /// Notes limits whose usage may have changed, for the next watch.
    fn touch(&self, limits: impl IntoIterator<Item = Dirty>) {
        self.touched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(limits);
    }

    /// Feeds the trends of the limits touched since the last watch and offers the crossings,
    /// at `now`.
    fn watch(&self, now: crate::domain::Micros) {
        let touched = std::mem::take(&mut *self.touched.lock().unwrap_or_else(|p| p.into_inner()));
        if touched.is_empty() {
            return;
        }
        let snapshot = self.store.snapshot();
        let mut watch = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        watch.tick(&snapshot, &touched, now, |crossing| {
            self.alerts.as_ref().is_some_and(|a| a.offer(crossing))
        });
    }

    /// Waits until everything applied before this call is committed; false on timeout.
    pub async fn durable(&self, timeout: Duration) -> bool {
        self.signal.durable(timeout).await
    }

    /// Whether the last flush reached the database.
    pub fn db_up(&self) -> bool {
        self.db_up.load(Ordering::Acquire)
    }

    /// The lock of configuration changes (admin writes and reloads).
    pub async fn lock_config(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.config_lock.lock().await
    }

    /// An admin change of this process committed as configuration `version`.
    pub fn config_committed(&self, version: i64) {
        self.versions.config_committed(version);
    }

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
            let result = self.full_tick().await;
            // Whether or not the database answered: usage in memory changed all the same.
            self.watch(now_micros());
            result
        } else {
            let _one_at_a_time = self.flushing.lock().await;
            self.write_changed(Target::Journal).await
        };
        self.db_up.store(result.is_ok(), Ordering::Release);
        match &result {
            Ok(report) => self
                .metrics
                .flushed(!full, started.elapsed(), report.rows()),
            Err(_) => self.metrics.flush_failures.increment(1),
        }
        if result.is_ok() {
            self.db.after_write().await;
        }
        result
    }

    /// One full tick: what changed; then every counter, in slices, for windows that ended
    /// without traffic and deltas a failed flush left behind; then the journal's entries
    /// folded into the tables (while durable group commits go on appending); then the
    /// read-back of other replicas' usage and a reload when the configuration changed
    /// elsewhere.
    async fn full_tick(&self) -> Result<FlushReport, DbError> {
        for _ in self.holds.expire(now_micros()) {
            self.metrics.hold_event(HoldEvent::Expired);
        }
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
    async fn fold(&self) -> Result<db_journal::Folded, DbError> {
        let mut fold = db_journal::Fold::start(&self.db, self.journal.writer).await?;
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
}

/// Longest wait between retries while the database is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Ticks until `cancel` fires, then runs a final flush (retried a few times).
pub async fn run(flusher: Worker, interval: Duration, cancel: CancellationToken) {
    let mut backoff = interval;
    let mut ticks: u64 = 0;
    // Full ticks keep their schedule however often durable writers wake the worker between.
    // The first runs at once: it writes the resets of windows that ended while the service
    // was down.
    let mut next_full = tokio::time::Instant::now();
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
