//! `ack = "durable"`: an acknowledged update is in the database, even when the process is
//! killed with SIGKILL under load; no update is counted twice.

use crate::common;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::TestDb;
use serde_json::{json, Value};

on_both_backends!(kill_9_under_load_loses_no_acknowledged_update);

async fn kill_9_under_load_loses_no_acknowledged_update(db: &TestDb) {
    let (child, base) = common::spawn_binary(
        db,
        &[
            ("HEIMDALL__ACK", "durable"),
            ("HEIMDALL__FLUSH_INTERVAL", "1s"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let vk: Value = client
        .post(format!("{base}/api/governance/virtual-keys"))
        .json(&json!({"name": "k", "rate_limit": {"token_max_limit": 1000000000, "token_reset_duration": "1h"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let value = vk["virtual_key"]["value"].as_str().unwrap().to_owned();

    let acked = Arc::new(AtomicI64::new(0));
    let sent = Arc::new(AtomicI64::new(0));
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let (client, base, value) = (client.clone(), base.clone(), value.clone());
        let (acked, sent) = (Arc::clone(&acked), Arc::clone(&sent));
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let body = json!({"virtual_key": value, "tokens_used": 1, "request_id": format!("w{worker}-{i}")});
                sent.fetch_add(1, Ordering::SeqCst);
                match client.post(format!("{base}/v1/usage")).json(&body).send().await {
                    Ok(resp) if resp.status() == 202 => {
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    common::signal(child, "KILL").await;
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.load(Ordering::SeqCst);
    assert!(acked > 50, "the load ran: {acked} acknowledged");
    // On PostgreSQL the last group commits are journal entries until a fold: the next
    // process to start folds them before it loads.
    if db.is_postgres() {
        assert!(
            db.journal_entries().await > 0,
            "the kill left entries to fold"
        );
    }
    let (child, _) = common::spawn_binary(db, &[]).await;
    assert!(common::signal(child, "TERM").await.success());
    assert_eq!(
        db.journal_entries().await,
        0,
        "the start folded every entry"
    );
    let stored = db
        .scalar("select token_current_usage from rate_limits")
        .await;
    assert!(stored >= acked, "{stored} stored < {acked} acknowledged");
    assert!(stored <= sent.load(Ordering::SeqCst));
}

/// A flush writes whole updates: an update's idempotency key and all of its usage, or
/// nothing of it. Were the key written alone, a crash before the usage's own commit would turn
/// the gateway's retry into a duplicate and lose the update; were the usage written alone, the
/// retry would count it twice. Flushes run back to back while batches are applied, and after
/// each one the database must hold exactly as much usage as it holds keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flush_writes_whole_updates() {
    let db = TestDb::new(common::Backend::Sqlite).await.unwrap();
    let mut config = common::config_for(&db);
    // Only the flushes below run.
    config.flush_interval = Duration::from_secs(3600);
    let app = Arc::new(common::TestApp::start(config).await);
    let vk = app
        .create(
            "/api/governance/virtual-keys",
            json!({"name": "k", "rate_limit": {"token_max_limit": 1_000_000_000i64, "token_reset_duration": "1h"}}),
        )
        .await;
    let value = vk["virtual_key"]["value"].as_str().unwrap().to_owned();
    app.flush().await;

    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = Vec::new();
    for sender in 0..3 {
        let (app, value, done) = (Arc::clone(&app), value.clone(), Arc::clone(&done));
        senders.push(tokio::spawn(async move {
            let mut batch = 0;
            while !done.load(Ordering::SeqCst) {
                let updates: Vec<Value> = (0..200)
                    .map(|i| json!({"virtual_key": value, "provider": "openai", "model": "m", "tokens_used": 1, "request_id": format!("s{sender}-{batch}-{i}")}))
                    .collect();
                let (status, body) = app.post("/v1/usage/batch", json!({"updates": updates})).await;
                assert_eq!(status, 202, "{body}");
                batch += 1;
            }
        }));
    }
    let mut checked = 0;
    for _ in 0..60 {
        app.state.worker.clone().flush_dirty().await.expect("flush");
        let keys = db.stored_keys().await;
        let requests = db
            .scalar("select coalesce(sum(requests), 0) from usage_rollups")
            .await;
        let tokens = db
            .scalar("select token_current_usage from rate_limits")
            .await;
        assert!(
            requests == keys && tokens == keys,
            "after a flush the database holds {keys} keys but {requests} requests and \
             {tokens} tokens of usage"
        );
        checked += usize::from(keys > 0);
    }
    done.store(true, Ordering::SeqCst);
    for s in senders {
        s.await.unwrap();
    }
    assert!(checked > 40, "the flushes ran under load: {checked}");
    let app = Arc::into_inner(app).expect("senders are done");
    app.stop().await;
    db.drop_db().await;
}
