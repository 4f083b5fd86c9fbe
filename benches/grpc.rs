//! Envoy's `ShouldRateLimit` against the HTTP `/v1/check`, in one run: the service in this
//! process (release build, SQLite in a temporary directory), C concurrent callers for S seconds
//! each, then throughput and latency of both and their ratio. A gRPC call is what Envoy sends at
//! request time (one descriptor: key, provider, model; hits 1: checked and charged); an HTTP
//! call is a plain check of the same key. Both clients share the machine with the service.
//!
//!   cargo bench --bench grpc                          # C = 32, S = 5
//!   BENCH_CONCURRENCY=64 BENCH_SECONDS=10 cargo bench --bench grpc

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use heimdall::{App, Config};
use serde_json::{json, Value};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Run {
    calls: usize,
    seconds: f64,
    latencies: Vec<Duration>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.seconds
    }

    fn percentile(&mut self, p: f64) -> Duration {
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }
}

/// Runs `concurrency` callers of `call` for `seconds` (after a second of warm-up).
async fn drive<F, Fut>(concurrency: u64, seconds: u64, call: F) -> Run
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let warm = Instant::now() + Duration::from_secs(1);
    let end = warm + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let started = Instant::now();
                    if started >= end {
                        return latencies;
                    }
                    call().await;
                    if started >= warm {
                        latencies.push(started.elapsed());
                    }
                }
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("caller"));
    }
    Run {
        calls: latencies.len(),
        seconds: seconds as f64,
        latencies,
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let concurrency = env("BENCH_CONCURRENCY", 32);
    let seconds = env("BENCH_SECONDS", 5);
    let dir = std::env::temp_dir().join(format!("heimdall-grpc-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: Some("127.0.0.1:0".parse().unwrap()),
        database_url: format!("sqlite://{}/bench.db", dir.display()),
        ..Config::default()
    };
    let app = App::build(config).await.expect("app builds");
    let http = format!("http://{}", app.local_addr());
    let grpc = format!("http://{}", app.grpc_addr().expect("grpc_listen"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::new();
    let key: Value = client
        .post(format!("{http}/api/governance/virtual-keys"))
        .json(&json!({"name": "bench", "budget": {"max_limit": 1e9, "reset_duration": "1d"},
            "rate_limit": {"token_max_limit": 1_000_000_000_000i64, "token_reset_duration": "1h",
                           "request_max_limit": 1_000_000_000_000i64, "request_reset_duration": "1h"}}))
        .send()
        .await
        .expect("admin API")
        .json()
        .await
        .expect("a key");
    let value = key["virtual_key"]["value"]
        .as_str()
        .expect("key value")
        .to_owned();

    let body =
        serde_json::to_vec(&json!({"virtual_key": value, "provider": "openai", "model": "gpt-4o"}))
            .unwrap();
    let url = format!("{http}/v1/check");
    let mut http_run = drive(concurrency, seconds, move || {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        async move {
            let r = client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("check");
            assert_eq!(r.status(), 200);
            r.bytes().await.expect("decision");
        }
    })
    .await;

    let channel = tonic::transport::Endpoint::from_shared(grpc)
        .unwrap()
        .connect()
        .await
        .expect("gRPC connects");
    let grpc_client = RateLimitServiceClient::new(channel);
    let request = RateLimitRequest {
        domain: "heimdall".to_owned(),
        descriptors: vec![RateLimitDescriptor {
            entries: [
                ("virtual_key", value.as_str()),
                ("provider", "openai"),
                ("model", "gpt-4o"),
            ]
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).to_owned(),
                value: (*v).to_owned(),
            })
            .collect(),
            ..Default::default()
        }],
        hits_addend: 0,
    };
    let mut grpc_run = drive(concurrency, seconds, move || {
        let (mut client, request) = (grpc_client.clone(), request.clone());
        async move {
            let r = client
                .should_rate_limit(request)
                .await
                .expect("ShouldRateLimit");
            assert_eq!(r.into_inner().overall_code, 1, "OK");
        }
    })
    .await;

    println!("concurrency {concurrency}, {seconds} s each, service and clients in one process");
    println!(
        "{:<28} {:>12} {:>10} {:>10}",
        "", "calls/s", "p50 µs", "p99 µs"
    );
    for (name, run) in [
        ("HTTP POST /v1/check", &mut http_run),
        ("gRPC ShouldRateLimit", &mut grpc_run),
    ] {
        let (p50, p99) = (run.percentile(0.5), run.percentile(0.99));
        println!(
            "{name:<28} {:>12.0} {:>10} {:>10}",
            run.rate(),
            p50.as_micros(),
            p99.as_micros()
        );
    }
    println!(
        "gRPC / HTTP: throughput {:.2}x, p99 {:.2}x (target: throughput >= 1.00x)",
        grpc_run.rate() / http_run.rate(),
        grpc_run.percentile(0.99).as_secs_f64() / http_run.percentile(0.99).as_secs_f64()
    );
    let _ = stop.send(());
    let _ = served.await;
    let _ = std::fs::remove_dir_all(&dir);
}
