//! The worker's queries: window resets and usage deltas written as one batched statement per
//! table, guarded by the window start; the read-back of what changed; the version clock;
//! idempotency keys; hourly rollups.

use std::fmt::Write as _;

use sqlx::Row;
use uuid::Uuid;

use super::rows::{parse_uuid, uuid_text};
use super::{Backend, Conn, DbError};
use crate::domain::Micros;
use crate::engine::counter::FlushItem;
use crate::engine::dedup::DedupKey;
use crate::engine::rollup::{RollupKey, RollupSums};

/// Rows per statement: large enough that a flush is a handful of round trips, small enough to
/// keep statements and bind lists within both backends' limits.
const CHUNK: usize = 5_000;

/// The largest flush (bytes of SQL) sent as one string.
const ONE_ROUND_TRIP_MAX: usize = 256 * 1024;

/// PostgreSQL takes a whole flush in one statement per table (arrays cost nothing to plan).
fn chunk_size(backend: Backend) -> usize {
    match backend {
        Backend::Postgres => 200_000,
        Backend::Sqlite => CHUNK,
    }
}

/// A budget's pending change.
#[derive(Debug, Clone, Copy)]
pub struct BudgetDelta {
    pub id: Uuid,
    pub item: FlushItem,
}

/// A rate limit's pending change: each dimension's window start and delta.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitDelta {
    pub id: Uuid,
    pub tokens: FlushItem,
    pub requests: FlushItem,
}

/// What the database has for a counter now.
#[derive(Debug, Clone, Copy)]
pub struct BudgetTotal {
    pub id: Uuid,
    pub used: i64,
    pub last_reset: Micros,
}

#[derive(Debug, Clone, Copy)]
pub struct RateLimitTotal {
    pub id: Uuid,
    pub tokens: (i64, Micros),
    pub requests: (i64, Micros),
}

/// Takes the next usage version (the row lock is held until the transaction ends, so
/// versions become visible in the order they were taken).
pub async fn next_usage_version(c: &mut Conn) -> Result<i64, DbError> {
    let row = sqlx::query(
        "update heimdall_clock set usage_version = usage_version + 1 where id = 1 \
         returning usage_version",
    )
    .fetch_one(c)
    .await?;
    Ok(row.try_get(0)?)
}

/// Takes the next config version: every admin write does, so other replicas reload.
pub async fn next_config_version(c: &mut Conn) -> Result<i64, DbError> {
    let row = sqlx::query(
        "update heimdall_clock set config_version = config_version + 1 where id = 1 \
         returning config_version",
    )
    .fetch_one(c)
    .await?;
    Ok(row.try_get(0)?)
}

/// `(config_version, usage_version)`.
pub async fn clock(c: &mut Conn) -> Result<(i64, i64), DbError> {
    let row = sqlx::query("select config_version, usage_version from heimdall_clock where id = 1")
        .fetch_one(c)
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// A value of a flush row: one of our ids (a UUID) or an integer. Nothing else is inlined, so
/// literals need no escaping.
#[derive(Debug, Clone, Copy)]
enum Cell {
    Id(Uuid),
    Int(i64),
}

impl Cell {
    fn write(self, sql: &mut String, quoted: bool) {
        match self {
            Cell::Id(id) => {
                let mut buf = Uuid::encode_buffer();
                let text = id.hyphenated().encode_lower(&mut buf);
                if quoted {
                    sql.push('\'');
                    sql.push_str(text);
                    sql.push('\'');
                } else {
                    sql.push_str(text);
                }
            }
            Cell::Int(v) => {
                let _ = write!(sql, "{v}");
            }
        }
    }

    fn sql_type(self) -> &'static str {
        match self {
            Cell::Id(_) => "text",
            Cell::Int(_) => "bigint",
        }
    }
}

/// The rows of a flush as a table `v` with the given column names, written straight into one
/// string (a 100 000-row flush is megabytes of SQL). PostgreSQL gets `unnest` over one array
/// literal per column: a constant each, planned in microseconds whatever the row count;
/// SQLite gets a `values` list.
fn rows_table<const N: usize>(backend: Backend, names: [&str; N], rows: &[[Cell; N]]) -> String {
    let Some(first) = rows.first() else {
        return String::new();
    };
    let mut sql = String::with_capacity(rows.len() * N * 16 + 64);
    match backend {
        Backend::Postgres => {
            sql.push_str("unnest(");
            for column in 0..N {
                if column > 0 {
                    sql.push_str(", ");
                }
                sql.push_str("'{");
                for (i, row) in rows.iter().enumerate() {
                    if i > 0 {
                        sql.push(',');
                    }
                    row[column].write(&mut sql, false);
                }
                let _ = write!(sql, "}}'::{}[]", first[column].sql_type());
            }
            let _ = write!(sql, ") as v({})", names.join(", "));
        }
        Backend::Sqlite => {
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
        }
    }
    sql
}

/// Window resets and deltas of budgets. A row whose window is older than ours is reset to
/// ours and gets the delta; one in our window adds it; one in a newer window (another replica
/// moved on) keeps its value: our delta belongs to an ended window and is dropped.
fn budget_deltas_sql(
    backend: Backend,
    version: &str,
    deltas: &[BudgetDelta],
    out: &mut Vec<String>,
) {
    for chunk in deltas.chunks(chunk_size(backend)) {
        let rows: Vec<[Cell; 3]> = chunk
            .iter()
            .map(|d| {
                [
                    Cell::Id(d.id),
                    Cell::Int(d.item.start),
                    Cell::Int(d.item.delta),
                ]
            })
            .collect();
        let table = rows_table(backend, ["id", "start", "delta"], &rows);
        let sql = format!(
            "update budgets set \
             current_usage = case when budgets.last_reset < v.start then v.delta \
                 when budgets.last_reset = v.start then budgets.current_usage + v.delta \
                 else budgets.current_usage end, \
             last_reset = case when budgets.last_reset < v.start then v.start \
                 else budgets.last_reset end, \
             usage_version = {version} \
             from {table} where budgets.id = v.id"
        );
        out.push(sql);
    }
}

/// The same for both dimensions of rate limits.
fn rate_limit_deltas_sql(
    backend: Backend,
    version: &str,
    deltas: &[RateLimitDelta],
    out: &mut Vec<String>,
) {
    for chunk in deltas.chunks(chunk_size(backend)) {
        let rows: Vec<[Cell; 5]> = chunk
            .iter()
            .map(|d| {
                [
                    Cell::Id(d.id),
                    Cell::Int(d.tokens.start),
                    Cell::Int(d.tokens.delta),
                    Cell::Int(d.requests.start),
                    Cell::Int(d.requests.delta),
                ]
            })
            .collect();
        let table = rows_table(backend, ["id", "ts", "td", "rs", "rd"], &rows);
        let dimension = |p: &str, s: &str, d: &str| {
            format!(
                "{p}_current_usage = case when rate_limits.{p}_last_reset < v.{s} then v.{d} \
                     when rate_limits.{p}_last_reset = v.{s} then rate_limits.{p}_current_usage + v.{d} \
                     else rate_limits.{p}_current_usage end, \
                 {p}_last_reset = case when rate_limits.{p}_last_reset < v.{s} then v.{s} \
                     else rate_limits.{p}_last_reset end"
            )
        };
        let sql = format!(
            "update rate_limits set {}, {}, usage_version = {version} from {table} \
             where rate_limits.id = v.id",
            dimension("token", "ts", "td"),
            dimension("request", "rs", "rd"),
        );
        out.push(sql);
    }
}

/// Budgets whose usage changed after version `since`.
pub async fn budgets_since(c: &mut Conn, since: i64) -> Result<Vec<BudgetTotal>, DbError> {
    let rows =
        sqlx::query("select id, current_usage, last_reset from budgets where usage_version > $1")
            .bind(since)
            .fetch_all(c)
            .await?;
    rows.iter()
        .map(|r| {
            Ok(BudgetTotal {
                id: parse_uuid("budgets", &r.try_get::<String, _>(0)?)?,
                used: r.try_get(1)?,
                last_reset: r.try_get(2)?,
            })
        })
        .collect()
}

/// Rate limits whose usage changed after version `since`.
pub async fn rate_limits_since(c: &mut Conn, since: i64) -> Result<Vec<RateLimitTotal>, DbError> {
    let rows = sqlx::query(
        "select id, token_current_usage, token_last_reset, request_current_usage, \
         request_last_reset from rate_limits where usage_version > $1",
    )
    .bind(since)
    .fetch_all(c)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(RateLimitTotal {
                id: parse_uuid("rate_limits", &r.try_get::<String, _>(0)?)?,
                tokens: (r.try_get(1)?, r.try_get(2)?),
                requests: (r.try_get(3)?, r.try_get(4)?),
            })
        })
        .collect()
}

fn split_key(key: DedupKey) -> (i64, i64) {
    ((key >> 64) as u64 as i64, key as u64 as i64)
}

fn join_key(hi: i64, lo: i64) -> DedupKey {
    (u128::from(hi as u64) << 64) | u128::from(lo as u64)
}

/// Persists idempotency keys (a key already there, from another replica, stays). In key
/// order, as rollups are (see [`rollups_sql`]).
fn dedup_keys_sql(keys: &[(DedupKey, Micros)], out: &mut Vec<String>) {
    let mut keys = keys.to_vec();
    keys.sort_unstable_by_key(|(key, _)| *key);
    for chunk in keys.chunks(CHUNK) {
        let mut sql = String::from("insert into dedup_keys (key_hi, key_lo, expires_at) values ");
        for (i, (key, expires)) in chunk.iter().enumerate() {
            let (hi, lo) = split_key(*key);
            if i > 0 {
                sql.push(',');
            }
            let _ = write!(sql, "({hi}, {lo}, {expires})");
        }
        sql.push_str(" on conflict do nothing");
        out.push(sql);
    }
}

/// Idempotency keys still valid at `now`.
pub async fn load_dedup_keys(
    c: &mut Conn,
    now: Micros,
) -> Result<Vec<(DedupKey, Micros)>, DbError> {
    let rows =
        sqlx::query("select key_hi, key_lo, expires_at from dedup_keys where expires_at > $1")
            .bind(now)
            .fetch_all(c)
            .await?;
    rows.iter()
        .map(|r| Ok((join_key(r.try_get(0)?, r.try_get(1)?), r.try_get(2)?)))
        .collect()
}

/// Drops expired idempotency keys.
pub async fn purge_dedup_keys(c: &mut Conn, now: Micros) -> Result<u64, DbError> {
    let done = sqlx::query("delete from dedup_keys where expires_at <= $1")
        .bind(now)
        .execute(c)
        .await?;
    Ok(done.rows_affected())
}

fn opt_id(id: Option<Uuid>) -> String {
    id.map(uuid_text).unwrap_or_default()
}

/// A SQL string literal. Quotes are doubled, which is the whole escaping both backends need
/// (PostgreSQL with `standard_conforming_strings`, its default since 9.1). Values never
/// contain NUL: the API rejects it.
fn text_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Adds hourly rollups. Values are inlined as literals: thousands of bind parameters in one
/// statement cost SQLite quadratic time to resolve. Rows go in key order: two replicas adding
/// to the same rows lock them in the same order, where opposite orders deadlock on PostgreSQL
/// (flushes that change counters are serialised by the clock row anyway; rollup-only flushes,
/// from usage that no limit governs, are not).
fn rollups_sql(rows: &[(RollupKey, RollupSums)], out: &mut Vec<String>) {
    let mut rows: Vec<&(RollupKey, RollupSums)> = rows.iter().collect();
    rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for chunk in rows.chunks(CHUNK) {
        let mut sql = String::from(
            "insert into usage_rollups (bucket_start, virtual_key_id, team_id, customer_id, \
             user_id, provider, model, requests, tokens, cost) values ",
        );
        for (i, (k, v)) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            let _ = write!(
                sql,
                "({}, '{}', '{}', '{}', {}, {}, {}, {}, {}, {})",
                k.bucket_start,
                opt_id(k.virtual_key_id),
                opt_id(k.team_id),
                opt_id(k.customer_id),
                text_literal(&k.user_id),
                text_literal(&k.provider),
                text_literal(&k.model),
                v.requests,
                v.tokens,
                v.cost
            );
        }
        sql.push_str(
            " on conflict (bucket_start, virtual_key_id, team_id, customer_id, user_id, provider, \
             model) do update set requests = usage_rollups.requests + excluded.requests, \
             tokens = usage_rollups.tokens + excluded.tokens, \
             cost = usage_rollups.cost + excluded.cost",
        );
        out.push(sql);
    }
}

/// What one flush writes.
#[derive(Debug, Clone, Copy)]
pub struct FlushWrites<'a> {
    pub budgets: &'a [BudgetDelta],
    pub rates: &'a [RateLimitDelta],
    pub rollups: &'a [(RollupKey, RollupSums)],
    pub keys: &'a [(DedupKey, Micros)],
}

impl FlushWrites<'_> {
    /// Whether counters change, so that the flush takes a usage version.
    fn takes_version(&self) -> bool {
        !(self.budgets.is_empty() && self.rates.is_empty())
    }

    /// The statements: window resets and usage deltas tagged with `version` (a number or an
    /// expression), hourly rollups and idempotency keys.
    fn statements(&self, backend: Backend, version: &str) -> Vec<String> {
        let mut statements = Vec::new();
        budget_deltas_sql(backend, version, self.budgets, &mut statements);
        rate_limit_deltas_sql(backend, version, self.rates, &mut statements);
        rollups_sql(self.rollups, &mut statements);
        dedup_keys_sql(self.keys, &mut statements);
        statements
    }
}

/// The clock's usage version as an expression: read in the transaction that just took it.
const CURRENT_USAGE_VERSION: &str = "(select usage_version from heimdall_clock where id = 1)";

/// Commits one flush; the usage version it took (0: none). A small flush (a durable group
/// commit, which writers wait for) is one string of statements, transaction included: one
/// round trip to PostgreSQL, one hand-over to SQLite's connection thread, where a transaction
/// of separate statements takes four — each a wake-up of another thread, which on a busy
/// machine waits for a core. A large flush is a transaction of statements sent one by one:
/// as one string, a minute of batch load left RSS ~30 MiB higher (measured on SQLite).
pub async fn commit_flush(
    c: &mut Conn,
    backend: Backend,
    writes: FlushWrites<'_>,
) -> Result<i64, DbError> {
    let statements = writes.statements(backend, CURRENT_USAGE_VERSION);
    if statements.iter().map(String::len).sum::<usize>() > ONE_ROUND_TRIP_MAX {
        return commit_statement_by_statement(c, backend, writes.takes_version(), &statements)
            .await;
    }
    let begin = match backend {
        // Takes the write lock at once rather than on the first write.
        Backend::Sqlite => "begin immediate",
        Backend::Postgres => "begin",
    };
    let mut sql =
        String::with_capacity(statements.iter().map(|s| s.len() + 2).sum::<usize>() + 200);
    sql.push_str(begin);
    sql.push_str(";\n");
    if writes.takes_version() {
        // The row lock is held until the commit, so versions become visible in order.
        sql.push_str(
            "update heimdall_clock set usage_version = usage_version + 1 where id = 1 \
             returning usage_version;\n",
        );
    }
    for statement in &statements {
        sql.push_str(statement);
        sql.push_str(";\n");
    }
    sql.push_str("commit");
    // A string without arguments runs every statement of it on both backends; the only row
    // any of them returns is the version.
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

/// Memory for a large flush's join on PostgreSQL: at the default 4 MB, 100 000 rows spill
/// the unnested arrays and the hash table to temporary files (~15 % of the flush's time).
const LARGE_FLUSH_WORK_MEM: &str = "set local work_mem = '64MB'";

async fn commit_statement_by_statement(
    c: &mut Conn,
    backend: Backend,
    takes_version: bool,
    statements: &[String],
) -> Result<i64, DbError> {
    let mut tx = sqlx::Connection::begin(&mut *c).await?;
    if backend == Backend::Postgres {
        sqlx::query(LARGE_FLUSH_WORK_MEM).execute(&mut *tx).await?;
    }
    let mut version = 0;
    if takes_version {
        version = next_usage_version(&mut tx).await?;
    }
    for sql in statements {
        sqlx::query(sql).persistent(false).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_literals_double_their_quotes() {
        assert_eq!(text_literal("o'brien"), "'o''brien'");
        assert_eq!(text_literal("a\\b"), "'a\\b'");
    }

    #[test]
    fn dedup_keys_round_trip_through_two_signed_halves() {
        for key in [0u128, 1, u128::MAX, 1 << 64, (1 << 127) | 5] {
            let (hi, lo) = split_key(key);
            assert_eq!(join_key(hi, lo), key);
        }
    }
}
