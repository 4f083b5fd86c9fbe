//! The one write path of the admin API. Every change of an entity and its limits goes the same
//! way: take the configuration lock, compute the change against the snapshot of then, write it
//! through to the database in one transaction that takes the next configuration version (so
//! that other replicas reload), and only after the commit publish it to memory. Resource
//! modules say what is their own: their fields and validation ([`Entity`]), and their views.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::MutexGuard;

use super::error::ApiError;
use super::extract::ApiJson;
use super::limits::{patch_limits, LimitsBody};
use super::state::AppState;
use super::Message;
use crate::db::{Conn, DbError, LimitChanges};
use crate::domain::time::now_micros;
use crate::domain::Micros;
use crate::engine::{Limits, Snapshot};

/// An entity the admin API creates, changes and deletes.
pub trait Entity: Sized + Send + Sync + 'static {
    /// What a 404 calls it ("customer").
    const KIND: &'static str;
    /// What messages call it ("Customer").
    const TITLE: &'static str;
    type Key: Send + Sync;

    /// The key a path segment names; `None` names nothing (a 404).
    fn parse_key(raw: &str) -> Option<Self::Key>;
    fn key(&self) -> Self::Key;
    fn find<'s>(s: &'s Snapshot, key: &Self::Key) -> Option<&'s Arc<Self>>;
    /// Every limit the entity owns, its children's included: they go when it goes.
    fn limits(&self) -> Vec<&Limits>;
    /// Writes the entity's rows (its children's too); `old` is the version it replaces.
    fn upsert<'c>(
        &'c self,
        old: Option<&'c Self>,
        c: &'c mut Conn,
    ) -> impl Future<Output = Result<(), DbError>> + Send + 'c;
    fn delete<'c>(
        &'c self,
        c: &'c mut Conn,
    ) -> impl Future<Output = Result<(), DbError>> + Send + 'c;
    fn publish(self, s: &mut Snapshot);
    fn unpublish(key: &Self::Key, s: &mut Snapshot);
}

/// The entity `raw` names in `s`, or a 404 naming it.
pub fn lookup<'s, E: Entity>(s: &'s Snapshot, raw: &str) -> Result<&'s Arc<E>, ApiError> {
    E::parse_key(raw)
        .and_then(|key| E::find(s, &key))
        .ok_or_else(|| ApiError::not_found(E::KIND, raw))
}

/// One admin change in progress: the configuration lock is held from [`AdminWrite::begin`]
/// until the change is published (or dropped).
pub struct AdminWrite<'a> {
    state: &'a AppState,
    _lock: MutexGuard<'a, ()>,
    /// The state the change is computed against; no other change can land meanwhile.
    pub snapshot: Arc<Snapshot>,
    /// The budgets and rate limits the change creates, changes or removes.
    pub changes: LimitChanges,
    pub now: Micros,
}

impl<'a> AdminWrite<'a> {
    pub async fn begin(state: &'a AppState) -> AdminWrite<'a> {
        let lock = state.worker.lock_config().await;
        AdminWrite {
            state,
            _lock: lock,
            snapshot: state.store.snapshot(),
            changes: LimitChanges::default(),
            now: now_micros(),
        }
    }

    /// The entity `raw` names, or a 404 naming it.
    pub fn find<E: Entity>(&self, raw: &str) -> Result<Arc<E>, ApiError> {
        lookup(&self.snapshot, raw).cloned()
    }

    /// The entity `raw` names, if any (for create-or-update by name).
    pub fn get<E: Entity>(&self, raw: &str) -> Option<Arc<E>> {
        E::parse_key(raw)
            .and_then(|key| E::find(&self.snapshot, &key))
            .cloned()
    }

    /// Writes `entity` (new, or replacing `old`) with its limits, then publishes it; `view` is
    /// made from it and the snapshot it is published into.
    pub async fn put<E: Entity, V>(
        self,
        entity: E,
        old: Option<&E>,
        view: impl FnOnce(&E, &Snapshot) -> V,
    ) -> Result<V, ApiError> {
        let mut tx = self.transaction().await?;
        self.changes.write_upserts(&mut tx).await?;
        entity.upsert(old, &mut tx).await?;
        self.changes.write_deletes(&mut tx).await?;
        tx.commit(self.state).await?;
        self.changes.publish();
        Ok(self.state.store.update(|s| {
            let view = view(&entity, s);
            entity.publish(s);
            view
        }))
    }

    /// Deletes `old` with every limit it owns, then unpublishes it.
    pub async fn delete<E: Entity>(mut self, old: &E) -> Result<(), ApiError> {
        for limits in old.limits() {
            self.changes.remove_all(limits);
        }
        let mut tx = self.transaction().await?;
        old.delete(&mut tx).await?;
        self.changes.write_deletes(&mut tx).await?;
        tx.commit(self.state).await?;
        let key = old.key();
        self.state.store.update(|s| E::unpublish(&key, s));
        Ok(())
    }

    /// The transaction of a change that is neither a put nor a delete (a reset): the caller
    /// writes, commits, then publishes, still under the lock.
    pub async fn transaction(&self) -> Result<AdminTx, ApiError> {
        AdminTx::begin(self.state).await
    }
}

/// Deletes the entity `raw` names with every limit it owns.
pub async fn delete<E: Entity>(state: &AppState, raw: &str) -> Result<ApiJson<Message>, ApiError> {
    let w = AdminWrite::begin(state).await;
    let old = w.find::<E>(raw)?;
    w.delete(&*old).await?;
    Ok(ApiJson(Message {
        message: format!("{} deleted successfully", E::TITLE),
    }))
}

/// An entity that is a name with limits (a provider, a user): its first `PUT` creates it.
pub trait NamedLimits: Entity<Key = String> {
    fn new(name: String, limits: Limits, created_at: Micros, updated_at: Micros) -> Self;
    fn own_limits(&self) -> &Limits;
    fn created_at(&self) -> Micros;
}

/// Creates or changes the limits of `name` (already validated); the message and the view.
pub async fn put_named<E: NamedLimits, V>(
    state: &AppState,
    name: String,
    body: LimitsBody,
    view: impl FnOnce(&E, Micros) -> V,
) -> Result<(String, V), ApiError> {
    let mut w = AdminWrite::begin(state).await;
    let old = w.get::<E>(&name);
    let now = w.now;
    let base = old
        .as_ref()
        .map(|o| o.own_limits().clone())
        .unwrap_or_default();
    let limits = patch_limits(&base, body.budget, body.rate_limit, "", now, &mut w.changes)?;
    let created_at = old.as_ref().map_or(now, |o| o.created_at());
    let entity = E::new(name, limits, created_at, now);
    let done = if old.is_some() { "updated" } else { "created" };
    let view = w.put(entity, old.as_deref(), |e, _| view(e, now)).await?;
    Ok((format!("{} {done} successfully", E::TITLE), view))
}

/// `impl Entity` for an entity with one [`Limits`] of its own, kept in a map of the snapshot
/// by id (`by id`, with the snapshot's put and remove) or by name (`by name`), and written by
/// the given `db` functions.
macro_rules! entity {
    ($ty:ident, $kind:literal, $title:literal, by id in $map:ident,
     $upsert:path, $delete:path, $put:ident, $remove:ident) => {
        impl $crate::http::admin::Entity for $ty {
            const KIND: &'static str = $kind;
            const TITLE: &'static str = $title;
            type Key = uuid::Uuid;

            fn parse_key(raw: &str) -> Option<uuid::Uuid> {
                uuid::Uuid::parse_str(raw).ok()
            }

            fn key(&self) -> uuid::Uuid {
                self.id
            }

            fn find<'s>(
                s: &'s $crate::engine::Snapshot,
                key: &uuid::Uuid,
            ) -> Option<&'s std::sync::Arc<$ty>> {
                s.$map.get(key)
            }

            fn limits(&self) -> Vec<&$crate::engine::Limits> {
                vec![&self.limits]
            }

            async fn upsert(
                &self,
                _old: Option<&$ty>,
                c: &mut $crate::db::Conn,
            ) -> Result<(), $crate::db::DbError> {
                $upsert(c, self).await
            }

            async fn delete(&self, c: &mut $crate::db::Conn) -> Result<(), $crate::db::DbError> {
                $delete(c, self.id).await
            }

            fn publish(self, s: &mut $crate::engine::Snapshot) {
                s.$put(self);
            }

            fn unpublish(key: &uuid::Uuid, s: &mut $crate::engine::Snapshot) {
                s.$remove(*key);
            }
        }
    };
    ($ty:ident, $kind:literal, $title:literal, by name $name:ident in $map:ident,
     $upsert:path, $delete:path) => {
        impl $crate::http::admin::Entity for $ty {
            const KIND: &'static str = $kind;
            const TITLE: &'static str = $title;
            type Key = String;

            fn parse_key(raw: &str) -> Option<String> {
                Some(raw.to_owned())
            }

            fn key(&self) -> String {
                self.$name.clone()
            }

            fn find<'s>(
                s: &'s $crate::engine::Snapshot,
                key: &String,
            ) -> Option<&'s std::sync::Arc<$ty>> {
                s.$map.get(key)
            }

            fn limits(&self) -> Vec<&$crate::engine::Limits> {
                vec![&self.limits]
            }

            async fn upsert(
                &self,
                _old: Option<&$ty>,
                c: &mut $crate::db::Conn,
            ) -> Result<(), $crate::db::DbError> {
                $upsert(c, self).await
            }

            async fn delete(&self, c: &mut $crate::db::Conn) -> Result<(), $crate::db::DbError> {
                $delete(c, &self.$name).await
            }

            fn publish(self, s: &mut $crate::engine::Snapshot) {
                s.$map.insert(self.$name.clone(), std::sync::Arc::new(self));
            }

            fn unpublish(key: &String, s: &mut $crate::engine::Snapshot) {
                s.$map.remove(key);
            }
        }

        impl $crate::http::admin::NamedLimits for $ty {
            fn new(
                $name: String,
                limits: $crate::engine::Limits,
                created_at: $crate::domain::Micros,
                updated_at: $crate::domain::Micros,
            ) -> Self {
                $ty {
                    $name,
                    limits,
                    created_at,
                    updated_at,
                }
            }

            fn own_limits(&self) -> &$crate::engine::Limits {
                &self.limits
            }

            fn created_at(&self) -> $crate::domain::Micros {
                self.created_at
            }
        }
    };
}
pub(crate) use entity;

/// The transaction of an admin change. It takes the next config version, so that other
/// replicas reload within one flush interval; this replica, whose memory already has the
/// change, records the version as seen once it is committed.
pub struct AdminTx {
    tx: crate::db::Tx,
    version: i64,
}

impl AdminTx {
    async fn begin(state: &AppState) -> Result<Self, ApiError> {
        let mut tx = state.db.begin().await?;
        let version = crate::db::flush::next_config_version(&mut tx).await?;
        Ok(AdminTx { tx, version })
    }

    pub async fn commit(self, state: &AppState) -> Result<(), ApiError> {
        self.tx.commit().await?;
        state.worker.config_committed(self.version);
        Ok(())
    }
}

impl std::ops::Deref for AdminTx {
    type Target = Conn;

    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for AdminTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}
