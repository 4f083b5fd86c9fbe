//! Envoy's rate limit service (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`)
//! on `grpc_listen`, in the same process and runtime as the HTTP API and over the same engine:
//! each descriptor is checked against every limit of its subject; the call is `OVER_LIMIT` when
//! any descriptor is refused, and then no request is charged. Token counts a call carries are
//! usage that already happened and are always charged, priced at the model's prices.
//! `docs/integrations/envoy.md` is the guide.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::http::Method;
use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::config::AckMode;
use crate::domain::time::now_micros;
use crate::domain::{Micros, Money};
use crate::engine::check::{check, CheckInput, CheckPolicy, Decision, Verdict};
use crate::engine::level::LimitKind;
use crate::engine::usage::{Charge, UsageEvent};
use crate::http::auth::Access;
use crate::http::check::{retry_after, write_decision};
use crate::http::state::AppState;
use crate::http::usage::{acknowledge, charge_subject};

mod descriptors;

pub use descriptors::{subjects, Subject, MAX_DESCRIPTORS};

/// The route label of the method in metrics and the access log.
pub const ROUTE: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// The service, over the HTTP API's state.
#[derive(Clone)]
pub struct RateLimiter {
    state: AppState,
    /// The HTTP check's policy without its required headers: descriptors carry no headers
    /// (Envoy's own actions decide what a call must name).
    policy: CheckPolicy,
}

impl RateLimiter {
    pub fn new(state: AppState) -> Self {
        let policy = CheckPolicy {
            require_virtual_key: state.policy.require_virtual_key,
            required_headers: Vec::new(),
        };
        RateLimiter { state, policy }
    }

    /// Answers one call; what it refuses it refuses with a `Status`.
    async fn answer(&self, req: Request<RateLimitRequest>) -> Result<RateLimitResponse, Status> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        self.state
            .auth
            .authorize(Access::Gateway, token)
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        let req = req.into_inner();
        let subjects = subjects(&req).map_err(Status::invalid_argument)?;
        let now = now_micros();
        let (response, charged) = {
            let snapshot = self.state.store.guard();
            let holds = !self.state.holds.is_empty();
            let decisions: Vec<Decision<'_>> = subjects
                .iter()
                .map(|s| {
                    let input = CheckInput {
                        virtual_key: s.virtual_key,
                        provider: s.provider,
                        model: s.model,
                        user_id: s.user_id,
                        request_type: None,
                        reserve: false,
                        holds,
                    };
                    check(&snapshot, &self.policy, &input, &[], now)
                })
                .collect();
            for d in &decisions {
                self.state.metrics.decision(d.verdict);
            }
            let refused = decisions.iter().find(|d| d.verdict != Verdict::Allow);
            let entered = snapshot.dirty.enter();
            let mut charged = false;
            for s in &subjects {
                let requests = if refused.is_none() { s.requests } else { 0 };
                charged |= self.charge(&snapshot, &entered, s, requests, now);
            }
            (respond(&decisions, refused, now), charged)
        };
        if charged && self.state.config.ack == AckMode::Durable {
            acknowledge(&self.state)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
        }
        Ok(response)
    }

    /// Charges one descriptor's requests and tokens; true when anything was charged.
    fn charge(
        &self,
        snapshot: &crate::engine::Snapshot,
        entered: &crate::engine::capture::Entered<'_>,
        s: &Subject<'_>,
        requests: i64,
        now: Micros,
    ) -> bool {
        let event = UsageEvent {
            virtual_key: s.virtual_key,
            provider: s.provider,
            model: s.model,
            user_id: s.user_id,
            success: true,
            tokens: s.tokens,
            input_tokens: s.input_tokens,
            output_tokens: s.output_tokens,
            ..Default::default()
        }
        .priced(snapshot);
        let charge = Charge {
            tokens: (s.tokens > 0).then_some(s.tokens),
            requests: (requests > 0).then_some(requests),
            cost: (event.cost.nanos() > 0).then_some(event.cost.nanos()),
        };
        if charge == Charge::default() {
            return false;
        }
        charge_subject(&self.state, snapshot, entered, &event, &charge, now);
        self.state
            .metrics
            .charged(event.provider, event.model, &charge);
        true
    }
}

fn header(key: &str, value: String) -> HeaderValue {
    HeaderValue {
        key: key.to_owned(),
        value,
        ..Default::default()
    }
}

/// The response: per descriptor its code; when refused, the refusing decision's JSON as the
/// body Envoy sends, its `retry-after` and the blocking limit's `x-ratelimit-*` headers.
fn respond(
    decisions: &[Decision<'_>],
    refused: Option<&Decision<'_>>,
    now: Micros,
) -> RateLimitResponse {
    let statuses = decisions
        .iter()
        .map(|d| DescriptorStatus {
            code: if d.verdict == Verdict::Allow {
                Code::Ok
            } else {
                Code::OverLimit
            } as i32,
            duration_until_reset: d.retry_at.map(|at| ProtoDuration {
                seconds: retry_after(at, now) as i64,
                nanos: 0,
            }),
            ..Default::default()
        })
        .collect();
    let Some(d) = refused else {
        return RateLimitResponse {
            overall_code: Code::Ok as i32,
            statuses,
            ..Default::default()
        };
    };
    let mut body = Vec::with_capacity(512);
    write_decision(d, &mut body);
    let mut headers = vec![
        header("content-type", "application/json".to_owned()),
        header("x-heimdall-decision", d.verdict.code().to_owned()),
    ];
    if let Some(at) = d.retry_at {
        headers.push(header("retry-after", retry_after(at, now).to_string()));
    }
    if let Some(c) = d.checks.iter().find(|c| c.exceeded) {
        let amount = |n: i64| match c.kind {
            LimitKind::Budget => format!("{:.4}", Money::from_nanos(n).to_usd()),
            LimitKind::Tokens | LimitKind::Requests => n.to_string(),
        };
        headers.push(header("x-ratelimit-limit", amount(c.max)));
        headers.push(header(
            "x-ratelimit-remaining",
            amount((c.max - c.used - c.held).max(0)),
        ));
        headers.push(header(
            "x-ratelimit-reset",
            retry_after(c.resets_at, now).to_string(),
        ));
    }
    RateLimitResponse {
        overall_code: Code::OverLimit as i32,
        statuses,
        response_headers_to_add: headers,
        raw_body: body,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl RateLimitService for RateLimiter {
    async fn should_rate_limit(
        &self,
        req: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let started = Instant::now();
        let result = self.answer(req).await;
        let took = started.elapsed();
        // gRPC codes in the HTTP metrics and access log, as the HTTP statuses they mean.
        let status: u16 = match &result {
            Ok(_) => 200,
            Err(s) => match s.code() {
                tonic::Code::InvalidArgument => 400,
                tonic::Code::Unauthenticated => 401,
                tonic::Code::Unavailable => 503,
                _ => 500,
            },
        };
        self.state
            .metrics
            .request(ROUTE, &Method::POST, status, took);
        let duration_ms = took.as_micros() as f64 / 1000.0;
        match &result {
            Ok(r) => tracing::info!(
                target: "heimdall::access",
                method = "grpc", route = ROUTE, status, duration_ms,
                over_limit = r.overall_code == Code::OverLimit as i32,
                "request"
            ),
            Err(e) => tracing::info!(
                target: "heimdall::access",
                method = "grpc", route = ROUTE, status, duration_ms, error = e.message(),
                "request refused"
            ),
        }
        result.map(Response::new)
    }
}

/// Serves the rate limit service on `listener` until `shutdown` resolves, then lets calls in
/// flight finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let config = state.config.clone();
    let service = RateLimitServiceServer::new(RateLimiter::new(state))
        .max_decoding_message_size(config.grpc_max_message_bytes);
    tracing::info!(listen = %local(&listener), "Envoy rate limit service (gRPC) serving");
    tonic::transport::Server::builder()
        .max_concurrent_streams(config.grpc_max_concurrent_streams)
        .timeout(config.request_timeout)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(service)
        .serve_with_incoming_shutdown(
            // Without TCP_NODELAY small answers wait for the peer's delayed ACK (~40 ms).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}

fn local(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a: SocketAddr| a.to_string())
}
