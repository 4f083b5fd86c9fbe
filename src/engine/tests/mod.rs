//! Engine tests with worked numbers: checks, usage, hierarchies, windows,
//! and the invariants (no increment lost, every level charged, resets restore capacity).

use std::sync::Arc;

use proptest::prelude::*;
use uuid::Uuid;

use super::check::{check, CheckInput, CheckPolicy, Verdict};
use super::entities::{
    Budget, Customer, Limits, ModelConfig, Provider, ProviderConfig, RateLimit, Team, User,
    VirtualKey,
};
use super::level::{Level, LimitKind};
use super::store::{Snapshot, Store};
use super::usage::{apply, UsageEvent};
use crate::domain::{BudgetSpec, Micros, Money, RateLimitSpec};

const NOW: Micros = 1_800_000_000_000_000;
const MINUTE: Micros = 60_000_000;

fn budget(max: f64, duration: &str) -> Arc<Budget> {
    let spec = BudgetSpec::new(max, duration, false, None).unwrap();
    Arc::new(Budget::new(Uuid::new_v4(), spec, 0, NOW, NOW, NOW))
}

fn rate(tokens: Option<i64>, requests: Option<i64>, duration: &str) -> Arc<RateLimit> {
    let spec = RateLimitSpec::new(
        tokens,
        tokens.map(|_| duration),
        requests,
        requests.map(|_| duration),
    )
    .unwrap();
    Arc::new(RateLimit::new(
        Uuid::new_v4(),
        spec,
        (0, NOW),
        (0, NOW),
        NOW,
        NOW,
    ))
}

fn limits(budget: Option<Arc<Budget>>, rate_limit: Option<Arc<RateLimit>>) -> Limits {
    Limits { budget, rate_limit }
}

fn key(value: &str, limits: Limits) -> VirtualKey {
    VirtualKey {
        id: Uuid::new_v4(),
        name: value.to_owned(),
        description: String::new(),
        value_hash: VirtualKey::hash_value(value),
        value_prefix: String::new(),
        is_active: true,
        team_id: None,
        customer_id: None,
        limits,
        provider_configs: Vec::new(),
        created_at: NOW,
        updated_at: NOW,
    }
}

fn team(limits: Limits, customer_id: Option<Uuid>) -> Team {
    Team {
        id: Uuid::new_v4(),
        name: "team".into(),
        customer_id,
        limits,
        created_at: NOW,
        updated_at: NOW,
    }
}

fn customer(limits: Limits) -> Customer {
    Customer {
        id: Uuid::new_v4(),
        name: "customer".into(),
        limits,
        created_at: NOW,
        updated_at: NOW,
    }
}

fn pc(provider: &str, allowed: &[&str], limits: Limits) -> Arc<ProviderConfig> {
    Arc::new(ProviderConfig {
        id: Uuid::new_v4(),
        provider: provider.to_owned(),
        weight: 1.0,
        allowed_models: allowed.iter().map(|m| m.to_string()).collect(),
        key_ids: vec!["key-a".into()],
        limits,
    })
}

fn model_config(model: &str, provider: Option<&str>, limits: Limits) -> ModelConfig {
    ModelConfig {
        prices: Default::default(),
        id: Uuid::new_v4(),
        model_name: model.to_owned(),
        provider: provider.map(str::to_owned),
        limits,
        created_at: NOW,
        updated_at: NOW,
    }
}

fn with_key(vk: VirtualKey) -> Snapshot {
    let mut s = Snapshot::default();
    s.put_virtual_key(vk);
    s
}

fn ask<'a>(s: &'a Snapshot, value: &'a str) -> super::check::Decision<'a> {
    let input = CheckInput {
        virtual_key: Some(value),
        provider: "openai",
        model: "gpt-4o",
        ..CheckInput::default()
    };
    check(s, &CheckPolicy::default(), &input, &[], NOW)
}

fn usage(value: &str, tokens: i64, cost: f64) -> UsageEvent<'_> {
    UsageEvent {
        virtual_key: Some(value),
        provider: "openai",
        model: "gpt-4o",
        success: true,
        tokens,
        cost: Money::from_usd(cost).unwrap(),
        ..UsageEvent::default()
    }
}

fn three_levels(vk_used: f64) -> (Snapshot, [Arc<Budget>; 3]) {
    let (bk, bt, bc) = (
        budget(100.0, "1d"),
        budget(500.0, "1d"),
        budget(1000.0, "1d"),
    );
    let c = customer(limits(Some(bc.clone()), None));
    let t = team(limits(Some(bt.clone()), None), Some(c.id));
    let mut k = key("sk", limits(Some(bk.clone()), None));
    k.team_id = Some(t.id);
    let mut s = Snapshot::default();
    s.put_customer(c);
    s.put_team(t);
    s.put_virtual_key(k);
    bk.add(NOW, Money::from_usd(vk_used).unwrap().nanos(), 0);
    bt.add(NOW, Money::from_usd(200.0).unwrap().nanos(), 0);
    bc.add(NOW, Money::from_usd(400.0).unwrap().nanos(), 0);
    (s, [bk, bt, bc])
}

mod check;
mod holds;
mod usage;
