//! Database faults under load. An outage: the hot path keeps answering from memory,
//! `/readyz` reports the outage and recovers by itself, and the usage of the outage is written
//! once the database is back. Crashes and cut connections in the middle of durable group
//! commits: every update acknowledged as durable is in the database exactly once. Each test
//! runs its own throw-away PostgreSQL (initdb + pg_ctl).

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::cluster::{Proxy, Server, NO_FSYNC, SLOW_DISK};
use common::TestApp;
use serde_json::json;

#[tokio::test]
async fn an_outage_loses_nothing_and_readiness_recovers() {
    let Some(server) = Server::start_or_skip("the outage test", NO_FSYNC) else {
        return;
    };
    let mut config = heimdall::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: server.url(),
        ..heimdall::Config::default()
    };
    config.flush_interval = Duration::from_millis(200);
    let app = TestApp::start(config).await;
    let vk = app
        .create(
            "/api/governance/virtual-keys",
            json!({"name": "k", "rate_limit": {"token_max_limit": 1000000000, "token_reset_duration": "1h"}}),
        )
        .await["virtual_key"]
        .clone();
    let value = vk["value"].as_str().unwrap().to_owned();

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicI64::new(0));
    let errors = Arc::new(AtomicI64::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (client, usage, check, value) = (
            app.client.clone(),
            app.url("/v1/usage"),
            app.url("/v1/check"),
            value.clone(),
        );
        let (stop, sent, errors) = (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&errors));
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let u = client
                    .post(&usage)
                    .json(&json!({"virtual_key": value, "tokens_used": 1}))
                    .send()
                    .await;
                match u {
                    Ok(r) if r.status() == 202 => sent.fetch_add(1, Ordering::SeqCst),
                    _ => errors.fetch_add(1, Ordering::SeqCst),
                };
                let c = client
                    .post(&check)
                    .json(&json!({"virtual_key": value}))
                    .send()
                    .await;
                if !matches!(c, Ok(r) if r.status() == 200) {
                    errors.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(server.down(), "stopping the server");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["type"], "unavailable");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("database"));
    // An admin write meanwhile is refused as a retryable outage, not as an internal error.
    let (status, body) = app
        .post(
            "/api/governance/customers",
            json!({"name": "during the outage"}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["type"], "unavailable");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("database is unreachable"));
    // The gauge follows the flushes: it drops once a flush has failed (after the pool's
    // connection attempts time out).
    let mut down = app.metrics().await;
    for _ in 0..150 {
        if common::metric(&down, "heimdall_database_up") == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        down = app.metrics().await;
    }
    assert_eq!(common::metric(&down, "heimdall_database_up"), Some(0.0));
    assert!(common::metric(&down, "heimdall_flush_failures_total").unwrap() >= 1.0);
    assert!(common::metric(&down, "heimdall_pending_deltas").unwrap() >= 1.0);
    assert!(server.up(), "restarting the server");
    let mut ready = false;
    for _ in 0..600 {
        if app.get("/readyz").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "/readyz recovers by itself");
    let up = app.metrics().await;
    assert_eq!(common::metric(&up, "heimdall_database_up"), Some(1.0));
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.unwrap();
    }
    app.flush().await;
    assert_eq!(
        errors.load(Ordering::SeqCst),
        0,
        "the hot path never failed"
    );
    let (_, view) = app
        .get(&format!(
            "/api/governance/virtual-keys/{}",
            vk["id"].as_str().unwrap()
        ))
        .await;
    let sent = sent.load(Ordering::SeqCst);
    assert!(sent > 100, "the load ran through the outage: {sent}");
    assert_eq!(
        view["virtual_key"]["rate_limit"]["token_current_usage"],
        json!(sent)
    );
    app.stop().await;

    let db = common::TestDb::from_url(server.url());
    assert_eq!(
        db.scalar("select token_current_usage from rate_limits")
            .await,
        sent,
        "nothing lost"
    );
}

/// A durable app on `database_url` with one key whose token limit never resets during a test;
/// the key's value.
async fn durable_app(database_url: String) -> (TestApp, String) {
    let mut config = heimdall::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url,
        ..heimdall::Config::default()
    };
    config.flush_interval = Duration::from_millis(200);
    config.ack = heimdall::config::AckMode::Durable;
    let app = TestApp::start(config).await;
    let vk = app
        .create(
            "/api/governance/virtual-keys",
            json!({"name": "k", "rate_limit": {"token_max_limit": 1_000_000_000_000i64, "token_reset_duration": "1Y"}}),
        )
        .await;
    let value = vk["virtual_key"]["value"].as_str().unwrap().to_owned();
    (app, value)
}

/// Clients sending durable usage of 1 token, each update with a request id of its own and
/// sent again (same id) until it is acknowledged with 202, as a gateway would.
struct DurableLoad {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicI64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl DurableLoad {
    fn start(app: &TestApp, key: &str, clients: usize) -> DurableLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicI64::new(0));
        let tasks = (0..clients)
            .map(|client| {
                let (http, url, key) = (app.client.clone(), app.url("/v1/usage"), key.to_owned());
                let (stop, acked) = (Arc::clone(&stop), Arc::clone(&acked));
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let body = json!({"virtual_key": key, "tokens_used": 1,
                            "request_id": format!("client-{client}-{n}")});
                        loop {
                            match http.post(&url).json(&body).send().await {
                                Ok(r) if r.status() == 202 => break,
                                Ok(r) => assert_eq!(r.status(), 503, "only 503 may be retried"),
                                Err(e) => panic!("the service stopped answering: {e}"),
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        acked.fetch_add(1, Ordering::SeqCst);
                        n += 1;
                    }
                })
            })
            .collect();
        DurableLoad { stop, acked, tasks }
    }

    /// Stops sending once each client's update in flight is acknowledged; how many were.
    async fn finish(self) -> i64 {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.acked.load(Ordering::SeqCst)
    }
}

/// Runs ticks until one succeeds (pooled connections may have died with the faults), then
/// stops the app, whose final flush folds the journal.
async fn settle(app: TestApp) {
    let mut flushed = false;
    for _ in 0..100 {
        if app.state.worker.clone().flush_once().await.is_ok() {
            flushed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(flushed, "a tick succeeds once the faults are over");
    app.stop().await;
}

/// What the database holds of the load: each acknowledged update exactly once, in the key's
/// counter, the hourly rollups (requests and tokens) and the idempotency keys.
async fn assert_stored_exactly_once(url: String, acked: i64) {
    let db = common::TestDb::from_url(url);
    let counter = db
        .scalar("select token_current_usage from rate_limits")
        .await;
    let requests = db
        .scalar("select coalesce(sum(requests), 0) from usage_rollups")
        .await;
    let tokens = db
        .scalar("select coalesce(sum(tokens), 0) from usage_rollups")
        .await;
    let keys = db.stored_keys().await;
    assert_eq!(
        (counter, requests, tokens, keys),
        (acked, acked, acked, acked),
        "(counter, rollup requests, rollup tokens, idempotency keys) against {acked} acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_updates_survive_postgres_crashing_in_the_middle_of_commits() {
    let Some(server) = Server::start_or_skip("the crash test", SLOW_DISK) else {
        return;
    };
    let (app, key) = durable_app(server.url()).await;
    let load = DurableLoad::start(&app, &key, 8);
    for _ in 0..8 {
        // Crashes land at random points of the group commits that run all the time.
        tokio::time::sleep(Duration::from_millis(300 + rand::random::<u64>() % 400)).await;
        assert!(server.crash(), "crashing the server");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(server.up(), "restarting the server");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acked = load.finish().await;
    assert!(acked > 200, "the load ran through the crashes: {acked}");
    settle(app).await;
    assert_stored_exactly_once(server.url(), acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_updates_are_stored_exactly_once_when_connections_are_cut_mid_commit() {
    let Some(server) = Server::start_or_skip("the cut-connection test", NO_FSYNC) else {
        return;
    };
    let proxy = Proxy::start(server.port(), 40).await;
    let through_proxy = server.url().replace(
        &format!(":{}/", server.port()),
        &format!(":{}/", proxy.port),
    );
    let (app, key) = durable_app(through_proxy).await;
    let load = DurableLoad::start(&app, &key, 8);
    proxy.cut(true);
    // Until enough cuts have landed, some of them on commits whose result was on its way.
    let mut unknown = 0.0;
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let metrics = app.metrics().await;
        unknown = ["committed", "fenced"]
            .iter()
            .filter_map(|o| {
                common::metric(
                    &metrics,
                    &format!("heimdall_unknown_commits_total{{outcome=\"{o}\"}}"),
                )
            })
            .sum();
        if proxy.cuts() >= 30 && unknown >= 3.0 {
            break;
        }
    }
    proxy.cut(false);
    assert!(
        unknown >= 3.0,
        "commits with an unknown outcome: {unknown} after {} cuts",
        proxy.cuts()
    );
    let acked = load.finish().await;
    assert!(acked > 200, "the load ran through the cuts: {acked}");
    settle(app).await;
    assert_stored_exactly_once(server.url(), acked).await;
}

/// A durable writer waiting while every commit fails is acknowledged soon after commits work
/// again (within a few flush intervals), not when the full tick's backoff ends (seconds later).
#[tokio::test]
async fn a_durable_writer_is_acknowledged_soon_after_commits_work_again() {
    let Some(db) = common::TestDb::new(common::Backend::Postgres).await else {
        return;
    };
    let (app, key) = durable_app(db.url.clone()).await;
    // Every flush raises a commit mark (and the settling of a failed one too): refuse them.
    db.execute(
        "create function refuse() returns trigger language plpgsql as \
         $$ begin raise exception 'refused'; end $$; \
         create trigger refuse before insert or update on commit_marks \
         for each row execute function refuse()",
    )
    .await;
    let (client, url) = (app.client.clone(), app.url("/v1/usage"));
    let waiting = tokio::spawn(async move {
        let sent = client
            .post(&url)
            .json(&json!({"virtual_key": key, "tokens_used": 1, "request_id": "through"}))
            .send()
            .await
            .unwrap();
        (sent.status().as_u16(), tokio::time::Instant::now())
    });
    // Long enough for the tick's backoff to grow past 3 s (0.4, 0.8, 1.6, 3.2 s).
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(
        !waiting.is_finished(),
        "nothing is durable while commits fail"
    );
    db.execute("drop trigger refuse on commit_marks").await;
    let back = tokio::time::Instant::now();
    let (status, answered) = waiting.await.unwrap();
    assert_eq!(status, 202);
    assert!(
        answered - back < Duration::from_millis(1500),
        "acknowledged {:?} after commits worked again",
        answered - back
    );
    settle(app).await;
    assert_stored_exactly_once(db.url.clone(), 1).await;
    db.drop_db().await;
}
