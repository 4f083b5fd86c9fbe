//! What an operator sees: `/metrics` series that move with traffic, request ids, one access
//! log line per request (text or JSON) without secrets, and connection limits and timeouts.

use crate::common;

use std::time::Duration;

use common::{config_for, metric, Backend, TestApp, TestDb};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every series `docs/operations.md` documents.
const SERIES: &[&str] = &[
    "heimdall_http_requests_total",
    "heimdall_http_request_duration_seconds",
    "heimdall_decisions_total",
    "heimdall_usage_updates_total",
    "heimdall_usage_tokens_total",
    "heimdall_usage_requests_total",
    "heimdall_usage_cost_nanodollars_total",
    "heimdall_flush_duration_seconds",
    "heimdall_flush_rows_total",
    "heimdall_flush_failures_total",
    "heimdall_journal_entries_total",
    "heimdall_unknown_commits_total",
    "heimdall_pending_deltas",
    "heimdall_database_up",
    "heimdall_entities",
    "heimdall_dedup_keys",
    "heimdall_dedup_bytes",
    "heimdall_dedup_keys_evicted_total",
    "heimdall_dedup_keys_unwritten_total",
    "heimdall_holds",
    "heimdall_hold_events_total",
    "heimdall_hold_overruns_total",
    "heimdall_alert_events_total",
];

async fn sqlite_app(configure: impl FnOnce(&mut heimdall::Config)) -> (TestApp, TestDb) {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let mut config = config_for(&db);
    configure(&mut config);
    (TestApp::start(config).await, db)
}

fn value(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

#[tokio::test]
async fn metrics_expose_every_series_and_move_with_traffic() {
    let (app, db) = sqlite_app(|_| {}).await;
    let created = app
        .create(
            "/api/governance/virtual-keys",
            json!({"name": "k", "budget": {"max_limit": 1.0, "reset_duration": "1d"}}),
        )
        .await;
    let key = created["virtual_key"]["value"].as_str().unwrap().to_owned();
    let before = app.metrics().await;
    // A fresh process shows the latency of what it answered at once, not after an upkeep.
    assert!(
        before.contains(
            "heimdall_http_request_duration_seconds_count{route=\"/api/governance/virtual-keys\""
        ),
        "{before}"
    );
    assert_eq!(
        value(&before, "heimdall_entities{kind=\"virtual_key\"}"),
        1.0
    );
    assert_eq!(value(&before, "heimdall_database_up"), 1.0);
    assert_eq!(
        value(&before, "heimdall_usage_updates_total{result=\"accepted\"}"),
        0.0
    );

    let usage = |tokens: i64, cost: f64, request_id: &str| {
        json!({"virtual_key": key, "provider": "openai", "model": "gpt-4o",
               "tokens_used": tokens, "cost": cost, "request_id": request_id})
    };
    assert_eq!(
        app.post("/v1/check", json!({"virtual_key": key})).await.0,
        200
    );
    for (i, tokens) in [100, 250].iter().enumerate() {
        let (status, _) = app
            .post("/v1/usage", usage(*tokens, 0.6, &format!("r{i}")))
            .await;
        assert_eq!(status, 202);
    }
    assert_eq!(app.post("/v1/usage", usage(100, 0.6, "r0")).await.0, 202);
    assert_eq!(
        app.post("/v1/usage", json!({"tokens_used": -1})).await.0,
        400
    );
    let batch = json!({"updates": [usage(50, 0.0, "b0"), usage(-5, 0.0, "b1")]});
    assert_eq!(app.post("/v1/usage/batch", batch).await.0, 400);
    let batch = json!({"updates": [
        usage(50, 0.0, "b2"),
        usage(100, 0.6, "r0"),
        {"provider": "anthropic", "model": "claude", "tokens_used": 7},
    ]});
    let (status, body) = app.post("/v1/usage/batch", batch).await;
    assert_eq!((status, body["accepted"].clone()), (202, json!(2)));
    let (status, _) = app.post("/v1/check", json!({"virtual_key": key})).await;
    assert_eq!(status, 402, "1.20 spent of 1.00");

    let busy = app.metrics().await;
    assert!(value(&busy, "heimdall_pending_deltas") >= 1.0);
    app.flush().await;
    let after = app.metrics().await;
    for name in SERIES {
        assert!(
            after.contains(&format!("# TYPE {name} ")),
            "{name} is not exposed"
        );
    }
    let accepted = "heimdall_usage_updates_total{result=\"accepted\"}";
    assert_eq!(
        value(&after, accepted),
        4.0,
        "two single updates, two in a batch"
    );
    let duplicate = "heimdall_usage_updates_total{result=\"duplicate\"}";
    assert_eq!(value(&after, duplicate), 2.0, "one single, one in a batch");
    let rejected = "heimdall_usage_updates_total{result=\"rejected\"}";
    assert_eq!(
        value(&after, rejected),
        3.0,
        "one single update, a batch of two"
    );
    let model = "{provider=\"openai\",model=\"gpt-4o\"}";
    assert_eq!(
        value(&after, &format!("heimdall_usage_tokens_total{model}")),
        400.0
    );
    assert_eq!(
        value(&after, &format!("heimdall_usage_requests_total{model}")),
        3.0
    );
    assert_eq!(
        value(
            &after,
            "heimdall_usage_tokens_total{provider=\"anthropic\",model=\"claude\"}"
        ),
        7.0
    );
    assert_eq!(
        value(
            &after,
            &format!("heimdall_usage_cost_nanodollars_total{model}")
        ),
        1.2e9
    );
    assert_eq!(
        value(&after, "heimdall_decisions_total{decision=\"allow\"}"),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "heimdall_decisions_total{decision=\"budget_exceeded\"}"
        ),
        1.0
    );
    let usage_202 =
        "heimdall_http_requests_total{route=\"/v1/usage\",method=\"POST\",status=\"202\"}";
    assert_eq!(value(&after, usage_202), 3.0);
    let usage_400 =
        "heimdall_http_requests_total{route=\"/v1/usage\",method=\"POST\",status=\"400\"}";
    assert_eq!(value(&after, usage_400), 1.0);
    let latency = "heimdall_http_request_duration_seconds_count{route=\"/v1/check\",method=\"POST\",status=\"200\"}";
    assert_eq!(value(&after, latency), 1.0);
    assert!(value(&after, "heimdall_flush_rows_total{table=\"budgets\"}") >= 1.0);
    assert!(value(&after, "heimdall_flush_rows_total{table=\"usage_rollups\"}") >= 1.0);
    assert!(
        value(
            &after,
            "heimdall_flush_duration_seconds_count{kind=\"full\"}"
        ) >= 1.0
    );
    assert_eq!(value(&after, "heimdall_pending_deltas"), 0.0);
    assert_eq!(value(&after, "heimdall_flush_failures_total"), 0.0);
    assert!(
        !after.contains(&key),
        "a key value must never be a label value"
    );
    let unknown = app.get("/no/such/route").await;
    assert_eq!(unknown.0, 404);
    let later = app.metrics().await;
    assert_eq!(
        value(
            &later,
            "heimdall_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"}"
        ),
        1.0,
        "unknown paths share one route label"
    );
    app.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let (app, db) = sqlite_app(|_| {}).await;
    let resp = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "gw-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "gw-123");
    let mut generated = Vec::new();
    for bad in [None, Some("has spaces")] {
        let mut req = app.client.post(app.url("/v1/usage")).body("{");
        if let Some(bad) = bad {
            req = req.header("x-request-id", bad);
        }
        let resp = req.send().await.unwrap();
        assert!(resp.status().is_client_error());
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
        generated.push(id);
    }
    assert_ne!(generated[0], generated[1]);
    app.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn the_binary_logs_one_json_line_per_request_without_secrets() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let (child, base) = common::spawn_binary_with(
        &db,
        &[
            ("HEIMDALL__LOG_FORMAT", "json"),
            ("HEIMDALL__LOG_LEVEL", "info"),
            ("HEIMDALL__AUTH__ADMIN_TOKENS", "admin-secret-token"),
        ],
        std::process::Stdio::piped(),
    )
    .await;
    let (child, drained) = drain_stderr(child, &db);
    let client = reqwest::Client::new();
    let created: Value = client
        .post(format!("{base}/api/governance/virtual-keys"))
        .bearer_auth("admin-secret-token")
        .header("x-request-id", "create-1")
        .json(&json!({"name": "k"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["virtual_key"]["value"].as_str().unwrap().to_owned();
    let resp = client
        .post(format!("{base}/v1/check"))
        .bearer_auth("admin-secret-token")
        .header("x-request-id", "check-1")
        .json(&json!({"virtual_key": key}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let status = common::signal(child, "TERM").await;
    assert!(status.success());
    drained.join().unwrap();
    let logs = std::fs::read_to_string(stderr_path(&db)).unwrap();
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let check: Vec<&Value> = lines
        .iter()
        .filter(|l| l["request_id"] == "check-1")
        .collect();
    assert_eq!(check.len(), 1, "one line per request: {logs}");
    let line = check[0];
    assert_eq!(line["target"], "heimdall::access");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["route"], "/v1/check");
    assert_eq!(line["status"], 200);
    assert!(line["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(lines
        .iter()
        .any(|l| l["request_id"] == "create-1" && l["route"] == "/api/governance/virtual-keys"));
    assert!(!logs.contains(&key), "key values are never logged");
    assert!(
        !logs.contains("admin-secret-token"),
        "tokens are never logged"
    );
    db.drop_db().await;
}

fn stderr_path(db: &TestDb) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("{}.stderr", db.url.trim_start_matches("sqlite://")))
}

/// Copies the child's piped stderr into a file from a thread (so the pipe never fills); the
/// thread ends when the child exits.
fn drain_stderr(
    mut child: std::process::Child,
    db: &TestDb,
) -> (std::process::Child, std::thread::JoinHandle<()>) {
    let mut stderr = child.stderr.take().unwrap();
    let path = stderr_path(db);
    let thread = std::thread::spawn(move || {
        let mut file = std::fs::File::create(path).unwrap();
        let _ = std::io::copy(&mut stderr, &mut file);
    });
    (child, thread)
}

/// Reads from a raw connection until it closes or `within` passes; what was read, and
/// whether it closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

#[tokio::test]
async fn slow_and_stuck_clients_are_cut_off() {
    let (app, db) = sqlite_app(|c| {
        c.header_read_timeout = Duration::from_secs(1);
        c.request_timeout = Duration::from_secs(1);
        c.idle_timeout = Duration::from_secs(2);
    })
    .await;

    // Headers that never end: the connection is closed.
    let mut slow_headers = TcpStream::connect(app.addr).await.unwrap();
    slow_headers
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let (_, closed) = read_until_closed(&mut slow_headers, Duration::from_secs(5)).await;
    assert!(
        closed,
        "a client that never finishes its headers is cut off"
    );

    // A body that never arrives: 408 in the envelope.
    let mut slow_body = TcpStream::connect(app.addr).await.unwrap();
    slow_body
        .write_all(
            b"POST /v1/usage HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut slow_body, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"type\":\"request_timeout\""), "{answer}");

    // A kept-alive connection that goes silent after its request: closed.
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut idle, Duration::from_secs(6)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed, "an idle connection is closed");

    // The service still answers.
    assert_eq!(app.get("/healthz").await.0, 200);
    app.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_are_told_to_retry() {
    let (app, db) = sqlite_app(|c| c.max_connections = 2).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    let mut third = TcpStream::connect(app.addr).await.unwrap();
    let (answer, closed) = read_until_closed(&mut third, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too many open connections"), "{answer}");
    assert!(closed);
    drop(held);
    // Freed slots are reused.
    let mut ok = false;
    for _ in 0..50 {
        if app.get("/healthz").await.0 == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "connections are accepted again once others closed");
    app.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn the_dashboard_is_served_from_the_binary_without_a_token() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let app = TestApp::start(common::with_tokens(config_for(&db), "adm", "gw")).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = client.get(app.url("/ui")).send().await.unwrap();
    assert_eq!(resp.status(), 308);
    assert_eq!(resp.headers()["location"], "/ui/");
    let resp = client.get(app.url("/ui/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let csp = resp.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let etag = resp.headers()["etag"].clone();
    assert!(resp.text().await.unwrap().contains("app.js"));
    for (path, kind) in [
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
        ("/ui/favicon.svg", "image/svg+xml"),
    ] {
        let resp = client.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(kind));
    }
    let resp = client
        .get(app.url("/ui/"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 304);
    let resp = client.get(app.url("/ui/nothing.js")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    // The API behind it still wants the admin token.
    let (status, _) = app.get("/api/governance/alerts").await;
    assert_eq!(status, 401);
    app.stop().await;
    db.drop_db().await;
}
