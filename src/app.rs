//! Build, then run: `App::build` connects, migrates, loads the state and binds the listener;
//! `App::run` serves until the shutdown future resolves, then drains in-flight requests.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::db::{flush, Db, DbError};
use crate::domain::time::now_micros;
use crate::engine::check::CheckPolicy;
use crate::engine::dedup::Dedup;
use crate::engine::holds::Holds;
use crate::engine::rollup::Rollups;
use crate::engine::Store;
use crate::http::auth::Auth;
use crate::http::state::AppState;
use crate::telemetry::Metrics;
use crate::worker::{self, Worker};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "refusing to listen on {0} without tokens: set auth.admin_tokens and auth.gateway_tokens \
         (or HEIMDALL__AUTH__ADMIN_TOKENS / HEIMDALL__AUTH__GATEWAY_TOKENS), or listen on a \
         loopback address"
    )]
    OpenOnNetwork(SocketAddr),
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("alerts: {0}")]
    Alerts(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct App {
    listener: TcpListener,
    /// The sender of threshold alerts, when webhooks are configured.
    alerts: Option<crate::alerts::Sender>,
    /// Envoy's rate limit service, when `grpc_listen` is set.
    grpc: Option<TcpListener>,
    state: AppState,
}

/// How long a start waits for the transactions of other Heimdall sessions that were running
/// when it began (see [`crate::db::postgres::marks::await_transactions_in_flight`]).
const IN_FLIGHT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl App {
    pub async fn build(config: Config) -> Result<App, StartError> {
        let auth = Auth::new(&config.auth);
        if auth.is_open() {
            if !config.listen.ip().is_loopback() {
                return Err(StartError::OpenOnNetwork(config.listen));
            }
            tracing::warn!(
                listen = %config.listen,
                "no admin or gateway tokens configured: the API is open to anyone who can reach \
                 this loopback address"
            );
        }
        let db = Db::connect_with_cache(
            &config.database_url,
            crate::db::writer_cache_mib(config.ack == crate::config::AckMode::Durable),
        )
        .await?;
        db.migrate().await?;
        if db.journals() {
            let mut conn = db.acquire().await?;
            let ended =
                crate::db::postgres::marks::await_transactions_in_flight(&mut conn, IN_FLIGHT_WAIT)
                    .await?;
            if !ended {
                tracing::warn!(
                    waited_s = IN_FLIGHT_WAIT.as_secs(),
                    "transactions of other Heimdall sessions are still running; starting \
                     anyway: if one is the last commit of a process that crashed, a retry of an \
                     update it holds may be counted twice"
                );
            }
        }
        // What durable commits journaled before a crash (this process's last run or any
        // replica's) is in the tables before they are loaded.
        let folded = crate::db::postgres::journal::fold_all(&db).await?;
        if folded.entries > 0 {
            tracing::info!(entries = folded.entries, "usage journal folded");
        }
        let mut conn = db.acquire().await?;
        let (config_version, usage_version) = flush::clock(&mut conn).await?;
        let dedup = Dedup::new(
            config.dedup_window.as_micros() as i64,
            config.dedup_max_keys,
        );
        let started = std::time::Instant::now();
        crate::db::dedup::load_dedup_keys(&mut conn, now_micros(), &dedup).await?;
        tracing::info!(
            keys = dedup.len(),
            ms = started.elapsed().as_millis() as u64,
            "idempotency keys loaded"
        );
        drop(conn);
        let snapshot = db.load(None).await?;
        tracing::info!(
            backend = ?db.backend(),
            customers = snapshot.customers.len(),
            teams = snapshot.teams.len(),
            virtual_keys = snapshot.virtual_keys.len(),
            "state loaded"
        );
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let grpc = match config.grpc_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?,
            ),
            None => None,
        };
        let store = Arc::new(Store::new(snapshot));
        let dedup = Arc::new(dedup);
        let rollups = Arc::new(Rollups::default());
        let metrics = Arc::new(Metrics::new());
        let holds = Arc::new(Holds::new(Holds::new_writer()));
        // Holds placed before this start (by the process this one replaces, or by replicas)
        // are counted from the start on; they end when settled, released or expired.
        let stored = {
            let mut conn = db.acquire().await?;
            crate::db::holds::load(&mut conn).await?
        };
        if !stored.is_empty() {
            let snapshot = store.snapshot();
            holds.absorb(stored, &[], now_micros(), |kind, limit| {
                crate::worker::counter_of(&snapshot, kind, limit)
            });
            tracing::info!(holds = holds.len(), "holds loaded");
        }
        let mut worker = Worker::new(
            Arc::clone(&store),
            db.clone(),
            Arc::clone(&dedup),
            Arc::clone(&rollups),
            Arc::clone(&holds),
            Arc::clone(&metrics),
            (config_version, usage_version),
        );
        let alerts =
            match crate::alerts::Alerts::new(&config.alerts, db.clone(), Arc::clone(&metrics))
                .map_err(StartError::Alerts)?
            {
                Some((alerts, sender)) => {
                    worker = worker.with_alerts(alerts);
                    Some(sender)
                }
                None => None,
            };
        let state = AppState(Arc::new(crate::http::state::SharedState {
            store,
            dedup,
            rollups,
            holds,
            db,
            worker,
            policy: Arc::new(CheckPolicy {
                require_virtual_key: config.require_virtual_key,
                required_headers: config
                    .required_headers
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
            }),
            auth: Arc::new(auth),
            metrics,
            config: Arc::new(config),
        }));
        // Windows that ended while the service was down count as 0 at once (expiry is lazy on
        // every path); the worker's first tick, as soon as it runs, writes their resets in the
        // background, in bounded transactions, while the service answers.
        Ok(App {
            listener,
            alerts,
            grpc,
            state,
        })
    }

    /// The shared state (tests drive the worker through it).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has a local address")
    }

    /// The address of the rate limit service (gRPC), when `grpc_listen` is set.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish,
    /// runs a final flush and closes the database pool.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = crate::http::router(self.state.clone());
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(worker::run(
            self.state.worker.clone(),
            self.state.config.flush_interval,
            cancel.clone(),
        ));
        tasks.spawn(upkeep(Arc::clone(&self.state.metrics), cancel.clone()));
        if let Some(sender) = self.alerts.take() {
            tasks.spawn(sender.run(cancel.clone()));
        }
        tasks.close();
        tracing::info!(listen = %self.local_addr(), "heimdall serving");
        let limits = crate::http::serve::ConnectionLimits::of(&self.state.config);
        // One shutdown for both servers: each stops accepting and drains its calls in flight.
        let stop = CancellationToken::new();
        let stopping = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            stopping.cancel();
        });
        let http = crate::http::serve::serve(
            self.listener,
            router,
            limits,
            stop.clone().cancelled_owned(),
        );
        match self.grpc {
            Some(listener) => {
                let grpc = crate::grpc::serve(
                    listener,
                    self.state.clone(),
                    stop.clone().cancelled_owned(),
                );
                let stop_http = stop.clone();
                let (_, served) = tokio::join!(http, async move {
                    let served = grpc.await;
                    // A gRPC server that fails stops the whole service rather than half of it.
                    stop_http.cancel();
                    served
                });
                if let Err(e) = served {
                    tracing::error!(error = %e, "the rate limit service (gRPC) failed");
                }
            }
            None => http.await,
        }
        // In-flight requests are done: the final flush sees all they applied.
        cancel.cancel();
        tasks.wait().await;
        self.state.db.close().await;
        tracing::info!("heimdall stopped");
        Ok(())
    }
}

/// Folds histogram samples into buckets every few seconds, so memory stays bounded however
/// rarely `/metrics` is scraped.
async fn upkeep(metrics: Arc<Metrics>, cancel: CancellationToken) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = every.tick() => metrics.upkeep(),
        }
    }
}

/// Listens for SIGINT and SIGTERM from the call on; the future resolves on the first. Call it
/// before starting: a signal that arrives before the future is first polled (during start-up,
/// or between the first request served and the first poll) is kept for it rather than
/// killing the process.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let listeners = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let recv = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let (interrupt, terminate) = listeners;
            tokio::select! {
                () = recv(interrupt) => {},
                () = recv(terminate) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutdown signal received");
    }
}
