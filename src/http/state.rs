//! The application state every handler shares.

use std::sync::Arc;

use crate::config::Config;
use crate::db::Db;
use crate::engine::check::CheckPolicy;
use crate::engine::dedup::Dedup;
use crate::engine::holds::Holds;
use crate::engine::rollup::Rollups;
use crate::engine::Store;
use crate::http::auth::Auth;
use crate::telemetry::Metrics;
use crate::worker::Worker;

/// The state handlers share: one `Arc`, so that cloning it per request (extractors,
/// middleware) costs a single reference count.
#[derive(Debug, Clone)]
pub struct AppState(pub Arc<SharedState>);

impl std::ops::Deref for AppState {
    type Target = SharedState;

    fn deref(&self) -> &SharedState {
        &self.0
    }
}

#[derive(Debug)]
pub struct SharedState {
    /// The in-memory governance state; every read comes from here.
    pub store: Arc<Store>,
    /// Idempotency keys of recent usage updates.
    pub dedup: Arc<Dedup>,
    /// Hourly usage not yet flushed.
    pub rollups: Arc<Rollups>,
    /// Capacity set aside for requests in flight.
    pub holds: Arc<Holds>,
    /// The database; admin changes are written through to it before they reach the store.
    pub db: Db,
    /// The background worker's handle: durable acknowledgements, the configuration lock,
    /// whether the database answers, and flushes on demand (start-up, tests, tools).
    pub worker: Worker,
    /// The check settings of the configuration.
    pub policy: Arc<CheckPolicy>,
    /// Hashed bearer tokens.
    pub auth: Arc<Auth>,
    /// The Prometheus series of this application.
    pub metrics: Arc<Metrics>,
    pub config: Arc<Config>,
}
