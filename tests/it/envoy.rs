//! Envoy's rate limit service over gRPC, driven with a tonic client as Envoy calls it: the
//! gateway token in metadata, request-time calls that check and charge requests, response-time
//! calls (hits 0) that charge the tokens they carry at the model's prices, `OVER_LIMIT` with the
//! decision as the body and its headers, and nothing charged when a call is refused.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::common::{config_for, metric, with_tokens, Backend, TestApp, TestDb};

const GATEWAY: &str = "gateway-token";

fn descriptor(entries: &[(&str, &str)], hits: Option<u64>) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).to_owned(),
                value: (*v).to_owned(),
            })
            .collect(),
        hits_addend: hits.map(|value| UInt64Value { value }),
        ..Default::default()
    }
}

async fn call(
    client: &mut RateLimitServiceClient<Channel>,
    token: Option<&str>,
    descriptors: Vec<RateLimitDescriptor>,
) -> Result<RateLimitResponse, tonic::Status> {
    let mut req = tonic::Request::new(RateLimitRequest {
        domain: "heimdall".to_owned(),
        descriptors,
        hits_addend: 0,
    });
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    client.should_rate_limit(req).await.map(|r| r.into_inner())
}

fn header<'a>(r: &'a RateLimitResponse, name: &str) -> Option<&'a str> {
    r.response_headers_to_add
        .iter()
        .find(|h| h.key == name)
        .map(|h| h.value.as_str())
}

async fn usage_of(app: &TestApp, path: &str, entity: &str) -> (f64, i64, i64) {
    let (status, body) = app.get(path).await;
    assert_eq!(status, 200);
    let e = &body[entity];
    (
        e["budget"]["current_usage"].as_f64().unwrap(),
        e["rate_limit"]["token_current_usage"].as_i64().unwrap_or(0),
        e["rate_limit"]["request_current_usage"]
            .as_i64()
            .unwrap_or(0),
    )
}

#[tokio::test]
async fn envoy_calls_check_charge_and_refuse_like_the_http_api() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let mut config = with_tokens(config_for(&db), "admin-token", GATEWAY);
    config.grpc_listen = Some("127.0.0.1:0".parse().unwrap());
    let mut app = TestApp::start(config).await;
    app.token = Some("admin-token".to_owned());
    let limits = json!({"token_max_limit": 1_000_000, "token_reset_duration": "1h",
                        "request_max_limit": 3, "request_reset_duration": "1h"});
    let id = |body: Value, entity: &str| body[entity]["id"].as_str().unwrap().to_owned();
    let budget = |max: f64| json!({"max_limit": max, "reset_duration": "1d"});
    let customer = id(
        app.create(
            "/api/governance/customers",
            json!({"name": "acme", "budget": budget(100.0), "rate_limit": limits}),
        )
        .await,
        "customer",
    );
    let team = id(
        app.create("/api/governance/teams",
            json!({"name": "ml", "customer_id": customer, "budget": budget(50.0), "rate_limit": limits}))
        .await,
        "team",
    );
    let key = app
        .create(
            "/api/governance/virtual-keys",
            json!({"name": "k", "team_id": team, "budget": budget(10.0), "rate_limit": limits}),
        )
        .await;
    let (key_id, value) = (
        key["virtual_key"]["id"].as_str().unwrap().to_owned(),
        key["virtual_key"]["value"].as_str().unwrap().to_owned(),
    );
    app.create(
        "/api/governance/model-configs",
        json!({"model_name": "gpt-4o", "input_cost_per_million_tokens": 2.5,
               "output_cost_per_million_tokens": 10.0}),
    )
    .await;

    let grpc = app.grpc.expect("grpc_listen set");
    let mut client = RateLimitServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let subject = [
        ("virtual_key", value.as_str()),
        ("provider", "openai"),
        ("model", "gpt-4o"),
    ];

    // The gateway token is required.
    let refused = call(&mut client, None, vec![descriptor(&subject, None)]).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::Unauthenticated);
    let refused = call(&mut client, Some("wrong"), vec![descriptor(&subject, None)]).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::Unauthenticated);

    // At request time: checked, one request charged on every level.
    let ok = call(&mut client, Some(GATEWAY), vec![descriptor(&subject, None)])
        .await
        .unwrap();
    assert_eq!(ok.overall_code, Code::Ok as i32);
    let key_path = format!("/api/governance/virtual-keys/{key_id}");
    assert_eq!(usage_of(&app, &key_path, "virtual_key").await, (0.0, 0, 1));

    // At response time (hits 0): the tokens, priced at the model's prices; no request.
    let mut tokens = subject.to_vec();
    tokens.extend([("input_tokens", "1000"), ("output_tokens", "500")]);
    let ok = call(
        &mut client,
        Some(GATEWAY),
        vec![descriptor(&tokens, Some(0))],
    )
    .await
    .unwrap();
    assert_eq!(ok.overall_code, Code::Ok as i32);
    let expected = (0.0075, 1500, 1);
    for (path, entity) in [
        (key_path.clone(), "virtual_key"),
        (format!("/api/governance/teams/{team}"), "team"),
        (format!("/api/governance/customers/{customer}"), "customer"),
    ] {
        let (cost, t, r) = usage_of(&app, &path, entity).await;
        assert!((cost - expected.0).abs() < 1e-12, "{entity}: {cost}");
        assert_eq!((t, r), (expected.1, expected.2), "{entity}");
    }

    // Two more requests reach the limit of 3; the next is OVER_LIMIT with the decision.
    for _ in 0..2 {
        let r = call(&mut client, Some(GATEWAY), vec![descriptor(&subject, None)]).await;
        assert_eq!(r.unwrap().overall_code, Code::Ok as i32);
    }
    let over = call(
        &mut client,
        Some(GATEWAY),
        vec![
            descriptor(&[("model", "gpt-4o")], None),
            descriptor(&subject, None),
        ],
    )
    .await
    .unwrap();
    assert_eq!(over.overall_code, Code::OverLimit as i32);
    assert_eq!(over.statuses[0].code, Code::Ok as i32);
    assert_eq!(over.statuses[1].code, Code::OverLimit as i32);
    let body: Value = serde_json::from_slice(&over.raw_body).unwrap();
    assert_eq!(body["decision"], "request_limited");
    assert!(body["message"].as_str().unwrap().contains("request limit"));
    assert_eq!(
        header(&over, "x-heimdall-decision"),
        Some("request_limited")
    );
    let retry: u64 = header(&over, "retry-after").unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry));
    assert_eq!(header(&over, "x-ratelimit-limit"), Some("3"));
    assert_eq!(header(&over, "x-ratelimit-remaining"), Some("0"));
    // Refused: no request charged on any level, the first descriptor's neither.
    assert_eq!(usage_of(&app, &key_path, "virtual_key").await.2, 3);
    // A response-time call still records its tokens although the key is over its limit.
    let ok = call(
        &mut client,
        Some(GATEWAY),
        vec![descriptor(&tokens, Some(0))],
    )
    .await
    .unwrap();
    assert_eq!(ok.overall_code, Code::OverLimit as i32);
    assert_eq!(usage_of(&app, &key_path, "virtual_key").await.1, 3000);

    // A key Heimdall does not know is refused.
    let unknown = call(
        &mut client,
        Some(GATEWAY),
        vec![descriptor(&[("virtual_key", "sk-hd-nope")], None)],
    )
    .await
    .unwrap();
    assert_eq!(unknown.overall_code, Code::OverLimit as i32);
    assert_eq!(
        header(&unknown, "x-heimdall-decision"),
        Some("virtual_key_not_found")
    );

    // A bad descriptor is an invalid argument and changes nothing.
    let bad = call(
        &mut client,
        Some(GATEWAY),
        vec![descriptor(
            &[("virtual_key", value.as_str()), ("tokens", "-3")],
            None,
        )],
    )
    .await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);
    assert_eq!(usage_of(&app, &key_path, "virtual_key").await.1, 3000);

    // A message over grpc_max_message_bytes (64 KiB) is refused before it is read.
    let big = vec![descriptor(&[("note", &"x".repeat(200))], None); 400];
    let err = call(&mut client, Some(GATEWAY), big).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{err:?}"
    );
    assert_eq!(usage_of(&app, &key_path, "virtual_key").await.1, 3000);

    let metrics = app.metrics().await;
    let series = format!(
        "heimdall_http_requests_total{{route=\"{}\",method=\"POST\",status=\"200\"}}",
        heimdall::grpc::ROUTE
    );
    assert!(metric(&metrics, &series).unwrap_or(0.0) >= 6.0, "{metrics}");
    app.stop().await;
    db.drop_db().await;
}
