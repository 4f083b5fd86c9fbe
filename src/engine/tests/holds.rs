//! Holds under any interleaving of reserve, settle, release, expire, usage and window resets:
//! `held` is never negative and equals what live holds set aside, a successful reserve leaves
//! `used + held <= max` on every counter it took, and every hold ends exactly once.

use std::collections::HashMap;

use super::*;
use crate::domain::{ResetDuration, WindowRule};
use crate::engine::counter::Counter;
use crate::engine::holds::{Amounts, Holds, Reserved, Want};

#[derive(Debug, Clone)]
enum Op {
    /// A hold of `amount` on the counters in `mask`, expiring `ttl` from now.
    Reserve {
        id: u8,
        amount: i64,
        mask: u8,
        ttl: i64,
    },
    Settle(u8),
    Release(u8),
    /// Time moves on; holds whose TTL is over expire.
    Advance(i64),
    /// Usage charged to a counter.
    Use {
        counter: u8,
        amount: i64,
    },
    /// A counter's window starts over (an admin reset).
    Reset(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..12, 0i64..40, 1u8..8, 1i64..50).prop_map(|(id, amount, mask, ttl)| Op::Reserve { id, amount, mask, ttl }),
        2 => (0u8..12).prop_map(Op::Settle),
        1 => (0u8..12).prop_map(Op::Release),
        1 => (1i64..30).prop_map(Op::Advance),
        1 => (0u8..3, 0i64..30).prop_map(|(counter, amount)| Op::Use { counter, amount }),
        1 => (0u8..3).prop_map(Op::Reset),
    ]
}

proptest! {
    #[test]
    fn holds_keep_their_invariants_under_any_interleaving(ops in proptest::collection::vec(op(), 1..80)) {
        let rule = WindowRule::rolling(&ResetDuration::parse("1h").unwrap());
        let counters: Vec<Arc<Counter>> = (0..3).map(|_| Arc::new(Counter::new(0, 0, &rule))).collect();
        let maxes = [100i64, 60, 150];
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        let holds = Holds::new(1);
        let mut now: Micros = 1;
        // The model: live holds with what they hold on each counter.
        let mut live: HashMap<u8, [i64; 3]> = HashMap::new();
        let (mut placed, mut ended) = (0usize, 0usize);
        for op in ops {
            match op {
                Op::Reserve { id, amount, mask, ttl } => {
                    let chosen: Vec<usize> = (0..3).filter(|i| mask & (1 << i) != 0).collect();
                    let wants: Vec<Want<'_>> = chosen.iter().map(|&i| Want {
                        kind: LimitKind::Budget,
                        limit: ids[i],
                        counter: &counters[i],
                        rule: &rule,
                        max: maxes[i],
                    }).collect();
                    let reserved = Amounts { cost: amount, tokens: 0, requests: 1 };
                    match holds.reserve(&id.to_string(), 0, reserved, now + ttl, &wants, now) {
                        Reserved::Placed(_) => {
                            prop_assert!(!live.contains_key(&id));
                            let mut on = [0; 3];
                            for &i in &chosen {
                                on[i] = amount;
                                let v = counters[i].view(&rule, now);
                                prop_assert!(v.used + v.held <= maxes[i], "counter {i}: {v:?}");
                            }
                            live.insert(id, on);
                            placed += 1;
                        }
                        Reserved::Existing(_) => prop_assert!(live.contains_key(&id)),
                        Reserved::NoRoom(_) => prop_assert!(!live.contains_key(&id)),
                    }
                }
                Op::Settle(id) | Op::Release(id) => {
                    let ended_now = holds.end(&id.to_string(), 0).is_some();
                    prop_assert_eq!(ended_now, live.remove(&id).is_some());
                    ended += usize::from(ended_now);
                }
                Op::Advance(by) => {
                    now += by;
                    for hold in holds.expire(now) {
                        let id: u8 = hold.request_id.parse().unwrap();
                        prop_assert!(hold.expires_at <= now);
                        prop_assert!(live.remove(&id).is_some(), "expired once");
                        ended += 1;
                    }
                }
                Op::Use { counter, amount } => counters[counter as usize].add(&rule, now, amount, 0),
                Op::Reset(counter) => counters[counter as usize].reset(&rule, now),
            }
            for i in 0..3 {
                let held = counters[i].held();
                prop_assert!(held >= 0);
                prop_assert_eq!(held, live.values().map(|on| on[i]).sum::<i64>(), "counter {}", i);
            }
        }
        for hold in holds.expire(i64::MAX) {
            let id: u8 = hold.request_id.parse().unwrap();
            prop_assert!(live.remove(&id).is_some());
            ended += 1;
        }
        prop_assert!(live.is_empty());
        prop_assert_eq!(placed, ended, "every hold ended exactly once");
        for c in &counters {
            prop_assert_eq!(c.held(), 0);
        }
    }
}

/// A settle, a release and an expiry racing for the same hold free its capacity once.
#[test]
fn racing_ends_free_a_hold_once() {
    let rule = WindowRule::rolling(&ResetDuration::parse("1h").unwrap());
    let counter = Arc::new(Counter::new(0, 0, &rule));
    for round in 0..200 {
        let holds = Arc::new(Holds::new(1));
        let want = [Want {
            kind: LimitKind::Budget,
            limit: Uuid::nil(),
            counter: &counter,
            rule: &rule,
            max: 10,
        }];
        let reserved = Amounts {
            cost: 7,
            tokens: 0,
            requests: 1,
        };
        assert!(matches!(
            holds.reserve("r", 0, reserved, 5, &want, 1),
            Reserved::Placed(_)
        ));
        let ends: Vec<_> = (0..4)
            .map(|i| {
                let holds = Arc::clone(&holds);
                std::thread::spawn(move || match i % 2 {
                    0 => usize::from(holds.end("r", 0).is_some()),
                    _ => holds.expire(10).len(),
                })
            })
            .collect();
        let freed: usize = ends.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(freed, 1, "round {round}");
        assert_eq!(counter.held(), 0, "round {round}");
    }
}
