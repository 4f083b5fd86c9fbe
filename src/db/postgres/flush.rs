//! What a flush sends to PostgreSQL. A flush of up to [`PREPARED_MAX_ROWS`] rows is one
//! prepared statement, [`POSTGRES_FLUSH`], which is its own transaction; a larger one is a
//! transaction of statements whose rows are bound as array parameters. Both raise this
//! process's commit mark in the same transaction (see [`super::marks`]), so that a commit whose
//! outcome is unknown can be resolved without writing its deltas twice.

use std::fmt::Write as _;

use sqlx::Row;
use uuid::Uuid;

use super::marks::{Mark, UPSERT_TAIL};
use crate::db::dedup::key_block;
use crate::db::flush::{
    run_statements, Cell, Dialect, FlushWrites, Statement, BUDGET_SET, CURRENT_USAGE_VERSION,
    RATE_LIMIT_SET,
};
use crate::db::rollups::{sorted_rollups, ROLLUP_ADD};
use crate::db::{Conn, DbError};

/// PostgreSQL's way of writing a flush's rows.
pub struct Postgres;

impl Dialect for Postgres {
    /// A whole flush in one statement per table: its rows are parameters.
    const CHUNK: usize = 200_000;

    /// Each column as one parameter, its values joined by commas, split and unnested in a
    /// select list (in step): no megabytes of literals for the parser to scan, a plan made for
    /// the actual row count, and rows streamed (`unnest(a, b, c)` in `from` copies every row
    /// into a tuple store first).
    fn rows_table<const N: usize>(
        names: [&str; N],
        rows: &[[Cell; N]],
        params: &mut Vec<String>,
    ) -> String {
        let Some(first) = rows.first() else {
            return String::new();
        };
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
}

/// Commits one flush, raising this process's commit mark to `mark`; the usage version it took
/// (0: none).
pub async fn commit(
    c: &mut Conn,
    writes: FlushWrites<'_>,
    mark: Option<Mark>,
) -> Result<i64, DbError> {
    // Holds go as statements of their own: the prepared statement has no place for them.
    if writes.rows() <= PREPARED_MAX_ROWS && writes.holds.is_empty() {
        return commit_prepared(c, writes, mark).await;
    }
    let mut statements = writes.statements::<Postgres>(CURRENT_USAGE_VERSION);
    if let Some(mark) = mark {
        statements.push(Statement {
            sql: mark.upsert_sql(),
            ..Statement::default()
        });
    }
    let mut tx = sqlx::Connection::begin(&mut *c).await?;
    sqlx::query(LARGE_FLUSH_WORK_MEM).execute(&mut *tx).await?;
    let version = run_statements(&mut tx, writes.takes_version(), statements).await?;
    tx.commit().await?;
    Ok(version)
}

/// A flush's statements, made ahead of the transaction that runs them: the journal's fold
/// makes them off the async runtime (tens of thousands of rows take milliseconds), then runs
/// them in the transaction that deletes the entries they fold.
#[derive(Debug)]
pub struct Prepared {
    takes_version: bool,
    statements: Vec<Statement>,
}

impl Prepared {
    pub fn new(writes: FlushWrites<'_>) -> Prepared {
        Prepared {
            takes_version: writes.takes_version(),
            statements: writes.statements::<Postgres>(CURRENT_USAGE_VERSION),
        }
    }

    /// Runs inside the transaction the caller holds open on `c`; the usage version it took.
    pub async fn run(self, c: &mut Conn) -> Result<i64, DbError> {
        sqlx::query(LARGE_FLUSH_WORK_MEM).execute(&mut *c).await?;
        run_statements(c, self.takes_version, self.statements).await
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
