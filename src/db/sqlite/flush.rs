//! What a flush sends to SQLite. A small flush (a durable group commit, which writers wait
//! for) is one string of statements, transaction included: one hand-over to the connection
//! thread where a transaction of separate statements takes four, each a wake-up of another
//! thread, which on a busy machine waits for a core. A large one (or one that binds a block
//! of keys) is a transaction of statements sent one by one: as one string, SQLite would hold
//! the whole text at once. SQLite takes no commit marks: it runs in the process, and always
//! reports whether a commit happened.

use std::fmt::Write as _;

use sqlx::Row;

use crate::db::dedup::key_block;
use crate::db::flush::{
    run_statements, Cell, Dialect, FlushWrites, Statement, CURRENT_USAGE_VERSION,
};
use crate::db::{Conn, DbError};
use crate::domain::Micros;
use crate::engine::dedup::DedupKey;

/// The largest flush (bytes of SQL) sent as one string.
const ONE_ROUND_TRIP_MAX: usize = 256 * 1024;

/// The most keys a SQLite flush writes as a literal (32 characters each).
const INLINE_KEYS: usize = 256;

/// SQLite's way of writing a flush's rows.
pub struct Sqlite;

impl Dialect for Sqlite {
    const CHUNK: usize = crate::db::flush::CHUNK;

    /// A `values` list, written straight into the statement.
    fn rows_table<const N: usize>(
        names: [&str; N],
        rows: &[[Cell; N]],
        _params: &mut Vec<String>,
    ) -> String {
        if rows.is_empty() {
            return String::new();
        }
        let mut sql = String::with_capacity(rows.len() * N * 16 + 64);
        sql.push_str("(select ");
        for (i, name) in names.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            let _ = write!(sql, "column{} as {name}", i + 1);
        }
        sql.push_str(" from (values ");
        for (i, row) in rows.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
            for (column, cell) in row.iter().enumerate() {
                if column > 0 {
                    sql.push_str(", ");
                }
                cell.write(&mut sql, true);
            }
            sql.push(')');
        }
        sql.push_str(") as t) as v");
        sql
    }

    /// A string of SQLite statements carries no parameters: a small block (a durable group
    /// commit's) goes as a literal; a larger one as a parameter, which takes the
    /// statement-by-statement path.
    fn dedup_block(keys: &[(DedupKey, Micros)], out: &mut Vec<Statement>) {
        if keys.is_empty() {
            return;
        }
        if keys.len() > INLINE_KEYS {
            return crate::db::flush::dedup_block_param(keys, out);
        }
        let (expires, bytes) = key_block(keys);
        let mut sql = String::with_capacity(bytes.len() * 2 + 80);
        let _ = write!(
            sql,
            "insert into dedup_blocks (expires_at, keys) values ({expires}, X'"
        );
        for b in &bytes {
            let _ = write!(sql, "{b:02x}");
        }
        sql.push_str("')");
        out.push(Statement {
            sql,
            ..Statement::default()
        });
    }
}

/// Commits one flush; the usage version it took (0: none).
pub async fn commit(c: &mut Conn, writes: FlushWrites<'_>) -> Result<i64, DbError> {
    let statements = writes.statements::<Sqlite>(CURRENT_USAGE_VERSION);
    let size: usize = statements.iter().map(|s| s.sql.len()).sum();
    let binds = statements.iter().any(|s| s.blob.is_some());
    if binds || size > ONE_ROUND_TRIP_MAX {
        let mut tx = sqlx::Connection::begin(&mut *c).await?;
        let version = run_statements(&mut tx, writes.takes_version(), statements).await?;
        tx.commit().await?;
        return Ok(version);
    }
    // `begin immediate` takes the write lock at once rather than on the first write.
    let mut sql = String::with_capacity(size + 2 * statements.len() + 200);
    sql.push_str("begin immediate;\n");
    if writes.takes_version() {
        // The row lock is held until the commit, so versions become visible in order.
        sql.push_str(
            "update heimdall_clock set usage_version = usage_version + 1 where id = 1 \
             returning usage_version;\n",
        );
    }
    for statement in &statements {
        sql.push_str(&statement.sql);
        sql.push_str(";\n");
    }
    sql.push_str("commit");
    // A string without arguments runs every statement of it; the only row any of them
    // returns is the version.
    match sqlx::Executor::fetch_all(&mut *c, sql.as_str()).await {
        Ok(rows) => match rows.first() {
            Some(row) => Ok(row.try_get(0)?),
            None => Ok(0),
        },
        Err(e) => {
            // The statements after the failing one did not run, the commit included: end the
            // transaction so that the connection goes back to the pool clean. (Fails harmlessly
            // when the begin itself failed.)
            let _ = sqlx::Executor::execute(&mut *c, "rollback").await;
            Err(e.into())
        }
    }
}
