//! SQLite: one writing connection (SQLite takes one writer at a time anyway, and keeping every
//! write on one connection keeps its page cache valid from one transaction to the next: a
//! connection that sees another's commit drops its whole cache), readers beside it, WAL
//! checkpoints off the write path, and how a flush is sent ([`flush`]).

pub mod flush;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::AnyPool;

use super::{Db, DbError, Own};

/// Connects, creating the file when it does not exist yet.
pub(super) async fn connect(url: &str, writer_cache_mib: u32) -> Result<Db, DbError> {
    let url = if url.contains("mode=") {
        url.to_owned()
    } else {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}mode=rwc")
    };
    let options = super::options(&url)?;
    let setup = |cache_kib: u32| {
        Some(format!(
            "{SQLITE_PRAGMAS} pragma cache_size = -{cache_kib};"
        ))
    };
    let writer = super::pool(&options, 1, setup(writer_cache_mib * 1024)).await?;
    // An in-memory database lives in its one connection: nothing else would see it.
    if url.contains(":memory:") || url.contains("mode=memory") {
        return Ok(Db {
            pool: writer,
            own: Own::Sqlite(Writer::default()),
        });
    }
    let pool = super::pool(&options, 2, setup(1024)).await?;
    Ok(Db {
        pool,
        own: Own::Sqlite(Writer {
            pool: Some(writer),
            checkpoint: Arc::default(),
        }),
    })
}

/// The writing connection (none for an in-memory database: its one connection does all).
#[derive(Debug, Clone, Default)]
pub(super) struct Writer {
    pool: Option<AnyPool>,
    checkpoint: Arc<Checkpoint>,
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

impl Writer {
    pub(super) fn pool(&self) -> Option<&AnyPool> {
        self.pool.as_ref()
    }

    /// Starts a background checkpoint on a reading connection of `readers`, unless one runs.
    fn checkpoint_in_background(&self, readers: &AnyPool) {
        if self.pool.is_none() || self.checkpoint.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let readers = readers.clone();
        let checkpoint = Arc::clone(&self.checkpoint);
        tokio::spawn(async move {
            match wal_checkpoint(&readers).await {
                Ok(()) => checkpoint.catch_up.store(true, Ordering::Release),
                Err(e) => tracing::warn!(error = %e, "background WAL checkpoint failed"),
            }
            checkpoint.running.store(false, Ordering::Release);
        });
    }

    /// After each flush: once a background checkpoint finished, copies what was committed
    /// while it ran, so that the WAL can start over (cheap: the background checkpoint did
    /// almost all of it); starts the next background checkpoint every second.
    pub(super) async fn after_write(&self, readers: &AnyPool) {
        let Some(writer) = &self.pool else { return };
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
            self.checkpoint_in_background(readers);
        }
    }

    pub(super) async fn close(&self) {
        if let Some(writer) = &self.pool {
            writer.close().await;
        }
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

#[cfg(test)]
mod tests {
    use sqlx::{AnyConnection, Connection};

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
    async fn the_wal_starts_over_after_a_background_checkpoint() {
        let path = std::env::temp_dir().join(format!("heimdall-wal-{}.db", uuid::Uuid::new_v4()));
        let db = Db::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let Own::Sqlite(w) = &db.own else {
            unreachable!("a SQLite URL")
        };
        let w = w.clone();
        let writer = w.pool.clone().unwrap();
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

        w.checkpoint_in_background(&db.pool);
        for _ in 0..500 {
            if w.checkpoint.catch_up.load(Ordering::Acquire) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(w.checkpoint.catch_up.load(Ordering::Acquire));
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
