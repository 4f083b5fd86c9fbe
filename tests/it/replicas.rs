//! Several Heimdall processes on one PostgreSQL database: exact totals under concurrent usage,
//! each replica seeing the others within a flush interval, one reset per window, and
//! configuration made on one replica usable on the others.

use crate::common;

use std::time::Duration;

use common::{config_for, Backend, TestApp, TestDb};
use serde_json::{json, Value};

async fn replicas(db: &TestDb, n: usize) -> Vec<TestApp> {
    let mut config = config_for(db);
    config.flush_interval = Duration::from_millis(200);
    let mut apps = Vec::new();
    for _ in 0..n {
        apps.push(TestApp::start(config.clone()).await);
    }
    apps
}

async fn stop_all(apps: Vec<TestApp>) {
    for app in apps {
        app.stop().await;
    }
}

/// Flushes every replica twice: the first round writes what each holds, the second reads
/// back everywhere what the others wrote.
async fn settle(apps: &[TestApp]) {
    for _ in 0..2 {
        for app in apps {
            app.flush().await;
        }
    }
}

/// The one key's counters in the database: its rate limit's tokens and its budget's usage
/// (nano-dollars).
async fn assert_stored(db: &TestDb, tokens: i64, cost: i64) {
    assert_eq!(
        db.scalar("select token_current_usage from rate_limits")
            .await,
        tokens
    );
    assert_eq!(db.scalar("select current_usage from budgets").await, cost);
}

async fn key_view(app: &TestApp, id: &str) -> Value {
    let (status, body) = app.get(&format!("/api/governance/virtual-keys/{id}")).await;
    assert_eq!(status, 200, "{body}");
    body["virtual_key"].clone()
}

#[tokio::test]
async fn three_replicas_keep_exact_totals_under_concurrent_usage() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let apps = replicas(&db, 3).await;
    let vk = apps[0]
        .create(
            "/api/governance/virtual-keys",
            json!({"name": "shared", "budget": {"max_limit": 1000.0, "reset_duration": "1d"},
                   "rate_limit": {"token_max_limit": 100000000, "token_reset_duration": "1h"}}),
        )
        .await["virtual_key"]
        .clone();
    let value = vk["value"].as_str().unwrap().to_owned();
    let id = vk["id"].as_str().unwrap().to_owned();
    settle(&apps).await;

    let per_replica = 150;
    let mut tasks = Vec::new();
    for app in &apps {
        let (client, url, value) = (app.client.clone(), app.url("/v1/usage"), value.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_replica {
                let body = json!({"virtual_key": value, "tokens_used": 3, "cost": 0.001});
                let resp = client.post(&url).json(&body).send().await.unwrap();
                assert_eq!(resp.status(), 202);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    settle(&apps).await;

    let total = 3 * per_replica;
    assert_stored(&db, 3 * total, total * 1_000_000).await;
    for app in &apps {
        let view = key_view(app, &id).await;
        assert_eq!(
            view["rate_limit"]["token_current_usage"],
            json!(3 * total),
            "every replica sees the total"
        );
        assert!((view["budget"]["current_usage"].as_f64().unwrap() - 0.45).abs() < 1e-9);
    }
    stop_all(apps).await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_window_reset_under_concurrent_usage_happens_once() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let apps = replicas(&db, 3).await;
    let vk = apps[0]
        .create(
            "/api/governance/virtual-keys",
            json!({"name": "k", "rate_limit": {"token_max_limit": 1000000, "token_reset_duration": "3s"}}),
        )
        .await["virtual_key"]
        .clone();
    let value = vk["value"].as_str().unwrap().to_owned();
    settle(&apps).await;
    // Usage in the first window, then wait until it has ended.
    for app in &apps {
        app.post(
            "/v1/usage",
            json!({"virtual_key": value, "tokens_used": 1000}),
        )
        .await;
    }
    settle(&apps).await;
    assert_eq!(
        db.scalar("select token_current_usage from rate_limits")
            .await,
        3000
    );
    let resets_at = key_view(&apps[0], vk["id"].as_str().unwrap()).await["rate_limit"]
        ["token_resets_at"]
        .clone();
    let end = heimdall::domain::time::parse_rfc3339(resets_at.as_str().unwrap()).unwrap();
    let wait = end - heimdall::domain::time::now_micros() + 100_000;
    tokio::time::sleep(Duration::from_micros(wait.max(0) as u64)).await;

    // Every replica rolls the window on its first update and flushes a reset with its delta.
    let mut tasks = Vec::new();
    for app in &apps {
        let (client, url, value) = (app.client.clone(), app.url("/v1/usage"), value.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                let resp = client
                    .post(&url)
                    .json(&json!({"virtual_key": value, "tokens_used": 5}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 202);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for app in &apps {
        app.flush().await;
    }
    for app in &apps {
        app.flush().await;
    }
    assert_eq!(
        db.scalar("select token_current_usage from rate_limits")
            .await,
        300,
        "one reset, no post-reset usage dropped"
    );
    assert_eq!(
        db.scalar("select token_last_reset from rate_limits").await,
        end
    );
    for app in &apps {
        let view = key_view(app, vk["id"].as_str().unwrap()).await;
        assert_eq!(view["rate_limit"]["token_current_usage"], 300);
    }
    stop_all(apps).await;
    db.drop_db().await;
}

#[tokio::test]
async fn configuration_made_on_one_replica_reaches_the_others() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let apps = replicas(&db, 2).await;
    let vk = apps[0]
        .create(
            "/api/governance/virtual-keys",
            json!({"name": "k", "budget": {"max_limit": 1.0, "reset_duration": "1d"}}),
        )
        .await["virtual_key"]
        .clone();
    let value = vk["value"].as_str().unwrap().to_owned();
    let id = vk["id"].as_str().unwrap().to_owned();
    // Within one interval (plus a margin), the other replica knows the key.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let (status, decision) = apps[1]
        .post("/v1/check", json!({"virtual_key": value}))
        .await;
    assert_eq!(status, 200, "{decision}");
    assert_eq!(decision["virtual_key_id"], json!(id));

    apps[1]
        .post("/v1/usage", json!({"virtual_key": value, "cost": 1.0}))
        .await;
    settle(&apps).await;
    let (status, _) = apps[0]
        .post("/v1/check", json!({"virtual_key": value}))
        .await;
    assert_eq!(status, 402, "usage on one replica blocks on the other");

    // A limit raised on replica 0 keeps the usage everywhere.
    apps[0]
        .put(
            &format!("/api/governance/virtual-keys/{id}"),
            json!({"budget": {"max_limit": 5.0}}),
        )
        .await;
    settle(&apps).await;
    let view = key_view(&apps[1], &id).await;
    assert_eq!(view["budget"]["max_limit"], 5.0);
    assert_eq!(view["budget"]["current_usage"], 1.0);
    assert_eq!(
        apps[1]
            .post("/v1/check", json!({"virtual_key": value}))
            .await
            .0,
        200
    );

    apps[1]
        .delete(&format!("/api/governance/virtual-keys/{id}"))
        .await;
    settle(&apps).await;
    let (status, decision) = apps[0]
        .post("/v1/check", json!({"virtual_key": value}))
        .await;
    assert_eq!(
        (status, decision["decision"].clone()),
        (403, json!("virtual_key_not_found"))
    );
    stop_all(apps).await;
    db.drop_db().await;
}

/// Two replicas with `ack = "durable"`, ticking every `interval`.
async fn durable_pair(db: &TestDb, interval: Duration) -> (TestApp, TestApp) {
    let mut config = config_for(db);
    config.ack = heimdall::config::AckMode::Durable;
    config.flush_interval = interval;
    let a = TestApp::start(config.clone()).await;
    let b = TestApp::start(config).await;
    (a, b)
}

/// A key with `limits`, created on `app`: its value and id.
async fn shared_key(app: &TestApp, limits: Value) -> (String, String) {
    let mut body = limits;
    body["name"] = json!("shared");
    let vk = app.create("/api/governance/virtual-keys", body).await["virtual_key"].clone();
    (
        vk["value"].as_str().unwrap().to_owned(),
        vk["id"].as_str().unwrap().to_owned(),
    )
}

/// Two replicas with `ack = "durable"`: each one's group commits are journal entries, folded
/// by whichever replica's tick gets to them first (here the worker's ticks every 50 ms and
/// back-to-back explicit ticks on both race for them). Every entry is folded exactly once:
/// the totals are exact in the database and in both replicas' views.
#[tokio::test]
async fn replicas_fold_each_others_journal_entries_exactly_once() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let (a, b) = durable_pair(&db, Duration::from_millis(50)).await;
    let apps = [std::sync::Arc::new(a), std::sync::Arc::new(b)];
    let (value, id) = shared_key(
        &apps[0],
        json!({"budget": {"max_limit": 1000.0, "reset_duration": "1d"},
               "rate_limit": {"token_max_limit": 100000000, "token_reset_duration": "1h"}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    const WRITERS: usize = 4;
    const EACH: usize = 50;
    let mut writers = Vec::new();
    for app in &apps {
        for _ in 0..WRITERS {
            let (client, url, value) = (app.client.clone(), app.url("/v1/usage"), value.clone());
            writers.push(tokio::spawn(async move {
                for _ in 0..EACH {
                    let body = json!({"virtual_key": value, "tokens_used": 3, "cost": 0.001});
                    let resp = client.post(&url).json(&body).send().await.unwrap();
                    assert_eq!(resp.status(), 202);
                }
            }));
        }
    }
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tickers = Vec::new();
    for app in &apps {
        let (app, done) = (std::sync::Arc::clone(app), std::sync::Arc::clone(&done));
        tickers.push(tokio::spawn(async move {
            let mut folded = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                folded += app.flush().await.journal_entries_folded;
            }
            folded
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    let mut folded_by_tickers = Vec::new();
    for t in tickers {
        folded_by_tickers.push(t.await.unwrap());
    }
    assert!(
        folded_by_tickers.iter().all(|n| *n > 0),
        "both replicas folded entries: {folded_by_tickers:?}"
    );
    for _ in 0..2 {
        for app in &apps {
            app.flush().await;
        }
    }

    let total = (2 * WRITERS * EACH) as i64;
    assert_eq!(db.journal_entries().await, 0);
    assert_stored(&db, 3 * total, total * 1_000_000).await;
    assert_eq!(
        db.scalar("select sum(requests) from usage_rollups").await,
        total
    );
    for app in &apps {
        let view = key_view(app, &id).await;
        assert_eq!(
            view["rate_limit"]["token_current_usage"],
            json!(3 * total),
            "every replica sees the total"
        );
    }
    for app in apps {
        std::sync::Arc::into_inner(app)
            .expect("the tickers let go of the app")
            .stop()
            .await;
    }
    db.drop_db().await;
}

/// A read-back while some of a replica's own journal entries are still unfolded (here locked
/// by another transaction, as by another replica folding them, so that its own fold skips
/// them) adds them to the totals it reads: memory counts them already. The replica's view
/// neither loses its own usage to the read-back nor counts it twice once it is folded.
#[tokio::test]
async fn a_read_back_counts_the_replicas_own_unfolded_journal_entries() {
    use sqlx::Connection;
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    // Only the explicit ticks below.
    let (a, b) = durable_pair(&db, Duration::from_secs(3600)).await;
    let (value, id) = shared_key(
        &a,
        json!({"rate_limit": {"token_max_limit": 100000000, "token_reset_duration": "1h"}}),
    )
    .await;
    b.flush().await;
    let spend = |app: &TestApp, tokens: i64| {
        let (client, url, value) = (app.client.clone(), app.url("/v1/usage"), value.clone());
        async move {
            let body = json!({"virtual_key": value, "tokens_used": tokens});
            let resp = client.post(&url).json(&body).send().await.unwrap();
            assert_eq!(resp.status(), 202);
        }
    };
    for _ in 0..10 {
        spend(&a, 5).await;
    }
    let appended = common::metric(
        &a.metrics().await,
        "heimdall_journal_entries_total{event=\"appended\"}",
    );
    assert_eq!(appended, Some(db.journal_entries().await as f64));
    assert!(db.journal_entries().await > 0);
    let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut held = holder.begin().await.unwrap();
    sqlx::query("select id from usage_journal for update")
        .execute(&mut *held)
        .await
        .unwrap();

    for _ in 0..4 {
        spend(&b, 7).await;
    }
    b.flush().await;
    assert_eq!(
        db.scalar("select token_current_usage from rate_limits")
            .await,
        28,
        "b folded its own entries; a's are held"
    );
    let report = a.flush().await;
    assert_eq!(
        report.journal_entries_folded, 0,
        "a's fold skipped the held entries"
    );
    assert!(report.counters_read_back > 0, "a read b's usage back");
    assert_eq!(
        key_view(&a, &id).await["rate_limit"]["token_current_usage"],
        json!(78),
        "b's 28 read back, a's own 50 kept"
    );

    held.rollback().await.unwrap();
    assert!(a.flush().await.journal_entries_folded > 0);
    b.flush().await;
    assert_eq!(db.journal_entries().await, 0);
    assert_eq!(
        db.scalar("select token_current_usage from rate_limits")
            .await,
        78
    );
    for app in [&a, &b] {
        assert_eq!(
            key_view(app, &id).await["rate_limit"]["token_current_usage"],
            json!(78)
        );
    }
    a.stop().await;
    b.stop().await;
    db.drop_db().await;
}

/// Limit changes on either replica while both charge the same key keep every unit of usage:
/// the key's budget and rate limit end equal to what was charged.
#[tokio::test]
async fn limit_changes_on_either_replica_under_load_keep_every_unit_of_usage() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let (a, b) = durable_pair(&db, Duration::from_millis(50)).await;
    let (value, id) = shared_key(
        &a,
        json!({"budget": {"max_limit": 1e6, "reset_duration": "1Y"},
               "rate_limit": {"token_max_limit": 1_000_000_000_000i64, "token_reset_duration": "1Y"}}),
    )
    .await;
    for app in [&a, &b, &a, &b] {
        app.flush().await;
    }
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let mut load = Vec::new();
    for app in [&a, &b] {
        for _ in 0..3 {
            let (client, url, value, sent) = (
                app.client.clone(),
                app.url("/v1/usage"),
                value.clone(),
                std::sync::Arc::clone(&sent),
            );
            load.push(tokio::spawn(async move {
                for _ in 0..300 {
                    let r = client
                        .post(&url)
                        .json(&json!({"virtual_key": value, "tokens_used": 1, "cost": 0.000001}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 202);
                    sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }));
        }
    }
    for i in 0..60 {
        let app = if i % 2 == 0 { &a } else { &b };
        let body = if i % 3 == 0 {
            json!({"rate_limit": {"token_max_limit": 2_000_000_000_000i64 + i, "token_reset_duration": "1Y"}})
        } else {
            json!({"budget": {"max_limit": 1e6 + i as f64, "reset_duration": "1Y"}})
        };
        let (status, body) = app
            .put(&format!("/api/governance/virtual-keys/{id}"), body)
            .await;
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for t in load {
        t.await.unwrap();
    }
    let sent = sent.load(std::sync::atomic::Ordering::SeqCst);
    a.stop().await;
    b.stop().await;
    let tokens = db
        .scalar("select r.token_current_usage from virtual_keys v join rate_limits r on r.id = v.rate_limit_id")
        .await;
    let nanos = db
        .scalar("select b.current_usage from virtual_keys v join budgets b on b.id = v.budget_id")
        .await;
    assert_eq!((tokens, nanos), (sent, sent * 1000));
    db.drop_db().await;
}

/// A reload reads one consistent state: a key created on another replica while the reload
/// runs is there with its limits, or not there at all, never without them (it would be
/// admitted and charged with no key-level budget until the next reload).
#[tokio::test]
async fn a_reload_never_sees_a_key_without_the_limits_it_was_created_with() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let app = TestApp::start(config_for(&db)).await;
    let reader = heimdall::db::Db::connect(&db.url).await.unwrap();
    let creating = {
        let (client, url) = (app.client.clone(), app.url("/api/governance/virtual-keys"));
        tokio::spawn(async move {
            for i in 0..150 {
                let r = client
                    .post(&url)
                    .json(&json!({"name": format!("k{i}"),
                        "budget": {"max_limit": 1.0, "reset_duration": "1d"},
                        "rate_limit": {"token_max_limit": 10, "token_reset_duration": "1h"}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        })
    };
    let mut loads = 0;
    while !creating.is_finished() {
        let s = reader.load(None).await.unwrap();
        for vk in s.virtual_keys.values() {
            assert!(
                vk.limits.budget.is_some() && vk.limits.rate_limit.is_some(),
                "key {} loaded without its limits (load {loads})",
                vk.name
            );
        }
        loads += 1;
    }
    creating.await.unwrap();
    assert!(loads > 10, "the loads ran beside the creations: {loads}");
    reader.close().await;
    app.stop().await;
    db.drop_db().await;
}
