//! Holds: a check's `reserve` sets capacity aside on every counter it evaluates, all or
//! nothing and exactly under concurrency; usage settles it, `DELETE` releases it, the worker
//! expires it; other replicas count it and may settle it; a restart keeps it.

use std::sync::Arc;

use crate::common;

use common::{assert_error, config_for, metric, Backend, TestApp, TestDb};
use serde_json::{json, Value};

/// A team with `team_max` dollars (of which `team_used` already used) and a key under it with
/// its own budget of `key_max`; the key's value.
async fn team_key(app: &TestApp, team_max: f64, team_used: f64, key_max: f64) -> String {
    let team = app
        .create(
            "/api/governance/teams",
            json!({"name": "t", "budget": {"max_limit": team_max, "reset_duration": "1d"}}),
        )
        .await["team"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let value = app
        .create(
            "/api/governance/virtual-keys",
            json!({"name": "k", "team_id": team,
                   "budget": {"max_limit": key_max, "reset_duration": "1d"}}),
        )
        .await["virtual_key"]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    if team_used > 0.0 {
        let (status, body) = app
            .post(
                "/v1/usage",
                json!({"virtual_key": value, "tokens_used": 1, "cost": team_used}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    value
}

fn reserve(value: &str, request_id: &str, cost: f64) -> Value {
    json!({"virtual_key": value, "request_id": request_id, "reserve": {"cost": cost}})
}

fn check_of<'a>(decision: &'a Value, level: &str, kind: &str) -> &'a Value {
    decision["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["level"] == level && c["kind"] == kind)
        .unwrap_or_else(|| panic!("no {level} {kind} check in {decision}"))
}

async fn sqlite_app() -> (TestApp, TestDb) {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    (TestApp::start(config_for(&db)).await, db)
}

#[tokio::test]
async fn a_hold_counts_as_used_until_its_usage_settles_it() {
    let (app, db) = sqlite_app().await;
    let value = team_key(&app, 10.0, 0.0, 1.0).await;

    let (status, d) = app.post("/v1/check", reserve(&value, "r1", 0.4)).await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["hold"]["request_id"], "r1");
    assert_eq!(d["hold"]["attempt"], 0);
    assert_eq!(
        d["hold"]["reserved"],
        json!({"cost": 0.4, "tokens": 0, "requests": 1})
    );
    let expires_at = d["hold"]["expires_at"].clone();
    // The decision shows the counters before the hold; the next one counts it.
    let (_, d) = app.post("/v1/check", json!({"virtual_key": value})).await;
    assert_eq!(check_of(&d, "virtual_key", "budget")["held"], 0.4);
    assert_eq!(check_of(&d, "team", "budget")["held"], 0.4);
    assert_eq!(d["max_affordable"]["cost"], 0.6);
    assert_eq!(d["max_affordable"]["tokens"], Value::Null);
    assert!(d.get("hold").is_none(), "a plain check holds nothing: {d}");

    // The same request and attempt again: the same hold, nothing more held.
    let (status, again) = app.post("/v1/check", reserve(&value, "r1", 0.4)).await;
    assert_eq!(status, 200);
    assert_eq!(again["hold"]["expires_at"], expires_at);
    let (_, hold) = app.get("/v1/holds/r1?attempt=0").await;
    assert_eq!(hold["hold"]["expires_at"], expires_at);

    // Held capacity blocks: 0.4 held + 0.7 reserved > 1.0.
    let (status, refused) = app.post("/v1/check", reserve(&value, "r2", 0.7)).await;
    assert_eq!(status, 402, "{refused}");
    assert_eq!(refused["decision"], "budget_exceeded");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("no room for the reservation"),
        "{refused}"
    );
    assert!(refused.get("hold").is_none());

    // The admin views show it.
    let keys = app.get("/api/governance/virtual-keys").await.1;
    let budget = &keys["virtual_keys"][0]["budget"];
    assert_eq!(budget["current_held"], 0.4);
    assert_eq!(budget["current_usage"], 0.0);

    // Usage settles it, charging what was used (more than reserved is fine).
    let (status, _) = app
        .post(
            "/v1/usage",
            json!({"virtual_key": value, "request_id": "r1", "tokens_used": 10, "cost": 0.5}),
        )
        .await;
    assert_eq!(status, 202);
    assert_error(&app.get("/v1/holds/r1").await, 404, "not_found");
    let (_, d) = app.post("/v1/check", json!({"virtual_key": value})).await;
    assert_eq!(check_of(&d, "virtual_key", "budget")["held"], 0.0);
    assert_eq!(check_of(&d, "virtual_key", "budget")["used"], 0.5);
    assert_eq!(d["max_affordable"]["cost"], 0.5);

    let text = app.metrics().await;
    assert_eq!(
        metric(&text, "heimdall_hold_events_total{event=\"placed\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "heimdall_hold_events_total{event=\"refused\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "heimdall_hold_events_total{event=\"settled\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "heimdall_hold_overruns_total{what=\"cost\"}"),
        Some(1.0)
    );
    assert_eq!(metric(&text, "heimdall_holds"), Some(0.0));
    app.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_release_frees_the_capacity_and_a_failed_request_charges_nothing() {
    let (app, db) = sqlite_app().await;
    let value = team_key(&app, 10.0, 0.0, 1.0).await;
    for id in ["a", "b"] {
        let (status, d) = app.post("/v1/check", reserve(&value, id, 0.5)).await;
        assert_eq!(status, 200, "{d}");
    }
    assert_eq!(
        app.post("/v1/check", reserve(&value, "c", 0.1)).await.0,
        402
    );
    let (status, body) = app.delete("/v1/holds/a").await;
    assert_eq!((status, body), (200, json!({"released": true})));
    assert_error(&app.delete("/v1/holds/a").await, 404, "not_found");
    // A failed request settles its hold and charges nothing.
    app.post(
        "/v1/usage",
        json!({"virtual_key": value, "request_id": "b", "success": false, "cost": 0.3}),
    )
    .await;
    let (_, d) = app.post("/v1/check", json!({"virtual_key": value})).await;
    let budget = check_of(&d, "virtual_key", "budget");
    assert_eq!(
        (budget["used"].clone(), budget["held"].clone()),
        (json!(0.0), json!(0.0))
    );
    // A streaming chunk that is not the last leaves the hold in place.
    app.post("/v1/check", reserve(&value, "s", 0.2)).await;
    app.post(
        "/v1/usage",
        json!({"virtual_key": value, "request_id": "s", "is_streaming": true, "chunk_index": 0,
               "tokens_used": 5, "has_usage_data": true}),
    )
    .await;
    assert_eq!(app.get("/v1/holds/s").await.0, 200);
    app.post(
        "/v1/usage",
        json!({"virtual_key": value, "request_id": "s", "is_streaming": true,
               "is_final_chunk": true, "cost": 0.1, "has_usage_data": true}),
    )
    .await;
    assert_eq!(app.get("/v1/holds/s").await.0, 404);
    app.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn tokens_and_requests_are_held_on_rate_limits() {
    let (app, db) = sqlite_app().await;
    let value = app
        .create(
            "/api/governance/virtual-keys",
            json!({"name": "k", "rate_limit": {"token_max_limit": 1000, "token_reset_duration": "1h",
                   "request_max_limit": 2, "request_reset_duration": "1h"}}),
        )
        .await["virtual_key"]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = |id: &str, tokens: i64| json!({"virtual_key": value, "request_id": id, "reserve": {"tokens": tokens}});
    assert_eq!(app.post("/v1/check", body("a", 600)).await.0, 200);
    let (status, d) = app.post("/v1/check", body("b", 600)).await;
    assert_eq!(status, 429, "{d}");
    assert_eq!(d["decision"], "token_limited");
    assert_eq!(app.post("/v1/check", body("b", 300)).await.0, 200);
    // Two requests held: a third has no room on the request limit.
    let (status, d) = app.post("/v1/check", body("c", 0)).await;
    assert_eq!(
        (status, d["decision"].clone()),
        (429, json!("request_limited"))
    );
    let (_, d) = app.post("/v1/check", json!({"virtual_key": value})).await;
    assert_eq!(check_of(&d, "virtual_key", "tokens")["held"], 900);
    assert_eq!(check_of(&d, "virtual_key", "requests")["held"], 2);
    assert_eq!(d["max_affordable"]["tokens"], 100);
    let limits = app.get("/api/governance/virtual-keys").await.1;
    let rl = &limits["virtual_keys"][0]["rate_limit"];
    assert_eq!(
        (
            rl["token_current_held"].clone(),
            rl["request_current_held"].clone()
        ),
        (json!(900), json!(2))
    );
    app.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn bad_reservations_are_refused_and_hold_nothing() {
    let (app, db) = sqlite_app().await;
    let value = team_key(&app, 10.0, 0.0, 1.0).await;
    for (body, needle) in [
        (
            json!({"virtual_key": value, "reserve": {"cost": 0.1}}),
            "request_id",
        ),
        (
            json!({"virtual_key": value, "request_id": "x", "reserve": {"cost": -1.0}}),
            "reserve.cost",
        ),
        (
            json!({"virtual_key": value, "request_id": "x", "reserve": {"tokens": -1}}),
            "reserve.tokens",
        ),
        (
            json!({"virtual_key": value, "request_id": "x", "reserve": {"tokens": 1.5}}),
            "invalid body",
        ),
        (
            json!({"virtual_key": value, "request_id": "x", "reserve": {}, "hold_ttl": "2h"}),
            "hold_ttl",
        ),
        (
            json!({"virtual_key": value, "request_id": "x", "reserve": {}, "hold_ttl": "soon"}),
            "hold_ttl",
        ),
    ] {
        let message = assert_error(
            &app.post("/v1/check", body.clone()).await,
            400,
            "invalid_request",
        );
        assert!(message.contains(needle), "{body}: {message}");
    }
    assert_eq!(app.get("/v1/holds/x").await.0, 404);
    app.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn the_worker_expires_holds_and_late_usage_still_charges() {
    let (app, db) = sqlite_app().await;
    let value = team_key(&app, 10.0, 0.0, 1.0).await;
    let mut body = reserve(&value, "slow", 0.9);
    body["hold_ttl"] = json!("1s");
    assert_eq!(app.post("/v1/check", body).await.0, 200);
    assert_eq!(
        app.post("/v1/check", reserve(&value, "other", 0.2)).await.0,
        402
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    app.flush().await;
    assert_eq!(app.get("/v1/holds/slow").await.0, 404);
    assert_eq!(
        app.post("/v1/check", reserve(&value, "other", 0.2)).await.0,
        200
    );
    app.post(
        "/v1/usage",
        json!({"virtual_key": value, "request_id": "slow", "cost": 0.3}),
    )
    .await;
    let (_, d) = app.post("/v1/check", json!({"virtual_key": value})).await;
    assert_eq!(check_of(&d, "virtual_key", "budget")["used"], 0.3);
    assert_eq!(check_of(&d, "virtual_key", "budget")["held"], 0.2);
    let text = app.metrics().await;
    assert_eq!(
        metric(&text, "heimdall_hold_events_total{event=\"expired\"}"),
        Some(1.0)
    );
    app.stop().await;
    db.drop_db().await;
}

/// 64 reserves of $0.10 at once against a key whose team has $1.00 left admit exactly 10,
/// round after round.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reserves_admit_exactly_what_fits() {
    let (app, db) = sqlite_app().await;
    let app = Arc::new(app);
    let value = team_key(&app, 5.0, 4.0, 100.0).await;
    for round in 0..20 {
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let (app, value) = (Arc::clone(&app), value.clone());
                tokio::spawn(async move {
                    let id = format!("r{round}-{i}");
                    let (status, _) = app.post("/v1/check", reserve(&value, &id, 0.1)).await;
                    (status, id)
                })
            })
            .collect();
        let mut admitted = Vec::new();
        for t in tasks {
            let (status, id) = t.await.unwrap();
            assert!(status == 200 || status == 402, "{status}");
            if status == 200 {
                admitted.push(id);
            }
        }
        assert_eq!(admitted.len(), 10, "round {round}");
        for id in admitted {
            assert_eq!(app.delete(&format!("/v1/holds/{id}")).await.0, 200);
        }
    }
    let app = Arc::try_unwrap(app).ok().unwrap();
    app.stop().await;
    db.drop_db().await;
}

/// With the key's own budget and its team's both nearly full, concurrent reserves never take
/// more than the tighter one has.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_tighter_of_two_nearly_full_budgets_bounds_the_reserves() {
    let (app, db) = sqlite_app().await;
    let app = Arc::new(app);
    // Key: $1.00 max with $0.70 used (room 0.30); team: $1.20 max, the same $0.70 used (room
    // 0.50).
    let value = team_key(&app, 1.2, 0.7, 1.0).await;
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let (app, value) = (Arc::clone(&app), value.clone());
            tokio::spawn(async move {
                app.post("/v1/check", reserve(&value, &format!("t{i}"), 0.1))
                    .await
                    .0
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap() == 200);
    }
    assert_eq!(admitted, 3, "the key's $0.30 of room");
    let app = Arc::try_unwrap(app).ok().unwrap();
    app.stop().await;
    db.drop_db().await;
}

/// POSTs `body` to `path` of the service at `base`: the status and the JSON answer.
async fn post_to(client: &reqwest::Client, base: &str, path: &str, body: Value) -> (u16, Value) {
    let resp = client
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// With `ack = "durable"`, a hold acknowledged before `kill -9` is held after the restart and
/// settles normally.
async fn a_durable_hold_survives_kill_9(db: &TestDb) {
    let env = [("HEIMDALL__ACK", "durable")];
    let (child, base) = common::spawn_binary(db, &env).await;
    let client = reqwest::Client::new();
    let (_, created) = post_to(
        &client,
        &base,
        "/api/governance/virtual-keys",
        json!({"name": "k", "budget": {"max_limit": 1.0, "reset_duration": "1d"}}),
    )
    .await;
    let value = created["virtual_key"]["value"].as_str().unwrap().to_owned();
    let (status, d) = post_to(
        &client,
        &base,
        "/v1/check",
        reserve(&value, "survivor", 0.8),
    )
    .await;
    assert_eq!(status, 200, "{d}");
    common::signal(child, "KILL").await;

    let (child, base) = common::spawn_binary(db, &env).await;
    let get = client
        .get(format!("{base}/v1/holds/survivor"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status().as_u16(), 200);
    assert_eq!(
        post_to(
            &client,
            &base,
            "/v1/check",
            reserve(&value, "newcomer", 0.3)
        )
        .await
        .0,
        402
    );
    let (status, _) = post_to(
        &client,
        &base,
        "/v1/usage",
        json!({"virtual_key": value, "request_id": "survivor", "cost": 0.5}),
    )
    .await;
    assert_eq!(status, 202);
    let (_, d) = post_to(&client, &base, "/v1/check", json!({"virtual_key": value})).await;
    let budget = check_of(&d, "virtual_key", "budget");
    assert_eq!(
        (budget["used"].clone(), budget["held"].clone()),
        (json!(0.5), json!(0.0))
    );
    common::signal(child, "TERM").await;
}

on_both_backends!(a_durable_hold_survives_kill_9);

/// Two replicas on one PostgreSQL: a hold placed on one is counted by the other within one
/// flush interval; settled through the other, it charges once and frees the capacity on both.
/// Concurrent reserves on both against one budget over-admit by at most what each replica
/// admits before it learns the other's holds: measured and printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_count_each_others_holds_and_settle_them() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let mut config = config_for(&db);
    config.flush_interval = std::time::Duration::from_millis(200);
    let a = Arc::new(TestApp::start(config.clone()).await);
    let b = Arc::new(TestApp::start(config).await);
    let value = a
        .create(
            "/api/governance/virtual-keys",
            json!({"name": "k", "budget": {"max_limit": 1.0, "reset_duration": "1d"}}),
        )
        .await["virtual_key"]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    // Both know the key within an interval (b reloads).
    tokio::time::sleep(std::time::Duration::from_millis(450)).await;

    assert_eq!(a.post("/v1/check", reserve(&value, "h1", 0.6)).await.0, 200);
    // One interval plus a margin: a wrote the hold, b read it back.
    tokio::time::sleep(std::time::Duration::from_millis(450)).await;
    let (_, d) = b.post("/v1/check", json!({"virtual_key": value})).await;
    assert_eq!(check_of(&d, "virtual_key", "budget")["held"], 0.6, "{d}");
    assert_eq!(b.post("/v1/check", reserve(&value, "h2", 0.5)).await.0, 402);
    assert_eq!(b.get("/v1/holds/h1").await.0, 200);

    // Settled through b: charged once, and the capacity is free on b at once and on a
    // within an interval.
    let (status, _) = b
        .post(
            "/v1/usage",
            json!({"virtual_key": value, "request_id": "h1", "cost": 0.2}),
        )
        .await;
    assert_eq!(status, 202);
    let (_, d) = b.post("/v1/check", json!({"virtual_key": value})).await;
    assert_eq!(check_of(&d, "virtual_key", "budget")["held"], 0.0, "{d}");
    tokio::time::sleep(std::time::Duration::from_millis(450)).await;
    b.flush().await;
    a.flush().await;
    let (_, d) = a.post("/v1/check", json!({"virtual_key": value})).await;
    let budget = check_of(&d, "virtual_key", "budget");
    assert_eq!(
        (budget["used"].clone(), budget["held"].clone()),
        (json!(0.2), json!(0.0)),
        "{d}"
    );
    assert_eq!(
        db.scalar("select current_usage from budgets").await,
        200_000_000,
        "charged once"
    );
    assert_eq!(db.scalar("select count(*) from holds").await, 0);

    // Over-admission: 32 reserves of $0.10 on each replica at once, against $0.80 of room.
    let mut tasks = Vec::new();
    for (name, app) in [("a", &a), ("b", &b)] {
        for i in 0..32 {
            let (app, value) = (Arc::clone(app), value.clone());
            tasks.push(tokio::spawn(async move {
                app.post("/v1/check", reserve(&value, &format!("{name}{i}"), 0.1))
                    .await
                    .0
            }));
        }
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap() == 200);
    }
    println!("two replicas, $0.80 of room, 64 concurrent reserves of $0.10: {admitted} admitted");
    assert!(
        (8..=16).contains(&admitted),
        "{admitted}: at most what each replica alone admits"
    );
    for app in [a, b] {
        Arc::try_unwrap(app).ok().unwrap().stop().await;
    }
    db.drop_db().await;
}
