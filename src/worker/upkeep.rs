//! Upkeep of idempotency keys: generations in memory that ended, and rows in the database that
//! expired (with old commit marks).

use std::sync::Arc;

use super::Worker;
use crate::db::dedup;
use crate::db::postgres::marks;
use crate::db::DbError;
use crate::domain::time::now_micros;
use crate::domain::Micros;

impl Worker {
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
    /// per statement and at most [`PURGE_BATCHES`] batches; every [`PURGE_EVERY`] ticks, long
    /// expired holds and old commit marks too. How many keys went.
    pub async fn purge_dedup(&self, before: Micros, ticks: u64) -> Result<u64, DbError> {
        let mut purged = 0;
        let mut conn = self.db.acquire().await?;
        for _ in 0..PURGE_BATCHES {
            let n = dedup::purge_dedup_keys(&mut conn, before).await?;
            purged += n;
            if n < dedup::PURGE_BATCH as u64 {
                break;
            }
        }
        if ticks % PURGE_EVERY == 0 {
            // Holds and notes an hour past their TTL: their writers are gone or long done.
            crate::db::holds::purge(&mut conn, now_micros() - HOLDS_KEPT).await?;
            if self.db.journals() {
                marks::purge(&mut conn, now_micros() - MARKS_KEPT).await?;
            }
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

/// How long after its TTL a hold's row (or note) is kept for processes that have not expired
/// it themselves.
const HOLDS_KEPT: Micros = 3600 * 1_000_000;

/// Purge long expired holds and old commit marks every this many ticks.
pub(super) const PURGE_EVERY: u64 = 300;
