//! Holds in the database: a row per live hold (`holds`) and notes that a hold ended through
//! another process than its writer (`hold_ends`). A flush inserts the holds placed and deletes
//! the holds ended since the last one; every full tick reads them all back (they are requests
//! in flight: thousands, not millions).

use std::fmt::Write as _;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sqlx::Row;
use uuid::Uuid;

use super::rows::text_literal;
use super::{Conn, DbError};
use crate::domain::Micros;
use crate::engine::holds::{Amounts, Held, Hold, HoldKey};
use crate::engine::level::LimitKind;

/// Rows per statement.
const CHUNK: usize = 500;

/// What a flush writes of holds.
#[derive(Debug, Clone, Copy, Default)]
pub struct HoldWrites<'a> {
    pub placed: &'a [Arc<Hold>],
    pub ended: &'a [Arc<Hold>],
    /// Ended holds another process placed: each gets a note, so that its writer frees them.
    pub notes: &'a [Arc<Hold>],
}

impl HoldWrites<'_> {
    pub fn is_empty(&self) -> bool {
        self.placed.is_empty() && self.ended.is_empty()
    }

    pub fn rows(&self) -> usize {
        self.placed.len() + self.ended.len()
    }

    /// The statements: inserts, then deletes (a hold placed and ended since the last flush
    /// goes in and out), then notes.
    pub(super) fn statements(&self, mut out: impl FnMut(String)) {
        for chunk in self.placed.chunks(CHUNK) {
            let mut sql = String::from(
                "insert into holds (request_id, attempt, writer, expires_at, cost, tokens, \
                 requests, counters) values ",
            );
            for (i, h) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(',');
                }
                let _ = write!(
                    sql,
                    "({}, {}, {}, {}, {}, {}, {}, {})",
                    text_literal(&h.request_id),
                    h.attempt as i64,
                    h.writer,
                    h.expires_at,
                    h.reserved.cost,
                    h.reserved.tokens,
                    h.reserved.requests,
                    text_literal(&counters_json(h))
                );
            }
            sql.push_str(" on conflict (request_id, attempt) do nothing");
            out(sql);
        }
        for chunk in self.ended.chunks(CHUNK) {
            let mut sql = String::from("delete from holds where ");
            for (i, h) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push_str(" or ");
                }
                let _ = write!(
                    sql,
                    "(request_id = {} and attempt = {})",
                    text_literal(&h.request_id),
                    h.attempt as i64
                );
            }
            out(sql);
        }
        for chunk in self.notes.chunks(CHUNK) {
            let mut sql = String::from(
                "insert into hold_ends (request_id, attempt, writer, expires_at) values ",
            );
            for (i, h) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(',');
                }
                let _ = write!(
                    sql,
                    "({}, {}, {}, {})",
                    text_literal(&h.request_id),
                    h.attempt as i64,
                    h.writer,
                    h.expires_at
                );
            }
            sql.push_str(" on conflict (writer, request_id, attempt) do nothing");
            out(sql);
        }
    }
}

fn kind_code(kind: LimitKind) -> u8 {
    match kind {
        LimitKind::Budget => 0,
        LimitKind::Tokens => 1,
        LimitKind::Requests => 2,
    }
}

fn kind_of(code: u8) -> Option<LimitKind> {
    match code {
        0 => Some(LimitKind::Budget),
        1 => Some(LimitKind::Tokens),
        2 => Some(LimitKind::Requests),
        _ => None,
    }
}

fn counters_json(h: &Hold) -> String {
    let list: Vec<(u8, Uuid, i64)> = h
        .counters
        .iter()
        .map(|c| (kind_code(c.kind), c.limit, c.amount))
        .collect();
    serde_json::to_string(&list).unwrap_or_else(|_| "[]".to_owned())
}

fn corrupt(message: String) -> DbError {
    DbError::Corrupt {
        table: "holds",
        message,
    }
}

fn counters_of(text: &str) -> Result<Vec<Held>, DbError> {
    let list: Vec<(u8, Uuid, i64)> =
        serde_json::from_str(text).map_err(|e| corrupt(format!("counters: {e}")))?;
    list.into_iter()
        .map(|(code, limit, amount)| {
            Ok(Held {
                kind: kind_of(code).ok_or_else(|| corrupt(format!("counter kind {code}")))?,
                limit,
                amount,
                counter: None,
            })
        })
        .collect()
}

/// A hold as its row and the journal's entries store it (`counters` as JSON text).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredHold {
    pub request_id: String,
    pub attempt: u64,
    pub writer: i64,
    pub expires_at: Micros,
    pub reserved: (i64, i64, i64),
    pub counters: String,
}

impl StoredHold {
    pub fn of(h: &Hold) -> StoredHold {
        StoredHold {
            request_id: h.request_id.clone(),
            attempt: h.attempt,
            writer: h.writer,
            expires_at: h.expires_at,
            reserved: (h.reserved.cost, h.reserved.tokens, h.reserved.requests),
            counters: counters_json(h),
        }
    }

    pub fn hold(self) -> Result<Hold, DbError> {
        Ok(Hold {
            counters: counters_of(&self.counters)?,
            request_id: self.request_id,
            attempt: self.attempt,
            writer: self.writer,
            expires_at: self.expires_at,
            reserved: Amounts {
                cost: self.reserved.0,
                tokens: self.reserved.1,
                requests: self.reserved.2,
            },
            seq: 0,
        })
    }
}

/// Every hold the database has (counters unresolved).
pub async fn load(c: &mut Conn) -> Result<Vec<Hold>, DbError> {
    let rows = sqlx::query(
        "select request_id, attempt, writer, expires_at, cost, tokens, requests, counters \
         from holds",
    )
    .fetch_all(c)
    .await?;
    rows.iter()
        .map(|r| {
            StoredHold {
                request_id: r.try_get(0)?,
                attempt: r.try_get::<i64, _>(1)?.max(0) as u64,
                writer: r.try_get(2)?,
                expires_at: r.try_get(3)?,
                reserved: (r.try_get(4)?, r.try_get(5)?, r.try_get(6)?),
                counters: r.try_get(7)?,
            }
            .hold()
        })
        .collect()
}

/// The holds of `writer` that ended through another process.
pub async fn ended_elsewhere(c: &mut Conn, writer: i64) -> Result<Vec<HoldKey>, DbError> {
    let rows = sqlx::query("select request_id, attempt from hold_ends where writer = $1")
        .bind(writer)
        .fetch_all(c)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get::<i64, _>(1)?.max(0) as u64)))
        .collect()
}

/// Deletes holds and notes whose TTL ended before `before` (the processes that held them are
/// gone, or long done with them).
pub async fn purge(c: &mut Conn, before: Micros) -> Result<(), DbError> {
    sqlx::query("delete from holds where expires_at < $1")
        .bind(before)
        .execute(&mut *c)
        .await?;
    sqlx::query("delete from hold_ends where expires_at < $1")
        .bind(before)
        .execute(&mut *c)
        .await?;
    Ok(())
}
