//! Persistence: one interface over PostgreSQL and SQLite (the backend is chosen by the URL
//! scheme), the embedded migrations of each, and the queries, one small function each.

pub mod flush;
mod load;
mod migrate;
pub mod report;
mod rows;
mod writes;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, ConnectOptions, Connection, Executor, Transaction};

pub use load::load_snapshot;
pub use writes::*;

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn from_url(url: &str) -> Result<Self, DbError> {
        let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or("");
        match scheme {
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            "sqlite" => Ok(Backend::Sqlite),
            _ => Err(DbError::BadUrl(format!(
                "unsupported database URL scheme '{scheme}' (use postgres:// or sqlite://)"
            ))),
        }
    }
}

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
    #[error("corrupt row in {table}: {message}")]
    Corrupt {
        table: &'static str,
        message: String,
    },
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
    pool: AnyPool,
    backend: Backend,
}

pub type Tx = Transaction<'static, sqlx::Any>;

impl Db {
    /// Connects (creating a SQLite file when it does not exist yet). Does not migrate.
    pub async fn connect(url: &str) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url)?;
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_owned(),
        };
        let options = AnyConnectOptions::from_str(&url)
            .map_err(|e| DbError::BadUrl(format!("invalid database URL: {e}")))?
            .disable_statement_logging();
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Postgres => 16,
                Backend::Sqlite => 2,
            })
            // Short, so that an unreachable database fails a flush (and /readyz) quickly.
            .acquire_timeout(Duration::from_secs(3))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the writer; foreign keys are off by default.
                        // Flushes rewrite rows scattered over the counter tables: 1 KiB pages
                        // (set before a new file's first table; an existing file keeps its size)
                        // write less per changed row, and checkpoints every 16 MiB of WAL
                        // instead of 4 copy each page once for many commits.
                        conn.execute(
                            "pragma page_size = 1024; pragma journal_mode = wal; \
                             pragma synchronous = normal; pragma wal_autocheckpoint = 16384; \
                             pragma busy_timeout = 5000; pragma foreign_keys = on;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(Db { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies the embedded migrations of this backend that have not run yet.
    pub async fn migrate(&self) -> Result<(), DbError> {
        let mut conn = self.pool.acquire().await?;
        migrate::run(&mut conn, self.backend).await
    }

    pub async fn begin(&self) -> Result<Tx, DbError> {
        Ok(self.pool.begin().await?)
    }

    /// Reads the whole governance state; limits `reuse` holds keep their counters.
    pub async fn load(
        &self,
        reuse: Option<&crate::engine::Snapshot>,
    ) -> Result<crate::engine::Snapshot, DbError> {
        let mut conn = self.pool.acquire().await?;
        load_snapshot(&mut conn, reuse).await
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

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Keeps a single `AnyConnection` type in the signatures of the query functions.
pub type Conn = AnyConnection;
