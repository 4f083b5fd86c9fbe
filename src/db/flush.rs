//! The worker's queries, shared by both backends: window resets and usage deltas written as one
//! batched statement per table, guarded by the window start; the read-back of what changed;
//! the version clock; hourly rollups. How rows are sent is each backend's own
//! ([`Dialect`]; `postgres::flush`, `sqlite::flush`).

use std::fmt::Write as _;

use sqlx::Row;
use uuid::Uuid;

use super::dedup::key_block;
use super::holds::HoldWrites;
use super::rollups::rollups_sql;
use super::rows::parse_uuid;
use super::{Conn, DbError};
use crate::domain::Micros;
use crate::engine::counter::FlushItem;
use crate::engine::dedup::DedupKey;
use crate::engine::rollup::{RollupKey, RollupSums};

/// Rows per statement: large enough that a flush is a handful of round trips, small enough to
/// keep statements and bind lists within both backends' limits.
pub(super) const CHUNK: usize = 5_000;

/// How a backend writes the rows of a flush: `postgres::flush::Postgres`,
/// `sqlite::flush::Sqlite`.
pub(super) trait Dialect {
    /// Rows per statement.
    const CHUNK: usize;

    /// The rows as a table `v` with the given column names, to join against; parameters it
    /// binds go to `params`.
    fn rows_table<const N: usize>(
        names: [&str; N],
        rows: &[[Cell; N]],
        params: &mut Vec<String>,
    ) -> String;

    /// Persists idempotency keys as one block (see `db::dedup`).
    fn dedup_block(keys: &[(DedupKey, Micros)], out: &mut Vec<Statement>) {
        dedup_block_param(keys, out);
    }
}

/// A block of keys bound as a parameter.
pub(super) fn dedup_block_param(keys: &[(DedupKey, Micros)], out: &mut Vec<Statement>) {
    if keys.is_empty() {
        return;
    }
    let (expires, bytes) = key_block(keys);
    out.push(Statement {
        sql: format!("insert into dedup_blocks (expires_at, keys) values ({expires}, $1)"),
        params: Vec::new(),
        blob: Some(bytes),
    });
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
pub(super) struct Statement {
    pub(super) sql: String,
    pub(super) params: Vec<String>,
    /// Bound after `params` (PostgreSQL's block of idempotency keys).
    pub(super) blob: Option<Vec<u8>>,
}

/// A value of a flush row: one of our ids (a UUID) or an integer. Nothing else is inlined, so
/// literals need no escaping.
#[derive(Debug, Clone, Copy)]
pub(super) enum Cell {
    Id(Uuid),
    Int(i64),
}

impl Cell {
    pub(super) fn write(self, sql: &mut String, quoted: bool) {
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
    pub(super) fn array_cast(self) -> &'static str {
        match self {
            Cell::Id(_) => "",
            Cell::Int(_) => "::bigint[]",
        }
    }
}

/// How a budget row takes a delta `v.delta` for the window starting at `v.start`.
pub(super) const BUDGET_SET: &str =
    "current_usage = case when budgets.last_reset < v.start then v.delta \
        when budgets.last_reset = v.start then budgets.current_usage + v.delta \
        else budgets.current_usage end, \
    last_reset = case when budgets.last_reset < v.start then v.start \
        else budgets.last_reset end";

/// The same for both dimensions of a rate limit: `v.ts`/`v.td` for tokens, `v.rs`/`v.rd`
/// for requests.
pub(super) const RATE_LIMIT_SET: &str = "token_current_usage = case \
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
fn budget_deltas_sql<D: Dialect>(version: &str, deltas: &[BudgetDelta], out: &mut Vec<Statement>) {
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
    counter_deltas_sql::<D, 3>("budgets", BUDGET_SET, names, version, &rows, out);
}

/// The same for both dimensions of rate limits.
fn rate_limit_deltas_sql<D: Dialect>(
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
    counter_deltas_sql::<D, 5>("rate_limits", RATE_LIMIT_SET, names, version, &rows, out);
}

/// `update {table} set {set}` from `rows`, tagged with `version`, in chunks.
fn counter_deltas_sql<D: Dialect, const N: usize>(
    table: &str,
    set: &str,
    names: [&str; N],
    version: &str,
    rows: &[[Cell; N]],
    out: &mut Vec<Statement>,
) {
    for chunk in rows.chunks(D::CHUNK) {
        let mut params = Vec::new();
        let v = D::rows_table(names, chunk, &mut params);
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

/// What one flush writes.
#[derive(Debug, Clone, Copy)]
pub struct FlushWrites<'a> {
    pub budgets: &'a [BudgetDelta],
    pub rates: &'a [RateLimitDelta],
    pub rollups: &'a [(RollupKey, RollupSums)],
    pub keys: &'a [(DedupKey, Micros)],
    pub holds: HoldWrites<'a>,
}

impl FlushWrites<'_> {
    /// Whether counters change, so that the flush takes a usage version.
    pub(super) fn takes_version(&self) -> bool {
        !(self.budgets.is_empty() && self.rates.is_empty())
    }

    /// Rows written: the keys are one (a block).
    pub fn rows(&self) -> usize {
        self.budgets.len()
            + self.rates.len()
            + self.rollups.len()
            + usize::from(!self.keys.is_empty())
            + self.holds.rows()
    }

    /// The statements: window resets and usage deltas tagged with `version` (a number or an
    /// expression), hourly rollups and idempotency keys.
    pub(super) fn statements<D: Dialect>(&self, version: &str) -> Vec<Statement> {
        let mut statements = Vec::new();
        budget_deltas_sql::<D>(version, self.budgets, &mut statements);
        rate_limit_deltas_sql::<D>(version, self.rates, &mut statements);
        rollups_sql(self.rollups, CHUNK, |sql| {
            statements.push(Statement {
                sql,
                ..Statement::default()
            })
        });
        D::dedup_block(self.keys, &mut statements);
        self.holds.statements(|sql| {
            statements.push(Statement {
                sql,
                ..Statement::default()
            })
        });
        statements
    }
}

/// The clock's usage version as an expression: read in the transaction that just took it.
pub(super) const CURRENT_USAGE_VERSION: &str =
    "(select usage_version from heimdall_clock where id = 1)";

/// Runs a flush's statements in the transaction the caller holds open; the usage version
/// taken (0: none).
pub(super) async fn run_statements(
    c: &mut Conn,
    takes_version: bool,
    statements: Vec<Statement>,
) -> Result<i64, DbError> {
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
