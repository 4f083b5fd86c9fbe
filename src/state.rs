//! The application state every handler shares.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::auth::Auth;
use crate::config::Config;
use crate::db::Db;
use crate::engine::check::CheckPolicy;
use crate::engine::dedup::Dedup;
use crate::engine::rollup::Rollups;
use crate::engine::Store;
use crate::telemetry::Metrics;
use crate::worker::{FlushSignal, Flusher, Versions};

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
    /// The database; admin changes are written through to it before they reach the store.
    pub db: Db,
    /// Serialises admin writes (and reloads), so that the database and the store see changes
    /// in one order. A tokio mutex: it is held across the database transaction's awaits.
    pub admin_writes: Arc<tokio::sync::Mutex<()>>,
    /// Held for the whole of a flush: a counter's item must be written before another flush
    /// takes it (the worker is the only flusher in service; tests and tools flush too).
    pub flushing: Arc<tokio::sync::Mutex<()>>,
    /// This process's entries in the usage journal.
    pub journal: Arc<crate::worker::Journal>,
    /// Idempotency keys of recent usage updates.
    pub dedup: Arc<Dedup>,
    /// Hourly usage not yet flushed.
    pub rollups: Arc<Rollups>,
    /// Versions of the shared clock this process has seen.
    pub versions: Arc<Versions>,
    /// Group commit of durable acknowledgements.
    pub signal: Arc<FlushSignal>,
    /// Whether the last flush reached the database (for `/readyz`).
    pub db_up: Arc<AtomicBool>,
    /// The check settings of the configuration.
    pub policy: Arc<CheckPolicy>,
    /// Hashed bearer tokens.
    pub auth: Arc<Auth>,
    /// The Prometheus series of this application.
    pub metrics: Arc<Metrics>,
    pub config: Arc<Config>,
}

impl SharedState {
    /// The worker's view of this state.
    pub fn flusher(&self) -> Flusher {
        Flusher {
            store: Arc::clone(&self.store),
            db: self.db.clone(),
            dedup: Arc::clone(&self.dedup),
            rollups: Arc::clone(&self.rollups),
            versions: Arc::clone(&self.versions),
            signal: Arc::clone(&self.signal),
            db_up: Arc::clone(&self.db_up),
            admin_writes: Arc::clone(&self.admin_writes),
            flushing: Arc::clone(&self.flushing),
            journal: Arc::clone(&self.journal),
            metrics: Arc::clone(&self.metrics),
        }
    }
}
