//! Idempotency keys in the database: a flush writes the keys it carries as one block row
//! (`dedup_blocks`); a start loads the blocks still valid; the worker purges expired ones.

use sqlx::Row;

use super::{Conn, DbError};
use crate::domain::Micros;
use crate::engine::dedup::{Dedup, DedupKey};

/// A key as two signed halves (`bigint` columns).
pub(super) fn split_key(key: DedupKey) -> (i64, i64) {
    ((key >> 64) as u64 as i64, key as u64 as i64)
}

/// The key of two signed halves.
pub(super) fn join_key(hi: i64, lo: i64) -> DedupKey {
    (u128::from(hi as u64) << 64) | u128::from(lo as u64)
}

/// The idempotency keys of one flush as one block: the latest expiry, and the keys back to
/// back, 16 bytes each, little endian. One row however many keys: a flush of a million keys
/// costs the database one insert, a start reads a few rows per second of history, and the
/// purge deletes whole blocks.
pub(super) fn key_block(keys: &[(DedupKey, Micros)]) -> (Micros, Vec<u8>) {
    let mut bytes = Vec::with_capacity(keys.len() * 16);
    let mut expires = Micros::MIN;
    for (key, at) in keys {
        bytes.extend_from_slice(&key.to_le_bytes());
        expires = expires.max(*at);
    }
    (expires, bytes)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_keys_round_trip_through_two_signed_halves() {
        for key in [0u128, 1, u128::MAX, 1 << 64, (1 << 127) | 5] {
            let (hi, lo) = split_key(key);
            assert_eq!(join_key(hi, lo), key);
        }
    }
}
