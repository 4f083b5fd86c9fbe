//! What usage charges, and that no charge is lost or queued twice.

use super::*;

#[test]
fn a_failed_request_charges_nothing() {
    let (s, [bk, bt, bc]) = three_levels(0.0);
    let before = [bk.view(NOW).used, bt.view(NOW).used, bc.view(NOW).used];
    let mut e = usage("sk", 100, 1.0);
    e.success = false;
    apply(&s, &e, NOW, &s.dirty.enter());
    assert_eq!(
        [bk.view(NOW).used, bt.view(NOW).used, bc.view(NOW).used],
        before
    );
}

#[test]
fn a_streaming_chunk_counts_tokens_and_the_final_chunk_the_request_and_cost() {
    let r = rate(Some(1_000_000), Some(1000), "1h");
    let b = budget(100.0, "1h");
    let s = with_key(key("sk", limits(Some(b.clone()), Some(r.clone()))));
    let mut chunk = usage("sk", 50, 0.0);
    chunk.is_streaming = true;
    chunk.has_usage_data = true;
    apply(&s, &chunk, NOW, &s.dirty.enter());
    assert_eq!(r.token_view(NOW).used, 50);
    assert_eq!(r.request_view(NOW).used, 0);
    let mut last = usage("sk", 0, 0.25);
    last.is_streaming = true;
    last.is_final_chunk = true;
    last.has_usage_data = true;
    apply(&s, &last, NOW, &s.dirty.enter());
    assert_eq!(r.request_view(NOW).used, 1);
    assert_eq!(b.view(NOW).used, Money::from_usd(0.25).unwrap().nanos());
}

#[test]
fn a_final_chunk_without_usage_data_charges_no_cost() {
    let r = rate(Some(1_000_000), Some(1000), "1h");
    let b = budget(100.0, "1h");
    let s = with_key(key("sk", limits(Some(b.clone()), Some(r.clone()))));
    let mut last = usage("sk", 70, 0.5);
    last.is_streaming = true;
    last.is_final_chunk = true;
    apply(&s, &last, NOW, &s.dirty.enter());
    assert_eq!(r.request_view(NOW).used, 1);
    assert_eq!(r.token_view(NOW).used, 0);
    assert_eq!(b.view(NOW).used, 0);
}

#[test]
fn concurrent_usage_loses_no_increment() {
    let (s, [bk, bt, bc]) = three_levels(0.0);
    let s = Arc::new(s);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                for _ in 0..10_000 {
                    apply(&s, &usage("sk", 3, 0.000001), NOW, &s.dirty.enter());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let expected = 80_000 * Money::from_usd(0.000001).unwrap().nanos();
    assert_eq!(bk.view(NOW).used, expected);
    assert_eq!(
        bt.view(NOW).used - Money::from_usd(200.0).unwrap().nanos(),
        expected
    );
    assert_eq!(
        bc.view(NOW).used - Money::from_usd(400.0).unwrap().nanos(),
        expected
    );
    assert_eq!(Money::from_nanos(bk.view(NOW).used).to_usd(), 0.08);
}

proptest! {
    #[test]
    fn a_charge_reaches_every_level_in_full(costs in proptest::collection::vec(0u32..1_000_000, 1..50), tokens in 0i64..100_000) {
        let r = rate(Some(i64::MAX / 2), Some(i64::MAX / 2), "1h");
        let (bk, bt, bc, bp) = (budget(1e6, "1h"), budget(1e6, "1h"), budget(1e6, "1h"), budget(1e6, "1h"));
        let c = customer(limits(Some(bc.clone()), Some(r.clone())));
        let t = team(limits(Some(bt.clone()), None), Some(c.id));
        let mut k = key("sk", limits(Some(bk.clone()), None));
        k.team_id = Some(t.id);
        k.provider_configs = vec![pc("openai", &[], limits(Some(bp.clone()), None))];
        let mut s = Snapshot::default();
        s.put_customer(c);
        s.put_team(t);
        s.put_virtual_key(k);
        let mut total = 0i64;
        for micro in &costs {
            let cost = Money::from_nanos(i64::from(*micro) * 1000);
            total += cost.nanos();
            apply(&s, &UsageEvent { cost, ..usage("sk", tokens, 0.0) }, NOW, &s.dirty.enter());
        }
        for b in [&bk, &bt, &bc, &bp] {
            prop_assert_eq!(b.view(NOW).used, total);
        }
        prop_assert_eq!(r.token_view(NOW).used, tokens * costs.len() as i64);
        prop_assert_eq!(r.request_view(NOW).used, costs.len() as i64);
    }

    #[test]
    fn a_reset_restores_capacity(used in 1i64..1_000_000, later in 0i64..3_600_000_000) {
        let b = budget(0.001, "1h");
        let s = with_key(key("sk", limits(Some(b.clone()), None)));
        b.add(NOW, used.max(1_000_000), 0);
        prop_assert_eq!(ask(&s, "sk").verdict, Verdict::BudgetExceeded);
        b.reset(NOW + later);
        let input = CheckInput { virtual_key: Some("sk"), ..Default::default() };
        prop_assert_eq!(check(&s, &CheckPolicy::default(), &input, &[], NOW + later).verdict, Verdict::Allow);
    }

    #[test]
    fn rolling_windows_never_drift(offset in 0i64..1_000_000_000_000) {
        let r = rate(Some(10), None, "1m");
        r.add_tokens(NOW + offset, 1, 0);
        let v = r.token_view(NOW + offset);
        prop_assert_eq!((v.last_reset - NOW) % MINUTE, 0);
        prop_assert!(v.last_reset <= NOW + offset && NOW + offset < v.resets_at);
    }
}

#[test]
fn a_charged_limit_is_queued_for_the_flush_once() {
    let (b, r) = (budget(10.0, "1h"), rate(Some(100), Some(100), "1h"));
    let s = with_key(key("sk", limits(Some(b.clone()), Some(r.clone()))));
    apply(&s, &usage("sk", 5, 0.5), NOW, &s.dirty.enter());
    apply(&s, &usage("sk", 5, 0.5), NOW, &s.dirty.enter());
    let queued = s.dirty.drain(0);
    assert_eq!(
        queued.len(),
        2,
        "one entry for the budget, one for the rate limit"
    );
    b.counter.clear_dirty(0);
    r.tokens.clear_dirty(0);
    apply(&s, &usage("sk", 5, 0.5), NOW, &s.dirty.enter());
    assert_eq!(s.dirty.drain(0).len(), 2, "cleared marks queue again");
    let failed = UsageEvent {
        success: false,
        ..usage("sk", 5, 0.5)
    };
    b.counter.clear_dirty(0);
    r.tokens.clear_dirty(0);
    apply(&s, &failed, NOW, &s.dirty.enter());
    assert!(s.dirty.drain(0).is_empty());
}
