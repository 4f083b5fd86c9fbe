use super::*;

use std::sync::Arc;

use crate::domain::{BudgetSpec, RateLimitSpec};
use crate::engine::check::{CheckPolicy, Verdict};
use crate::engine::{Budget, Limits, Provider, RateLimit, Snapshot, Team, VirtualKey};

fn limits() -> Limits {
    let b = BudgetSpec::new(1.5, "1d", false, None).unwrap();
    let r = RateLimitSpec::new(Some(10), Some("1h"), Some(5), Some("1m")).unwrap();
    Limits {
        budget: Some(Arc::new(Budget::new(
            Uuid::new_v4(),
            b,
            2_000_000_000,
            7,
            7,
            7,
        ))),
        rate_limit: Some(Arc::new(RateLimit::new(
            Uuid::new_v4(),
            r,
            (3, 7),
            (9, 7),
            7,
            7,
        ))),
    }
}

#[test]
fn the_hand_written_decision_matches_the_documented_body() {
    let mut s = Snapshot::default();
    s.providers.insert(
        "op\"en\\ai".into(),
        Arc::new(Provider {
            name: "op\"en\\ai".into(),
            limits: limits(),
            created_at: 0,
            updated_at: 0,
        }),
    );
    let team = Team {
        id: Uuid::new_v4(),
        name: "tëam \u{1}".into(),
        customer_id: None,
        limits: limits(),
        created_at: 0,
        updated_at: 0,
    };
    let team_id = team.id;
    s.put_team(team);
    s.put_virtual_key(VirtualKey {
        id: Uuid::new_v4(),
        name: "k".into(),
        description: String::new(),
        value_hash: VirtualKey::hash_value("sk"),
        value_prefix: String::new(),
        is_active: true,
        team_id: Some(team_id),
        customer_id: None,
        limits: limits(),
        provider_configs: vec![],
        created_at: 0,
        updated_at: 0,
    });
    for value in [Some("sk"), Some("unknown"), None] {
        let input = CheckInput {
            virtual_key: value,
            provider: "op\"en\\ai",
            model: "m",
            ..Default::default()
        };
        let d = check(&s, &CheckPolicy::default(), &input, &[], 1_000_123);
        let mut hand = Vec::new();
        write_decision(&d, &mut hand);
        let hand: serde_json::Value = serde_json::from_slice(&hand).unwrap();
        let derived = serde_json::to_value(DecisionBody::new(&d)).unwrap();
        assert_eq!(hand, derived);
        assert_ne!(d.verdict, Verdict::Allow, "the fixture exceeds its budgets");
    }
}

#[test]
fn retry_after_rounds_up_to_whole_seconds() {
    assert_eq!(retry_after(1_500_000, 0), 2);
    assert_eq!(retry_after(1_000_000, 0), 1);
    assert_eq!(retry_after(0, 5), 1);
}
