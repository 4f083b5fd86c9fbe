//! Alert deliveries in the database (`alert_deliveries`): the guard that makes one crossing one
//! delivery whichever replica sees it, and the retry state that survives restarts.

use sqlx::Row;

use super::{Db, DbError};
use crate::domain::Micros;

/// A delivery to insert: the guard's key and the body to send.
#[derive(Debug, Clone)]
pub struct NewDelivery<'a> {
    pub id: &'a str,
    pub webhook: &'a str,
    pub limit_id: &'a str,
    pub kind: &'a str,
    pub threshold: f64,
    pub window_start: Micros,
    pub body: &'a str,
    pub now: Micros,
}

/// A delivery this process has claimed and must send.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    pub webhook: String,
    pub body: String,
    /// Attempts made before this one.
    pub attempts: i64,
}

/// A delivery as `GET /api/governance/alerts` lists it.
#[derive(Debug, Clone)]
pub struct DeliveryRow {
    pub id: String,
    pub webhook: String,
    pub body: String,
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub next_attempt_at: Micros,
    pub created_at: Micros,
    pub delivered_at: Option<Micros>,
}

pub const PENDING: &str = "pending";
pub const DELIVERED: &str = "delivered";

impl Db {
    /// Runs one write statement on the writing connection (one statement is atomic on its
    /// own); the rows it changed.
    async fn write_one<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> Result<u64, DbError> {
        let mut conn = self.acquire_writer().await?;
        Ok(query.execute(&mut *conn).await?.rows_affected())
    }

    /// Inserts a delivery unless one for the same webhook, limit, threshold and window exists
    /// (this process's earlier run, or another replica, saw the crossing first). True when
    /// this call inserted it.
    pub async fn insert_delivery(&self, d: &NewDelivery<'_>) -> Result<bool, DbError> {
        let query = sqlx::query(
            "insert into alert_deliveries (id, webhook, limit_id, kind, threshold, window_start, \
             body, status, attempts, next_attempt_at, created_at) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $9) \
             on conflict (webhook, limit_id, kind, threshold, window_start) do nothing",
        )
        .bind(d.id)
        .bind(d.webhook)
        .bind(d.limit_id)
        .bind(d.kind)
        .bind(d.threshold)
        .bind(d.window_start)
        .bind(d.body)
        .bind(PENDING)
        .bind(d.now);
        Ok(self.write_one(query).await? == 1)
    }

    /// Claims up to `max` pending deliveries due by `now` for this process until `lease_until`
    /// (another replica does not send them meanwhile; if this process dies, they are due
    /// again when the lease ends).
    pub async fn claim_due_deliveries(
        &self,
        now: Micros,
        lease_until: Micros,
        max: i64,
    ) -> Result<Vec<Claimed>, DbError> {
        let due = {
            let mut conn = self.acquire().await?;
            sqlx::query(
                "select id from alert_deliveries where status = $1 and next_attempt_at <= $2 \
                 order by next_attempt_at limit $3",
            )
            .bind(PENDING)
            .bind(now)
            .bind(max)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<Vec<_>, _>>()?
        };
        let mut claimed = Vec::with_capacity(due.len());
        let mut conn = self.acquire_writer().await?;
        for id in due {
            let row = sqlx::query(
                "update alert_deliveries set next_attempt_at = $1 \
                 where id = $2 and status = $3 and next_attempt_at <= $4 \
                 returning webhook, body, attempts",
            )
            .bind(lease_until)
            .bind(&id)
            .bind(PENDING)
            .bind(now)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(row) = row {
                claimed.push(Claimed {
                    id,
                    webhook: row.try_get(0)?,
                    body: row.try_get(1)?,
                    attempts: row.try_get(2)?,
                });
            }
        }
        Ok(claimed)
    }

    /// Records a delivery the receiver accepted.
    pub async fn delivery_done(&self, id: &str, attempts: i64, now: Micros) -> Result<(), DbError> {
        self.write_one(
            sqlx::query(
                "update alert_deliveries set status = $1, attempts = $2, delivered_at = $3, \
                 last_error = null where id = $4",
            )
            .bind(DELIVERED)
            .bind(attempts)
            .bind(now)
            .bind(id),
        )
        .await?;
        Ok(())
    }

    /// Records a failed attempt and when to try again.
    pub async fn delivery_failed(
        &self,
        id: &str,
        attempts: i64,
        error: &str,
        next_attempt_at: Micros,
    ) -> Result<(), DbError> {
        self.write_one(
            sqlx::query(
                "update alert_deliveries set attempts = $1, last_error = $2, next_attempt_at = $3 \
                 where id = $4 and status = $5",
            )
            .bind(attempts)
            .bind(error)
            .bind(next_attempt_at)
            .bind(id)
            .bind(PENDING),
        )
        .await?;
        Ok(())
    }

    /// Gives back the claim of a delivery this process stopped sending (it is due at once).
    pub async fn release_delivery(&self, id: &str, now: Micros) -> Result<(), DbError> {
        self.write_one(
            sqlx::query(
                "update alert_deliveries set next_attempt_at = $1 where id = $2 and status = $3",
            )
            .bind(now)
            .bind(id)
            .bind(PENDING),
        )
        .await?;
        Ok(())
    }

    /// A page of deliveries, newest first, optionally of one status, with the total.
    pub async fn list_deliveries(
        &self,
        status: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<DeliveryRow>, i64), DbError> {
        let mut conn = self.acquire().await?;
        let filter = "where ($1 is null or status = $1)";
        let total: i64 = sqlx::query(&format!(
            "select cast(count(*) as bigint) from alert_deliveries {filter}"
        ))
        .bind(status)
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
        let rows = sqlx::query(&format!(
            "select id, webhook, body, status, attempts, last_error, next_attempt_at, \
             created_at, delivered_at from alert_deliveries {filter} \
             order by created_at desc, id limit $2 offset $3"
        ))
        .bind(status)
        .bind(limit)
        .bind(offset)
        .fetch_all(&mut *conn)
        .await?;
        let rows = rows
            .iter()
            .map(|r| {
                Ok(DeliveryRow {
                    id: r.try_get(0)?,
                    webhook: r.try_get(1)?,
                    body: r.try_get(2)?,
                    status: r.try_get(3)?,
                    attempts: r.try_get(4)?,
                    last_error: r.try_get(5)?,
                    next_attempt_at: r.try_get(6)?,
                    created_at: r.try_get(7)?,
                    delivered_at: r.try_get(8)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok((rows, total))
    }
}
