//! The in-memory state: immutable snapshots swapped atomically on every config change, so that
//! readers never wait for writers and never see half a change. Counters are shared between
//! snapshots, so a swap keeps all usage. Each virtual key's hierarchy is resolved here, when
//! configuration changes, so the hot path never searches for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use uuid::Uuid;

use super::dirty::DirtySet;
use super::entities::{
    Budget, Customer, Limits, ModelConfig, Provider, RateLimit, Team, User, VirtualKey,
};

/// A virtual key with the entities above it, as the hot path needs them.
#[derive(Debug, Clone)]
pub struct ResolvedKey {
    pub key: Arc<VirtualKey>,
    pub team: Option<Arc<Team>>,
    /// The customer of the key's team.
    pub team_customer: Option<Arc<Customer>>,
    /// The customer the key is attached to directly (never the same as `team_customer`).
    pub customer: Option<Arc<Customer>>,
}

/// The model configs of one model name: the one for every provider and those per provider.
#[derive(Debug, Clone, Default)]
pub struct ModelEntry {
    pub global: Option<Arc<ModelConfig>>,
    pub by_provider: HashMap<String, Arc<ModelConfig>>,
}

/// One consistent view of every governed entity.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub customers: HashMap<Uuid, Arc<Customer>>,
    pub teams: HashMap<Uuid, Arc<Team>>,
    pub virtual_keys: HashMap<Uuid, Arc<VirtualKey>>,
    /// Resolved keys by the SHA-256 of their value: the hot path's lookup.
    pub keys_by_hash: HashMap<[u8; 32], Arc<ResolvedKey>>,
    pub providers: HashMap<String, Arc<Provider>>,
    pub model_configs: HashMap<Uuid, Arc<ModelConfig>>,
    /// Model configs by model name, then provider.
    pub models: HashMap<String, ModelEntry>,
    pub users: HashMap<String, Arc<User>>,
    /// Limits with unflushed usage; one set shared by every snapshot of a store.
    pub dirty: Arc<DirtySet>,
}

impl Snapshot {
    fn resolve(&self, key: &Arc<VirtualKey>) -> ResolvedKey {
        let team = key.team_id.and_then(|id| self.teams.get(&id).cloned());
        let team_customer = team
            .as_ref()
            .and_then(|t| t.customer_id)
            .and_then(|id| self.customers.get(&id).cloned());
        let customer = key
            .customer_id
            .filter(|id| team_customer.as_ref().map(|c| c.id) != Some(*id))
            .and_then(|id| self.customers.get(&id).cloned());
        ResolvedKey {
            key: Arc::clone(key),
            team,
            team_customer,
            customer,
        }
    }

    /// Re-resolves every key for which `affected` holds.
    fn re_resolve(&mut self, affected: impl Fn(&VirtualKey, &Snapshot) -> bool) {
        let keys: Vec<Arc<VirtualKey>> = self
            .virtual_keys
            .values()
            .filter(|k| affected(k, self))
            .cloned()
            .collect();
        for key in keys {
            let resolved = Arc::new(self.resolve(&key));
            self.keys_by_hash.insert(key.value_hash, resolved);
        }
    }

    pub fn put_customer(&mut self, customer: Customer) {
        let id = customer.id;
        self.customers.insert(id, Arc::new(customer));
        self.re_resolve(|k, s| k.customer_id == Some(id) || s.team_customer_of(k) == Some(id));
    }

    /// Removes a customer; its teams and directly attached keys stay, detached from it.
    pub fn remove_customer(&mut self, id: Uuid) {
        self.customers.remove(&id);
        for team in self.teams.values_mut() {
            if team.customer_id == Some(id) {
                Arc::make_mut(team).customer_id = None;
            }
        }
        for vk in self.virtual_keys.values_mut() {
            if vk.customer_id == Some(id) {
                Arc::make_mut(vk).customer_id = None;
            }
        }
        // Every key whose resolution named the customer, directly or through its team.
        let stale: Vec<Arc<VirtualKey>> = self
            .keys_by_hash
            .values()
            .filter(|r| {
                r.customer.as_ref().map(|c| c.id) == Some(id)
                    || r.team_customer.as_ref().map(|c| c.id) == Some(id)
            })
            .map(|r| Arc::clone(&self.virtual_keys[&r.key.id]))
            .collect();
        for key in stale {
            let resolved = Arc::new(self.resolve(&key));
            self.keys_by_hash.insert(key.value_hash, resolved);
        }
    }

    pub fn put_team(&mut self, team: Team) {
        let id = team.id;
        self.teams.insert(id, Arc::new(team));
        self.re_resolve(|k, _| k.team_id == Some(id));
    }

    /// Removes a team; its virtual keys stay, detached from it.
    pub fn remove_team(&mut self, id: Uuid) {
        self.teams.remove(&id);
        for vk in self.virtual_keys.values_mut() {
            if vk.team_id == Some(id) {
                Arc::make_mut(vk).team_id = None;
            }
        }
        self.re_resolve(|k, s| {
            s.keys_by_hash
                .get(&k.value_hash)
                .is_some_and(|r| r.team.as_ref().map(|t| t.id) == Some(id))
        });
    }

    pub fn put_virtual_key(&mut self, vk: VirtualKey) {
        if let Some(old) = self.virtual_keys.get(&vk.id) {
            self.keys_by_hash.remove(&old.value_hash);
        }
        let vk = Arc::new(vk);
        let resolved = Arc::new(self.resolve(&vk));
        self.keys_by_hash.insert(vk.value_hash, resolved);
        self.virtual_keys.insert(vk.id, vk);
    }

    pub fn remove_virtual_key(&mut self, id: Uuid) {
        if let Some(old) = self.virtual_keys.remove(&id) {
            self.keys_by_hash.remove(&old.value_hash);
        }
    }

    pub fn put_model_config(&mut self, config: ModelConfig) {
        self.remove_model_config(config.id);
        let config = Arc::new(config);
        let entry = self.models.entry(config.model_name.clone()).or_default();
        match &config.provider {
            Some(p) => {
                entry.by_provider.insert(p.clone(), Arc::clone(&config));
            }
            None => entry.global = Some(Arc::clone(&config)),
        }
        self.model_configs.insert(config.id, config);
    }

    pub fn remove_model_config(&mut self, id: Uuid) {
        let Some(old) = self.model_configs.remove(&id) else {
            return;
        };
        if let Some(entry) = self.models.get_mut(&old.model_name) {
            match &old.provider {
                Some(p) => {
                    entry.by_provider.remove(p);
                }
                None => entry.global = None,
            }
            if entry.global.is_none() && entry.by_provider.is_empty() {
                self.models.remove(&old.model_name);
            }
        }
    }

    fn team_customer_of(&self, key: &VirtualKey) -> Option<Uuid> {
        key.team_id
            .and_then(|t| self.teams.get(&t))
            .and_then(|t| t.customer_id)
    }

    /// Every owner's limits, for the budget and rate-limit listings.
    pub fn all_limits(&self) -> impl Iterator<Item = &Limits> {
        self.customers
            .values()
            .map(|c| &c.limits)
            .chain(self.teams.values().map(|t| &t.limits))
            .chain(self.virtual_keys.values().flat_map(|vk| {
                std::iter::once(&vk.limits).chain(vk.provider_configs.iter().map(|pc| &pc.limits))
            }))
            .chain(self.providers.values().map(|p| &p.limits))
            .chain(self.model_configs.values().map(|m| &m.limits))
            .chain(self.users.values().map(|u| &u.limits))
    }

    pub fn budgets(&self) -> impl Iterator<Item = &Arc<Budget>> {
        self.all_limits().filter_map(|l| l.budget.as_ref())
    }

    pub fn rate_limits(&self) -> impl Iterator<Item = &Arc<RateLimit>> {
        self.all_limits().filter_map(|l| l.rate_limit.as_ref())
    }

    pub fn find_budget(&self, id: Uuid) -> Option<&Arc<Budget>> {
        self.budgets().find(|b| b.id == id)
    }

    pub fn find_rate_limit(&self, id: Uuid) -> Option<&Arc<RateLimit>> {
        self.rate_limits().find(|r| r.id == id)
    }

    /// The model config for exactly `(model_name, provider)`.
    pub fn model_config_for(
        &self,
        model_name: &str,
        provider: Option<&str>,
    ) -> Option<&Arc<ModelConfig>> {
        let entry = self.models.get(model_name)?;
        match provider {
            Some(p) => entry.by_provider.get(p),
            None => entry.global.as_ref(),
        }
    }
}

/// The current snapshot, and the means to change it.
#[derive(Debug, Default)]
pub struct Store {
    current: ArcSwap<Snapshot>,
    /// Serialises writers so that no change is lost between load and swap. Never held across
    /// an `.await`.
    write: Mutex<()>,
}

impl Store {
    pub fn new(snapshot: Snapshot) -> Self {
        Store {
            current: ArcSwap::from_pointee(snapshot),
            write: Mutex::new(()),
        }
    }

    /// The current snapshot. Cheap, lock-free, and stable for as long as it is held.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// A guard on the current snapshot for the hot path: cheaper than `snapshot()`, to be
    /// dropped before any `.await`.
    pub fn guard(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// Publishes a snapshot built elsewhere (a reload from the database).
    pub fn replace(&self, mut snapshot: Snapshot) {
        let _guard = self
            .write
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        snapshot.dirty = Arc::clone(&self.current.load().dirty);
        self.current.store(Arc::new(snapshot));
    }

    /// Applies a change to a copy of the current snapshot and publishes it.
    pub fn update<R>(&self, change: impl FnOnce(&mut Snapshot) -> R) -> R {
        let _guard = self
            .write
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut next = Snapshot::clone(&self.current.load());
        let result = change(&mut next);
        self.current.store(Arc::new(next));
        result
    }
}

#[cfg(test)]
mod tests;
