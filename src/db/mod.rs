//! Persistence: one interface over PostgreSQL and SQLite (the backend is chosen by the URL
//! scheme). What both share is here and in the modules by concern (`flush`, `load`, `writes`,
//! `dedup`, `report`, `migrate`); what each backend does its own way is in `postgres/` and
//! `sqlite/`: connections, how a flush is sent, and (PostgreSQL only) the usage journal and
//! commit marks.

pub mod alerts;
pub mod dedup;
pub mod flush;
pub mod holds;
mod limits;
mod load;
mod migrate;
pub mod postgres;
pub mod report;
mod rollups;
mod rows;
pub mod sqlite;
mod writes;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::{AnyConnection, AnyPool, ConnectOptions, Connection, Executor, Transaction};

pub use crate::domain::Backend;
pub use limits::*;
pub use load::load_snapshot;
pub use postgres::FlushConnection;
pub use sqlite::writer_cache_mib;
pub use writes::*;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{0}")]
    BadUrl(String),
    /// A uniqueness constraint refused the write (another writer got there first).
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Sqlx(sqlx::Error),
    #[error("migration {version} failed: {source}")]
    Migration { version: i64, source: sqlx::Error },
    /// The TLS connection the URL's `sslmode` asks for could not be made.
    #[error("{0}")]
    Tls(String),
    #[error("corrupt row in {table}: {message}")]
    Corrupt {
        table: &'static str,
        message: String,
    },
}

impl DbError {
    /// Whether the database could not be reached or went away (as opposed to refusing what
    /// was asked): worth retrying once it is back.
    pub fn is_unreachable(&self) -> bool {
        match self {
            DbError::Sqlx(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => true,
                // Shutting down, crashed, or starting up (PostgreSQL's class 57P).
                sqlx::Error::Database(db) => {
                    matches!(db.code().as_deref(), Some("57P01" | "57P02" | "57P03"))
                }
                _ => false,
            },
            _ => false,
        }
    }
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                DbError::Conflict(db.message().to_owned())
            }
            _ => DbError::Sqlx(e),
        }
    }
}

/// A connection pool to the configured database.
#[derive(Debug, Clone)]
pub struct Db {
    /// Reads, and on PostgreSQL writes too.
    pool: AnyPool,
    own: Own,
}

/// What each backend keeps beside the pool.
#[derive(Debug, Clone)]
enum Own {
    /// The connection for flushes.
    Postgres(Arc<postgres::FlushPool>),
    /// The one writing connection, and its checkpoints.
    Sqlite(sqlite::Writer),
}

/// The longest a connection may take to hand out, a ping included.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// A pooled connection idle for this long is pinged before it is handed out; one in use
/// more recently is not (a broken one fails its query, and the worker drops it).
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

pub type Tx = Transaction<'static, sqlx::Any>;

/// The options of a URL.
fn options(url: &str) -> Result<AnyConnectOptions, DbError> {
    Ok(AnyConnectOptions::from_str(url)
        .map_err(|e| DbError::BadUrl(format!("invalid database URL: {e}")))?
        .disable_statement_logging())
}

/// A pool of `size` connections, each running `setup` (statements) when it connects.
async fn pool(
    options: &AnyConnectOptions,
    size: u32,
    setup: Option<String>,
) -> Result<AnyPool, sqlx::Error> {
    let setup = setup.map(Arc::new);
    AnyPoolOptions::new()
        .max_connections(size)
        // Short, so that an unreachable database fails a flush (and /readyz) quickly.
        .acquire_timeout(ACQUIRE_TIMEOUT)
        // A connection used within the last second is handed out as it is; one idle for
        // longer is pinged first (sqlx pings on every acquire by default: a second round trip
        // for every durable group commit).
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .after_connect(move |conn, _meta| {
            let setup = setup.clone();
            Box::pin(async move {
                if let Some(setup) = setup {
                    conn.execute(setup.as_str()).await?;
                }
                Ok(())
            })
        })
        .connect_with(options.clone())
        .await
}

impl Db {
    /// Connects (creating a SQLite file when it does not exist yet). Does not migrate.
    pub async fn connect(url: &str) -> Result<Db, DbError> {
        Db::connect_with_cache(url, writer_cache_mib(false)).await
    }

    /// Connects with a SQLite writer page cache of `writer_cache_mib` (see [`writer_cache_mib`]).
    pub async fn connect_with_cache(url: &str, writer_cache_mib: u32) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        match Backend::from_url(url).map_err(DbError::BadUrl)? {
            Backend::Postgres => postgres::connect(url).await,
            Backend::Sqlite => sqlite::connect(url, writer_cache_mib).await,
        }
    }

    pub fn backend(&self) -> Backend {
        match self.own {
            Own::Postgres(_) => Backend::Postgres,
            Own::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Whether durable group commits go to the usage journal, and every commit carries this
    /// process's commit mark (PostgreSQL: `postgres::journal`, `postgres::marks`). SQLite
    /// needs neither: its one writer would be a fold's while it ran, and it always reports
    /// whether a commit happened.
    pub fn journals(&self) -> bool {
        matches!(self.own, Own::Postgres(_))
    }

    /// Where writes go: SQLite's one writing connection, else the pool.
    fn writing_pool(&self) -> &AnyPool {
        match &self.own {
            Own::Sqlite(w) => w.pool().unwrap_or(&self.pool),
            Own::Postgres(_) => &self.pool,
        }
    }

    /// Applies the embedded migrations of this backend that have not run yet.
    pub async fn migrate(&self) -> Result<(), DbError> {
        let mut conn = self.writing_pool().acquire().await?;
        migrate::run(&mut conn, self.backend()).await
    }

    /// A write transaction.
    pub async fn begin(&self) -> Result<Tx, DbError> {
        Ok(self.writing_pool().begin().await?)
    }

    /// A connection of the writing pool, for a transaction the caller opens and ends itself
    /// (the worker flushes through [`Db::flush_connection`]).
    pub async fn acquire_writer(&self) -> Result<PoolConnection<sqlx::Any>, DbError> {
        Ok(self.writing_pool().acquire().await?)
    }

    /// The connection for the worker's flushes: on PostgreSQL always the same one (see
    /// [`postgres::FlushPool`]); on SQLite the writer, which goes back to its pool after each
    /// flush (admin writes use it too).
    pub async fn flush_connection(&self) -> Result<FlushConnection<'_>, DbError> {
        match &self.own {
            Own::Postgres(flusher) => flusher.connection().await,
            Own::Sqlite(_) => Ok(FlushConnection::Pooled(
                self.writing_pool().acquire().await?,
            )),
        }
    }

    /// Commits one flush on `c` (a [`Db::flush_connection`]); the usage version it took (0:
    /// none). PostgreSQL's raises this process's commit `mark` with it (`postgres::flush`);
    /// SQLite takes none (`sqlite::flush`).
    pub async fn commit_flush(
        &self,
        c: &mut Conn,
        writes: flush::FlushWrites<'_>,
        mark: Option<postgres::marks::Mark>,
    ) -> Result<i64, DbError> {
        match self.own {
            Own::Postgres(_) => postgres::flush::commit(c, writes, mark).await,
            Own::Sqlite(_) => sqlite::flush::commit(c, writes).await,
        }
    }

    /// A read-only transaction on `conn` that sees one snapshot of every table (PostgreSQL's
    /// repeatable read; a SQLite transaction does anyway).
    pub async fn read_snapshot<'c>(
        &self,
        conn: &'c mut Conn,
    ) -> Result<Transaction<'c, sqlx::Any>, DbError> {
        let mut tx = conn.begin().await?;
        if let Own::Postgres(_) = self.own {
            sqlx::query("set transaction isolation level repeatable read")
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    /// Reads the whole governance state; limits `reuse` holds keep their counters.
    pub async fn load(
        &self,
        reuse: Option<&crate::engine::Snapshot>,
    ) -> Result<crate::engine::Snapshot, DbError> {
        let mut conn = self.pool.acquire().await?;
        // One snapshot for every table: read one after the other outside a transaction, an
        // entity created meanwhile (on another replica) could be read without the limits it
        // was created with, and be admitted and charged without them until the next reload.
        let mut tx = self.read_snapshot(&mut conn).await?;
        let snapshot = load_snapshot(&mut tx, reuse).await?;
        tx.commit().await?;
        Ok(snapshot)
    }

    /// A connection from the pool (for the worker's read-back).
    pub async fn acquire(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, DbError> {
        Ok(self.pool.acquire().await?)
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), DbError> {
        let mut conn = self.pool.acquire().await?;
        Ok(conn.ping().await?)
    }

    /// After each flush: SQLite's checkpoints (see [`sqlite::Writer::after_write`]).
    pub async fn after_write(&self) {
        if let Own::Sqlite(writer) = &self.own {
            writer.after_write(&self.pool).await;
        }
    }

    pub async fn close(&self) {
        match &self.own {
            Own::Postgres(flusher) => flusher.close().await,
            Own::Sqlite(writer) => writer.close().await,
        }
        self.pool.close().await;
    }
}

/// Keeps a single `AnyConnection` type in the signatures of the query functions.
pub type Conn = AnyConnection;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_in_memory_database_is_one_connection_that_sees_its_own_tables() {
        let db = Db::connect("sqlite::memory:").await.unwrap();
        db.migrate().await.unwrap();
        let snapshot = db.load(None).await.unwrap();
        assert!(snapshot.customers.is_empty());
        let mut conn = db.acquire().await.unwrap();
        crate::db::flush::clock(&mut conn).await.unwrap();
    }
}
