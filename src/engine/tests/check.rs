//! What a check decides, level by level and gate by gate.

use super::*;

#[test]
fn a_budget_at_its_limit_blocks_and_just_below_allows() {
    let b = budget(100.0, "1h");
    let s = with_key(key("sk", limits(Some(b.clone()), None)));
    b.add(NOW, Money::from_usd(99.99).unwrap().nanos(), 0);
    assert_eq!(ask(&s, "sk").verdict, Verdict::Allow);
    b.add(NOW, Money::from_usd(0.01).unwrap().nanos(), 0);
    let d = ask(&s, "sk");
    assert_eq!(d.verdict, Verdict::BudgetExceeded);
    assert_eq!(d.verdict.status(), 402);
    assert_eq!(
        d.message,
        "Budget exceeded: VK budget exceeded: 100.0000 >= 100.0000 dollars"
    );
    assert_eq!(d.retry_at, Some(NOW + 60 * MINUTE));
}

#[test]
fn tokens_at_their_limit_are_token_limited() {
    let r = rate(Some(10_000), Some(100), "1h");
    let s = with_key(key("sk", limits(None, Some(r.clone()))));
    r.add_tokens(NOW, 10_000, 0);
    let d = ask(&s, "sk");
    assert_eq!(d.verdict, Verdict::TokenLimited);
    assert_eq!(d.verdict.status(), 429);
}

#[test]
fn requests_at_their_limit_are_request_limited() {
    let r = rate(Some(10_000), Some(100), "1h");
    let s = with_key(key("sk", limits(None, Some(r.clone()))));
    r.add_requests(NOW, 100, 0);
    assert_eq!(ask(&s, "sk").verdict, Verdict::RequestLimited);
}

#[test]
fn tokens_and_requests_at_their_limits_are_rate_limited() {
    let r = rate(Some(10_000), Some(100), "1h");
    let s = with_key(key("sk", limits(None, Some(r.clone()))));
    r.add_tokens(NOW, 10_000, 0);
    r.add_requests(NOW, 100, 0);
    assert_eq!(ask(&s, "sk").verdict, Verdict::RateLimited);
}

#[test]
fn an_expired_window_allows_again() {
    let spec = RateLimitSpec::new(Some(10_000), Some("1m"), None, None).unwrap();
    let started = NOW - 2 * MINUTE;
    let r = Arc::new(RateLimit::new(
        Uuid::new_v4(),
        spec,
        (10_000, started),
        (0, started),
        started,
        started,
    ));
    let s = with_key(key("sk", limits(None, Some(r))));
    let d = ask(&s, "sk");
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(d.checks[0].used, 0);
}

#[test]
fn a_hierarchy_under_its_limits_allows_and_lists_every_level() {
    let (s, _) = three_levels(50.0);
    let d = ask(&s, "sk");
    assert_eq!(d.verdict, Verdict::Allow);
    let levels: Vec<_> = d.checks.iter().map(|c| c.level).collect();
    assert_eq!(
        levels,
        vec![Level::VirtualKey, Level::Team, Level::Customer]
    );
    assert!(d
        .checks
        .iter()
        .all(|c| c.kind == LimitKind::Budget && !c.exceeded));
}

#[test]
fn a_key_at_its_budget_blocks_under_a_roomy_hierarchy() {
    let (s, _) = three_levels(100.0);
    let d = ask(&s, "sk");
    assert_eq!(d.verdict, Verdict::BudgetExceeded);
    assert!(d.checks[0].exceeded && !d.checks[1].exceeded);
}

#[test]
fn a_team_at_its_budget_blocks_its_keys() {
    let (s, [_, bt, _]) = three_levels(10.0);
    bt.add(NOW, Money::from_usd(300.0).unwrap().nanos(), 0);
    let d = ask(&s, "sk");
    assert_eq!(d.verdict, Verdict::BudgetExceeded);
    assert!(d
        .message
        .starts_with("Budget exceeded: Team budget exceeded"));
}

#[test]
fn provider_specific_model_configs_do_not_apply_to_another_provider() {
    let b = budget(1.0, "1h");
    let mut s = Snapshot::default();
    s.put_model_config(model_config(
        "gpt-4o",
        Some("azure"),
        limits(Some(b.clone()), None),
    ));
    apply(
        &s,
        &UsageEvent {
            virtual_key: None,
            ..usage("", 10, 1.0)
        },
        NOW,
        &s.dirty.enter(),
    );
    assert_eq!(
        b.view(NOW).used,
        0,
        "an openai request does not charge the azure config"
    );
    let d = check(
        &s,
        &CheckPolicy::default(),
        &CheckInput {
            provider: "openai",
            model: "gpt-4o",
            ..Default::default()
        },
        &[],
        NOW,
    );
    assert!(d.checks.is_empty());
    let on_azure = UsageEvent {
        virtual_key: None,
        provider: "azure",
        ..usage("", 10, 1.0)
    };
    apply(&s, &on_azure, NOW, &s.dirty.enter());
    assert_eq!(b.view(NOW).used, Money::from_usd(1.0).unwrap().nanos());
}

#[test]
fn a_global_model_config_applies_to_every_provider_beside_the_specific_one() {
    let (global, specific) = (budget(1.0, "1h"), budget(5.0, "1h"));
    let mut s = Snapshot::default();
    s.put_model_config(model_config(
        "gpt-4o",
        None,
        limits(Some(global.clone()), None),
    ));
    s.put_model_config(model_config(
        "gpt-4o",
        Some("openai"),
        limits(Some(specific.clone()), None),
    ));
    for provider in ["openai", "azure"] {
        apply(
            &s,
            &UsageEvent {
                virtual_key: None,
                provider,
                ..usage("", 0, 0.5)
            },
            NOW,
            &s.dirty.enter(),
        );
    }
    assert_eq!(global.view(NOW).used, Money::from_usd(1.0).unwrap().nanos());
    assert_eq!(
        specific.view(NOW).used,
        Money::from_usd(0.5).unwrap().nanos()
    );
    let d = check(
        &s,
        &CheckPolicy::default(),
        &CheckInput {
            provider: "azure",
            model: "gpt-4o",
            ..Default::default()
        },
        &[],
        NOW,
    );
    assert_eq!(d.verdict, Verdict::BudgetExceeded);
    assert_eq!(d.checks[0].level, Level::Model);
}

#[test]
fn a_key_moved_to_a_new_team_charges_the_new_team() {
    let (old_b, new_b) = (budget(10.0, "1d"), budget(10.0, "1d"));
    let (old_t, new_t) = (
        team(limits(Some(old_b.clone()), None), None),
        team(limits(Some(new_b.clone()), None), None),
    );
    let mut k = key("sk", Limits::default());
    k.team_id = Some(old_t.id);
    let new_id = new_t.id;
    let store = Store::default();
    store.update(|s| {
        s.put_team(old_t);
        s.put_team(new_t);
        s.put_virtual_key(k.clone());
    });
    apply(
        &store.snapshot(),
        &usage("sk", 0, 1.0),
        NOW,
        &store.snapshot().dirty.enter(),
    );
    k.team_id = Some(new_id);
    store.update(|s| s.put_virtual_key(k));
    apply(
        &store.snapshot(),
        &usage("sk", 0, 2.0),
        NOW,
        &store.snapshot().dirty.enter(),
    );
    assert_eq!(old_b.view(NOW).used, Money::from_usd(1.0).unwrap().nanos());
    assert_eq!(new_b.view(NOW).used, Money::from_usd(2.0).unwrap().nanos());
}

#[test]
fn the_check_visits_gates_in_order() {
    let mut k = key("sk", Limits::default());
    k.provider_configs = vec![pc("openai", &["gpt-4o"], Limits::default())];
    let mut s = with_key(k.clone());
    let policy = CheckPolicy {
        require_virtual_key: true,
        required_headers: vec!["x-tenant".into()],
    };
    let input = |vk: Option<&'static str>, provider, model| CheckInput {
        virtual_key: vk,
        provider,
        model,
        ..Default::default()
    };
    let run = |s: &Snapshot, i: CheckInput<'static>, headers: &[&str]| {
        check(s, &policy, &i, headers, NOW).verdict
    };
    assert_eq!(
        run(&s, input(Some("sk"), "openai", "gpt-4o"), &[]),
        Verdict::MissingRequiredHeaders
    );
    let h = ["X-Tenant"];
    assert_eq!(
        run(&s, input(None, "openai", "gpt-4o"), &h),
        Verdict::VirtualKeyRequired
    );
    assert_eq!(
        run(&s, input(Some("nope"), "openai", "gpt-4o"), &h),
        Verdict::VirtualKeyRequired
    );
    let with_user = CheckInput {
        virtual_key: Some("nope"),
        user_id: Some("u"),
        ..input(None, "openai", "gpt-4o")
    };
    assert_eq!(run(&s, with_user, &h), Verdict::VirtualKeyNotFound);
    assert_eq!(
        run(&s, input(Some("sk"), "anthropic", "claude"), &h),
        Verdict::ProviderBlocked
    );
    assert_eq!(
        run(&s, input(Some("sk"), "openai", "gpt-3.5"), &h),
        Verdict::ModelBlocked
    );
    let listing = CheckInput {
        request_type: Some("list_models"),
        ..input(Some("sk"), "openai", "gpt-3.5")
    };
    assert_eq!(run(&s, listing, &h), Verdict::Allow);
    assert_eq!(
        run(&s, input(Some("sk"), "openai", "gpt-4o"), &h),
        Verdict::Allow
    );
    k.is_active = false;
    s.put_virtual_key(k);
    assert_eq!(
        run(&s, input(Some("sk"), "openai", "gpt-4o"), &h),
        Verdict::VirtualKeyBlocked
    );
}

#[test]
fn provider_limits_come_before_the_keys_and_rate_limits_before_budgets() {
    let (pb, kb) = (budget(1.0, "1h"), budget(1.0, "1h"));
    let kr = rate(Some(10), None, "1h");
    let mut s = with_key(key("sk", limits(Some(kb.clone()), Some(kr.clone()))));
    s.providers.insert(
        "openai".into(),
        Arc::new(Provider {
            name: "openai".into(),
            limits: limits(Some(pb.clone()), None),
            created_at: NOW,
            updated_at: NOW,
        }),
    );
    kb.add(NOW, Money::from_usd(1.0).unwrap().nanos(), 0);
    kr.add_tokens(NOW, 10, 0);
    assert_eq!(
        ask(&s, "sk").verdict,
        Verdict::TokenLimited,
        "rate limits before budgets"
    );
    pb.add(NOW, Money::from_usd(1.0).unwrap().nanos(), 0);
    let d = ask(&s, "sk");
    assert_eq!(d.verdict, Verdict::BudgetExceeded);
    assert_eq!(d.checks[0].level, Level::Provider);
    assert_eq!(
        d.checks.len(),
        3,
        "every evaluated limit is listed: {:?}",
        d.checks
    );
}

#[test]
fn user_limits_apply_with_and_without_a_key() {
    let ub = budget(1.0, "1h");
    let mut s = Snapshot::default();
    s.users.insert(
        "u1".into(),
        Arc::new(User {
            user_id: "u1".into(),
            limits: limits(Some(ub.clone()), None),
            created_at: NOW,
            updated_at: NOW,
        }),
    );
    let e = UsageEvent {
        virtual_key: None,
        user_id: Some("u1"),
        ..usage("", 0, 1.0)
    };
    apply(&s, &e, NOW, &s.dirty.enter());
    let d = check(
        &s,
        &CheckPolicy::default(),
        &CheckInput {
            user_id: Some("u1"),
            ..Default::default()
        },
        &[],
        NOW,
    );
    assert_eq!(d.verdict, Verdict::BudgetExceeded);
    assert_eq!(d.checks[0].level, Level::User);
}

#[test]
fn provider_configs_of_the_request_provider_are_charged_and_checked() {
    let (oa, an) = (budget(1.0, "1h"), budget(1.0, "1h"));
    let mut k = key("sk", Limits::default());
    k.provider_configs = vec![
        pc("openai", &[], limits(Some(oa.clone()), None)),
        pc("anthropic", &[], limits(Some(an.clone()), None)),
    ];
    let s = with_key(k);
    apply(&s, &usage("sk", 0, 1.0), NOW, &s.dirty.enter());
    assert_eq!(oa.view(NOW).used, Money::from_usd(1.0).unwrap().nanos());
    assert_eq!(an.view(NOW).used, 0);
    let d = ask(&s, "sk");
    assert_eq!(d.verdict, Verdict::BudgetExceeded);
    assert_eq!(d.checks[0].level, Level::ProviderConfig);
    assert_eq!(d.include_only_key_ids, ["key-a".to_owned()]);
}
