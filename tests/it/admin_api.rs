//! The admin API end to end on both backends: create, read, list (pagination, filters),
//! update (PUT semantics), delete (cascades).

use crate::common;

use common::{assert_error, config_for, TestApp, TestDb};
use serde_json::{json, Value};

on_both_backends!(
    customers_have_full_crud_with_pagination_and_search,
    teams_filter_by_customer_and_detach_on_null,
    virtual_keys_show_their_value_only_once,
    virtual_key_lists_filter_and_paginate,
    virtual_keys_belong_to_a_team_or_a_customer_never_both,
    provider_configs_are_replaced_keeping_listed_ones,
    put_keeps_absent_fields_and_null_clears,
    deleting_a_team_or_customer_detaches_and_a_key_takes_its_limits,
    providers_users_and_model_configs_have_crud,
    budgets_and_rate_limits_are_listed_and_reset,
);

fn id(v: &Value) -> String {
    v["id"].as_str().expect("id").to_owned()
}

async fn customers_have_full_crud_with_pagination_and_search(db: &TestDb) {
    let app = TestApp::start(config_for(db)).await;
    for name in ["Acme", "Globex", "Initech", "acme labs"] {
        let body = app
            .create(
                "/api/governance/customers",
                json!({"name": name, "budget": {"max_limit": 100.0, "reset_duration": "1M"}}),
            )
            .await;
        assert_eq!(body["message"], "Customer created successfully");
        assert_eq!(body["customer"]["name"], name);
        assert_eq!(body["customer"]["budget"]["max_limit"], 100.0);
        assert_eq!(body["customer"]["budget"]["current_usage"], 0.0);
    }
    let (status, list) = app.get("/api/governance/customers?limit=2&offset=1").await;
    assert_eq!(status, 200);
    assert_eq!(list["count"], 2);
    assert_eq!(list["total_count"], 4);
    assert_eq!(list["limit"], 2);
    assert_eq!(list["offset"], 1);
    let names: Vec<_> = list["customers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("Globex"), json!("Initech")]);

    let (_, found) = app.get("/api/governance/customers?search=ACME").await;
    assert_eq!(found["total_count"], 2);

    let acme = list_first(
        &app,
        "/api/governance/customers?search=Acme&limit=1",
        "customers",
    )
    .await;
    let (status, got) = app
        .get(&format!("/api/governance/customers/{}", id(&acme)))
        .await;
    assert_eq!(status, 200);
    assert_eq!(got["customer"]["name"], "Acme");
    assert_eq!(got["customer"]["teams"], json!([]));
    assert_eq!(got["customer"]["virtual_keys"], json!([]));

    let (status, updated) = app
        .put(
            &format!("/api/governance/customers/{}", id(&acme)),
            json!({"name": "Acme Corp"}),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["message"], "Customer updated successfully");
    assert_eq!(updated["customer"]["name"], "Acme Corp");
    assert_eq!(
        updated["customer"]["budget"]["max_limit"], 100.0,
        "absent budget stays"
    );

    let (status, deleted) = app
        .delete(&format!("/api/governance/customers/{}", id(&acme)))
        .await;
    assert_eq!(status, 200);
    assert_eq!(deleted["message"], "Customer deleted successfully");
    let gone = app
        .get(&format!("/api/governance/customers/{}", id(&acme)))
        .await;
    assert_error(&gone, 404, "not_found");
    assert_error(
        &app.delete(&format!("/api/governance/customers/{}", id(&acme)))
            .await,
        404,
        "not_found",
    );
    assert_error(
        &app.get("/api/governance/customers/not-a-uuid").await,
        404,
        "not_found",
    );
    let (_, budgets) = app.get("/api/governance/budgets").await;
    assert_eq!(
        budgets["count"], 3,
        "the deleted customer's budget went with it"
    );
    app.stop().await;
}

async fn list_first(app: &TestApp, path: &str, key: &str) -> Value {
    let (status, body) = app.get(path).await;
    assert_eq!(status, 200, "{body}");
    body[key][0].clone()
}

async fn teams_filter_by_customer_and_detach_on_null(db: &TestDb) {
    let app = TestApp::start(config_for(db)).await;
    let c1 = app
        .create("/api/governance/customers", json!({"name": "c1"}))
        .await["customer"]
        .clone();
    let c2 = app
        .create("/api/governance/customers", json!({"name": "c2"}))
        .await["customer"]
        .clone();
    let t1 = app
        .create(
            "/api/governance/teams",
            json!({"name": "t1", "customer_id": id(&c1)}),
        )
        .await["team"]
        .clone();
    app.create(
        "/api/governance/teams",
        json!({"name": "t2", "customer_id": id(&c2)}),
    )
    .await;
    app.create("/api/governance/teams", json!({"name": "t3"}))
        .await;
    assert_eq!(t1["customer_id"], json!(id(&c1)));

    let (_, all) = app.get("/api/governance/teams").await;
    assert_eq!(all["total_count"], 3);
    let (_, of_c1) = app
        .get(&format!("/api/governance/teams?customer_id={}", id(&c1)))
        .await;
    assert_eq!(of_c1["total_count"], 1);
    assert_eq!(of_c1["teams"][0]["name"], "t1");
    let (_, c1_view) = app
        .get(&format!("/api/governance/customers/{}", id(&c1)))
        .await;
    assert_eq!(c1_view["customer"]["teams"][0]["id"], json!(id(&t1)));

    let (status, moved) = app
        .put(
            &format!("/api/governance/teams/{}", id(&t1)),
            json!({"customer_id": id(&c2)}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(moved["team"]["customer_id"], json!(id(&c2)));
    assert_eq!(moved["team"]["name"], "t1");
    let (_, detached) = app
        .put(
            &format!("/api/governance/teams/{}", id(&t1)),
            json!({"customer_id": null}),
        )
        .await;
    assert_eq!(detached["team"]["customer_id"], Value::Null);

    let bad = app
        .post(
            "/api/governance/teams",
            json!({"name": "t4", "customer_id": uuid::Uuid::new_v4().to_string()}),
        )
        .await;
    assert!(assert_error(&bad, 400, "invalid_request").contains("customer_id"));
    assert_error(
        &app.get("/api/governance/teams?customer_id=nope").await,
        400,
        "invalid_request",
    );
    let (status, _) = app
        .delete(&format!("/api/governance/teams/{}", id(&t1)))
        .await;
    assert_eq!(status, 200);
    assert_error(
        &app.get(&format!("/api/governance/teams/{}", id(&t1))).await,
        404,
        "not_found",
    );
    app.stop().await;
}

async fn virtual_keys_show_their_value_only_once(db: &TestDb) {
    let app = TestApp::start(config_for(db)).await;
    let created = app
        .create(
            "/api/governance/virtual-keys",
            json!({"name": "k1", "description": "first"}),
        )
        .await;
    assert_eq!(created["message"], "Virtual key created successfully");
    let vk = &created["virtual_key"];
    let value = vk["value"].as_str().unwrap();
    assert!(value.starts_with("sk-hd-") && value.len() == 38, "{value}");
    assert_eq!(vk["value_prefix"], json!(format!("{}…", &value[..10])));
    assert_eq!(vk["is_active"], true);
    assert_eq!(vk["description"], "first");

    let (_, got) = app
        .get(&format!("/api/governance/virtual-keys/{}", id(vk)))
        .await;
    assert!(got["virtual_key"].get("value").is_none(), "{got}");
    assert_eq!(got["virtual_key"]["value_prefix"], vk["value_prefix"]);
    let (_, list) = app.get("/api/governance/virtual-keys").await;
    assert!(!list.to_string().contains(value));

    let own = app
        .create(
            "/api/governance/virtual-keys",
            json!({"name": "k2", "value": "my-own-secret-key", "is_active": false}),
        )
        .await;
    assert_eq!(own["virtual_key"]["value"], "my-own-secret-key");
    assert_eq!(own["virtual_key"]["is_active"], false);
    let dup_value = app
        .post(
            "/api/governance/virtual-keys",
            json!({"name": "k3", "value": "my-own-secret-key"}),
        )
        .await;
    assert_error(&dup_value, 409, "conflict");
    let dup_name = app
        .post("/api/governance/virtual-keys", json!({"name": "k1"}))
        .await;
    assert_error(&dup_name, 409, "conflict");
    let short = app
        .post(
            "/api/governance/virtual-keys",
            json!({"name": "k4", "value": "short"}),
        )
        .await;
    assert!(assert_error(&short, 400, "invalid_request").contains("value"));
    app.stop().await;
}

async fn virtual_key_lists_filter_and_paginate(db: &TestDb) {
    let app = TestApp::start(config_for(db)).await;
    let c = app
        .create("/api/governance/customers", json!({"name": "c"}))
        .await["customer"]
        .clone();
    let t = app
        .create("/api/governance/teams", json!({"name": "t"}))
        .await["team"]
        .clone();
    for i in 0..5 {
        app.create(
            "/api/governance/virtual-keys",
            json!({"name": format!("team-key-{i}"), "team_id": id(&t)}),
        )
        .await;
    }
    app.create(
        "/api/governance/virtual-keys",
        json!({"name": "direct", "customer_id": id(&c)}),
    )
    .await;
    app.create("/api/governance/virtual-keys", json!({"name": "loose"}))
        .await;

    let (_, page) = app
        .get(&format!(
            "/api/governance/virtual-keys?team_id={}&limit=2&offset=4",
            id(&t)
        ))
        .await;
    assert_eq!(page["total_count"], 5);
    assert_eq!(page["count"], 1);
    assert_eq!(page["virtual_keys"][0]["name"], "team-key-4");
    let (_, direct) = app
        .get(&format!(
            "/api/governance/virtual-keys?customer_id={}",
            id(&c)
        ))
        .await;
    assert_eq!(direct["total_count"], 1);
    assert_eq!(direct["virtual_keys"][0]["name"], "direct");
    let (_, search) = app.get("/api/governance/virtual-keys?search=LOOSE").await;
    assert_eq!(search["total_count"], 1);
    let (_, customer) = app
        .get(&format!("/api/governance/customers/{}", id(&c)))
        .await;
    assert_eq!(customer["customer"]["virtual_keys"][0]["name"], "direct");
    assert_error(
        &app.get("/api/governance/virtual-keys?limit=0").await,
        400,
        "invalid_request",
    );
    assert_error(
        &app.get("/api/governance/virtual-keys?limit=-1").await,
        400,
        "invalid_request",
    );
    assert_error(
        &app.get("/api/governance/virtual-keys?offset=x").await,
        400,
        "invalid_request",
    );
    app.stop().await;
}

async fn virtual_keys_belong_to_a_team_or_a_customer_never_both(db: &TestDb) {
    let app = TestApp::start(config_for(db)).await;
    let c = app
        .create("/api/governance/customers", json!({"name": "c"}))
        .await["customer"]
        .clone();
    let t = app
        .create("/api/governance/teams", json!({"name": "t"}))
        .await["team"]
        .clone();
    let both = app
        .post(
            "/api/governance/virtual-keys",
            json!({"name": "k", "team_id": id(&t), "customer_id": id(&c)}),
        )
        .await;
    assert_error(&both, 400, "invalid_request");
    let vk = app
        .create(
            "/api/governance/virtual-keys",
            json!({"name": "k", "customer_id": id(&c)}),
        )
        .await["virtual_key"]
        .clone();
    let path = format!("/api/governance/virtual-keys/{}", id(&vk));
    let both = app
        .put(&path, json!({"team_id": id(&t), "customer_id": id(&c)}))
        .await;
    assert_error(&both, 400, "invalid_request");
    let (_, moved) = app.put(&path, json!({"team_id": id(&t)})).await;
    assert_eq!(moved["virtual_key"]["team_id"], json!(id(&t)));
    assert_eq!(
        moved["virtual_key"]["customer_id"],
        Value::Null,
        "joining a team leaves the customer"
    );
    let (_, back) = app.put(&path, json!({"customer_id": id(&c)})).await;
    assert_eq!(back["virtual_key"]["team_id"], Value::Null);
    assert_eq!(back["virtual_key"]["customer_id"], json!(id(&c)));
    let missing = app
        .put(&path, json!({"team_id": uuid::Uuid::new_v4().to_string()}))
        .await;
    assert!(assert_error(&missing, 400, "invalid_request").contains("team_id"));
    app.stop().await;
}

async fn provider_configs_are_replaced_keeping_listed_ones(db: &TestDb) {
    let app = TestApp::start(config_for(db)).await;
    let vk = app
        .create(
            "/api/governance/virtual-keys",
            json!({"name": "k", "provider_configs": [
                {"provider": "openai", "allowed_models": ["gpt-4o"], "budget": {"max_limit": 5.0, "reset_duration": "1d"}},
                {"provider": "anthropic", "weight": 0.5, "rate_limit": {"request_max_limit": 10, "request_reset_duration": "1m"}}
            ]}),
        )
        .await["virtual_key"]
        .clone();
    let pcs = vk["provider_configs"].as_array().unwrap();
    assert_eq!(pcs.len(), 2);
    assert_eq!(pcs[0]["weight"], 1.0);
    assert_eq!(pcs[0]["allowed_models"], json!(["gpt-4o"]));
    assert_eq!(pcs[1]["weight"], 0.5);
    let openai_id = id(&pcs[0]);
    let openai_budget = pcs[0]["budget_id"].clone();

    let path = format!("/api/governance/virtual-keys/{}", id(&vk));
    let (status, updated) = app
        .put(
            &path,
            json!({"provider_configs": [
                {"id": openai_id, "allowed_models": ["gpt-4o", "gpt-4o-mini"]},
                {"provider": "mistral"}
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    let pcs = updated["virtual_key"]["provider_configs"]
        .as_array()
        .unwrap();
    assert_eq!(pcs.len(), 2);
    assert_eq!(pcs[0]["id"], json!(openai_id));
    assert_eq!(pcs[0]["provider"], "openai");
    assert_eq!(
        pcs[0]["budget_id"], openai_budget,
        "an updated config keeps its budget"
    );
    assert_eq!(pcs[0]["allowed_models"], json!(["gpt-4o", "gpt-4o-mini"]));
    assert_eq!(pcs[1]["provider"], "mistral");
    let (_, limits) = app.get("/api/governance/rate-limits").await;
    assert_eq!(
        limits["count"], 0,
        "the removed anthropic config took its rate limit"
    );

    let unknown = app
        .put(
            &path,
            json!({"provider_configs": [{"id": uuid::Uuid::new_v4().to_string()}]}),
        )
        .await;
    assert!(assert_error(&unknown, 400, "invalid_request").contains("provider_configs[0].id"));
    let no_provider = app
        .put(&path, json!({"provider_configs": [{"weight": 2.0}]}))
        .await;
    assert!(
        assert_error(&no_provider, 400, "invalid_request").contains("provider_configs[0].provider")
    );
    let (_, untouched) = app.put(&path, json!({"description": "x"})).await;
    assert_eq!(
        untouched["virtual_key"]["provider_configs"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "absent list stays"
    );
    let (_, cleared) = app.put(&path, json!({"provider_configs": []})).await;
    assert_eq!(cleared["virtual_key"]["provider_configs"], json!([]));
    let (_, budgets) = app.get("/api/governance/budgets").await;
    assert_eq!(budgets["count"], 0);
    app.stop().await;
}

async fn put_keeps_absent_fields_and_null_clears(db: &TestDb) {
    let app = TestApp::start(config_for(db)).await;
    let t = app
        .create("/api/governance/teams", json!({"name": "t"}))
        .await["team"]
        .clone();
    let vk = app
        .create(
            "/api/governance/virtual-keys",
            json!({"name": "k", "description": "d", "team_id": id(&t),
                   "budget": {"max_limit": 10.0, "reset_duration": "1d", "calendar_aligned": true, "timezone": "Europe/Berlin"},
                   "rate_limit": {"token_max_limit": 1000, "token_reset_duration": "1h", "request_max_limit": 10, "request_reset_duration": "1m"}}),
        )
        .await["virtual_key"]
        .clone();
    let path = format!("/api/governance/virtual-keys/{}", id(&vk));

    let (_, same) = app.put(&path, json!({})).await;
    let same = &same["virtual_key"];
    assert_eq!(same["name"], "k");
    assert_eq!(same["description"], "d");
    assert_eq!(same["team_id"], json!(id(&t)));
    assert_eq!(same["budget"]["max_limit"], 10.0);
    assert_eq!(same["rate_limit"]["token_max_limit"], 1000);

    let (_, partial) = app
        .put(&path, json!({"budget": {"max_limit": 20.0}, "rate_limit": {"token_max_limit": null, "token_reset_duration": null}}))
        .await;
    let partial = &partial["virtual_key"];
    assert_eq!(partial["budget"]["max_limit"], 20.0);
    assert_eq!(partial["budget"]["reset_duration"], "1d");
    assert_eq!(partial["budget"]["timezone"], "Europe/Berlin");
    assert_eq!(partial["budget"]["calendar_aligned"], true);
    assert_eq!(
        partial["budget"]["id"], vk["budget"]["id"],
        "the budget is updated in place"
    );
    assert_eq!(
        partial["budget"]["last_reset"], vk["budget"]["last_reset"],
        "the window is kept"
    );
    assert_eq!(partial["rate_limit"]["token_max_limit"], Value::Null);
    assert_eq!(partial["rate_limit"]["token_resets_at"], Value::Null);
    assert_eq!(partial["rate_limit"]["request_max_limit"], 10);

    let (_, cleared) = app
        .put(
            &path,
            json!({"team_id": null, "budget": null, "rate_limit": {}}),
        )
        .await;
    let cleared = &cleared["virtual_key"];
    assert_eq!(cleared["team_id"], Value::Null);
    assert_eq!(cleared["budget"], Value::Null);
    assert_eq!(cleared["budget_id"], Value::Null);
    assert_eq!(cleared["rate_limit"], Value::Null);
    let (_, budgets) = app.get("/api/governance/budgets").await;
    assert_eq!(budgets["count"], 0, "a removed budget is deleted");

    let incomplete = app.put(&path, json!({"budget": {"max_limit": 5.0}})).await;
    assert!(assert_error(&incomplete, 400, "invalid_request").contains("reset_duration"));
    let (_, fresh) = app
        .put(
            &path,
            json!({"budget": {"max_limit": 5.0, "reset_duration": "1h"}}),
        )
        .await;
    assert_eq!(fresh["virtual_key"]["budget"]["max_limit"], 5.0);
    let (_, inactive) = app.put(&path, json!({"is_active": false})).await;
    assert_eq!(inactive["virtual_key"]["is_active"], false);
    assert_eq!(inactive["virtual_key"]["budget"]["max_limit"], 5.0);
    app.stop().await;
}

async fn deleting_a_team_or_customer_detaches_and_a_key_takes_its_limits(db: &TestDb) {
    let app = TestApp::start(config_for(db)).await;
    let budget = json!({"max_limit": 1.0, "reset_duration": "1d"});
    let c = app
        .create(
            "/api/governance/customers",
            json!({"name": "c", "budget": budget}),
        )
        .await["customer"]
        .clone();
    let t = app
        .create(
            "/api/governance/teams",
            json!({"name": "t", "customer_id": id(&c), "budget": budget}),
        )
        .await["team"]
        .clone();
    let in_team = app
        .create(
            "/api/governance/virtual-keys",
            json!({"name": "a", "team_id": id(&t), "budget": budget}),
        )
        .await["virtual_key"]
        .clone();
    let direct = app
        .create(
            "/api/governance/virtual-keys",
            json!({"name": "b", "customer_id": id(&c),
                   "provider_configs": [{"provider": "openai", "budget": budget}]}),
        )
        .await["virtual_key"]
        .clone();
    let (_, budgets) = app.get("/api/governance/budgets").await;
    assert_eq!(budgets["count"], 4);

    app.delete(&format!("/api/governance/teams/{}", id(&t)))
        .await;
    let (status, key) = app
        .get(&format!("/api/governance/virtual-keys/{}", id(&in_team)))
        .await;
    assert_eq!(status, 200, "the key survives its team");
    assert_eq!(key["virtual_key"]["team_id"], Value::Null);
    assert_eq!(
        key["virtual_key"]["budget"]["max_limit"], 1.0,
        "and keeps its own budget"
    );

    let t2 = app
        .create(
            "/api/governance/teams",
            json!({"name": "t2", "customer_id": id(&c)}),
        )
        .await["team"]
        .clone();
    app.delete(&format!("/api/governance/customers/{}", id(&c)))
        .await;
    let (_, team) = app.get(&format!("/api/governance/teams/{}", id(&t2))).await;
    assert_eq!(team["team"]["customer_id"], Value::Null);
    let (_, key) = app
        .get(&format!("/api/governance/virtual-keys/{}", id(&direct)))
        .await;
    assert_eq!(key["virtual_key"]["customer_id"], Value::Null);

    app.delete(&format!("/api/governance/virtual-keys/{}", id(&direct)))
        .await;
    let (_, budgets) = app.get("/api/governance/budgets").await;
    assert_eq!(budgets["count"], 1, "only key a's budget is left");

    // The database agrees after a restart.
    let app = app.restart().await;
    let (_, team) = app.get(&format!("/api/governance/teams/{}", id(&t2))).await;
    assert_eq!(team["team"]["customer_id"], Value::Null);
    let (_, key) = app
        .get(&format!("/api/governance/virtual-keys/{}", id(&in_team)))
        .await;
    assert_eq!(key["virtual_key"]["team_id"], Value::Null);
    let (_, budgets) = app.get("/api/governance/budgets").await;
    assert_eq!(budgets["count"], 1);
    assert_error(
        &app.get(&format!("/api/governance/virtual-keys/{}", id(&direct)))
            .await,
        404,
        "not_found",
    );
    app.stop().await;
}

async fn providers_users_and_model_configs_have_crud(db: &TestDb) {
    let app = TestApp::start(config_for(db)).await;
    let (status, p) = app
        .put(
            "/api/governance/providers/openai",
            json!({"budget": {"max_limit": 50.0, "reset_duration": "1d"}}),
        )
        .await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["message"], "Provider created successfully");
    assert_eq!(p["provider"]["provider"], "openai");
    let (_, p) = app
        .put(
            "/api/governance/providers/openai",
            json!({"rate_limit": {"token_max_limit": 5, "token_reset_duration": "1m"}}),
        )
        .await;
    assert_eq!(p["message"], "Provider updated successfully");
    assert_eq!(p["provider"]["budget"]["max_limit"], 50.0);
    assert_eq!(p["provider"]["rate_limit"]["token_max_limit"], 5);
    let (_, list) = app.get("/api/governance/providers").await;
    assert_eq!(list["count"], 1);
    assert_eq!(list["providers"][0]["provider"], "openai");
    assert_eq!(app.delete("/api/governance/providers/openai").await.0, 200);
    assert_error(
        &app.delete("/api/governance/providers/openai").await,
        404,
        "not_found",
    );

    let (status, u) = app
        .put(
            "/api/governance/users/user-1",
            json!({"budget": {"max_limit": 2.0, "reset_duration": "weekly"}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(u["user"]["user_id"], "user-1");
    let (_, got) = app.get("/api/governance/users/user-1").await;
    assert_eq!(got["user"]["budget"]["reset_duration"], "weekly");
    assert_eq!(app.delete("/api/governance/users/user-1").await.0, 200);
    assert_error(
        &app.get("/api/governance/users/user-1").await,
        404,
        "not_found",
    );

    let m = app
        .create("/api/governance/model-configs", json!({"model_name": "gpt-4o", "provider": "openai", "budget": {"max_limit": 3.0, "reset_duration": "1h"}}))
        .await;
    assert_eq!(m["model_config"]["provider"], "openai");
    let global = app
        .create(
            "/api/governance/model-configs",
            json!({"model_name": "gpt-4o"}),
        )
        .await;
    assert_eq!(global["model_config"]["provider"], Value::Null);
    assert_error(
        &app.post(
            "/api/governance/model-configs",
            json!({"model_name": "gpt-4o", "provider": "openai"}),
        )
        .await,
        409,
        "conflict",
    );
    assert_error(
        &app.post(
            "/api/governance/model-configs",
            json!({"model_name": "gpt-4o"}),
        )
        .await,
        409,
        "conflict",
    );
    let path = format!(
        "/api/governance/model-configs/{}",
        id(&global["model_config"])
    );
    assert_error(
        &app.put(&path, json!({"provider": "openai"})).await,
        409,
        "conflict",
    );
    let (_, moved) = app.put(&path, json!({"provider": "azure"})).await;
    assert_eq!(moved["model_config"]["provider"], "azure");
    let (_, list) = app.get("/api/governance/model-configs?search=GPT").await;
    assert_eq!(list["total_count"], 2);
    assert_eq!(app.delete(&path).await.0, 200);
    let (_, list) = app.get("/api/governance/model-configs").await;
    assert_eq!(list["count"], 1);
    app.stop().await;
}

async fn budgets_and_rate_limits_are_listed_and_reset(db: &TestDb) {
    let app = TestApp::start(config_for(db)).await;
    let vk = app
        .create(
            "/api/governance/virtual-keys",
            json!({"name": "k", "budget": {"max_limit": 10.0, "reset_duration": "1M"},
                   "rate_limit": {"request_max_limit": 100, "request_reset_duration": "1m"}}),
        )
        .await["virtual_key"]
        .clone();
    let (_, budgets) = app.get("/api/governance/budgets").await;
    assert_eq!(budgets["count"], 1);
    assert_eq!(budgets["budgets"][0]["id"], vk["budget"]["id"]);
    let (_, limits) = app.get("/api/governance/rate-limits").await;
    assert_eq!(limits["rate_limits"][0]["id"], vk["rate_limit"]["id"]);

    let budget_id = vk["budget"]["id"].as_str().unwrap();
    let (status, reset) = app
        .post(
            &format!("/api/governance/budgets/{budget_id}/reset"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{reset}");
    assert_eq!(reset["message"], "Budget reset successfully");
    assert_eq!(reset["budget"]["current_usage"], 0.0);
    assert!(reset["budget"]["last_reset"].as_str() >= vk["budget"]["last_reset"].as_str());
    let rl_id = vk["rate_limit"]["id"].as_str().unwrap();
    let (status, reset) = app
        .post(
            &format!("/api/governance/rate-limits/{rl_id}/reset"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(reset["rate_limit"]["request_current_usage"], 0);
    assert_error(
        &app.post(&format!("/api/governance/budgets/{rl_id}/reset"), json!({}))
            .await,
        404,
        "not_found",
    );
    assert_error(
        &app.post("/api/governance/rate-limits/xyz/reset", json!({}))
            .await,
        404,
        "not_found",
    );
    app.stop().await;
}
