//! Threshold alerts with a local receiver: each threshold once per window, signed, retried
//! until a 2xx, neither lost nor repeated across a restart, once across replicas, re-armed by
//! a new window; and the forecast in admin views.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use common::{config_for, Backend, TestApp, TestDb};
use heimdall::config::{Config, Secret, WebhookConfig};
use serde_json::{json, Value};

const SECRET: &str = "receiver-secret";

/// A webhook receiver: records every POST and answers 500 to the first `fail` of them.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<(String, String)>>>,
    fail: Arc<AtomicUsize>,
    url: String,
}

impl Receiver {
    async fn start() -> Receiver {
        let mut receiver = Receiver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        receiver.url = format!("http://{}/hook", listener.local_addr().unwrap());
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let state = state.clone();
                async move {
                    let signature = headers
                        .get("x-heimdall-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    state.got.lock().unwrap().push((signature, body));
                    let failing = state
                        .fail
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    if failing {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::NO_CONTENT
                    }
                }
            }),
        );
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        receiver
    }

    fn bodies(&self) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| serde_json::from_str(b).unwrap())
            .collect()
    }

    fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// Waits until `n` POSTs arrived (fails after 10 s).
    async fn wait_for(&self, n: usize) {
        for _ in 0..200 {
            if self.count() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("expected {n} deliveries, got {:?}", self.bodies());
    }
}

fn alerting(db: &TestDb, receiver: &Receiver) -> Config {
    let mut config = config_for(db);
    config.flush_interval = Duration::from_millis(100);
    config.alerts.webhooks = vec![WebhookConfig {
        url: receiver.url.clone(),
        secret: Secret::new(SECRET),
        thresholds: vec![0.5, 0.8, 1.0],
    }];
    config
}

async fn charge(app: &TestApp, key: &str, cost: f64) {
    let (status, body) = app
        .post(
            "/v1/usage",
            json!({"virtual_key": key, "tokens_used": 1, "cost": cost}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
}

/// A team with a $10 budget per hour and a key under it; returns (team id, key value).
async fn team_with_key(app: &TestApp) -> (String, String) {
    let team = app
        .create(
            "/api/governance/teams",
            json!({"name": "research", "budget": {"max_limit": 10.0, "reset_duration": "1h"}}),
        )
        .await["team"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = app
        .create(
            "/api/governance/virtual-keys",
            json!({"name": "k", "team_id": team}),
        )
        .await["virtual_key"]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    (team, key)
}

async fn alerts(app: &TestApp) -> Value {
    let (status, body) = app.get("/api/governance/alerts").await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn each_threshold_is_delivered_once_and_signed(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let receiver = Receiver::start().await;
    let app = TestApp::start(alerting(&db, &receiver)).await;
    let (team, key) = team_with_key(&app).await;

    charge(&app, &key, 4.0).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(receiver.count(), 0, "below every threshold");
    charge(&app, &key, 1.5).await;
    receiver.wait_for(1).await;
    charge(&app, &key, 3.0).await;
    receiver.wait_for(2).await;
    charge(&app, &key, 2.0).await;
    receiver.wait_for(3).await;
    // More usage in the same window crosses nothing new.
    charge(&app, &key, 5.0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count(), 3);

    let bodies = receiver.bodies();
    let thresholds: Vec<f64> = bodies
        .iter()
        .map(|b| b["threshold"].as_f64().unwrap())
        .collect();
    assert_eq!(thresholds, vec![0.5, 0.8, 1.0]);
    let first = &bodies[0];
    assert_eq!(first["type"], "threshold_crossed");
    assert_eq!(first["level"], "team");
    assert_eq!(first["entity_id"], team.as_str());
    assert_eq!(first["entity_name"], "research");
    assert_eq!(first["kind"], "budget");
    assert_eq!(first["used"], 5.5);
    assert_eq!(first["max"], 10.0);
    for key in ["id", "limit_id", "window_start", "resets_at", "at"] {
        assert!(first[key].is_string(), "{key}: {first}");
    }
    assert!(first.get("forecast_exhausted_at").is_some());
    // Each is signed with the webhook's secret over the exact body.
    for (signature, body) in receiver.got.lock().unwrap().iter() {
        assert_eq!(
            *signature,
            heimdall::alerts::signature(SECRET.as_bytes(), body.as_bytes())
        );
        assert_ne!(
            *signature,
            heimdall::alerts::signature(b"another secret", body.as_bytes())
        );
    }

    let listed = alerts(&app).await;
    assert_eq!(listed["total_count"], 3, "{listed}");
    for d in listed["alerts"].as_array().unwrap() {
        assert_eq!(d["status"], "delivered", "{d}");
        assert_eq!(d["attempts"], 1);
        assert!(d["last_error"].is_null());
        assert_eq!(d["webhook"], receiver.url.as_str());
    }
    assert_eq!(
        listed["alerts"][0]["alert"]["threshold"], 1.0,
        "newest first"
    );
    let m = app.metrics().await;
    assert_eq!(
        common::metric(&m, "heimdall_alert_events_total{event=\"delivered\"}"),
        Some(3.0)
    );
    app.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn each_threshold_is_delivered_once_and_signed_sqlite() {
    each_threshold_is_delivered_once_and_signed(Backend::Sqlite).await;
}

#[tokio::test]
async fn each_threshold_is_delivered_once_and_signed_postgres() {
    each_threshold_is_delivered_once_and_signed(Backend::Postgres).await;
}

#[tokio::test]
async fn failed_deliveries_are_retried_across_a_restart_and_never_repeated() {
    let Some(db) = TestDb::new(Backend::Sqlite).await else {
        return;
    };
    let receiver = Receiver::start().await;
    receiver.fail.store(usize::MAX, Ordering::SeqCst);
    let app = TestApp::start(alerting(&db, &receiver)).await;
    let (_, key) = team_with_key(&app).await;
    charge(&app, &key, 6.0).await;
    // Two failed attempts (500), recorded with their error.
    receiver.wait_for(2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let listed = alerts(&app).await;
    let d = &listed["alerts"][0];
    assert_eq!(d["status"], "pending", "{d}");
    assert!(d["attempts"].as_i64().unwrap() >= 2, "{d}");
    assert!(d["last_error"].as_str().unwrap().contains("500"), "{d}");
    let id = d["id"].as_str().unwrap().to_owned();

    // Restarted mid-retry, with the receiver healthy again: the same delivery goes out once.
    let config = app.stop().await;
    receiver.fail.store(0, Ordering::SeqCst);
    let before = receiver.count();
    let app = TestApp::start(config).await;
    receiver.wait_for(before + 1).await;
    let listed = alerts(&app).await;
    assert_eq!(listed["total_count"], 1, "{listed}");
    assert_eq!(listed["alerts"][0]["id"], id.as_str());
    assert_eq!(listed["alerts"][0]["status"], "delivered");
    let bodies = receiver.bodies();
    assert!(
        bodies.iter().all(|b| b["id"] == id.as_str()),
        "one delivery, retried"
    );

    // Delivered, then restarted: nothing is sent again.
    let config = app.stop().await;
    let delivered = receiver.count();
    let app = TestApp::start(config).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.count(), delivered);
    assert_eq!(alerts(&app).await["total_count"], 1);
    app.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn two_replicas_crossing_together_deliver_once() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let receiver = Receiver::start().await;
    let config = alerting(&db, &receiver);
    let a = TestApp::start(config.clone()).await;
    let b = TestApp::start(config).await;
    let key = a
        .create(
            "/api/governance/virtual-keys",
            json!({"name": "shared", "rate_limit": {"request_max_limit": 10, "request_reset_duration": "1h"}}),
        )
        .await["virtual_key"]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..2 {
        a.flush().await;
        b.flush().await;
    }
    // Each replica alone stays below half; together they cross 0.5, then 0.8 and 1.0.
    for _ in 0..3 {
        charge(&a, &key, 0.0).await;
        charge(&b, &key, 0.0).await;
    }
    receiver.wait_for(1).await;
    for _ in 0..2 {
        charge(&a, &key, 0.0).await;
        charge(&b, &key, 0.0).await;
    }
    receiver.wait_for(3).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let mut thresholds: Vec<f64> = receiver
        .bodies()
        .iter()
        .map(|b| {
            assert_eq!(b["kind"], "requests");
            assert_eq!(b["level"], "virtual_key");
            b["threshold"].as_f64().unwrap()
        })
        .collect();
    thresholds.sort_by(f64::total_cmp);
    assert_eq!(
        thresholds,
        vec![0.5, 0.8, 1.0],
        "one delivery per threshold"
    );
    assert_eq!(alerts(&b).await["total_count"], 3);
    a.stop().await;
    b.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_new_window_re_arms_the_thresholds() {
    let Some(db) = TestDb::new(Backend::Sqlite).await else {
        return;
    };
    let receiver = Receiver::start().await;
    let mut config = alerting(&db, &receiver);
    config.alerts.webhooks[0].thresholds = vec![0.5];
    let app = TestApp::start(config).await;
    let key = app
        .create(
            "/api/governance/virtual-keys",
            json!({"name": "k", "rate_limit": {"request_max_limit": 4, "request_reset_duration": "3s"}}),
        )
        .await["virtual_key"]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    charge(&app, &key, 0.0).await;
    charge(&app, &key, 0.0).await;
    receiver.wait_for(1).await;
    charge(&app, &key, 0.0).await;
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    charge(&app, &key, 0.0).await;
    charge(&app, &key, 0.0).await;
    receiver.wait_for(2).await;
    let bodies = receiver.bodies();
    assert_eq!(bodies.len(), 2);
    assert_ne!(bodies[0]["window_start"], bodies[1]["window_start"]);
    assert_eq!(bodies[1]["used"], 2.0);
    app.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn admin_views_carry_a_forecast_once_usage_flows() {
    let Some(db) = TestDb::new(Backend::Sqlite).await else {
        return;
    };
    let mut config = config_for(&db);
    config.flush_interval = Duration::from_millis(100);
    let app = TestApp::start(config).await;
    let (team, key) = team_with_key(&app).await;
    let budget = |body: Value| body["team"]["budget"].clone();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, body) = app.get(&format!("/api/governance/teams/{team}")).await;
    assert!(budget(body.clone())["forecast"].is_null(), "idle: {body}");
    charge(&app, &key, 9.0).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, body) = app.get(&format!("/api/governance/teams/{team}")).await;
    let forecast = budget(body.clone())["forecast"].clone();
    assert!(forecast["rate_per_hour"].as_f64().unwrap() > 0.0, "{body}");
    // $9 of $10 spent within a second: at that pace the last dollar goes well before the
    // window resets in an hour.
    assert!(forecast["exhausted_at"].is_string(), "{body}");
    let (_, list) = app.get("/api/governance/budgets").await;
    assert!(list["budgets"][0]["forecast"].is_object(), "{list}");
    let (_, limits) = app.get("/api/governance/rate-limits").await;
    assert_eq!(limits["count"], 0);
    app.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_receiver_that_never_answers_holds_up_nothing_else() {
    let Some(db) = TestDb::new(Backend::Sqlite).await else {
        return;
    };
    // Accepts connections and never answers: every delivery waits for its 10 s timeout.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let hung = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let mut config = config_for(&db);
    config.flush_interval = Duration::from_millis(100);
    config.ack = heimdall::config::AckMode::Durable;
    config.alerts.webhooks = vec![WebhookConfig {
        url,
        secret: Secret::new(SECRET),
        thresholds: vec![0.5],
    }];
    let app = TestApp::start(config).await;
    let mut keys = Vec::new();
    for i in 0..20 {
        let key = app
            .create(
                "/api/governance/virtual-keys",
                json!({"name": format!("k{i}"), "rate_limit": {"request_max_limit": 2, "request_reset_duration": "1h"}}),
            )
            .await["virtual_key"]["value"]
            .as_str()
            .unwrap()
            .to_owned();
        keys.push(key);
    }
    // Twenty crossings: eight deliveries hang in flight, the rest wait for a slot.
    for key in &keys {
        charge(&app, key, 0.0).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let listed = alerts(&app).await;
        if listed["total_count"] == 20 {
            assert!(listed["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d["status"] == "pending"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{listed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Durable usage is acknowledged by group commits as usual: neither the worker nor the
    // handlers wait for the receiver.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    for key in &keys {
        let resp = client
            .post(app.url("/v1/usage"))
            .json(&json!({"virtual_key": key, "tokens_used": 1}))
            .send()
            .await
            .expect("acknowledged while the receiver hangs");
        assert_eq!(resp.status(), 202);
    }
    hung.abort();
    app.stop().await;
    db.drop_db().await;
}
