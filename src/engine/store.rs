//! The in-memory state: immutable snapshots swapped atomically on every config change, so that
//! readers never wait for writers and never see half a change. Counters are shared between
//! snapshots, so a swap keeps all usage.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use uuid::Uuid;

use super::entities::{
    Budget, Customer, Limits, ModelConfig, Provider, RateLimit, Team, User, VirtualKey,
};

/// One consistent view of every governed entity.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub customers: HashMap<Uuid, Arc<Customer>>,
    pub teams: HashMap<Uuid, Arc<Team>>,
    pub virtual_keys: HashMap<Uuid, Arc<VirtualKey>>,
    /// Virtual key id by the SHA-256 of its value: the hot path's lookup.
    pub key_by_hash: HashMap<[u8; 32], Uuid>,
    pub providers: HashMap<String, Arc<Provider>>,
    pub model_configs: HashMap<Uuid, Arc<ModelConfig>>,
    pub users: HashMap<String, Arc<User>>,
}

impl Snapshot {
    pub fn put_virtual_key(&mut self, vk: VirtualKey) {
        if let Some(old) = self.virtual_keys.get(&vk.id) {
            self.key_by_hash.remove(&old.value_hash);
        }
        self.key_by_hash.insert(vk.value_hash, vk.id);
        self.virtual_keys.insert(vk.id, Arc::new(vk));
    }

    pub fn remove_virtual_key(&mut self, id: Uuid) {
        if let Some(old) = self.virtual_keys.remove(&id) {
            self.key_by_hash.remove(&old.value_hash);
        }
    }

    /// Removes a team; its virtual keys stay, detached from it (SPEC §5).
    pub fn remove_team(&mut self, id: Uuid) {
        self.teams.remove(&id);
        self.detach_keys(|vk| vk.team_id == Some(id), |vk| vk.team_id = None);
    }

    /// Removes a customer; its teams and directly attached keys stay, detached from it.
    pub fn remove_customer(&mut self, id: Uuid) {
        self.customers.remove(&id);
        let teams: Vec<Uuid> = self
            .teams
            .values()
            .filter(|t| t.customer_id == Some(id))
            .map(|t| t.id)
            .collect();
        for team_id in teams {
            if let Some(team) = self.teams.get_mut(&team_id) {
                Arc::make_mut(team).customer_id = None;
            }
        }
        self.detach_keys(|vk| vk.customer_id == Some(id), |vk| vk.customer_id = None);
    }

    fn detach_keys(
        &mut self,
        matches: impl Fn(&VirtualKey) -> bool,
        detach: impl Fn(&mut VirtualKey),
    ) {
        for vk in self.virtual_keys.values_mut() {
            if matches(vk) {
                detach(Arc::make_mut(vk));
            }
        }
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
        self.model_configs
            .values()
            .find(|m| m.model_name == model_name && m.provider.as_deref() == provider)
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
mod tests {
    use super::*;

    fn key(team_id: Option<Uuid>, customer_id: Option<Uuid>) -> VirtualKey {
        VirtualKey {
            id: Uuid::new_v4(),
            name: "k".into(),
            description: String::new(),
            value_hash: rand_hash(),
            value_prefix: "sk-hd-abcd…".into(),
            is_active: true,
            team_id,
            customer_id,
            limits: Limits::default(),
            provider_configs: vec![],
            created_at: 0,
            updated_at: 0,
        }
    }

    fn rand_hash() -> [u8; 32] {
        *Uuid::new_v4()
            .as_bytes()
            .repeat(2)
            .first_chunk::<32>()
            .unwrap()
    }

    #[test]
    fn deleting_a_customer_detaches_its_teams_and_keys() {
        let store = Store::default();
        let customer = Uuid::new_v4();
        let team = Team {
            id: Uuid::new_v4(),
            name: "t".into(),
            customer_id: Some(customer),
            limits: Limits::default(),
            created_at: 0,
            updated_at: 0,
        };
        let team_id = team.id;
        let direct = key(None, Some(customer));
        let direct_id = direct.id;
        store.update(|s| {
            s.teams.insert(team.id, Arc::new(team));
            s.put_virtual_key(direct);
        });
        let before = store.snapshot();
        store.update(|s| s.remove_customer(customer));
        let after = store.snapshot();
        assert_eq!(after.teams[&team_id].customer_id, None);
        assert_eq!(after.virtual_keys[&direct_id].customer_id, None);
        // A reader holding the old snapshot still sees it whole.
        assert_eq!(before.teams[&team_id].customer_id, Some(customer));
    }

    #[test]
    fn a_key_is_found_by_its_hash_until_removed() {
        let store = Store::default();
        let vk = key(None, None);
        let (id, hash) = (vk.id, vk.value_hash);
        store.update(|s| s.put_virtual_key(vk));
        assert_eq!(store.snapshot().key_by_hash.get(&hash), Some(&id));
        store.update(|s| s.remove_virtual_key(id));
        assert!(store.snapshot().key_by_hash.is_empty());
    }
}
