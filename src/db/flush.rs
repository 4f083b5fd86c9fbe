//! The worker's queries: window resets and usage deltas written as one batched statement per
//! table, guarded by the window start; the read-back of what changed; the version clock;
//! idempotency keys; hourly rollups.

use std::fmt::Write as _;

use sqlx::Row;
use uuid::Uuid;

use super::marks::{Mark, UPSERT_TAIL};
use super::rows::{parse_uuid, uuid_text};
use super::{Backend, Conn, DbError};
use crate::domain::Micros;
use crate::engine::counter::FlushItem;
use crate::engine::dedup::{Dedup, DedupKey};
use crate::engine::rollup::{RollupKey, RollupSums};

/// Rows per statement: large enough that a flush is a handful of round trips, small enough to
/// keep statements and bind lists within both backends' limits.
const CHUNK: usize = 5_000;

/// The largest flush (bytes of SQL) sent as one string (SQLite).
const ONE_ROUND_TRIP_MAX: usize = 256 * 1024;

/// PostgreSQL takes a whole flush in one statement per table (its rows are parameters).
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

/// One statement of a flush and the text parameters it binds (PostgreSQL's only).
#[derive(Debug, Default)]
struct Statement {
    sql: String,
    params: Vec<String>,
    /// Bound after `params` (PostgreSQL's block of idempotency keys).
    blob: Option<Vec<u8>>,
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

    /// What makes `string_to_array`'s text array one of this cell's type.
    fn array_cast(self) -> &'static str {
        match self {
            Cell::Id(_) => "",
            Cell::Int(_) => "::bigint[]",
        }
    }
}

/// The rows of a flush as a table `v` with the given column names. PostgreSQL gets each
/// column as one parameter, its values joined by commas, split and unnested in a select list
/// (in step): no megabytes of literals for the parser to scan (~50-90 ms of a 100 000-row
/// flush), a plan made for the actual row count, and rows streamed (`unnest(a, b, c)` in
/// `from` copies every row into a tuple store first). SQLite gets a `values` list, written
/// straight into the statement.
fn rows_table<const N: usize>(
    backend: Backend,
    names: [&str; N],
    rows: &[[Cell; N]],
    params: &mut Vec<String>,
) -> String {
    let Some(first) = rows.first() else {
        return String::new();
    };
    match backend {
        Backend::Postgres => {
            let mut sql = String::from("(select ");
            for (column, name) in names.iter().enumerate() {
                let mut values = String::with_capacity(rows.len() * 16);
                for (i, row) in rows.iter().enumerate() {
                    if i > 0 {
                        values.push(',');
                    }
                    row[column].write(&mut values, false);
                }
                params.push(values);
                if column > 0 {
                    sql.push_str(", ");
                }
                let _ = write!(
                    sql,
                    "unnest(string_to_array(${}, ','){}) as {name}",
                    params.len(),
                    first[column].array_cast()
                );
            }
            sql.push_str(") as v");
            sql
        }
        Backend::Sqlite => {
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
    }
}

/// How a budget row takes a delta `v.delta` for the window starting at `v.start`.
const BUDGET_SET: &str = "current_usage = case when budgets.last_reset < v.start then v.delta \
        when budgets.last_reset = v.start then budgets.current_usage + v.delta \
        else budgets.current_usage end, \
    last_reset = case when budgets.last_reset < v.start then v.start \
        else budgets.last_reset end";

/// The same for both dimensions of a rate limit: `v.ts`/`v.td` for tokens, `v.rs`/`v.rd`
/// for requests.
const RATE_LIMIT_SET: &str = "token_current_usage = case \
        when rate_limits.token_last_reset < v.ts then v.td \
        when rate_limits.token_last_reset = v.ts then rate_limits.token_current_usage + v.td \
        else rate_limits.token_current_usage end, \
    token_last_reset = case when rate_limits.token_last_reset < v.ts then v.ts \
        else rate_limits.token_last_reset end, \
    request_current_usage = case \
        when rate_limits.request_last_reset < v.rs then v.rd \
        when rate_limits.request_last_reset = v.rs then rate_limits.request_current_usage + v.rd \
        else rate_limits.request_current_usage end, \
    request_last_reset = case when rate_limits.request_last_reset < v.rs then v.rs \
        else rate_limits.request_last_reset end";

/// Window resets and deltas of budgets. A row whose window is older than ours is reset to
/// ours and gets the delta; one in our window adds it; one in a newer window (another replica
/// moved on) keeps its value: our delta belongs to an ended window and is dropped.
fn budget_deltas_sql(
    backend: Backend,
    version: &str,
    deltas: &[BudgetDelta],
    out: &mut Vec<Statement>,
) {
    let rows: Vec<[Cell; 3]> = deltas
        .iter()
        .map(|d| {
            [
                Cell::Id(d.id),
                Cell::Int(d.item.start),
                Cell::Int(d.item.delta),
            ]
        })
        .collect();
    let names = ["id", "start", "delta"];
    counter_deltas_sql(backend, "budgets", BUDGET_SET, names, version, &rows, out);
}

/// The same for both dimensions of rate limits.
fn rate_limit_deltas_sql(
    backend: Backend,
    version: &str,
    deltas: &[RateLimitDelta],
    out: &mut Vec<Statement>,
) {
    let rows: Vec<[Cell; 5]> = deltas
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
    let names = ["id", "ts", "td", "rs", "rd"];
    counter_deltas_sql(
        backend,
        "rate_limits",
        RATE_LIMIT_SET,
        names,
        version,
        &rows,
        out,
    );
}

/// `update {table} set {set}` from `rows`, tagged with `version`, in chunks.
fn counter_deltas_sql<const N: usize>(
    backend: Backend,
    table: &str,
    set: &str,
    names: [&str; N],
    version: &str,
    rows: &[[Cell; N]],
    out: &mut Vec<Statement>,
) {
    for chunk in rows.chunks(chunk_size(backend)) {
        let mut params = Vec::new();
        let v = rows_table(backend, names, chunk, &mut params);
        let sql = format!(
            "update {table} set {set}, usage_version = {version} from {v} \
             where {table}.id = v.id"
        );
        out.push(Statement {
            sql,
            params,
            blob: None,
        });
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

pub(super) fn split_key(key: DedupKey) -> (i64, i64) {
    ((key >> 64) as u64 as i64, key as u64 as i64)
}

pub(super) fn join_key(hi: i64, lo: i64) -> DedupKey {
    (u128::from(hi as u64) << 64) | u128::from(lo as u64)
}

/// The idempotency keys of one flush as one block: the latest expiry, and the keys back to
/// back, 16 bytes each, little endian. One row however many keys: a flush of a million keys
/// costs the database one insert, a start reads a few rows per second of history, and the
/// purge deletes whole blocks.
fn key_block(keys: &[(DedupKey, Micros)]) -> (Micros, Vec<u8>) {
    let mut bytes = Vec::with_capacity(keys.len() * 16);
    let mut expires = Micros::MIN;
    for (key, at) in keys {
        bytes.extend_from_slice(&key.to_le_bytes());
        expires = expires.max(*at);
    }
    (expires, bytes)
}

/// Persists idempotency keys as one block (see [`key_block`]).
fn dedup_block_sql(backend: Backend, keys: &[(DedupKey, Micros)], out: &mut Vec<Statement>) {
    if keys.is_empty() {
        return;
    }
    let (expires, bytes) = key_block(keys);
    match backend {
        // A string of SQLite statements carries no parameters: a small block (a durable group
        // commit's) goes as a literal; a larger one as a parameter, which takes the
        // statement-by-statement path.
        Backend::Sqlite if keys.len() <= INLINE_KEYS => {
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
        _ => out.push(Statement {
            sql: format!("insert into dedup_blocks (expires_at, keys) values ({expires}, $1)"),
            params: Vec::new(),
            blob: Some(bytes),
        }),
    }
}

/// The most keys a SQLite flush writes as a literal (32 characters each).
const INLINE_KEYS: usize = 256;

/// The keys of a stored block.
fn block_keys(bytes: &[u8]) -> Result<impl Iterator<Item = DedupKey> + '_, DbError> {
    if bytes.len() % 16 != 0 {
        return Err(DbError::Corrupt {
            table: "dedup_blocks",
            message: format!("a block of {} bytes is not whole keys", bytes.len()),
        });
    }
    Ok(bytes
        .chunks_exact(16)
        .map(|k| DedupKey::from_le_bytes(k.try_into().expect("16 bytes"))))
}

/// Loads the idempotency keys still valid at `now` into `dedup`, oldest block first
/// (streamed: one block in memory at a time).
pub async fn load_dedup_keys(c: &mut Conn, now: Micros, dedup: &Dedup) -> Result<(), DbError> {
    use futures_util::TryStreamExt;
    let mut rows = sqlx::query(
        "select expires_at, keys from dedup_blocks where expires_at > $1 order by expires_at",
    )
    .bind(now)
    .fetch(c);
    while let Some(row) = rows.try_next().await? {
        let expires: Micros = row.try_get(0)?;
        let bytes: Vec<u8> = row.try_get(1)?;
        dedup.load(block_keys(&bytes)?.map(|key| (key, expires)), now);
    }
    Ok(())
}

/// Blocks one purge statement deletes at most.
pub const PURGE_BATCH: i64 = 1000;

/// Deletes up to [`PURGE_BATCH`] blocks of idempotency keys that all expire before `before`;
/// how many.
pub async fn purge_dedup_keys(c: &mut Conn, before: Micros) -> Result<u64, DbError> {
    let done = sqlx::query(
        "delete from dedup_blocks where id in (select id from dedup_blocks \
         where expires_at < $1 limit $2)",
    )
    .bind(before)
    .bind(PURGE_BATCH)
    .execute(c)
    .await?;
    Ok(done.rows_affected())
}

/// Moves the keys of `dedup_keys` (a row per key, written before blocks) into blocks, a
/// bounded number per transaction; expired ones go. Nothing to do once it is empty.
pub async fn convert_dedup_keys(c: &mut Conn, now: Micros) -> Result<u64, DbError> {
    let mut moved = 0;
    loop {
        let mut tx = sqlx::Connection::begin(&mut *c).await?;
        let rows = sqlx::query(
            "delete from dedup_keys where (key_hi, key_lo) in (select key_hi, key_lo \
             from dedup_keys limit 100000) returning key_hi, key_lo, expires_at",
        )
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(moved);
        }
        let mut keys = Vec::with_capacity(rows.len());
        for row in &rows {
            let expires: Micros = row.try_get(2)?;
            if expires > now {
                keys.push((join_key(row.try_get(0)?, row.try_get(1)?), expires));
            }
        }
        if !keys.is_empty() {
            let (expires, bytes) = key_block(&keys);
            sqlx::query("insert into dedup_blocks (expires_at, keys) values ($1, $2)")
                .bind(expires)
                .bind(bytes)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        moved += keys.len() as u64;
    }
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

/// How a rollup row already there takes the new one's sums.
const ROLLUP_ADD: &str = "on conflict (bucket_start, virtual_key_id, team_id, customer_id, \
    user_id, provider, model) do update set requests = usage_rollups.requests + excluded.requests, \
    tokens = usage_rollups.tokens + excluded.tokens, cost = usage_rollups.cost + excluded.cost";

/// Adds hourly rollups. Values are inlined as literals: thousands of bind parameters in one
/// statement cost SQLite quadratic time to resolve. Rows go in key order: two replicas adding
/// to the same rows lock them in the same order, where opposite orders deadlock on PostgreSQL
/// (flushes that change counters are serialised by the clock row anyway; rollup-only flushes,
/// from usage that no limit governs, are not).
fn rollups_sql(rows: &[(RollupKey, RollupSums)], out: &mut Vec<Statement>) {
    let rows = sorted_rollups(rows);
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
        sql.push(' ');
        sql.push_str(ROLLUP_ADD);
        out.push(Statement {
            sql,
            ..Statement::default()
        });
    }
}

fn sorted_rollups(rows: &[(RollupKey, RollupSums)]) -> Vec<&(RollupKey, RollupSums)> {
    let mut rows: Vec<&(RollupKey, RollupSums)> = rows.iter().collect();
    rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    rows
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

    /// Rows written: the keys are one (a block).
    pub fn rows(&self) -> usize {
        self.budgets.len()
            + self.rates.len()
            + self.rollups.len()
            + usize::from(!self.keys.is_empty())
    }

    /// The statements: window resets and usage deltas tagged with `version` (a number or an
    /// expression), hourly rollups and idempotency keys.
    fn statements(&self, backend: Backend, version: &str) -> Vec<Statement> {
        let mut statements = Vec::new();
        budget_deltas_sql(backend, version, self.budgets, &mut statements);
        rate_limit_deltas_sql(backend, version, self.rates, &mut statements);
        rollups_sql(self.rollups, &mut statements);
        dedup_block_sql(backend, self.keys, &mut statements);
        statements
    }
}

/// The clock's usage version as an expression: read in the transaction that just took it.
const CURRENT_USAGE_VERSION: &str = "(select usage_version from heimdall_clock where id = 1)";

/// Commits one flush; the usage version it took (0: none). A small flush (a durable group
/// commit on SQLite, which writers wait for; on PostgreSQL those go to the journal, see
/// [`super::journal`]) takes one round trip: on PostgreSQL it is one prepared
/// statement ([`POSTGRES_FLUSH`]); on SQLite one string of statements, transaction
/// included, one hand-over to the connection thread where a transaction of separate
/// statements takes four — each a wake-up of another thread, which on a busy machine waits
/// for a core. A large flush is a transaction of statements sent one by one (as one string,
/// SQLite would hold the whole text at once); on PostgreSQL those of the counters bind their
/// rows as parameters (see [`rows_table`]).
///
/// On PostgreSQL the flush raises this process's commit mark to `mark` in the same
/// transaction (see [`super::marks`]): a commit whose outcome is unknown can then be resolved
/// without writing its deltas twice. SQLite takes no mark (`None`): its results are always
/// known.
pub async fn commit_flush(
    c: &mut Conn,
    backend: Backend,
    writes: FlushWrites<'_>,
    mark: Option<Mark>,
) -> Result<i64, DbError> {
    if backend == Backend::Postgres && writes.rows() <= PREPARED_MAX_ROWS {
        return commit_prepared(c, writes, mark).await;
    }
    let mut statements = writes.statements(backend, CURRENT_USAGE_VERSION);
    if let Some(mark) = mark {
        statements.push(Statement {
            sql: mark.upsert_sql(),
            ..Statement::default()
        });
    }
    let size: usize = statements.iter().map(|s| s.sql.len()).sum();
    // PostgreSQL's statements bind parameters, which a string of statements cannot.
    let binds = statements.iter().any(|s| s.blob.is_some());
    if backend == Backend::Postgres || binds || size > ONE_ROUND_TRIP_MAX {
        return commit_statement_by_statement(c, backend, writes.takes_version(), statements).await;
    }
    // SQLite's string: `begin immediate` takes the write lock at once rather than on the
    // first write.
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

/// The most rows (counters, rollups and idempotency keys together) a PostgreSQL flush sends
/// as [`POSTGRES_FLUSH`]. Its plan is made once for a handful of rows (index lookups); a
/// larger flush goes as SQL of its own, planned for its size (hash joins).
const PREPARED_MAX_ROWS: usize = 4096;

/// A whole flush on PostgreSQL as one statement, prepared once per connection: the rows go
/// as array parameters, so a small flush costs neither parsing kilobytes of literals nor
/// planning (about a quarter of a durable group commit's time in the database when those
/// were SQL text, before they went to the journal).
/// One statement is its own transaction: it commits or changes nothing.
///
/// `$1` says whether counters change; only then is a usage version taken (the clock row
/// lock orders such flushes, see [`FlushWrites::takes_version`]). Each write waits for the
/// one before it, through the `(select count(*) …)` it cannot run without, so rows are
/// locked in the order the SQL-text path locks them: clock, budgets, rate limits, rollups,
/// keys. (Unreferenced data-modifying `with` queries run in no order PostgreSQL promises.)
static POSTGRES_FLUSH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "with clock as (update heimdall_clock set usage_version = usage_version + 1 \
             where id = 1 and $1 returning usage_version), \
         b as (update budgets set {BUDGET_SET}, \
                 usage_version = (select usage_version from clock) \
             from (select unnest($2::text[]) as id, unnest($3::bigint[]) as start, \
                 unnest($4::bigint[]) as delta) as v \
             where budgets.id = v.id returning 1), \
         r as (update rate_limits set {RATE_LIMIT_SET}, \
                 usage_version = (select usage_version from clock) \
             from (select unnest($5::text[]) as id, unnest($6::bigint[]) as ts, \
                 unnest($7::bigint[]) as td, unnest($8::bigint[]) as rs, \
                 unnest($9::bigint[]) as rd) as v \
             where rate_limits.id = v.id and (select count(*) from b) >= 0 returning 1), \
         u as (insert into usage_rollups (bucket_start, virtual_key_id, team_id, customer_id, \
                 user_id, provider, model, requests, tokens, cost) \
             select * from unnest($10::bigint[], $11::text[], $12::text[], $13::text[], \
                 $14::text[], $15::text[], $16::text[], $17::bigint[], $18::bigint[], \
                 $19::bigint[]) \
             where (select count(*) from r) >= 0 \
             {ROLLUP_ADD} returning 1), \
         k as (insert into dedup_blocks (expires_at, keys) \
             select $20::bigint, $21::bytea \
             where octet_length($21::bytea) > 0 and (select count(*) from u) >= 0), \
         m as (insert into commit_marks (writer, seq, fenced, moved_at, fresh) \
             select $22::bigint, $23::bigint, false, $24::bigint, true where $25 \
             {UPSERT_TAIL}) \
         select usage_version from clock"
    )
});

/// One column of a flush as a PostgreSQL array literal (text, bound as a parameter and cast
/// by the statement). Every text element is quoted, so no value needs to look like anything.
struct ArrayText(String);

impl ArrayText {
    fn new() -> Self {
        ArrayText(String::from("{"))
    }

    fn separate(&mut self) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
    }

    fn int(&mut self, v: i64) {
        self.separate();
        let _ = write!(self.0, "{v}");
    }

    fn text(&mut self, v: &str) {
        self.separate();
        self.0.push('"');
        for c in v.chars() {
            if c == '"' || c == '\\' {
                self.0.push('\\');
            }
            self.0.push(c);
        }
        self.0.push('"');
    }

    fn id(&mut self, id: Option<Uuid>) {
        let mut buf = Uuid::encode_buffer();
        self.text(id.map_or("", |id| id.hyphenated().encode_lower(&mut buf)));
    }

    fn done(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

/// Columns of `N` arrays, one element per row.
fn columns<const N: usize>() -> [ArrayText; N] {
    std::array::from_fn(|_| ArrayText::new())
}

/// [`POSTGRES_FLUSH`] with `writes` bound.
async fn commit_prepared(
    c: &mut Conn,
    writes: FlushWrites<'_>,
    mark: Option<Mark>,
) -> Result<i64, DbError> {
    let mut budgets = columns::<3>();
    for d in writes.budgets {
        budgets[0].id(Some(d.id));
        budgets[1].int(d.item.start);
        budgets[2].int(d.item.delta);
    }
    let mut rates = columns::<5>();
    for d in writes.rates {
        rates[0].id(Some(d.id));
        rates[1].int(d.tokens.start);
        rates[2].int(d.tokens.delta);
        rates[3].int(d.requests.start);
        rates[4].int(d.requests.delta);
    }
    let mut rollups = columns::<10>();
    for (k, v) in sorted_rollups(writes.rollups) {
        rollups[0].int(k.bucket_start);
        rollups[1].id(k.virtual_key_id);
        rollups[2].id(k.team_id);
        rollups[3].id(k.customer_id);
        rollups[4].text(&k.user_id);
        rollups[5].text(&k.provider);
        rollups[6].text(&k.model);
        rollups[7].int(v.requests);
        rollups[8].int(v.tokens);
        rollups[9].int(v.cost);
    }
    let (expires, block) = key_block(writes.keys);
    let mut query = sqlx::query(POSTGRES_FLUSH.as_str()).bind(writes.takes_version());
    for column in budgets.into_iter().chain(rates).chain(rollups) {
        query = query.bind(column.done());
    }
    query = query.bind(expires).bind(block);
    let m = mark.unwrap_or(Mark {
        writer: 0,
        seq: 0,
        at: 0,
    });
    query = query
        .bind(m.writer)
        .bind(m.seq)
        .bind(m.at)
        .bind(mark.is_some());
    // Every row, to the end: the statement commits when its results are over (at the
    // protocol's sync), and only the end says it did. Taking the first row and returning
    // would acknowledge a commit the server may still fail or lose in a crash.
    let rows = query.fetch_all(c).await?;
    match rows.first() {
        Some(row) => Ok(row.try_get(0)?),
        None => Ok(0),
    }
}

/// Memory for a large flush's join on PostgreSQL: at the default 4 MB, the hash table of
/// 100 000 rows (~10 MB) spills to temporary files.
const LARGE_FLUSH_WORK_MEM: &str = "set local work_mem = '64MB'";

async fn commit_statement_by_statement(
    c: &mut Conn,
    backend: Backend,
    takes_version: bool,
    statements: Vec<Statement>,
) -> Result<i64, DbError> {
    let mut tx = sqlx::Connection::begin(&mut *c).await?;
    let version = run_statements(&mut tx, backend, takes_version, statements).await?;
    tx.commit().await?;
    Ok(version)
}

/// A flush's statements, made ahead of the transaction that runs them (the journal's fold
/// makes them off the async runtime: tens of thousands of rows take milliseconds).
#[derive(Debug)]
pub(super) struct Prepared {
    takes_version: bool,
    statements: Vec<Statement>,
}

impl Prepared {
    pub(super) fn new(backend: Backend, writes: FlushWrites<'_>) -> Prepared {
        Prepared {
            takes_version: writes.takes_version(),
            statements: writes.statements(backend, CURRENT_USAGE_VERSION),
        }
    }

    /// Runs inside the transaction the caller holds open on `c` (the journal's fold deletes
    /// the entries it writes in the same transaction); the usage version it took.
    pub(super) async fn run(self, c: &mut Conn, backend: Backend) -> Result<i64, DbError> {
        run_statements(c, backend, self.takes_version, self.statements).await
    }
}

async fn run_statements(
    c: &mut Conn,
    backend: Backend,
    takes_version: bool,
    statements: Vec<Statement>,
) -> Result<i64, DbError> {
    if backend == Backend::Postgres {
        sqlx::query(LARGE_FLUSH_WORK_MEM).execute(&mut *c).await?;
    }
    let mut version = 0;
    if takes_version {
        version = next_usage_version(&mut *c).await?;
    }
    for statement in statements {
        let mut query = sqlx::query(&statement.sql).persistent(false);
        for param in statement.params {
            query = query.bind(param);
        }
        if let Some(blob) = statement.blob {
            query = query.bind(blob);
        }
        query.execute(&mut *c).await?;
    }
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
