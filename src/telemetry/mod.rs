//! Prometheus metrics (`GET /metrics`). They are recorded by the HTTP layer and the worker and
//! rendered from plain values; nothing here knows the application state.
//!
//! The recorder is owned by the application state, not installed as the process-wide
//! `metrics` recorder: every `App` (and every test) has its own series. Handles of labelled
//! series are registered once and cached, so recording on the hot path is a map lookup and
//! an atomic add. Label sets are bounded: routes are the router's templates, statuses and
//! decisions are enums, and provider × model pairs are capped at [`MAX_MODEL_SERIES`].

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::engine::check::Verdict;
use events::HOLD_EVENTS;
pub use events::{ChargeTally, HoldEvent};
use http::RouteSeries;

mod events;
mod http;
use crate::engine::usage::Charge;

/// Distinct provider × model pairs given their own series; later pairs share `_other`.
pub const MAX_MODEL_SERIES: usize = 512;
/// The label value of pairs beyond [`MAX_MODEL_SERIES`].
pub const OTHER: &str = "_other";

/// Upper bounds of the latency histograms, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

const VERDICTS: [Verdict; 11] = [
    Verdict::Allow,
    Verdict::MissingRequiredHeaders,
    Verdict::VirtualKeyRequired,
    Verdict::VirtualKeyNotFound,
    Verdict::VirtualKeyBlocked,
    Verdict::ProviderBlocked,
    Verdict::ModelBlocked,
    Verdict::RateLimited,
    Verdict::TokenLimited,
    Verdict::RequestLimited,
    Verdict::BudgetExceeded,
];

/// Every series Heimdall exports: name, type, help. `docs/operations.md` lists the same.
const DESCRIPTIONS: &[(&str, &str, &str)] = &[
    ("heimdall_http_requests_total", "counter", "HTTP requests answered, by route template, method and status."),
    ("heimdall_http_request_duration_seconds", "histogram", "Time to answer an HTTP request, by route template, method and status."),
    ("heimdall_decisions_total", "counter", "Decisions of /v1/check, by decision type."),
    ("heimdall_usage_updates_total", "counter", "Usage updates by result: accepted (applied), duplicate (a repeated request_id), rejected (invalid; nothing applied)."),
    ("heimdall_usage_tokens_total", "counter", "Tokens charged by usage updates, by provider and model."),
    ("heimdall_usage_requests_total", "counter", "Requests charged by usage updates, by provider and model."),
    ("heimdall_usage_cost_nanodollars_total", "counter", "Cost charged by usage updates in nano-dollars (1e-9 USD), by provider and model."),
    ("heimdall_flush_duration_seconds", "histogram", "Time of one flush to the database, by kind: full (the periodic tick) or durable (woken by ack = durable writers)."),
    ("heimdall_flush_rows_total", "counter", "Rows written by flushes, by table."),
    ("heimdall_journal_entries_total", "counter", "Usage journal entries (PostgreSQL, ack = durable) by event: appended by this process's group commits, folded into the tables by this process's ticks (whoever wrote them)."),
    ("heimdall_unknown_commits_total", "counter", "Group commits (PostgreSQL) whose connection failed before their outcome was known, by how they were settled: committed (they had happened) or fenced (they had not, and can no longer)."),
    ("heimdall_flush_failures_total", "counter", "Flushes that failed (the database was unreachable or refused the write)."),
    ("heimdall_pending_deltas", "gauge", "Counters holding usage not yet written to the database."),
    ("heimdall_database_up", "gauge", "1 when the last flush reached the database, 0 otherwise."),
    ("heimdall_entities", "gauge", "Entities loaded in memory, by kind."),
    ("heimdall_holds", "gauge", "Holds this replica counts (its own and other replicas' it learned from the database): capacity set aside for requests in flight."),
    ("heimdall_hold_events_total", "counter", "Holds by event: placed, refused (a reserve without room), settled (by their usage), released (early, or through another replica), expired (TTL over)."),
    ("heimdall_hold_overruns_total", "counter", "Settled holds whose usage exceeded what they reserved, by what: cost or tokens."),
    ("heimdall_alert_events_total", "counter", "Threshold alerts by event: recorded (a delivery this replica inserted), delivered (a receiver answered 2xx), failed (an attempt that will be retried), dropped (a crossing the full queue could not take; offered again at the next tick)."),
    ("heimdall_dedup_keys", "gauge", "Idempotency keys held in memory (at most dedup_max_keys)."),
    ("heimdall_dedup_bytes", "gauge", "Bytes the idempotency keys take in memory: their tables and the queue to the database."),
    ("heimdall_dedup_keys_evicted_total", "counter", "Idempotency keys dropped before their window ended because dedup_max_keys was reached, oldest first."),
    ("heimdall_dedup_keys_unwritten_total", "counter", "Idempotency keys not written to the database because the queue to it was full (a long outage): recognised until the process restarts."),
];

/// What happens to threshold alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertEvent {
    Recorded,
    Delivered,
    Failed,
    Dropped,
}

impl AlertEvent {
    fn label(self) -> &'static str {
        match self {
            AlertEvent::Recorded => "recorded",
            AlertEvent::Delivered => "delivered",
            AlertEvent::Failed => "failed",
            AlertEvent::Dropped => "dropped",
        }
    }
}

const ALERT_EVENTS: [AlertEvent; 4] = [
    AlertEvent::Recorded,
    AlertEvent::Delivered,
    AlertEvent::Failed,
    AlertEvent::Dropped,
];

/// The metrics of one application.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// By route template, then (method, status).
    http: RwLock<HashMap<String, RouteSeries>>,
    decisions: Vec<Counter>,
    pub usage_accepted: Counter,
    pub usage_duplicate: Counter,
    pub usage_rejected: Counter,
    /// By provider, then model.
    models: RwLock<ModelSeries>,
    flush_full: Histogram,
    flush_durable: Histogram,
    pub flush_failures: Counter,
    pub rows_budgets: Counter,
    pub rows_rate_limits: Counter,
    pub rows_rollups: Counter,
    pub rows_dedup_keys: Counter,
    journal_appended: Counter,
    journal_folded: Counter,
    unknown_committed: Counter,
    unknown_fenced: Counter,
    pending: Gauge,
    database_up: Gauge,
    entities: Vec<(&'static str, Gauge)>,
    dedup_keys: Gauge,
    dedup_bytes: Gauge,
    holds: Gauge,
    hold_events: Vec<Counter>,
    hold_overrun_cost: Counter,
    hold_overrun_tokens: Counter,
    dedup_evicted: Counter,
    dedup_unwritten: Counter,
    alert_events: Vec<Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct UsageSeries {
    tokens: Counter,
    requests: Counter,
    cost: Counter,
}

#[derive(Default)]
struct ModelSeries {
    by_provider: HashMap<String, HashMap<String, UsageSeries>>,
    pairs: usize,
}

/// The kinds of `heimdall_entities`.
pub const ENTITY_KINDS: [&str; 6] = [
    "customer",
    "team",
    "virtual_key",
    "provider",
    "model_config",
    "user",
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        for (name, kind, help) in DESCRIPTIONS {
            let name = KeyName::from_const_str(name);
            let help = SharedString::const_str(help);
            match *kind {
                "counter" => recorder.describe_counter(name, None, help),
                "gauge" => recorder.describe_gauge(name, None, help),
                _ => recorder.describe_histogram(name, None, help),
            }
        }
        let handle = recorder.handle();
        let counter = |name: &'static str, labels: &[(&'static str, &'static str)]| {
            recorder.register_counter(&key(name, labels), &META)
        };
        let gauge = |name: &'static str, labels: &[(&'static str, &'static str)]| {
            recorder.register_gauge(&key(name, labels), &META)
        };
        let histogram = |name: &'static str, labels: &[(&'static str, &'static str)]| {
            recorder.register_histogram(&key(name, labels), &META)
        };
        let updates = "heimdall_usage_updates_total";
        let rows = "heimdall_flush_rows_total";
        let journal = "heimdall_journal_entries_total";
        let flush = "heimdall_flush_duration_seconds";
        let metrics = Metrics {
            http: RwLock::default(),
            decisions: VERDICTS
                .iter()
                .map(|v| counter("heimdall_decisions_total", &[("decision", v.code())]))
                .collect(),
            usage_accepted: counter(updates, &[("result", "accepted")]),
            usage_duplicate: counter(updates, &[("result", "duplicate")]),
            usage_rejected: counter(updates, &[("result", "rejected")]),
            models: RwLock::default(),
            flush_full: histogram(flush, &[("kind", "full")]),
            flush_durable: histogram(flush, &[("kind", "durable")]),
            flush_failures: counter("heimdall_flush_failures_total", &[]),
            rows_budgets: counter(rows, &[("table", "budgets")]),
            rows_rate_limits: counter(rows, &[("table", "rate_limits")]),
            rows_rollups: counter(rows, &[("table", "usage_rollups")]),
            rows_dedup_keys: counter(rows, &[("table", "dedup_keys")]),
            journal_appended: counter(journal, &[("event", "appended")]),
            journal_folded: counter(journal, &[("event", "folded")]),
            unknown_committed: counter(
                "heimdall_unknown_commits_total",
                &[("outcome", "committed")],
            ),
            unknown_fenced: counter("heimdall_unknown_commits_total", &[("outcome", "fenced")]),
            pending: gauge("heimdall_pending_deltas", &[]),
            database_up: gauge("heimdall_database_up", &[]),
            dedup_keys: gauge("heimdall_dedup_keys", &[]),
            holds: gauge("heimdall_holds", &[]),
            hold_events: HOLD_EVENTS
                .iter()
                .map(|e| counter("heimdall_hold_events_total", &[("event", e.label())]))
                .collect(),
            hold_overrun_cost: counter("heimdall_hold_overruns_total", &[("what", "cost")]),
            hold_overrun_tokens: counter("heimdall_hold_overruns_total", &[("what", "tokens")]),
            dedup_bytes: gauge("heimdall_dedup_bytes", &[]),
            dedup_evicted: counter("heimdall_dedup_keys_evicted_total", &[]),
            dedup_unwritten: counter("heimdall_dedup_keys_unwritten_total", &[]),
            alert_events: ALERT_EVENTS
                .iter()
                .map(|e| counter("heimdall_alert_events_total", &[("event", e.label())]))
                .collect(),
            entities: ENTITY_KINDS
                .iter()
                .map(|k| (*k, gauge("heimdall_entities", &[("kind", k)])))
                .collect(),
            recorder,
            handle,
        };
        metrics.database_up.set(1.0);
        metrics
    }

    /// Counts one `/v1/check` decision.
    pub fn decision(&self, verdict: Verdict) {
        if let Some(i) = VERDICTS.iter().position(|v| *v == verdict) {
            self.decisions[i].increment(1);
        }
    }

    /// Counts what one applied usage update charged.
    pub fn charged(&self, provider: &str, model: &str, charge: &Charge) {
        let count = |series: &UsageSeries| {
            if let Some(t) = charge.tokens.filter(|t| *t > 0) {
                series.tokens.increment(t as u64);
            }
            if let Some(r) = charge.requests.filter(|r| *r > 0) {
                series.requests.increment(r as u64);
            }
            if let Some(c) = charge.cost.filter(|c| *c > 0) {
                series.cost.increment(c as u64);
            }
        };
        {
            // The common case: counted under the read lock, without cloning handles.
            let models = self.models.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(s) = models.by_provider.get(provider).and_then(|m| m.get(model)) {
                count(s);
                return;
            }
        }
        count(&self.register_model(provider, model));
    }

    fn register_model(&self, provider: &str, model: &str) -> UsageSeries {
        let mut models = self.models.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = models.by_provider.get(provider).and_then(|m| m.get(model)) {
            return s.clone();
        }
        let (p, m) = if models.pairs < MAX_MODEL_SERIES {
            (provider, model)
        } else {
            (OTHER, OTHER)
        };
        let labels = || {
            vec![
                Label::new("provider", p.to_owned()),
                Label::new("model", m.to_owned()),
            ]
        };
        let register = |name: &'static str| {
            self.recorder
                .register_counter(&Key::from_parts(name, labels()), &META)
        };
        let series = UsageSeries {
            tokens: register("heimdall_usage_tokens_total"),
            requests: register("heimdall_usage_requests_total"),
            cost: register("heimdall_usage_cost_nanodollars_total"),
        };
        // Pairs past the cap are remembered too, so they stay a read-locked lookup.
        models.pairs += 1;
        models
            .by_provider
            .entry(provider.to_owned())
            .or_default()
            .insert(model.to_owned(), series.clone());
        series
    }

    /// Records one flush.
    pub fn flushed(&self, durable: bool, took: Duration, rows: FlushRows) {
        let histogram = if durable {
            &self.flush_durable
        } else {
            &self.flush_full
        };
        histogram.record(took.as_secs_f64());
        self.rows_budgets.increment(rows.budgets as u64);
        self.rows_rate_limits.increment(rows.rate_limits as u64);
        self.rows_rollups.increment(rows.rollups as u64);
        self.rows_dedup_keys.increment(rows.dedup_keys as u64);
        self.journal_appended
            .increment(rows.journal_appended as u64);
        self.journal_folded.increment(rows.journal_folded as u64);
    }

    /// Counts one hold event.
    pub fn hold_event(&self, event: HoldEvent) {
        if let Some(i) = HOLD_EVENTS.iter().position(|e| *e == event) {
            self.hold_events[i].increment(1);
        }
    }

    /// Counts one alert event.
    pub fn alert_event(&self, event: AlertEvent) {
        if let Some(i) = ALERT_EVENTS.iter().position(|e| *e == event) {
            self.alert_events[i].increment(1);
        }
    }

    /// Counts a settle whose usage exceeded the reservation.
    pub fn hold_overrun(&self, cost: bool, tokens: bool) {
        if cost {
            self.hold_overrun_cost.increment(1);
        }
        if tokens {
            self.hold_overrun_tokens.increment(1);
        }
    }

    /// Records how a commit whose outcome was unknown was settled.
    pub fn commit_resolved(&self, committed: bool) {
        if committed {
            self.unknown_committed.increment(1);
        } else {
            self.unknown_fenced.increment(1);
        }
    }

    /// Folds recorded histogram samples into their buckets; called periodically so that memory
    /// stays bounded between scrapes.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The Prometheus text exposition, with the gauges set from `now`.
    pub fn render(&self, now: &Gauges) -> String {
        self.pending.set(now.pending_deltas as f64);
        self.database_up
            .set(if now.database_up { 1.0 } else { 0.0 });
        for ((_, gauge), n) in self.entities.iter().zip(now.entities) {
            gauge.set(n as f64);
        }
        self.dedup_keys.set(now.dedup_keys as f64);
        self.holds.set(now.holds as f64);
        self.dedup_bytes.set(now.dedup_bytes as f64);
        self.dedup_evicted.absolute(now.dedup_evicted);
        self.dedup_unwritten.absolute(now.dedup_unwritten);
        self.handle.render()
    }
}

/// The values of the gauges (and of the counters kept elsewhere) at a scrape.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    pub pending_deltas: usize,
    pub database_up: bool,
    /// Entities in memory, in the order of [`ENTITY_KINDS`].
    pub entities: [usize; 6],
    pub dedup_keys: usize,
    pub dedup_bytes: usize,
    pub holds: usize,
    pub dedup_evicted: u64,
    pub dedup_unwritten: u64,
}

/// What one flush wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct FlushRows {
    pub budgets: usize,
    pub rate_limits: usize,
    pub rollups: usize,
    pub dedup_keys: usize,
    pub journal_appended: usize,
    pub journal_folded: usize,
}

pub(super) static META: Metadata<'static> = Metadata::new("heimdall", metrics::Level::INFO, None);

fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    Key::from_parts(
        name,
        labels
            .iter()
            .map(|(k, v)| Label::from_static_parts(k, v))
            .collect::<Vec<_>>(),
    )
}

#[cfg(test)]
mod tests;
