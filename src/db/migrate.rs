//! The embedded migrations, applied in order, each once, in a transaction. On PostgreSQL an
//! advisory lock keeps replicas that start together from applying one twice.

use sqlx::{Acquire, Row};

use super::{Backend, Conn, DbError};

/// `(version, description, sql)` of each backend's migrations, in order.
const POSTGRES: &[(i64, &str, &str)] = &[
    (
        1,
        "entities",
        include_str!("../../migrations/postgres/0001_entities.sql"),
    ),
    (
        2,
        "usage_flush",
        include_str!("../../migrations/postgres/0002_usage_flush.sql"),
    ),
    (
        3,
        "counter_id_hash_indexes",
        include_str!("../../migrations/postgres/0003_counter_id_hash_indexes.sql"),
    ),
    (
        4,
        "usage_journal",
        include_str!("../../migrations/postgres/0004_usage_journal.sql"),
    ),
    (
        5,
        "commit_marks",
        include_str!("../../migrations/postgres/0005_commit_marks.sql"),
    ),
    (
        6,
        "dedup_blocks",
        include_str!("../../migrations/postgres/0006_dedup_blocks.sql"),
    ),
    (
        7,
        "holds",
        include_str!("../../migrations/postgres/0007_holds.sql"),
    ),
    (
        8,
        "model_prices",
        include_str!("../../migrations/postgres/0008_model_prices.sql"),
    ),
    (
        9,
        "alert_deliveries",
        include_str!("../../migrations/postgres/0009_alert_deliveries.sql"),
    ),
];
const SQLITE: &[(i64, &str, &str)] = &[
    (
        1,
        "entities",
        include_str!("../../migrations/sqlite/0001_entities.sql"),
    ),
    (
        2,
        "usage_flush",
        include_str!("../../migrations/sqlite/0002_usage_flush.sql"),
    ),
    (
        3,
        "dedup_blocks",
        include_str!("../../migrations/sqlite/0003_dedup_blocks.sql"),
    ),
    (
        4,
        "holds",
        include_str!("../../migrations/sqlite/0004_holds.sql"),
    ),
    (
        5,
        "model_prices",
        include_str!("../../migrations/sqlite/0005_model_prices.sql"),
    ),
    (
        6,
        "alert_deliveries",
        include_str!("../../migrations/sqlite/0006_alert_deliveries.sql"),
    ),
];

/// An arbitrary constant naming Heimdall's migration lock.
const LOCK_KEY: i64 = 0x4845_494d_4441_4c4c;

pub async fn run(conn: &mut Conn, backend: Backend) -> Result<(), DbError> {
    let migrations = match backend {
        Backend::Postgres => POSTGRES,
        Backend::Sqlite => SQLITE,
    };
    let mut tx = conn.begin().await?;
    if backend == Backend::Postgres {
        sqlx::query("select pg_advisory_xact_lock($1)")
            .bind(LOCK_KEY)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::raw_sql(
        "create table if not exists heimdall_migrations (\
            version bigint primary key, description text not null, applied_at bigint not null)",
    )
    .execute(&mut *tx)
    .await?;
    let applied: Vec<i64> = sqlx::query("select version from heimdall_migrations")
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get::<i64, _>(0))
        .collect::<Result<_, _>>()?;
    for (version, description, sql) in migrations {
        if applied.contains(version) {
            continue;
        }
        sqlx::raw_sql(sql)
            .execute(&mut *tx)
            .await
            .map_err(|source| DbError::Migration {
                version: *version,
                source,
            })?;
        sqlx::query(
            "insert into heimdall_migrations (version, description, applied_at) values ($1, $2, $3)",
        )
        .bind(*version)
        .bind(*description)
        .bind(crate::domain::time::now_micros())
        .execute(&mut *tx)
        .await?;
        tracing::info!(version, description, "applied migration");
    }
    tx.commit().await?;
    let moved = super::dedup::convert_dedup_keys(conn, crate::domain::time::now_micros()).await?;
    if moved > 0 {
        tracing::info!(keys = moved, "idempotency keys moved into blocks");
    }
    Ok(())
}
