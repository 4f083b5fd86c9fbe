//! What is written survives a restart, on both backends: every entity exactly as it was, and
//! the usage of a budget whose limits change. PostgreSQL over TLS, as the URL's `sslmode`
//! asks.

use crate::common;

use common::{config_for, TestApp, TestDb};
use serde_json::{json, Value};

on_both_backends!(
    idempotency_keys_of_the_row_per_key_table_move_into_blocks,
    idempotency_keys_stay_within_their_bound_in_memory_and_in_the_database,
    a_restart_keeps_every_entity,
    limit_changes_keep_usage_and_window,
    migrations_are_applied_once,
);

async fn snapshot(app: &TestApp) -> Vec<Value> {
    let mut out = Vec::new();
    for path in [
        "/api/governance/customers",
        "/api/governance/teams",
        "/api/governance/virtual-keys",
        "/api/governance/providers",
        "/api/governance/model-configs",
        "/api/governance/budgets",
        "/api/governance/rate-limits",
        "/api/governance/users/u-1",
    ] {
        let (status, body) = app.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        out.push(body);
    }
    out
}

async fn a_restart_keeps_every_entity(db: &TestDb) {
    let app = TestApp::start(config_for(db)).await;
    let budget = json!({"max_limit": 12.5, "reset_duration": "1M", "calendar_aligned": true, "timezone": "Asia/Tokyo"});
    let rate = json!({"token_max_limit": 1000, "token_reset_duration": "1h", "request_max_limit": 10, "request_reset_duration": "1m"});
    let c = app
        .create(
            "/api/governance/customers",
            json!({"name": "c", "budget": budget, "rate_limit": rate}),
        )
        .await;
    let cid = c["customer"]["id"].as_str().unwrap();
    let t = app
        .create(
            "/api/governance/teams",
            json!({"name": "t", "customer_id": cid, "budget": budget}),
        )
        .await;
    let tid = t["team"]["id"].as_str().unwrap();
    app.create(
        "/api/governance/virtual-keys",
        json!({"name": "k", "description": "a key", "team_id": tid, "rate_limit": rate,
               "provider_configs": [{"provider": "openai", "weight": 2.5, "allowed_models": ["gpt-4o"], "key_ids": ["key-a"], "budget": budget}]}),
    )
    .await;
    app.create(
        "/api/governance/virtual-keys",
        json!({"name": "k2", "customer_id": cid, "is_active": false}),
    )
    .await;
    app.put(
        "/api/governance/providers/anthropic",
        json!({"rate_limit": rate}),
    )
    .await;
    app.create(
        "/api/governance/model-configs",
        json!({"model_name": "claude", "provider": "anthropic", "budget": budget}),
    )
    .await;
    app.put(
        "/api/governance/users/u-1",
        json!({"budget": {"max_limit": 1.0, "reset_duration": "1d"}}),
    )
    .await;

    let before = snapshot(&app).await;
    let app = app.restart().await;
    let after = snapshot(&app).await;
    assert_eq!(before, after);
    app.stop().await;
}

async fn limit_changes_keep_usage_and_window(db: &TestDb) {
    let app = TestApp::start(config_for(db)).await;
    let vk = app
        .create(
            "/api/governance/virtual-keys",
            json!({"name": "k", "budget": {"max_limit": 10.0, "reset_duration": "1d"},
                   "rate_limit": {"token_max_limit": 1000, "token_reset_duration": "1h"}}),
        )
        .await["virtual_key"]
        .clone();
    let config = app.stop().await;
    // Usage as a flush would have left it: $7.5 and 800 tokens in the current windows.
    db.execute("update budgets set current_usage = 7500000000; update rate_limits set token_current_usage = 800;")
        .await;
    let app = TestApp::start(config).await;
    let path = format!(
        "/api/governance/virtual-keys/{}",
        vk["id"].as_str().unwrap()
    );
    let (_, got) = app.get(&path).await;
    assert_eq!(got["virtual_key"]["budget"]["current_usage"], 7.5);

    let (status, changed) = app
        .put(&path, json!({"budget": {"max_limit": 5.0, "reset_duration": "2d"}, "rate_limit": {"token_max_limit": 500}}))
        .await;
    assert_eq!(status, 200, "{changed}");
    let b = &changed["virtual_key"]["budget"];
    assert_eq!(b["max_limit"], 5.0);
    assert_eq!(
        b["current_usage"], 7.5,
        "usage is kept even above the new max"
    );
    assert_eq!(b["last_reset"], vk["budget"]["last_reset"]);
    assert_ne!(
        b["resets_at"], vk["budget"]["resets_at"],
        "a longer window ends later"
    );
    assert_eq!(
        changed["virtual_key"]["rate_limit"]["token_current_usage"],
        800
    );

    let app = app.restart().await;
    let (_, got) = app.get(&path).await;
    assert_eq!(got["virtual_key"]["budget"]["current_usage"], 7.5);
    assert_eq!(got["virtual_key"]["budget"]["max_limit"], 5.0);
    assert_eq!(got["virtual_key"]["budget"]["reset_duration"], "2d");
    assert_eq!(got["virtual_key"]["rate_limit"]["token_current_usage"], 800);

    let budget_id = got["virtual_key"]["budget"]["id"].as_str().unwrap();
    app.post(
        &format!("/api/governance/budgets/{budget_id}/reset"),
        json!({}),
    )
    .await;
    let app = app.restart().await;
    let (_, got) = app.get(&path).await;
    assert_eq!(
        got["virtual_key"]["budget"]["current_usage"], 0.0,
        "a reset is persisted"
    );
    app.stop().await;
}

async fn migrations_are_applied_once(db: &TestDb) {
    let app = TestApp::start(config_for(db)).await;
    app.create("/api/governance/customers", json!({"name": "c"}))
        .await;
    let app = app.restart().await;
    let app = app.restart().await;
    assert_eq!(app.get("/api/governance/customers").await.1["count"], 1);
    app.stop().await;
}

/// An app on `database_url`, or the start-up error's message.
async fn start_on(database_url: String) -> Result<TestApp, String> {
    let config = heimdall::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url,
        ..heimdall::Config::default()
    };
    match heimdall::App::build(config.clone()).await {
        Ok(app) => {
            drop(app);
            Ok(TestApp::start(config).await)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// PostgreSQL over TLS: `require` encrypts without checking the certificate, `verify-full`
/// checks it against `sslrootcert` (the system's roots without it) and the host name; a
/// certificate that does not verify, or a server without TLS under `require`, stops the start
/// with an error that says so (and shows no password).
#[tokio::test]
async fn postgres_connections_use_tls_as_the_url_asks() {
    use common::cluster::{Server, TlsFiles};
    let Some(tls) = TlsFiles::make() else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "the TLS test needs the openssl command"
        );
        eprintln!("SKIPPED TLS test: no openssl command");
        return;
    };
    let Some(server) = Server::start_or_skip("the TLS test", &tls.server_settings()) else {
        return;
    };
    let url = |host: &str, query: &str| {
        format!(
            "postgres://postgres:not-a-secret@{host}:{}/postgres?{query}",
            server.port()
        )
    };

    let app = start_on(url("127.0.0.1", "sslmode=require")).await.unwrap();
    let (status, body) = app
        .post("/api/governance/customers", json!({"name": "over tls"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let db = TestDb::from_url(url("127.0.0.1", "sslmode=require"));
    let heimdall_sessions = |ssl: bool| {
        format!(
            "select count(*) from pg_stat_ssl join pg_stat_activity using (pid) \
             where application_name = 'heimdall' and ssl = {ssl}"
        )
    };
    assert!(db.scalar(&heimdall_sessions(true)).await >= 1);
    assert_eq!(db.scalar(&heimdall_sessions(false)).await, 0);
    app.stop().await;

    let verified = format!("sslmode=verify-full&sslrootcert={}", tls.authority());
    let app = start_on(url("localhost", &verified)).await.unwrap();
    app.stop().await;

    let refused = start_on(url("localhost", "sslmode=verify-full"))
        .await
        .err()
        .unwrap();
    assert!(refused.contains("certificate"), "{refused}");
    assert!(refused.contains("sslrootcert"), "{refused}");
    assert!(!refused.contains("not-a-secret"), "{refused}");
    let wrong_host = format!("sslmode=verify-full&sslrootcert={}", tls.authority());
    let refused = start_on(url("127.0.0.2", &wrong_host)).await.err();
    assert!(refused.is_some(), "the certificate does not name 127.0.0.2");

    let Some(plain) = Server::start_or_skip("the TLS test", common::cluster::NO_FSYNC) else {
        return;
    };
    let refused = start_on(format!(
        "postgres://postgres:not-a-secret@127.0.0.1:{}/postgres?sslmode=require",
        plain.port()
    ))
    .await
    .err()
    .unwrap();
    assert!(refused.contains("does not accept TLS"), "{refused}");
    assert!(!refused.contains("not-a-secret"), "{refused}");
}

/// With `dedup_max_keys = 1000`, 5 000 distinct request ids leave at most 1 000 keys in memory
/// and about as many rows, the oldest gone first: recent ids are still duplicates, the oldest
/// count again; a restart loads what is left.
async fn idempotency_keys_stay_within_their_bound_in_memory_and_in_the_database(db: &TestDb) {
    let mut config = config_for(db);
    config.dedup_max_keys = 1000;
    config.flush_interval = std::time::Duration::from_secs(3600);
    let app = TestApp::start(config).await;
    let vk = app
        .create(
            "/api/governance/virtual-keys",
            json!({"name": "k", "rate_limit": {"request_max_limit": 1_000_000, "request_reset_duration": "1h"}}),
        )
        .await;
    let value = vk["virtual_key"]["value"].as_str().unwrap().to_owned();
    let batch = |from: usize, to: usize| {
        let updates: Vec<Value> = (from..to)
            .map(
                |i| json!({"virtual_key": value, "tokens_used": 1, "request_id": format!("r-{i}")}),
            )
            .collect();
        json!({"updates": updates})
    };
    for round in 0..5 {
        let (status, body) = app
            .post("/v1/usage/batch", batch(round * 1000, (round + 1) * 1000))
            .await;
        assert_eq!((status, body["accepted"].as_u64()), (202, Some(1000)));
        app.flush().await;
    }
    let metrics = app.metrics().await;
    let held = common::metric(&metrics, "heimdall_dedup_keys").unwrap();
    assert!((900.0..=1000.0).contains(&held), "{held} keys held");
    let evicted = common::metric(&metrics, "heimdall_dedup_keys_evicted_total").unwrap();
    assert_eq!(held + evicted, 5000.0);
    assert!(common::metric(&metrics, "heimdall_dedup_bytes").unwrap() > 16.0 * held);

    let (_, body) = app.post("/v1/usage/batch", batch(4500, 5000)).await;
    assert_eq!(body["duplicates"], 500, "the newest keys are remembered");
    let (_, body) = app.post("/v1/usage/batch", batch(0, 100)).await;
    assert_eq!(body["accepted"], 100, "the oldest went first");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (_, body) = app.post("/v1/usage/batch", batch(5000, 5100)).await;
    assert_eq!(body["accepted"], 100);
    app.flush().await;

    let flusher = app.state.worker.clone();
    let before = flusher.maintain_dedup().await;
    flusher.purge_dedup(before, 1).await.unwrap();
    // Whole blocks go: a block (one flush) is kept while any of its keys is held.
    let stored = db.stored_keys().await;
    assert!(
        (900..=3000).contains(&stored),
        "{stored} keys stored: what memory dropped is deleted"
    );

    let app = app.restart().await;
    let loaded = common::metric(&app.metrics().await, "heimdall_dedup_keys").unwrap();
    assert!((900.0..=1000.0).contains(&loaded), "{loaded} keys loaded");
    // Loading keeps the newest (keys of one instant are equally old: which of them a
    // load past the bound keeps is not said).
    let (_, body) = app.post("/v1/usage/batch", batch(5000, 5100)).await;
    assert_eq!(body["duplicates"], 100, "recent keys survive the restart");
    let (_, body) = app.post("/v1/usage/batch", batch(0, 100)).await;
    assert_eq!(body["duplicates"], 100, "recent keys survive the restart");
    app.stop().await;
}

/// Keys written before blocks (a row each in `dedup_keys`) are moved into blocks at the next
/// start and still recognised; expired ones go.
async fn idempotency_keys_of_the_row_per_key_table_move_into_blocks(db: &TestDb) {
    let app = TestApp::start(config_for(db)).await;
    let vk = app
        .create("/api/governance/virtual-keys", json!({"name": "k"}))
        .await;
    let value = vk["virtual_key"]["value"].as_str().unwrap().to_owned();
    app.stop().await;
    let old =
        heimdall::engine::dedup::dedup_key("before", 0, heimdall::engine::dedup::Phase::Final);
    let gone =
        heimdall::engine::dedup::dedup_key("expired", 0, heimdall::engine::dedup::Phase::Final);
    for (key, expires) in [(old, i64::MAX / 2), (gone, 1)] {
        db.execute(&format!(
            "insert into dedup_keys (key_hi, key_lo, expires_at) values ({}, {}, {expires})",
            (key >> 64) as u64 as i64,
            key as u64 as i64
        ))
        .await;
    }
    let app = TestApp::start(config_for(db)).await;
    assert_eq!(db.scalar("select count(*) from dedup_keys").await, 0);
    assert_eq!(db.stored_keys().await, 1);
    let (_, body) = app
        .post(
            "/v1/usage",
            json!({"virtual_key": value, "tokens_used": 1, "request_id": "before"}),
        )
        .await;
    assert_eq!(body["duplicate"], true);
    let (_, body) = app
        .post(
            "/v1/usage",
            json!({"virtual_key": value, "tokens_used": 1, "request_id": "expired"}),
        )
        .await;
    assert_eq!(body["duplicate"], false);
    app.stop().await;
}
