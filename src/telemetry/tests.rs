use super::*;

#[test]
fn provider_model_pairs_are_capped() {
    let m = Metrics::new();
    let charge = Charge {
        tokens: Some(1),
        requests: Some(1),
        cost: Some(1),
    };
    for i in 0..MAX_MODEL_SERIES + 10 {
        m.charged("p", &format!("m{i}"), &charge);
    }
    let text = m.handle.render();
    let series = text
        .lines()
        .filter(|l| l.starts_with("heimdall_usage_tokens_total{"))
        .count();
    assert_eq!(
        series,
        MAX_MODEL_SERIES + 1,
        "the cap plus one _other series"
    );
    assert!(text.contains("heimdall_usage_tokens_total{provider=\"_other\",model=\"_other\"} 10"));
}
