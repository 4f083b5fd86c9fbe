//! The engine alone, without HTTP: one usage update across a five-level hierarchy and one
//! check of the same key. Run with `cargo bench --bench engine`.

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use heimdall::domain::{BudgetSpec, Money, RateLimitSpec};
use heimdall::engine::check::{check, CheckInput, CheckPolicy};
use heimdall::engine::usage::{apply, UsageEvent};
use heimdall::engine::{
    Budget, Customer, Limits, Provider, ProviderConfig, RateLimit, Snapshot, Team, VirtualKey,
};
use uuid::Uuid;

const NOW: i64 = 1_800_000_000_000_000;

fn limits() -> Limits {
    let budget = BudgetSpec::new(1e9, "1M", false, None).unwrap();
    let rate = RateLimitSpec::new(
        Some(i64::MAX / 4),
        Some("1h"),
        Some(i64::MAX / 4),
        Some("1m"),
    )
    .unwrap();
    Limits {
        budget: Some(Arc::new(Budget::new(
            Uuid::new_v4(),
            budget,
            0,
            NOW,
            NOW,
            NOW,
        ))),
        rate_limit: Some(Arc::new(RateLimit::new(
            Uuid::new_v4(),
            rate,
            (0, NOW),
            (0, NOW),
            NOW,
            NOW,
        ))),
    }
}

/// 10 000 keys, each under a team under a customer, with a provider config; plus provider
/// governance: five levels with a budget and a rate limit each.
fn snapshot() -> Snapshot {
    let mut s = Snapshot::default();
    s.providers.insert(
        "openai".into(),
        Arc::new(Provider {
            name: "openai".into(),
            limits: limits(),
            created_at: NOW,
            updated_at: NOW,
        }),
    );
    for c in 0..100 {
        let customer = Customer {
            id: Uuid::new_v4(),
            name: format!("c{c}"),
            limits: limits(),
            created_at: NOW,
            updated_at: NOW,
        };
        let team = Team {
            id: Uuid::new_v4(),
            name: format!("t{c}"),
            customer_id: Some(customer.id),
            limits: limits(),
            created_at: NOW,
            updated_at: NOW,
        };
        let team_id = team.id;
        s.put_customer(customer);
        s.put_team(team);
        for k in 0..100 {
            let value = format!("sk-hd-bench-{c}-{k}");
            s.put_virtual_key(VirtualKey {
                id: Uuid::new_v4(),
                name: value.clone(),
                description: String::new(),
                value_hash: VirtualKey::hash_value(&value),
                value_prefix: String::new(),
                is_active: true,
                team_id: Some(team_id),
                customer_id: None,
                limits: limits(),
                provider_configs: vec![Arc::new(ProviderConfig {
                    id: Uuid::new_v4(),
                    provider: "openai".into(),
                    weight: 1.0,
                    allowed_models: vec![],
                    key_ids: vec![],
                    limits: limits(),
                })],
                created_at: NOW,
                updated_at: NOW,
            });
        }
    }
    s
}

fn bench(c: &mut Criterion) {
    let s = snapshot();
    let event = UsageEvent {
        virtual_key: Some("sk-hd-bench-42-42"),
        provider: "openai",
        model: "gpt-4o",
        success: true,
        tokens: 1500,
        cost: Money::from_usd(0.0123).unwrap(),
        ..UsageEvent::default()
    };
    c.bench_function("usage_update_5_levels", |b| {
        b.iter(|| apply(black_box(&s), black_box(&event), NOW, &s.dirty.enter()))
    });
    let policy = CheckPolicy::default();
    let input = CheckInput {
        virtual_key: Some("sk-hd-bench-42-42"),
        provider: "openai",
        model: "gpt-4o",
        ..CheckInput::default()
    };
    c.bench_function("check_5_levels", |b| {
        b.iter(|| check(black_box(&s), &policy, black_box(&input), &[], NOW).verdict)
    });
    // A check that reserves: the same evaluation, then the hold placed on every counter (and,
    // so that the book stays the same size, released again).
    let holds = heimdall::engine::holds::Holds::new(1);
    let reserved = heimdall::engine::holds::Amounts {
        cost: 1_000_000,
        tokens: 100,
        requests: 1,
    };
    let ids: Vec<String> = (0..1024).map(|i| format!("req-{i}")).collect();
    let mut next = 0usize;
    let reserving = CheckInput {
        reserve: true,
        ..input
    };
    // Only the check that reserves is timed; the release after it, and the flush that takes
    // the book's changes, are not.
    c.bench_function("check_5_levels_reserve", |b| {
        b.iter_custom(|iters| {
            let mut timed = std::time::Duration::ZERO;
            for _ in 0..iters {
                next = (next + 1) % ids.len();
                let started = std::time::Instant::now();
                let mut d = check(black_box(&s), &policy, black_box(&reserving), &[], NOW);
                let placed = heimdall::engine::reserve::place(
                    &holds,
                    &mut d,
                    &ids[next],
                    0,
                    reserved,
                    NOW + 60_000_000,
                    NOW,
                );
                timed += started.elapsed();
                assert!(placed, "{}", d.message);
                drop(d);
                holds.end(&ids[next], 0);
                if next == 0 {
                    holds.take_changes();
                }
            }
            timed
        })
    });
    // The same plain check while holds are live somewhere: it reads each counter's `held`.
    let with_holds = CheckInput {
        holds: true,
        ..input
    };
    c.bench_function("check_5_levels_holds_live", |b| {
        b.iter(|| check(black_box(&s), &policy, black_box(&with_holds), &[], NOW).verdict)
    });
    c.bench_function("check_decision_json", |b| {
        b.iter(|| {
            let d = check(black_box(&s), &policy, black_box(&input), &[], NOW);
            let mut out = Vec::with_capacity(4096);
            heimdall::http::check::write_decision(&d, &mut out);
            out
        })
    });
    let d = check(&s, &policy, &input, &[], NOW);
    let body = serde_json::to_vec(&heimdall::http::check::DecisionBody::new(&d)).unwrap();
    println!(
        "decision body: {} bytes, {} checks",
        body.len(),
        d.checks.len()
    );
    c.bench_function("key_hash", |b| {
        b.iter(|| VirtualKey::hash_value(black_box("sk-hd-bench-42-42")))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
