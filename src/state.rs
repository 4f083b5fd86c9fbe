//! The application state every handler shares.

use std::sync::Arc;

use crate::auth::Auth;
use crate::config::Config;
use crate::db::Db;
use crate::engine::check::CheckPolicy;
use crate::engine::dedup::Dedup;
use crate::engine::Store;

#[derive(Debug, Clone)]
pub struct AppState {
    /// The in-memory governance state; every read comes from here.
    pub store: Arc<Store>,
    /// The database; admin changes are written through to it before they reach the store.
    pub db: Db,
    /// Serialises admin writes, so that the database and the store see changes in one order.
    /// A tokio mutex: it is held across the database transaction's awaits.
    pub admin_writes: Arc<tokio::sync::Mutex<()>>,
    /// Idempotency keys of recent usage updates.
    pub dedup: Arc<Dedup>,
    /// The check settings of the configuration.
    pub policy: Arc<CheckPolicy>,
    /// Hashed bearer tokens.
    pub auth: Arc<Auth>,
    pub config: Arc<Config>,
}
