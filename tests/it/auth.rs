//! Bearer tokens: admin routes need an admin token, gateway tokens are refused there, the
//! operational routes are public; without tokens the service only runs on loopback.

use crate::common;

use common::{assert_error, config_for, with_tokens, Backend, TestApp, TestDb};
use heimdall::app::StartError;
use heimdall::App;
use serde_json::json;

#[tokio::test]
async fn admin_routes_need_an_admin_token() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let mut app = TestApp::start(with_tokens(
        config_for(&db),
        "admin-secret",
        "gateway-secret",
    ))
    .await;

    let resp = app.get("/api/governance/customers").await;
    assert_eq!(
        assert_error(&resp, 401, "unauthorized"),
        "missing bearer token"
    );
    app.token = Some("wrong".into());
    assert_error(
        &app.get("/api/governance/customers").await,
        401,
        "unauthorized",
    );
    assert_error(
        &app.post("/api/governance/customers", json!({"name": "c"}))
            .await,
        401,
        "unauthorized",
    );
    app.token = Some("gateway-secret".into());
    assert_error(
        &app.get("/api/governance/customers").await,
        403,
        "forbidden",
    );
    assert_error(
        &app.post("/api/governance/customers", json!({"name": "c"}))
            .await,
        403,
        "forbidden",
    );
    app.token = Some("admin-secret".into());
    assert_eq!(
        app.get("/api/governance/customers").await.1["count"],
        0,
        "refused writes changed nothing"
    );
    assert_eq!(
        app.post("/api/governance/customers", json!({"name": "c"}))
            .await
            .0,
        200
    );

    app.token = None;
    for public in ["/healthz", "/readyz", "/openapi.json", "/docs/"] {
        let status = app
            .client
            .get(app.url(public))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "{public} is public");
    }
    let raw = app
        .client
        .get(app.url("/api/governance/customers"))
        .header("authorization", "Basic YWRtaW4tc2VjcmV0")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 401);
    app.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn without_tokens_only_loopback_may_listen() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let mut config = config_for(&db);
    config.listen = "0.0.0.0:0".parse().unwrap();
    let err = App::build(config.clone())
        .await
        .err()
        .expect("open mode off loopback must fail");
    assert!(matches!(err, StartError::OpenOnNetwork(_)));
    assert!(err.to_string().contains("admin_tokens"), "{err}");

    let app = TestApp::start(config_for(&db)).await;
    assert_eq!(
        app.get("/api/governance/customers").await.0,
        200,
        "open on loopback"
    );
    app.stop().await;

    let secured = with_tokens(config, "a", "g");
    let app = App::build(secured).await.expect("tokens allow any address");
    drop(app);
    db.drop_db().await;
}
