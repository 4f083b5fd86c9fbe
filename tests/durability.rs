//! `ack = "durable"`: an acknowledged update is in the database, even when the process is
//! killed with SIGKILL under load; no update is counted twice.

mod common;

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
