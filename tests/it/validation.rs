//! Every validation failure is a 4xx JSON envelope that names the bad value and changes
//! nothing; malformed requests of every kind get the envelope too.

use crate::common;

use common::{assert_error, config_for, TestApp, TestDb};
use serde_json::json;

on_both_backends!(
    bad_durations_are_rejected_naming_the_value,
    bad_limits_are_rejected,
    malformed_requests_get_the_envelope,
);

async fn count(app: &TestApp, path: &str) -> u64 {
    app.get(path).await.1["count"].as_u64().unwrap()
}

async fn bad_durations_are_rejected_naming_the_value(db: &TestDb) {
    let app = TestApp::start(config_for(db)).await;
    for bad in ["1q", "1D", "", "0", "0s", "-1h", "1 h", "h", "10"] {
        let resp = app
            .post(
                "/api/governance/customers",
                json!({"name": "c", "budget": {"max_limit": 1.0, "reset_duration": bad}}),
            )
            .await;
        let message = assert_error(&resp, 400, "invalid_request");
        assert!(message.starts_with("reset_duration: "), "{message}");
        if !bad.is_empty() {
            assert!(
                message.contains(&format!("'{bad}'")),
                "{bad:?} not named in {message}"
            );
        }
        let resp = app
            .post("/api/governance/teams", json!({"name": "t", "rate_limit": {"token_max_limit": 5, "token_reset_duration": bad}}))
            .await;
        assert!(assert_error(&resp, 400, "invalid_request").starts_with("token_reset_duration: "));
    }
    let resp = app
        .post(
            "/api/governance/customers",
            json!({"name": "c", "budget": {"max_limit": 1.0, "reset_duration": "1q"}}),
        )
        .await;
    assert_eq!(
        assert_error(&resp, 400, "invalid_request"),
        "reset_duration: unknown unit 'q' in '1q'"
    );
    assert_eq!(
        count(&app, "/api/governance/customers").await,
        0,
        "nothing was created"
    );
    assert_eq!(count(&app, "/api/governance/teams").await, 0);
    assert_eq!(count(&app, "/api/governance/budgets").await, 0);
    app.stop().await;
}

async fn bad_limits_are_rejected(db: &TestDb) {
    let app = TestApp::start(config_for(db)).await;
    let cases = [
        (
            json!({"max_limit": 0.0, "reset_duration": "1d"}),
            "max_limit",
        ),
        (
            json!({"max_limit": -5.0, "reset_duration": "1d"}),
            "max_limit",
        ),
        (json!({"reset_duration": "1d"}), "max_limit"),
        (json!({"max_limit": 5.0}), "reset_duration"),
        (
            json!({"max_limit": 5.0, "reset_duration": "1h", "calendar_aligned": true}),
            "reset_duration",
        ),
        (
            json!({"max_limit": 5.0, "reset_duration": "1h30m", "calendar_aligned": true}),
            "reset_duration",
        ),
        (
            json!({"max_limit": 5.0, "reset_duration": "1d", "calendar_aligned": true, "timezone": "Mars/Olympus"}),
            "timezone",
        ),
    ];
    for (budget, field) in cases {
        let resp = app
            .post(
                "/api/governance/virtual-keys",
                json!({"name": "k", "budget": budget}),
            )
            .await;
        let message = assert_error(&resp, 400, "invalid_request");
        assert!(message.starts_with(field), "{budget}: {message}");
    }
    let rate_cases = [
        (json!({"token_max_limit": 100}), "token_reset_duration"),
        (
            json!({"request_max_limit": 0, "request_reset_duration": "1m"}),
            "request_max_limit",
        ),
        (
            json!({"token_max_limit": -1, "token_reset_duration": "1m"}),
            "token_max_limit",
        ),
    ];
    for (rate_limit, field) in rate_cases {
        let resp = app
            .post(
                "/api/governance/virtual-keys",
                json!({"name": "k", "rate_limit": rate_limit}),
            )
            .await;
        let message = assert_error(&resp, 400, "invalid_request");
        assert!(message.starts_with(field), "{rate_limit}: {message}");
    }
    let pc = app
        .post("/api/governance/virtual-keys", json!({"name": "k", "provider_configs": [{"provider": "openai", "budget": {"max_limit": 1.0, "reset_duration": "1q"}}]}))
        .await;
    assert!(
        assert_error(&pc, 400, "invalid_request").starts_with("provider_configs[0].reset_duration")
    );
    let weight = app
        .post(
            "/api/governance/virtual-keys",
            json!({"name": "k", "provider_configs": [{"provider": "openai", "weight": -1.0}]}),
        )
        .await;
    assert_error(&weight, 400, "invalid_request");
    let blank = app
        .post("/api/governance/customers", json!({"name": "   "}))
        .await;
    assert!(assert_error(&blank, 400, "invalid_request").starts_with("name"));
    let long = app
        .post(
            "/api/governance/customers",
            json!({"name": "x".repeat(300)}),
        )
        .await;
    assert_error(&long, 400, "invalid_request");
    let calendar = app
        .post("/api/governance/customers", json!({"name": "ok", "budget": {"max_limit": 1.0, "reset_duration": "1M", "calendar_aligned": true, "timezone": "America/New_York"}}))
        .await;
    assert_eq!(calendar.0, 200, "{}", calendar.1);
    assert_eq!(
        count(&app, "/api/governance/virtual-keys").await,
        0,
        "no failed create left anything"
    );
    assert_eq!(count(&app, "/api/governance/budgets").await, 1);

    // A failed update changes nothing either.
    let id = calendar.1["customer"]["id"].as_str().unwrap().to_owned();
    let path = format!("/api/governance/customers/{id}");
    let resp = app
        .put(
            &path,
            json!({"name": "renamed", "budget": {"reset_duration": "1h"}}),
        )
        .await;
    assert_error(&resp, 400, "invalid_request");
    let (_, after) = app.get(&path).await;
    assert_eq!(after["customer"]["name"], "ok");
    assert_eq!(after["customer"]["budget"]["reset_duration"], "1M");
    app.stop().await;
}

async fn malformed_requests_get_the_envelope(db: &TestDb) {
    let mut config = config_for(db);
    config.max_body_bytes = 4096;
    let app = TestApp::start(config).await;
    let url = app.url("/api/governance/customers");
    let send = |req: reqwest::RequestBuilder| app.send(req);

    let resp = send(
        app.client
            .post(&url)
            .header("content-type", "application/json")
            .body("{\"name\":"),
    )
    .await;
    assert_error(&resp, 400, "invalid_request");
    let resp = send(
        app.client
            .post(&url)
            .header("content-type", "application/json")
            .body("{\"name\": 5}"),
    )
    .await;
    assert_error(&resp, 400, "invalid_request");
    let resp = send(app.client.post(&url).header("content-type", "application/json").body("{\"name\": \"x\", \"budget\": {\"max_limit\": \"ten\", \"reset_duration\": \"1d\"}}")).await;
    assert!(assert_error(&resp, 400, "invalid_request").contains("max_limit"));
    let resp = send(
        app.client
            .post(&url)
            .header("content-type", "application/json")
            .body("[]"),
    )
    .await;
    assert_error(&resp, 400, "invalid_request");
    let resp = send(app.client.post(&url).body("{\"name\": \"x\"}")).await;
    assert_error(&resp, 415, "unsupported_media_type");
    let resp = send(
        app.client
            .post(&url)
            .header("content-type", "text/plain")
            .body("{\"name\": \"x\"}"),
    )
    .await;
    assert_error(&resp, 415, "unsupported_media_type");
    let big = json!({"name": "x".repeat(10_000)});
    let resp = send(app.client.post(&url).json(&big)).await;
    assert_error(&resp, 413, "payload_too_large");
    assert_error(&app.get("/no/such/route").await, 404, "not_found");
    assert_error(&app.get("/api/governance/nothing").await, 404, "not_found");
    assert_error(
        &send(app.client.patch(&url)).await,
        405,
        "method_not_allowed",
    );
    assert_error(
        &app.delete("/api/governance/customers").await,
        405,
        "method_not_allowed",
    );
    assert_eq!(count(&app, "/api/governance/customers").await, 0);
    app.stop().await;
}
