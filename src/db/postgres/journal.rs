//! The usage journal (PostgreSQL): a durable group commit appends one row holding everything
//! it covers (counter deltas, rollups, idempotency keys), and full ticks fold the rows into
//! the tables.
//!
//! A group commit that updated every counter, rollup and key it covered cost the database a
//! few hundred row updates, serialised on the clock row; one appended row costs one insert
//! and the log flush. Folding can be deferred and batched because a counter delta commutes:
//! applying `(start, delta)` to a row keeps the later of the two windows and adds the deltas
//! of that window (see `engine::delta`), so deltas from any number of commits and replicas fold in
//! any order to the same totals, and merge into one update per counter. Whichever process
//! folds an entry deletes it in the transaction that writes it, so each entry is folded
//! exactly once, whether by its writer, another replica, or a process starting up after a
//! crash.
//!
//! SQLite does without: its one writer would be the fold's while it runs, so durable commits
//! would wait for folds, and folding does the same row writes later.

use sqlx::Row;

use super::entry::{corrupt, Entry, Merged, FORMAT};
use super::flush::Prepared;
use super::marks::{Mark, UPSERT_TAIL};
use crate::db::flush::FlushWrites;
use crate::db::{Conn, Db, DbError};

/// The entry and the mark in one statement, which is its own transaction.
static APPEND: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "with m as (insert into commit_marks (writer, seq, fenced, moved_at, fresh) \
             values ($1, $2, false, $3, true) {UPSERT_TAIL}) \
         insert into usage_journal (writer, seq, entry) values ($1, $2, $4)"
    )
});

/// Appends one group commit as the entry of `mark`'s writer and number, raising the writer's
/// commit mark in the same statement (see [`super::marks`]).
pub async fn append(c: &mut Conn, mark: Mark, writes: &FlushWrites<'_>) -> Result<(), DbError> {
    let entry = serde_json::to_string(&Entry::of(writes))
        .map_err(|e| corrupt(format!("an entry cannot be encoded: {e}")))?;
    // `execute` reads the results to the end: only the end tells that the statement
    // committed.
    sqlx::query(APPEND.as_str())
        .bind(mark.writer)
        .bind(mark.seq)
        .bind(mark.at)
        .bind(entry)
        .execute(c)
        .await?;
    Ok(())
}

/// The commit numbers of `writer`'s entries that no fold has taken yet.
pub async fn unfolded(c: &mut Conn, writer: i64) -> Result<Vec<i64>, DbError> {
    let rows = sqlx::query("select seq from usage_journal where writer = $1")
        .bind(writer)
        .fetch_all(c)
        .await?;
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

/// What a fold did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Folded {
    /// Entries folded, whoever wrote them.
    pub entries: usize,
    /// The commit numbers of the folded entries that `writer` wrote.
    pub own: Vec<i64>,
    /// Whether any folded entry was another process's.
    pub foreign: bool,
    /// The usage versions the fold's transactions took.
    pub versions: Vec<i64>,
}

/// Entries per fold transaction: large enough to merge many deltas per row, small enough
/// that a worker serving durable writers between batches is not held up long.
const BATCH: i64 = 256;

/// Folds every entry committed before the call into the counters, rollups and keys, waiting
/// for the folds of other processes that hold some of them: when it returns, every such entry
/// is in the tables (a starting process then loads them, keys included: a key that only an
/// entry held would not recognise a retry).
pub async fn fold_all(db: &Db) -> Result<Folded, DbError> {
    let mut fold = Fold::start(db, 0).await?;
    fold.wait = true;
    while fold.next(db).await? {}
    Ok(fold.folded)
}

/// A fold in steps: each [`Fold::next`] folds up to [`BATCH`] entries in one transaction that
/// deletes what it writes, so that the caller can serve others between steps. Entries
/// committed after [`Fold::start`] wait for the next fold; entries another process is folding
/// at the same moment are skipped (`skip locked`), since it folds them. Reads only, when the
/// journal is empty; nothing at all where there is no journal (SQLite).
#[derive(Debug)]
pub struct Fold {
    writer: i64,
    /// Wait for entries another process is folding, rather than skip them.
    wait: bool,
    /// The last entry to fold (none: nothing to do).
    last: Option<i64>,
    pub folded: Folded,
}

impl Fold {
    pub async fn start(db: &Db, writer: i64) -> Result<Fold, DbError> {
        let mut last = None;
        if db.journals() {
            let mut c = db.acquire().await?;
            last = sqlx::query("select max(id) from usage_journal")
                .fetch_one(&mut *c)
                .await?
                .try_get(0)?;
        }
        Ok(Fold {
            writer,
            wait: false,
            last,
            folded: Folded::default(),
        })
    }

    /// Folds the next batch; false once nothing is left.
    pub async fn next(&mut self, db: &Db) -> Result<bool, DbError> {
        let Some(last) = self.last else {
            return Ok(false);
        };
        let mut tx = db.begin().await?;
        let lock = if self.wait {
            "for update"
        } else {
            "for update skip locked"
        };
        let sql = format!(
            "delete from usage_journal where id in (select id from usage_journal \
             where id <= $1 order by id limit $2 {lock}) returning id, writer, seq, entry"
        );
        let rows = sqlx::query(&sql)
            .bind(last)
            .bind(BATCH)
            .fetch_all(&mut *tx)
            .await?;
        let mut own = Vec::new();
        let mut foreign = false;
        let mut taken = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = row.try_get(0)?;
            let from: i64 = row.try_get(1)?;
            let seq: i64 = row.try_get(2)?;
            let text: String = row.try_get(3)?;
            if from == self.writer {
                own.push(seq);
            } else {
                foreign = true;
            }
            taken.push((id, text));
        }
        drop(rows);
        let count = taken.len();
        if count == 0 {
            tx.rollback().await?;
            // Waiting, a batch comes back short when another process folded what it waited
            // for: done only once no entry up to `last` is left, committed or being folded.
            if self.wait && remaining(db, last).await? {
                return Ok(true);
            }
            self.last = None;
            return Ok(false);
        }
        // Decoding and merging megabytes of entries is CPU work of tens of milliseconds: off
        // the async runtime, whose threads answer requests meanwhile.
        let prepared = tokio::task::spawn_blocking(move || prepare(taken))
            .await
            .map_err(|e| corrupt(format!("decoding entries failed: {e}")))??;
        let version = prepared.run(&mut tx).await?;
        tx.commit().await?;
        self.folded.entries += count;
        self.folded.own.append(&mut own);
        self.folded.foreign |= foreign;
        if version > 0 {
            self.folded.versions.push(version);
        }
        if (count as i64) < BATCH && !self.wait {
            self.last = None;
        }
        Ok(self.last.is_some())
    }
}

/// Whether entries up to `last` are still in the journal (some perhaps being folded by
/// another process, whose delete is not committed yet).
async fn remaining(db: &Db, last: i64) -> Result<bool, DbError> {
    let mut c = db.acquire().await?;
    let left: Vec<i64> = sqlx::query_scalar("select id from usage_journal where id <= $1 limit 1")
        .bind(last)
        .fetch_all(&mut *c)
        .await?;
    Ok(!left.is_empty())
}

/// The statements that fold `entries` (id, text).
fn prepare(entries: Vec<(i64, String)>) -> Result<Prepared, DbError> {
    let mut merged = Merged::default();
    for (id, text) in entries {
        let entry: Entry = serde_json::from_str(&text)
            .map_err(|e| corrupt(format!("entry {id} cannot be read: {e}")))?;
        if entry.v != FORMAT {
            return Err(corrupt(format!(
                "entry {id} has format {}, this build reads {FORMAT}",
                entry.v
            )));
        }
        merged.add(entry)?;
    }
    let writes = merged.writes();
    Ok(Prepared::new(writes.as_flush()))
}
