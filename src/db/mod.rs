//! Persistence: one interface over PostgreSQL and SQLite (the backend is chosen by the URL
//! scheme), the embedded migrations of each, and the queries, one small function each.

pub mod flush;
pub mod journal;
mod load;
pub mod marks;
mod migrate;
pub mod report;
mod rows;
mod writes;

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::{AnyConnection, AnyPool, ConnectOptions, Connection, Executor, Transaction};

pub use crate::domain::Backend;
pub use load::load_snapshot;
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

/// A PostgreSQL connection's failure at start, with what to do about it when TLS is the
/// cause. Names only the URL's `sslmode`, nothing else of it (a password may be there).
fn connect_error(e: sqlx::Error, url: &str) -> DbError {
    let sslmode = url
        .split_once('?')
        .and_then(|(_, query)| {
            query
                .split('&')
                .find_map(|pair| pair.strip_prefix("sslmode="))
        })
        .unwrap_or("prefer (the default)");
    let text = e.to_string();
    if matches!(e, sqlx::Error::Tls(_)) && text.contains("does not support TLS") {
        return DbError::Tls(format!(
            "the database server does not accept TLS connections, and the URL's sslmode \
             ({sslmode}) requires TLS: enable ssl on the server, or set sslmode=prefer or \
             sslmode=disable in the database URL"
        ));
    }
    if text.contains("invalid peer certificate") {
        let detail = text.rsplit(": ").next().unwrap_or(&text);
        return DbError::Tls(format!(
            "the database server's TLS certificate did not verify ({detail}; sslmode \
             {sslmode}): name the authority that signed it with sslrootcert=/path/to/ca.pem in \
             the database URL (without it the system's trusted roots are used); verify-full \
             also requires the certificate to name the URL's host"
        ));
    }
    if matches!(e, sqlx::Error::Tls(_)) {
        return DbError::Tls(format!(
            "TLS to the database failed (sslmode {sslmode}): {text}"
        ));
    }
    DbError::from(e)
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
    /// SQLite's one writing connection.
    writer: Option<AnyPool>,
    /// PostgreSQL's connection for flushes (see [`Db::flush_connection`]).
    flusher: Option<Arc<FlushPool>>,
    backend: Backend,
    checkpoint: Arc<Checkpoint>,
}

/// PostgreSQL's flush connection and the pool it comes from.
#[derive(Debug)]
struct FlushPool {
    pool: AnyPool,
    /// The connection between flushes, with when it was last used.
    kept: tokio::sync::Mutex<Option<(PoolConnection<sqlx::Any>, std::time::Instant)>>,
}

/// A connection the worker flushes on: see [`Db::flush_connection`].
#[derive(Debug)]
pub enum FlushConnection<'a> {
    Kept(tokio::sync::MutexGuard<'a, Option<(PoolConnection<sqlx::Any>, std::time::Instant)>>),
    Pooled(PoolConnection<sqlx::Any>),
}

impl FlushConnection<'_> {
    pub fn conn(&mut self) -> &mut Conn {
        match self {
            FlushConnection::Kept(kept) => {
                let (conn, last_used) = kept.as_mut().expect("filled when handed out");
                *last_used = std::time::Instant::now();
                conn
            }
            FlushConnection::Pooled(conn) => conn,
        }
    }

    /// After a failed flush: the connection is closed rather than used again, in case a
    /// transaction is still open on it or it broke.
    pub fn discard(&mut self) {
        match self {
            FlushConnection::Kept(kept) => {
                if let Some((mut conn, _)) = kept.take() {
                    conn.close_on_drop();
                }
            }
            FlushConnection::Pooled(conn) => conn.close_on_drop(),
        }
    }
}

/// SQLite's WAL checkpoints, taken off the write path: a commit that runs an automatic
/// checkpoint copies megabytes of pages back into the database file while durable writers
/// wait. Instead a reading connection copies the WAL in the background (a passive checkpoint
/// runs beside the writer), and the writer then copies only the few frames committed
/// meanwhile, after which its next commit starts the WAL over from the beginning.
#[derive(Debug, Default)]
struct Checkpoint {
    running: AtomicBool,
    /// A background checkpoint finished: the writer catches up after its next write.
    catch_up: AtomicBool,
    /// When the last background checkpoint started.
    started: std::sync::Mutex<Option<std::time::Instant>>,
}

/// The SQLite writer's page cache (SQLite's default is 2 MiB), by acknowledgement mode. With
/// `ack = "durable"` every group commit rewrites counter rows all over the counter tables and
/// durable writers wait for it: a cache holding those tables (~15 MiB for 10 000 keys with
/// their teams and customers) keeps them from being re-read on every commit. Buffered flushes
/// run once per interval with nobody waiting: SQLite's default does.
pub fn writer_cache_mib(durable: bool) -> u32 {
    if durable {
        32
    } else {
        BUFFERED_WRITER_CACHE_MIB
    }
}

const BUFFERED_WRITER_CACHE_MIB: u32 = 2;

/// The longest a connection may take to hand out, a ping included.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// A pooled connection idle for this long is pinged before it is handed out; one in use
/// more recently is not (a broken one fails its query, and the worker drops it).
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// How often a background checkpoint starts while writes go on (one per flush interval at
/// most, since only flushes write).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Set on every SQLite connection. WAL lets readers run beside the writer; foreign keys are
/// off by default. Flushes rewrite rows scattered over the counter tables: 1 KiB pages (set
/// before a new file's first table; an existing file keeps its size) write less per changed
/// row; checkpoints are not automatic (see [`Checkpoint`]), and a WAL file left larger than
/// 64 MiB by a burst is truncated to that when it starts over. `synchronous = normal`: a
/// commit survives the process crashing; the last commits before a power loss or an OS crash
/// may be lost (the database stays consistent).
const SQLITE_PRAGMAS: &str = "pragma page_size = 1024; pragma journal_mode = wal; \
     pragma synchronous = normal; pragma wal_autocheckpoint = 0; \
     pragma journal_size_limit = 67108864; \
     pragma busy_timeout = 5000; pragma foreign_keys = on;";

pub type Tx = Transaction<'static, sqlx::Any>;

impl Db {
    /// Connects (creating a SQLite file when it does not exist yet). Does not migrate.
    pub async fn connect(url: &str) -> Result<Db, DbError> {
        Db::connect_with_cache(url, BUFFERED_WRITER_CACHE_MIB).await
    }

    /// Connects with a SQLite writer page cache of `writer_cache_mib` (see [`writer_cache_mib`]).
    pub async fn connect_with_cache(url: &str, writer_cache_mib: u32) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url).map_err(DbError::BadUrl)?;
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => format!("{url}{sep}mode=rwc"),
            // Sessions tell which transactions are Heimdall's (see
            // [`marks::await_transactions_in_flight`]).
            Backend::Postgres if !url.contains("application_name=") => {
                format!("{url}{sep}application_name={}", marks::APPLICATION_NAME)
            }
            _ => url.to_owned(),
        };
        let options = AnyConnectOptions::from_str(&url)
            .map_err(|e| DbError::BadUrl(format!("invalid database URL: {e}")))?
            .disable_statement_logging();
        let pool_of = |size: u32, cache_kib: u32| {
            AnyPoolOptions::new()
                .max_connections(size)
                // Short, so that an unreachable database fails a flush (and /readyz) quickly.
                .acquire_timeout(ACQUIRE_TIMEOUT)
                // A connection used within the last second is handed out as it is; one idle
                // for longer is pinged first (sqlx pings on every acquire by default: a second
                // round trip for every durable group commit).
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
                    Box::pin(async move {
                        if backend == Backend::Sqlite {
                            conn.execute(SQLITE_PRAGMAS).await?;
                            conn.execute(format!("pragma cache_size = -{cache_kib}").as_str())
                                .await?;
                        }
                        Ok(())
                    })
                })
                .connect_with(options.clone())
        };
        let (pool, writer, flusher) = match backend {
            Backend::Postgres => {
                let flusher = FlushPool {
                    pool: pool_of(1, 0).await.map_err(|e| connect_error(e, &url))?,
                    kept: tokio::sync::Mutex::new(None),
                };
                let pool = pool_of(16, 0).await.map_err(|e| connect_error(e, &url))?;
                (pool, None, Some(Arc::new(flusher)))
            }
            // SQLite takes one writer at a time anyway. Keeping every write on one connection
            // keeps that connection's page cache valid from one transaction to the next (a
            // connection that sees another's commit drops its whole cache); reads get their own.
            // An in-memory database lives in its one connection: nothing else would see it.
            Backend::Sqlite if url.contains(":memory:") || url.contains("mode=memory") => {
                (pool_of(1, writer_cache_mib * 1024).await?, None, None)
            }
            Backend::Sqlite => {
                let writer = pool_of(1, writer_cache_mib * 1024).await?;
                (pool_of(2, 1024).await?, Some(writer), None)
            }
        };
        Ok(Db {
            pool,
            writer,
            flusher,
            backend,
            checkpoint: Arc::default(),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Where writes go: SQLite's one writing connection, else the pool.
    fn writing_pool(&self) -> &AnyPool {
        self.writer.as_ref().unwrap_or(&self.pool)
    }

    /// Applies the embedded migrations of this backend that have not run yet.
    pub async fn migrate(&self) -> Result<(), DbError> {
        let mut conn = self.writing_pool().acquire().await?;
        migrate::run(&mut conn, self.backend).await
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

    /// The connection for the worker's flushes. On PostgreSQL it is always the same one, kept
    /// out of its pool between flushes: sqlx pings a connection when it goes back to a pool,
    /// so a connection released after each durable group commit cost one more round trip
    /// before it could be taken again, and the pool handed out its connections in turn, each
    /// server process with its own plan of the flush to make. On SQLite it is the writer,
    /// which goes back to its pool after each flush: admin writes use it too.
    pub async fn flush_connection(&self) -> Result<FlushConnection<'_>, DbError> {
        let Some(flusher) = &self.flusher else {
            return Ok(FlushConnection::Pooled(
                self.writing_pool().acquire().await?,
            ));
        };
        let mut kept = flusher.kept.lock().await;
        if let Some((conn, last_used)) = kept.as_mut() {
            // The rule the pools follow: a connection idle for a while is pinged first, within
            // the time an acquire may take.
            if last_used.elapsed() >= PING_IF_IDLE_FOR
                && !matches!(
                    tokio::time::timeout(ACQUIRE_TIMEOUT, conn.ping()).await,
                    Ok(Ok(()))
                )
            {
                if let Some((mut conn, _)) = kept.take() {
                    conn.close_on_drop();
                }
            }
        }
        if kept.is_none() {
            *kept = Some((flusher.pool.acquire().await?, std::time::Instant::now()));
        }
        Ok(FlushConnection::Kept(kept))
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
        let mut tx = conn.begin().await?;
        if self.backend() == Backend::Postgres {
            sqlx::query("set transaction isolation level repeatable read")
                .execute(&mut *tx)
                .await?;
        }
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

    /// SQLite: starts a background checkpoint unless one runs already.
    fn checkpoint_in_background(&self) {
        if self.writer.is_none() || self.checkpoint.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let db = self.clone();
        tokio::spawn(async move {
            match wal_checkpoint(&db.pool).await {
                Ok(()) => db.checkpoint.catch_up.store(true, Ordering::Release),
                Err(e) => tracing::warn!(error = %e, "background WAL checkpoint failed"),
            }
            db.checkpoint.running.store(false, Ordering::Release);
        });
    }

    /// SQLite, after each flush: once a background checkpoint finished, copies what was
    /// committed while it ran, so that the WAL can start over (cheap: the background
    /// checkpoint did almost all of it); starts the next background checkpoint every second.
    pub async fn after_write(&self) {
        let Some(writer) = &self.writer else { return };
        if self.checkpoint.catch_up.swap(false, Ordering::AcqRel) {
            if let Err(e) = wal_checkpoint(writer).await {
                tracing::warn!(error = %e, "WAL checkpoint failed");
            }
        }
        let due = {
            let mut started = self
                .checkpoint
                .started
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let due = started.is_none_or(|t| t.elapsed() >= CHECKPOINT_EVERY);
            if due {
                *started = Some(std::time::Instant::now());
            }
            due
        };
        if due {
            self.checkpoint_in_background();
        }
    }

    pub async fn close(&self) {
        if let Some(flusher) = &self.flusher {
            flusher.kept.lock().await.take();
            flusher.pool.close().await;
        }
        if let Some(writer) = &self.writer {
            writer.close().await;
        }
        self.pool.close().await;
    }
}

/// A passive checkpoint: copies what it can without waiting for or blocking anyone.
async fn wal_checkpoint(pool: &AnyPool) -> Result<(), DbError> {
    let mut conn = pool.acquire().await?;
    sqlx::query("pragma wal_checkpoint(passive)")
        .fetch_optional(&mut *conn)
        .await?;
    Ok(())
}

/// Keeps a single `AnyConnection` type in the signatures of the query functions.
pub type Conn = AnyConnection;

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames in the WAL now (a passive checkpoint reports them).
    async fn wal_frames(pool: &AnyPool) -> i64 {
        use sqlx::Row;
        let mut conn = pool.acquire().await.unwrap();
        let row = sqlx::query("pragma wal_checkpoint(passive)")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        row.try_get::<i64, _>(1).unwrap()
    }

    #[tokio::test]
    async fn an_in_memory_database_is_one_connection_that_sees_its_own_tables() {
        let db = Db::connect("sqlite::memory:").await.unwrap();
        db.migrate().await.unwrap();
        let snapshot = db.load(None).await.unwrap();
        assert!(snapshot.customers.is_empty());
        let mut conn = db.acquire().await.unwrap();
        crate::db::flush::clock(&mut conn).await.unwrap();
    }

    #[tokio::test]
    async fn the_wal_starts_over_after_a_background_checkpoint() {
        let path = std::env::temp_dir().join(format!("heimdall-wal-{}.db", uuid::Uuid::new_v4()));
        let db = Db::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let writer = db.writer.clone().unwrap();
        let write = |i: usize| {
            let db = db.clone();
            async move {
                let mut tx = db.begin().await.unwrap();
                sqlx::query(&format!(
                    "insert into t (i, pad) values ({i}, '{}')",
                    "x".repeat(2000)
                ))
                .execute(&mut *tx)
                .await
                .unwrap();
                tx.commit().await.unwrap();
            }
        };
        let mut tx = db.begin().await.unwrap();
        sqlx::query("create table t (i bigint, pad text)")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        for i in 0..100 {
            write(i).await;
        }
        // A reader still on the snapshot of then keeps the background checkpoint from
        // copying the frames committed after it, as commits made while a checkpoint runs are.
        let mut reader = AnyConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let mut snapshot = reader.begin().await.unwrap();
        sqlx::query("select count(*) from t")
            .fetch_one(&mut *snapshot)
            .await
            .unwrap();
        for i in 100..200 {
            write(i).await;
        }
        // No commit checkpoints by itself: the WAL holds every frame so far.
        let before = wal_frames(&writer).await;
        assert!(before > 400, "{before} frames");

        db.checkpoint_in_background();
        for _ in 0..500 {
            if db.checkpoint.catch_up.load(Ordering::Acquire) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(db.checkpoint.catch_up.load(Ordering::Acquire));
        drop(snapshot);
        reader.close().await.unwrap();
        // Frames were left behind: without the writer's catch-up, commits would keep growing
        // the WAL. The catch-up copies the rest; the next commit starts the WAL over.
        write(200).await;
        db.after_write().await;
        write(201).await;
        let after = wal_frames(&writer).await;
        assert!(after < 10, "the WAL started over: {after} frames");
        db.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}
