//! The gateway API over HTTP: checks with their statuses, bodies and Retry-After; usage with
//! the streaming rules, idempotency and batches; input limits; gateway tokens.

use crate::common;

use common::{assert_error, config_for, with_tokens, Backend, TestApp, TestDb};
use serde_json::{json, Value};

struct Gw {
    app: TestApp,
    db: TestDb,
}

async fn start(configure: impl FnOnce(&mut heimdall::Config)) -> Gw {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let mut config = config_for(&db);
    configure(&mut config);
    Gw {
        app: TestApp::start(config).await,
        db,
    }
}

impl Gw {
    async fn stop(self) {
        self.app.stop().await;
        self.db.drop_db().await;
    }

    async fn key(&self, body: Value) -> (String, Value) {
        let created = self.app.create("/api/governance/virtual-keys", body).await;
        let vk = created["virtual_key"].clone();
        (vk["value"].as_str().unwrap().to_owned(), vk)
    }

    async fn usage(&self, body: Value) -> Value {
        let (status, body) = self.app.post("/v1/usage", body).await;
        assert_eq!(status, 202, "{body}");
        body
    }

    async fn check(&self, body: Value) -> (u16, Value, Option<String>) {
        let resp = self
            .app
            .client
            .post(self.app.url("/v1/check"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let retry = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, resp.json().await.unwrap(), retry)
    }
}

#[tokio::test]
async fn a_budget_blocks_once_usage_reaches_it() {
    let gw = start(|_| {}).await;
    let (value, vk) = gw
        .key(json!({"name": "k", "budget": {"max_limit": 100.0, "reset_duration": "1h"}}))
        .await;
    let ask = json!({"virtual_key": value, "provider": "openai", "model": "gpt-4o"});
    let (status, body, retry) = gw.check(ask.clone()).await;
    assert_eq!(
        (status, body["allowed"].clone(), body["decision"].clone()),
        (200, json!(true), json!("allow"))
    );
    assert!(retry.is_none());
    assert_eq!(body["virtual_key_id"], vk["id"]);
    assert_eq!(body["virtual_key_name"], "k");

    let usage = json!({"virtual_key": value, "provider": "openai", "model": "gpt-4o", "cost": 99.99, "tokens_used": 10});
    assert_eq!(
        gw.usage(usage).await,
        json!({"accepted": true, "duplicate": false})
    );
    assert_eq!(
        gw.check(ask.clone()).await.0,
        200,
        "99.99 of 100 still allows"
    );
    gw.usage(json!({"virtual_key": value, "provider": "openai", "model": "gpt-4o", "cost": 0.01}))
        .await;
    let (status, body, retry) = gw.check(ask).await;
    assert_eq!(status, 402);
    assert_eq!(body["decision"], "budget_exceeded");
    assert_eq!(body["status_code"], 402);
    assert_eq!(body["allowed"], false);
    assert_eq!(
        body["message"],
        "Budget exceeded: VK budget exceeded: 100.0000 >= 100.0000 dollars"
    );
    let check = &body["checks"][0];
    assert_eq!(check["level"], "virtual_key");
    assert_eq!(check["kind"], "budget");
    assert_eq!(check["used"], 100.0);
    assert_eq!(check["max"], 100.0);
    assert_eq!(check["exceeded"], true);
    assert_eq!(check["id"], vk["id"]);
    let retry: u64 = retry.expect("Retry-After on 402").parse().unwrap();
    assert!((3590..=3600).contains(&retry), "{retry}");
    let (_, got) = gw
        .app
        .get(&format!(
            "/api/governance/virtual-keys/{}",
            vk["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        got["virtual_key"]["budget"]["current_usage"], 100.0,
        "the admin view shows live usage"
    );
    gw.stop().await;
}

#[tokio::test]
async fn rate_limits_answer_429_with_the_dimension_that_failed() {
    let gw = start(|_| {}).await;
    let (value, _) = gw
        .key(json!({"name": "k", "rate_limit": {"token_max_limit": 100, "token_reset_duration": "1m", "request_max_limit": 2, "request_reset_duration": "1h"}}))
        .await;
    let ask = json!({"virtual_key": value});
    gw.usage(json!({"virtual_key": value, "tokens_used": 100}))
        .await;
    let (status, body, retry) = gw.check(ask.clone()).await;
    assert_eq!(
        (status, body["decision"].clone()),
        (429, json!("token_limited"))
    );
    assert!(retry.unwrap().parse::<u64>().unwrap() <= 60);
    gw.usage(json!({"virtual_key": value})).await;
    let (status, body, retry) = gw.check(ask).await;
    assert_eq!(
        (status, body["decision"].clone()),
        (429, json!("rate_limited"))
    );
    assert!(
        retry.unwrap().parse::<u64>().unwrap() > 60,
        "waits for the later window"
    );
    assert_eq!(body["checks"].as_array().unwrap().len(), 2);
    gw.stop().await;
}

#[tokio::test]
async fn gates_answer_with_their_statuses() {
    let gw = start(|c| {
        c.require_virtual_key = true;
        c.required_headers = vec!["X-Tenant".into()];
    })
    .await;
    let (value, _) = gw
        .key(json!({"name": "k", "provider_configs": [{"provider": "openai", "allowed_models": ["gpt-4o"], "key_ids": ["k1"]}]}))
        .await;
    let h = json!({"x-tenant": "t"});
    let (s, b, _) = gw.check(json!({"virtual_key": value})).await;
    assert_eq!(
        (s, b["decision"].clone()),
        (400, json!("missing_required_headers"))
    );
    let (s, b, _) = gw.check(json!({"headers": h})).await;
    assert_eq!(
        (s, b["decision"].clone()),
        (401, json!("virtual_key_required"))
    );
    let (s, b, _) = gw
        .check(json!({"headers": h, "virtual_key": "sk-hd-unknown", "user_id": "u"}))
        .await;
    assert_eq!(
        (s, b["decision"].clone()),
        (403, json!("virtual_key_not_found"))
    );
    let (s, b, _) = gw
        .check(json!({"headers": h, "virtual_key": value, "provider": "anthropic"}))
        .await;
    assert_eq!((s, b["decision"].clone()), (403, json!("provider_blocked")));
    let (s, b, _) = gw
        .check(json!({"headers": h, "virtual_key": value, "provider": "openai", "model": "o1"}))
        .await;
    assert_eq!((s, b["decision"].clone()), (403, json!("model_blocked")));
    let (s, b, _) = gw
        .check(json!({"headers": h, "virtual_key": value, "provider": "openai", "model": "gpt-4o"}))
        .await;
    assert_eq!((s, b["decision"].clone()), (200, json!("allow")));
    assert_eq!(b["include_only_key_ids"], json!(["k1"]));
    let id = b["virtual_key_id"].as_str().unwrap().to_owned();
    gw.app
        .put(
            &format!("/api/governance/virtual-keys/{id}"),
            json!({"is_active": false}),
        )
        .await;
    let (s, b, _) = gw
        .check(json!({"headers": h, "virtual_key": value, "provider": "openai", "model": "gpt-4o"}))
        .await;
    assert_eq!(
        (s, b["decision"].clone()),
        (403, json!("virtual_key_blocked"))
    );
    gw.stop().await;
}

#[tokio::test]
async fn usage_reaches_provider_model_user_and_the_keys_hierarchy() {
    let gw = start(|_| {}).await;
    let b = json!({"max_limit": 1000.0, "reset_duration": "1d"});
    let c = gw
        .app
        .create(
            "/api/governance/customers",
            json!({"name": "c", "budget": b}),
        )
        .await["customer"]["id"]
        .clone();
    let t = gw
        .app
        .create(
            "/api/governance/teams",
            json!({"name": "t", "customer_id": c, "budget": b}),
        )
        .await["team"]["id"]
        .clone();
    let (value, vk) = gw
        .key(json!({"name": "k", "team_id": t, "budget": b}))
        .await;
    gw.app
        .put("/api/governance/providers/openai", json!({"budget": b}))
        .await;
    gw.app
        .post(
            "/api/governance/model-configs",
            json!({"model_name": "gpt-4o", "budget": b}),
        )
        .await;
    gw.app
        .put("/api/governance/users/u1", json!({"budget": b}))
        .await;
    gw.usage(json!({"virtual_key": value, "provider": "openai", "model": "gpt-4o", "user_id": "u1", "cost": 1.5})).await;
    let (_, budgets) = gw.app.get("/api/governance/budgets").await;
    let used: Vec<f64> = budgets["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["current_usage"].as_f64().unwrap())
        .collect();
    assert_eq!(
        used,
        vec![1.5; 6],
        "customer, team, key, provider, model and user were each charged in full"
    );
    let (_, body, _) = gw
        .check(
            json!({"virtual_key": value, "provider": "openai", "model": "gpt-4o", "user_id": "u1"}),
        )
        .await;
    let levels: Vec<&str> = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["level"].as_str().unwrap())
        .collect();
    assert_eq!(
        levels,
        [
            "provider",
            "model",
            "user",
            "virtual_key",
            "team",
            "customer"
        ]
    );
    assert_eq!(body["team_id"], t);
    assert_eq!(body["customer_id"], c);
    assert_eq!(body["virtual_key_id"], vk["id"]);
    gw.stop().await;
}

#[tokio::test]
async fn idempotent_updates_count_once() {
    let gw = start(|_| {}).await;
    let (value, vk) = gw
        .key(json!({"name": "k", "rate_limit": {"token_max_limit": 1000000, "token_reset_duration": "1h", "request_max_limit": 1000, "request_reset_duration": "1h"}}))
        .await;
    let u = json!({"virtual_key": value, "tokens_used": 10, "request_id": "req-1"});
    assert_eq!(gw.usage(u.clone()).await["duplicate"], false);
    assert_eq!(
        gw.usage(u.clone()).await,
        json!({"accepted": true, "duplicate": true})
    );
    assert_eq!(
        gw.usage(
            json!({"virtual_key": value, "tokens_used": 10, "request_id": "req-1", "attempt": 1})
        )
        .await["duplicate"],
        false
    );
    let chunk = json!({"virtual_key": value, "tokens_used": 5, "request_id": "req-2", "is_streaming": true, "has_usage_data": true, "chunk_index": 0});
    gw.usage(chunk.clone()).await;
    assert_eq!(gw.usage(chunk).await["duplicate"], true);
    let unindexed = json!({"virtual_key": value, "tokens_used": 1, "request_id": "req-2", "is_streaming": true, "has_usage_data": true});
    gw.usage(unindexed.clone()).await;
    assert_eq!(
        gw.usage(unindexed).await["duplicate"],
        false,
        "chunks without an index are not deduplicated"
    );
    let (_, got) = gw
        .app
        .get(&format!(
            "/api/governance/virtual-keys/{}",
            vk["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(got["virtual_key"]["rate_limit"]["token_current_usage"], 27);
    assert_eq!(got["virtual_key"]["rate_limit"]["request_current_usage"], 2);
    gw.stop().await;
}

#[tokio::test]
async fn a_batch_is_validated_whole_before_anything_applies() {
    let gw = start(|c| c.batch_max_items = 5).await;
    let (value, vk) = gw
        .key(json!({"name": "k", "rate_limit": {"request_max_limit": 1000, "request_reset_duration": "1h"}}))
        .await;
    let good = json!({"virtual_key": value, "request_id": "a"});
    let resp = gw
        .app
        .post(
            "/v1/usage/batch",
            json!({"updates": [good, {"tokens_used": -1}, {"cost": "x"}, {"virtual_key": value}]}),
        )
        .await;
    assert_error(&resp, 400, "invalid_request");
    let details = resp.1["error"]["details"].as_array().unwrap();
    let indexes: Vec<u64> = details
        .iter()
        .map(|d| d["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, vec![1, 2]);
    let path = format!(
        "/api/governance/virtual-keys/{}",
        vk["id"].as_str().unwrap()
    );
    let requests = || async {
        gw.app.get(&path).await.1["virtual_key"]["rate_limit"]["request_current_usage"].clone()
    };
    assert_eq!(requests().await, 0, "nothing applied");
    let (status, body) = gw
        .app
        .post(
            "/v1/usage/batch",
            json!({"updates": [good, good, {"virtual_key": value}]}),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(body, json!({"accepted": 2, "duplicates": 1}));
    assert_eq!(requests().await, 2);
    let too_many = gw
        .app
        .post("/v1/usage/batch", json!({"updates": vec![json!({}); 6]}))
        .await;
    assert!(assert_error(&too_many, 400, "invalid_request").contains("at most 5"));
    assert_error(
        &gw.app.post("/v1/usage/batch", json!({"items": []})).await,
        400,
        "invalid_request",
    );
    gw.stop().await;
}

#[tokio::test]
async fn bad_gateway_input_is_a_4xx_and_changes_nothing() {
    let gw = start(|c| c.max_body_bytes = 2048).await;
    let (value, vk) = gw
        .key(json!({"name": "k", "rate_limit": {"request_max_limit": 1000, "request_reset_duration": "1h"}}))
        .await;
    let long = "x".repeat(257);
    for bad in [
        json!({"virtual_key": value, "tokens_used": -5}),
        json!({"virtual_key": value, "tokens_used": 2.5}),
        json!({"virtual_key": value, "tokens_used": "7"}),
        json!({"virtual_key": value, "cost": -1}),
        json!({"virtual_key": value, "cost": 1e300}),
        json!({"virtual_key": value, "model": long}),
        json!({"virtual_key": value, "attempt": -1}),
        json!({"virtual_key": value, "success": "yes"}),
        json!([1, 2]),
    ] {
        assert_error(&gw.app.post("/v1/usage", bad).await, 400, "invalid_request");
    }
    assert_error(
        &gw.app.post("/v1/check", json!({"provider": long})).await,
        400,
        "invalid_request",
    );
    assert_error(
        &gw.app.post("/v1/check", json!({"headers": {"a": 1}})).await,
        400,
        "invalid_request",
    );
    let big = json!({"virtual_key": value, "provider": "p".repeat(4000)});
    assert_error(
        &gw.app.post("/v1/usage", big).await,
        413,
        "payload_too_large",
    );
    let raw = gw
        .app
        .send(gw.app.client.post(gw.app.url("/v1/usage")).body("{}"))
        .await;
    assert_error(&raw, 415, "unsupported_media_type");
    let (_, got) = gw
        .app
        .get(&format!(
            "/api/governance/virtual-keys/{}",
            vk["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(got["virtual_key"]["rate_limit"]["request_current_usage"], 0);
    assert_eq!(
        gw.app
            .post("/v1/usage", json!({"virtual_key": "unknown"}))
            .await
            .0,
        202,
        "unknown keys are not an error"
    );
    gw.stop().await;
}

#[tokio::test]
async fn gateway_routes_take_gateway_or_admin_tokens() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let mut app = TestApp::start(with_tokens(config_for(&db), "adm", "gw")).await;
    assert_error(&app.post("/v1/check", json!({})).await, 401, "unauthorized");
    assert_error(&app.post("/v1/usage", json!({})).await, 401, "unauthorized");
    app.token = Some("gw".into());
    assert_eq!(app.post("/v1/check", json!({})).await.0, 200);
    assert_eq!(app.post("/v1/usage", json!({})).await.0, 202);
    assert_eq!(
        app.post("/v1/usage/batch", json!({"updates": []})).await.0,
        202
    );
    app.token = Some("adm".into());
    assert_eq!(app.post("/v1/check", json!({})).await.0, 200);
    app.stop().await;
    db.drop_db().await;
}
