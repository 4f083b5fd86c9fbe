use super::*;

fn key(team_id: Option<Uuid>, customer_id: Option<Uuid>) -> VirtualKey {
    VirtualKey {
        id: Uuid::new_v4(),
        name: "k".into(),
        description: String::new(),
        value_hash: *Uuid::new_v4()
            .as_bytes()
            .repeat(2)
            .first_chunk::<32>()
            .unwrap(),
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

fn team(customer_id: Option<Uuid>) -> Team {
    Team {
        id: Uuid::new_v4(),
        name: "t".into(),
        customer_id,
        limits: Limits::default(),
        created_at: 0,
        updated_at: 0,
    }
}

fn customer() -> Customer {
    Customer {
        id: Uuid::new_v4(),
        name: "c".into(),
        limits: Limits::default(),
        created_at: 0,
        updated_at: 0,
    }
}

#[test]
fn a_key_resolves_its_team_and_the_teams_customer() {
    let store = Store::default();
    let c = customer();
    let t = team(Some(c.id));
    let k = key(Some(t.id), None);
    let (cid, tid, hash) = (c.id, t.id, k.value_hash);
    store.update(|s| {
        s.put_customer(c);
        s.put_team(t);
        s.put_virtual_key(k);
    });
    let r = &store.snapshot().keys_by_hash[&hash];
    assert_eq!(r.team.as_ref().unwrap().id, tid);
    assert_eq!(r.team_customer.as_ref().unwrap().id, cid);
    assert!(r.customer.is_none());
}

#[test]
fn a_team_change_reaches_its_keys_resolution() {
    let store = Store::default();
    let t = team(None);
    let k = key(Some(t.id), None);
    let (hash, mut t2) = (k.value_hash, t.clone());
    store.update(|s| {
        s.put_team(t);
        s.put_virtual_key(k);
    });
    let c = customer();
    let cid = c.id;
    t2.customer_id = Some(cid);
    store.update(|s| {
        s.put_customer(c);
        s.put_team(t2);
    });
    let r = &store.snapshot().keys_by_hash[&hash];
    assert_eq!(r.team_customer.as_ref().unwrap().id, cid);
}

#[test]
fn deleting_a_customer_detaches_its_teams_and_keys() {
    let store = Store::default();
    let c = customer();
    let t = team(Some(c.id));
    let direct = key(None, Some(c.id));
    let via_team = key(Some(t.id), None);
    let (cid, tid, direct_id) = (c.id, t.id, direct.id);
    let (h1, h2) = (direct.value_hash, via_team.value_hash);
    store.update(|s| {
        s.put_customer(c);
        s.put_team(t);
        s.put_virtual_key(direct);
        s.put_virtual_key(via_team);
    });
    let before = store.snapshot();
    store.update(|s| s.remove_customer(cid));
    let after = store.snapshot();
    assert_eq!(after.teams[&tid].customer_id, None);
    assert_eq!(after.virtual_keys[&direct_id].customer_id, None);
    assert!(after.keys_by_hash[&h1].customer.is_none());
    assert!(after.keys_by_hash[&h2].team_customer.is_none());
    // A reader holding the old snapshot still sees it whole.
    assert_eq!(before.teams[&tid].customer_id, Some(cid));
}

#[test]
fn deleting_a_team_leaves_its_keys_without_it() {
    let store = Store::default();
    let t = team(None);
    let k = key(Some(t.id), None);
    let (tid, hash) = (t.id, k.value_hash);
    store.update(|s| {
        s.put_team(t);
        s.put_virtual_key(k);
    });
    store.update(|s| s.remove_team(tid));
    assert!(store.snapshot().keys_by_hash[&hash].team.is_none());
}

#[test]
fn a_key_is_found_by_its_hash_until_removed() {
    let store = Store::default();
    let vk = key(None, None);
    let (id, hash) = (vk.id, vk.value_hash);
    store.update(|s| s.put_virtual_key(vk));
    assert_eq!(store.snapshot().keys_by_hash[&hash].key.id, id);
    store.update(|s| s.remove_virtual_key(id));
    assert!(store.snapshot().keys_by_hash.is_empty());
}
