//! PostgreSQL: connections (every session named, so that a start can find the transactions of
//! other Heimdall processes), the kept flush connection, and what only this backend has: the
//! usage journal of durable group commits ([`journal`], [`entry`]), commit marks ([`marks`]),
//! and how a flush is sent ([`flush`]).

pub mod entry;
pub mod flush;
pub mod journal;
pub mod marks;

use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::{AnyPool, Connection};

use super::{Conn, Db, DbError, Own, ACQUIRE_TIMEOUT, PING_IF_IDLE_FOR};

/// Connects: 16 connections for reads and admin writes, one for the worker's flushes.
pub(super) async fn connect(url: &str) -> Result<Db, DbError> {
    // Sessions tell which transactions are Heimdall's (see
    // [`marks::await_transactions_in_flight`]).
    let url = if url.contains("application_name=") {
        url.to_owned()
    } else {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}application_name={}", marks::APPLICATION_NAME)
    };
    let options = super::options(&url)?;
    let flusher = FlushPool {
        pool: super::pool(&options, 1, None)
            .await
            .map_err(|e| connect_error(e, &url))?,
        kept: tokio::sync::Mutex::new(None),
    };
    let pool = super::pool(&options, 16, None)
        .await
        .map_err(|e| connect_error(e, &url))?;
    Ok(Db {
        pool,
        own: Own::Postgres(Arc::new(flusher)),
    })
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

/// PostgreSQL's flush connection and the pool it comes from. The worker flushes on the same
/// connection every time, kept out of its pool between flushes: sqlx pings a connection when
/// it goes back to a pool, so a connection released after each durable group commit cost one
/// more round trip before it could be taken again, and a pool hands out its connections in
/// turn, each server process with its own plan of the flush to make.
#[derive(Debug)]
pub struct FlushPool {
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

impl FlushPool {
    /// The kept connection: pinged first when it has been idle a while (the rule the pools
    /// follow), replaced when that fails.
    pub(super) async fn connection(&self) -> Result<FlushConnection<'_>, DbError> {
        let mut kept = self.kept.lock().await;
        if let Some((conn, last_used)) = kept.as_mut() {
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
            *kept = Some((self.pool.acquire().await?, std::time::Instant::now()));
        }
        Ok(FlushConnection::Kept(kept))
    }

    pub(super) async fn close(&self) {
        self.kept.lock().await.take();
        self.pool.close().await;
    }
}
