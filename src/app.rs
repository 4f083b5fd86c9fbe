//! Build, then run: `App::build` connects, migrates, loads the state and binds the listener;
//! `App::run` serves until the shutdown future resolves, then drains in-flight requests.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::auth::Auth;
use crate::config::Config;
use crate::db::{Db, DbError};
use crate::engine::check::CheckPolicy;
use crate::engine::dedup::Dedup;
use crate::engine::Store;
use crate::state::AppState;

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
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct App {
    listener: TcpListener,
    state: AppState,
}

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
        let db = Db::connect(&config.database_url).await?;
        db.migrate().await?;
        let snapshot = db.load().await?;
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
        let state = AppState {
            store: Arc::new(Store::new(snapshot)),
            db,
            admin_writes: Arc::new(tokio::sync::Mutex::new(())),
            dedup: Arc::new(Dedup::new(config.dedup_window.as_micros() as i64)),
            policy: Arc::new(CheckPolicy {
                require_virtual_key: config.require_virtual_key,
                required_headers: config
                    .required_headers
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
            }),
            auth: Arc::new(auth),
            config: Arc::new(config),
        };
        Ok(App { listener, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has a local address")
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish
    /// and closes the database pool.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = crate::http::router(self.state.clone());
        tracing::info!(listen = %self.local_addr(), "heimdall serving");
        axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown)
            .await?;
        self.state.db.close().await;
        tracing::info!("heimdall stopped");
        Ok(())
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
