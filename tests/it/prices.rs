//! Model prices: usage that reports input and output tokens without a cost is priced at the
//! model config's prices (the provider's own config first, else the model's global one); a
//! cost the gateway sends always wins; prices survive a restart.

use serde_json::{json, Value};

use crate::common::{assert_error, config_for, TestApp, TestDb};

async fn key_with_budget(app: &TestApp) -> (String, String) {
    let key = app
        .create(
            "/api/governance/virtual-keys",
            json!({"name": "priced", "budget": {"max_limit": 100, "reset_duration": "1d"}}),
        )
        .await;
    let k = &key["virtual_key"];
    (
        k["id"].as_str().unwrap().to_owned(),
        k["value"].as_str().unwrap().to_owned(),
    )
}

async fn key_spend(app: &TestApp, id: &str) -> f64 {
    let (status, body) = app.get(&format!("/api/governance/virtual-keys/{id}")).await;
    assert_eq!(status, 200);
    body["virtual_key"]["budget"]["current_usage"]
        .as_f64()
        .unwrap()
}

async fn send(app: &TestApp, body: Value) {
    let (status, resp) = app.post("/v1/usage", body).await;
    assert_eq!(status, 202, "{resp}");
}

/// 1000 input and 500 output tokens of gpt-4o on `provider`, with `extra` fields.
fn tokens(key: &str, provider: &str, extra: Value) -> Value {
    let mut body = json!({"virtual_key": key, "provider": provider, "model": "gpt-4o",
                          "input_tokens": 1000, "output_tokens": 500});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

async fn prices_price_token_counts_and_a_given_cost_wins(db: &TestDb) {
    let app = TestApp::start(config_for(db)).await;
    // The model everywhere: $2.50 / $10 per million; on azure: $1 / $4.
    let global = app
        .create(
            "/api/governance/model-configs",
            json!({"model_name": "gpt-4o", "input_cost_per_million_tokens": 2.5,
                   "output_cost_per_million_tokens": 10.0}),
        )
        .await;
    assert_eq!(global["model_config"]["input_cost_per_million_tokens"], 2.5);
    assert_eq!(
        global["model_config"]["output_cost_per_million_tokens"],
        10.0
    );
    app.create(
        "/api/governance/model-configs",
        json!({"model_name": "gpt-4o", "provider": "azure", "input_cost_per_million_tokens": 1.0,
               "output_cost_per_million_tokens": 4.0}),
    )
    .await;
    let (id, key) = key_with_budget(&app).await;

    // 1000 in + 500 out on openai (the global config): 0.0025 + 0.005.
    send(&app, tokens(&key, "openai", json!({}))).await;
    assert!((key_spend(&app, &id).await - 0.0075).abs() < 1e-12);
    // The same on azure (its own config): 0.001 + 0.002.
    send(&app, tokens(&key, "azure", json!({}))).await;
    assert!((key_spend(&app, &id).await - 0.0105).abs() < 1e-12);
    // A cost the gateway sends wins, even 0.
    send(&app, tokens(&key, "openai", json!({"cost": 0.5}))).await;
    send(&app, tokens(&key, "openai", json!({"cost": 0}))).await;
    assert!((key_spend(&app, &id).await - 0.5105).abs() < 1e-12);
    // Token counts count as tokens_used when it is absent.
    let (_, check) = app.post("/v1/check", json!({"virtual_key": key})).await;
    assert_eq!(check["allowed"], true);

    // Prices persist; a PUT with null removes one, absent keeps it.
    let id_global = global["model_config"]["id"].as_str().unwrap().to_owned();
    let app = app.restart().await;
    let (status, body) = app
        .put(
            &format!("/api/governance/model-configs/{id_global}"),
            json!({"input_cost_per_million_tokens": null}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["model_config"]["input_cost_per_million_tokens"],
        Value::Null
    );
    assert_eq!(body["model_config"]["output_cost_per_million_tokens"], 10.0);
    // Only the output price is left: 500 out = 0.005.
    send(&app, tokens(&key, "openai", json!({}))).await;
    assert!((key_spend(&app, &id).await - 0.5155).abs() < 1e-12);
    app.stop().await;
}

on_both_backends!(prices_price_token_counts_and_a_given_cost_wins);

#[tokio::test]
async fn bad_prices_and_token_counts_are_rejected() {
    let db = TestDb::new(crate::common::Backend::Sqlite).await.unwrap();
    let app = TestApp::start(config_for(&db)).await;
    for (field, value) in [
        ("input_cost_per_million_tokens", json!(-1)),
        ("output_cost_per_million_tokens", json!("cheap")),
    ] {
        let resp = app
            .post(
                "/api/governance/model-configs",
                json!({"model_name": "m", field: value}),
            )
            .await;
        assert_error(&resp, 400, "invalid_request");
    }
    for (field, value) in [("input_tokens", json!(-5)), ("output_tokens", json!(1.5))] {
        let resp = app
            .post("/v1/usage", json!({"model": "m", field: value}))
            .await;
        assert_error(&resp, 400, "invalid_request");
    }
    let (status, body) = app.get("/api/governance/model-configs").await;
    assert_eq!((status, body["count"].as_i64()), (200, Some(0)));
    app.stop().await;
    db.drop_db().await;
}
