use super::*;

#[test]
fn a_repeat_within_the_window_is_a_duplicate() {
    let d = Dedup::new(3200, 1_000_000);
    let k = dedup_key("req-1", 0, Phase::Final);
    assert_eq!(d.claim(k, 0), Some(3200));
    assert_eq!(d.claim(k, 3199), None);
    assert!(
        d.claim(k, 3200 + 2 * d.span).is_some(),
        "a span after the window the key is new again"
    );
}

#[test]
fn attempts_and_phases_are_distinct_keys() {
    let keys = [
        dedup_key("req-1", 0, Phase::Final),
        dedup_key("req-1", 1, Phase::Final),
        dedup_key("req-1", 0, Phase::Chunk(0)),
        dedup_key("req-1", 0, Phase::Chunk(1)),
        dedup_key("req-2", 0, Phase::Final),
    ];
    for (i, a) in keys.iter().enumerate() {
        for b in &keys[i + 1..] {
            assert_ne!(a, b);
        }
    }
}

#[test]
fn new_keys_are_queued_for_the_flush_and_loaded_ones_are_not() {
    let d = Dedup::new(10, 1000);
    d.load([(key(7), 100)], 5);
    assert!(
        d.claim(key(7), 5).is_none(),
        "a persisted key is still a duplicate after a restart"
    );
    assert!(d.claim_for(key(8), 5, 1));
    assert!(d.take_unsaved(0).is_empty(), "keys stay on their side");
    assert_eq!(d.take_unsaved(1), vec![(key(8), 15)]);
    assert!(
        d.take_unsaved(0).is_empty(),
        "a loaded key is in the database already"
    );
    assert!(d.take_unsaved(1).is_empty());
}

fn key(i: u64) -> DedupKey {
    dedup_key(&format!("r{i}"), 0, Phase::Final)
}

#[test]
fn loaded_keys_expire_with_their_own_expiry() {
    let window = 3200;
    let d = Dedup::new(window, 1_000_000);
    // Persisted by a run that stopped at 1000: one key from 100, one from 900.
    d.load([(key(1), 100 + window), (key(2), 900 + window)], 1000);
    assert!(d.claim(key(1), 1000).is_none());
    assert!(d.claim(key(2), 1000).is_none());
    let after_first = 100 + window + d.span + 1;
    assert!(d.claim(key(1), after_first).is_some(), "its window is over");
    assert!(d.claim(key(2), after_first).is_none(), "its window is not");
}

#[test]
fn the_bound_drops_the_oldest_keys_first() {
    let d = Dedup::new(1_000_000_000, 1600);
    for i in 0..5000 {
        assert!(d.claim(key(i), 1).is_some());
        assert!(d.len() <= 1600, "{} keys held", d.len());
    }
    assert!(d.evicted() >= 3400, "{} evicted", d.evicted());
    for i in 4800..5000 {
        assert!(d.claim(key(i), 2).is_none(), "recent key {i} is remembered");
    }
    for i in 0..200 {
        assert!(d.claim(key(i), 2).is_some(), "old key {i} went first");
    }
    assert!(d.purge_before(2) > 2, "the database may drop what went");
}

#[test]
fn a_key_costs_close_to_its_sixteen_bytes() {
    let d = Dedup::new(1_000_000_000, 10_000_000);
    for i in 0..200_000 {
        d.claim(key(i), 1);
    }
    let per_key = d.bytes() as f64 / d.len() as f64;
    assert!((16.0..=33.0).contains(&per_key), "{per_key} bytes per key");
}

#[test]
fn memory_is_given_back_when_keys_expire() {
    let d = Dedup::new(3200, 10_000_000);
    for i in 0..100_000 {
        d.claim(key(i), 1);
    }
    let full = d.bytes();
    d.maintain(3200 + 3 * d.span);
    assert_eq!(d.len(), 0);
    assert!(d.bytes() * 10 < full, "{} of {full} bytes kept", d.bytes());
}

#[test]
fn generation_numbers_coming_round_do_not_bring_keys_back() {
    // A span of one microsecond: every claim one tick later opens a generation.
    let d = Dedup::new(32, 1_000_000);
    assert!(d.claim(key(0), 0).is_some());
    for t in 1..=70_000 {
        d.claim(key(t as u64), t);
        if t % 1000 == 0 {
            d.maintain(t);
        }
    }
    assert!(
        d.claim(key(0), 70_001).is_some(),
        "expired 70 000 generations ago, not a duplicate"
    );
}

#[test]
fn the_queue_to_the_database_is_bounded() {
    let d = Dedup::new(1000, 16_000);
    for i in 0..200_000 {
        assert!(d.claim_for(key(i), 0, 0));
    }
    assert!(d.unqueued() > 0);
    let queued = d.take_unsaved(0).len();
    assert_eq!(queued, 200_000 - d.unqueued() as usize);
    assert!(queued <= 64 * 1024, "{queued} queued");
}

proptest::proptest! {
    /// Against a model that remembers every key exactly: a key seen less than a window ago
    /// is always a duplicate; one seen more than a window and two spans ago never is.
    #[test]
    fn matches_a_model_within_the_window(
        steps in proptest::collection::vec((0u64..64, 0i64..40), 1..400)
    ) {
        let window = 320;
        let d = Dedup::new(window, 1_000_000);
        let mut seen: std::collections::HashMap<u64, Micros> = Default::default();
        let mut now = 0;
        for (k, dt) in steps {
            now += dt;
            let claimed = d.claim(key(k), now).is_some();
            match seen.get(&k) {
                Some(&at) if now - at < window => proptest::prop_assert!(!claimed),
                Some(&at) if now - at > window + 2 * d.span => proptest::prop_assert!(claimed),
                None => proptest::prop_assert!(claimed),
                _ => {}
            }
            if claimed {
                seen.insert(k, now);
            }
        }
    }
}
