//! Commit marks (PostgreSQL): each group commit of a process carries a number, so that a
//! commit whose outcome is unknown can be told apart as committed or not, and a retry never
//! writes the same deltas twice. See `docs/durability.md` and the migration that creates
//! `commit_marks`.
//!
//! SQLite needs none: it runs inside the process, and a commit's result is always known.

use sqlx::Row;

use crate::db::{Conn, DbError};
use crate::domain::Micros;

/// One group commit's identity: the process (its journal writer id) and the commit's number,
/// which grows by one with every attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub writer: i64,
    pub seq: i64,
    /// When the commit was attempted (kept with the mark, for purging marks of dead writers).
    pub at: Micros,
}

impl Mark {
    /// The statement that raises the mark to this commit's number, failing the transaction
    /// (`commit_marks_once`) when the mark is there already: the commit was fenced off, or
    /// has happened before. Numbers only, so nothing needs escaping.
    pub fn upsert_sql(&self) -> String {
        format!(
            "insert into commit_marks (writer, seq, fenced, moved_at, fresh) \
             values ({}, {}, false, {}, true) {UPSERT_TAIL}",
            self.writer, self.seq, self.at
        )
    }
}

/// How a commit moves a mark that exists: up, or the transaction fails.
pub const UPSERT_TAIL: &str = "on conflict (writer) do update set seq = excluded.seq, \
    fenced = false, moved_at = excluded.moved_at, fresh = commit_marks.seq < excluded.seq";

/// Whether the commit `mark` names happened. Raises the mark to its number as a fence unless
/// it is there already, waiting for the commit if it still runs on the server (it holds the
/// mark's row, or its key): afterwards that commit can no longer happen, so the answer is
/// final. Asking again after a failed call gives the same answer, since a fence is recorded
/// as one.
pub async fn resolve(c: &mut Conn, mark: Mark) -> Result<bool, DbError> {
    let mut tx = sqlx::Connection::begin(&mut *c).await?;
    // A commit stuck behind another replica's locks is waited for, within reason; the flush
    // fails and is tried again later otherwise.
    sqlx::query("set local lock_timeout = '10s'")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "insert into commit_marks (writer, seq, fenced, moved_at, fresh) \
         values ($1, $2, true, $3, true) \
         on conflict (writer) do update set seq = excluded.seq, fenced = true, \
         moved_at = excluded.moved_at where commit_marks.seq < excluded.seq",
    )
    .bind(mark.writer)
    .bind(mark.seq)
    .bind(mark.at)
    .execute(&mut *tx)
    .await?;
    // A statement of its own, so that it sees what a commit that was waited for wrote.
    let row = sqlx::query("select seq, fenced from commit_marks where writer = $1")
        .bind(mark.writer)
        .fetch_all(&mut *tx)
        .await?;
    let row = row.first().ok_or_else(|| DbError::Corrupt {
        table: "commit_marks",
        message: format!("writer {}'s mark is missing after it was set", mark.writer),
    })?;
    let (seq, fenced): (i64, bool) = (row.try_get(0)?, row.try_get(1)?);
    tx.commit().await?;
    if seq != mark.seq {
        return Err(DbError::Corrupt {
            table: "commit_marks",
            message: format!(
                "writer {}'s mark is at {seq} while commit {} is unresolved",
                mark.writer, mark.seq
            ),
        });
    }
    Ok(!fenced)
}

/// Marks not moved since `before`: processes that are gone.
pub async fn purge(c: &mut Conn, before: Micros) -> Result<u64, DbError> {
    let done = sqlx::query("delete from commit_marks where moved_at < $1")
        .bind(before)
        .execute(c)
        .await?;
    Ok(done.rows_affected())
}

/// The `application_name` Heimdall's PostgreSQL sessions carry unless the database URL names
/// one: how a starting process finds the transactions of other Heimdall processes.
pub const APPLICATION_NAME: &str = "heimdall";

/// Waits until every transaction that Heimdall sessions on this database have running now has
/// ended (at most `limit`; false if some still run then).
///
/// A process killed in the middle of a commit can leave it running on the server: the server
/// finishes a statement it has received before it notices that the client is gone. A process
/// starting in its place must not load the idempotency keys and the journal before such a
/// commit has ended, or a gateway's retry of an update that commit holds would be taken as
/// new and counted a second time. The transactions of live replicas that are waited for
/// meanwhile are a flush or a fold, over within a second.
pub async fn await_transactions_in_flight(
    c: &mut Conn,
    limit: std::time::Duration,
) -> Result<bool, DbError> {
    let now: Vec<i64> =
        sqlx::query_scalar("select (extract(epoch from clock_timestamp()) * 1000000)::bigint")
            .fetch_all(&mut *c)
            .await?;
    let now = now.first().copied().unwrap_or(0);
    let started = tokio::time::Instant::now();
    loop {
        let running: Vec<i64> = sqlx::query_scalar(
            "select count(*) from pg_stat_activity \
             where datname = current_database() and usename = current_user \
             and application_name = current_setting('application_name') \
             and pid <> pg_backend_pid() and state is distinct from 'idle' \
             and (extract(epoch from xact_start) * 1000000)::bigint < $1",
        )
        .bind(now)
        .fetch_all(&mut *c)
        .await?;
        if running.first().copied().unwrap_or(0) == 0 {
            return Ok(true);
        }
        if started.elapsed() >= limit {
            return Ok(false);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
