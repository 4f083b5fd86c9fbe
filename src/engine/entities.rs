//! The governed entities as the in-memory state holds them. Immutable once built: a change
//! builds a new value that shares the old one's counters.

use std::sync::Arc;

use uuid::Uuid;

use super::capture::Side;
use super::counter::{Counter, CounterView};
use crate::domain::{BudgetSpec, Micros, Money, RateLimitSpec, WindowRule};

/// A budget and its usage counter (nano-dollars).
#[derive(Debug)]
pub struct Budget {
    pub id: Uuid,
    pub spec: BudgetSpec,
    pub rule: WindowRule,
    pub counter: Arc<Counter>,
    pub created_at: Micros,
    pub updated_at: Micros,
}

impl Budget {
    /// A budget with the given usage in the window that started at `last_reset`.
    pub fn new(
        id: Uuid,
        spec: BudgetSpec,
        used: i64,
        last_reset: Micros,
        created_at: Micros,
        updated_at: Micros,
    ) -> Self {
        let rule = spec.window_rule(created_at);
        let counter = Arc::new(Counter::new(used, last_reset, &rule));
        Budget {
            id,
            spec,
            rule,
            counter,
            created_at,
            updated_at,
        }
    }

    /// A budget around an existing counter (a reload keeps the usage it holds).
    pub fn with_counter(
        id: Uuid,
        spec: BudgetSpec,
        counter: Arc<Counter>,
        created_at: Micros,
        updated_at: Micros,
    ) -> Self {
        let rule = spec.window_rule(created_at);
        counter.set_rule(&rule);
        Budget {
            id,
            spec,
            rule,
            counter,
            created_at,
            updated_at,
        }
    }

    /// The same budget with a new spec, sharing the counter so that usage and window start
    /// are kept. Call `publish_rule` once the change is committed.
    pub fn respec(&self, spec: BudgetSpec, now: Micros) -> Self {
        let rule = spec.window_rule(self.created_at);
        Budget {
            id: self.id,
            spec,
            rule,
            counter: Arc::clone(&self.counter),
            created_at: self.created_at,
            updated_at: now,
        }
    }

    pub fn view(&self, now: Micros) -> CounterView {
        self.counter.view(&self.rule, now)
    }

    /// Adds nano-dollars to the window that contains `now`, on the update's `side`.
    pub fn add(&self, now: Micros, nanos: i64, side: Side) {
        self.counter.add(&self.rule, now, nanos, side);
    }

    /// Makes the shared counter's window end follow this budget's (possibly new) duration.
    pub fn publish_rule(&self) {
        self.counter.set_rule(&self.rule);
    }

    /// `(used, last_reset)` as stored.
    pub fn counter_state(&self) -> DimensionUsage {
        self.counter.raw()
    }

    /// Zeroes the budget, starting a new window at `now`.
    pub fn reset(&self, now: Micros) {
        self.counter.reset(&self.rule, now);
    }
}

/// A rate limit and its two counters (tokens, requests).
#[derive(Debug)]
pub struct RateLimit {
    pub id: Uuid,
    pub spec: RateLimitSpec,
    pub token_rule: Option<WindowRule>,
    pub request_rule: Option<WindowRule>,
    pub tokens: Arc<Counter>,
    pub requests: Arc<Counter>,
    pub created_at: Micros,
    pub updated_at: Micros,
}

/// Persisted usage of one rate-limit dimension: `(used, last_reset)`.
pub type DimensionUsage = (i64, Micros);

/// A window rule for a dimension without a duration: it never expires.
fn rule_or_forever(rule: &Option<WindowRule>) -> &WindowRule {
    static FOREVER: WindowRule = WindowRule::Rolling { micros: i64::MAX };
    rule.as_ref().unwrap_or(&FOREVER)
}

impl RateLimit {
    pub fn new(
        id: Uuid,
        spec: RateLimitSpec,
        tokens: DimensionUsage,
        requests: DimensionUsage,
        created_at: Micros,
        updated_at: Micros,
    ) -> Self {
        let token_rule = spec.tokens.window_rule();
        let request_rule = spec.requests.window_rule();
        let tokens = Arc::new(Counter::new(
            tokens.0,
            tokens.1,
            rule_or_forever(&token_rule),
        ));
        let requests = Arc::new(Counter::new(
            requests.0,
            requests.1,
            rule_or_forever(&request_rule),
        ));
        RateLimit {
            id,
            spec,
            token_rule,
            request_rule,
            tokens,
            requests,
            created_at,
            updated_at,
        }
    }

    /// A rate limit around existing counters (a reload keeps the usage they hold).
    pub fn with_counters(
        id: Uuid,
        spec: RateLimitSpec,
        counters: (Arc<Counter>, Arc<Counter>),
        created_at: Micros,
        updated_at: Micros,
    ) -> Self {
        let token_rule = spec.tokens.window_rule();
        let request_rule = spec.requests.window_rule();
        counters.0.set_rule(rule_or_forever(&token_rule));
        counters.1.set_rule(rule_or_forever(&request_rule));
        RateLimit {
            id,
            spec,
            token_rule,
            request_rule,
            tokens: counters.0,
            requests: counters.1,
            created_at,
            updated_at,
        }
    }

    /// The rule of the token dimension (a never-ending window when it has no duration).
    pub fn token_rule(&self) -> &WindowRule {
        rule_or_forever(&self.token_rule)
    }

    /// The rule of the request dimension.
    pub fn request_rule(&self) -> &WindowRule {
        rule_or_forever(&self.request_rule)
    }

    /// The same rate limit with a new spec, sharing the counters so that usage and window
    /// starts are kept. Call `publish_rules` once the change is committed.
    pub fn respec(&self, spec: RateLimitSpec, now: Micros) -> Self {
        let token_rule = spec.tokens.window_rule();
        let request_rule = spec.requests.window_rule();
        RateLimit {
            id: self.id,
            spec,
            token_rule,
            request_rule,
            tokens: Arc::clone(&self.tokens),
            requests: Arc::clone(&self.requests),
            created_at: self.created_at,
            updated_at: now,
        }
    }

    pub fn token_view(&self, now: Micros) -> CounterView {
        self.tokens.view(rule_or_forever(&self.token_rule), now)
    }

    pub fn request_view(&self, now: Micros) -> CounterView {
        self.requests.view(rule_or_forever(&self.request_rule), now)
    }

    /// Adds tokens to the token window that contains `now` (only when tokens are limited).
    pub fn add_tokens(&self, now: Micros, tokens: i64, side: Side) {
        if let Some(rule) = &self.token_rule {
            self.tokens.add(rule, now, tokens, side);
        }
    }

    /// Adds requests to the request window that contains `now` (only when requests are
    /// limited).
    pub fn add_requests(&self, now: Micros, requests: i64, side: Side) {
        if let Some(rule) = &self.request_rule {
            self.requests.add(rule, now, requests, side);
        }
    }

    /// Makes the shared counters' window ends follow this rate limit's durations.
    pub fn publish_rules(&self) {
        self.tokens.set_rule(rule_or_forever(&self.token_rule));
        self.requests.set_rule(rule_or_forever(&self.request_rule));
    }

    /// `(used, last_reset)` of tokens and of requests, as stored.
    pub fn counter_states(&self) -> (DimensionUsage, DimensionUsage) {
        (self.tokens.raw(), self.requests.raw())
    }

    /// Zeroes both dimensions, starting new windows at `now`.
    pub fn reset(&self, now: Micros) {
        self.tokens.reset(rule_or_forever(&self.token_rule), now);
        self.requests
            .reset(rule_or_forever(&self.request_rule), now);
    }
}

/// The optional budget and rate limit every governed entity may own.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub budget: Option<Arc<Budget>>,
    pub rate_limit: Option<Arc<RateLimit>>,
}

#[derive(Debug, Clone)]
pub struct Customer {
    pub id: Uuid,
    pub name: String,
    pub limits: Limits,
    pub created_at: Micros,
    pub updated_at: Micros,
}

#[derive(Debug, Clone)]
pub struct Team {
    pub id: Uuid,
    pub name: String,
    pub customer_id: Option<Uuid>,
    pub limits: Limits,
    pub created_at: Micros,
    pub updated_at: Micros,
}

/// A provider config inside a virtual key.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub id: Uuid,
    pub provider: String,
    pub weight: f64,
    /// Empty: every model is allowed.
    pub allowed_models: Vec<String>,
    pub key_ids: Vec<String>,
    pub limits: Limits,
}

#[derive(Debug, Clone)]
pub struct VirtualKey {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    /// SHA-256 of the secret value; the value itself is never kept.
    pub value_hash: [u8; 32],
    /// The first characters of the value, for people to recognise it.
    pub value_prefix: String,
    pub is_active: bool,
    pub team_id: Option<Uuid>,
    pub customer_id: Option<Uuid>,
    pub limits: Limits,
    pub provider_configs: Vec<Arc<ProviderConfig>>,
    pub created_at: Micros,
    pub updated_at: Micros,
}

impl VirtualKey {
    /// SHA-256 of a key value: what is stored, and what the hot path looks keys up by.
    pub fn hash_value(value: &str) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(value.as_bytes()).into()
    }
}

/// Governance of one provider across every key.
#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub limits: Limits,
    pub created_at: Micros,
    pub updated_at: Micros,
}

/// Governance of one model, on one provider or (provider `None`) on every provider.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub id: Uuid,
    pub model_name: String,
    pub provider: Option<String>,
    pub limits: Limits,
    /// What usage that reports token counts without a cost is charged.
    pub prices: Prices,
    pub created_at: Micros,
    pub updated_at: Micros,
}

/// Prices of a model, in dollars per million tokens; `None` where the config sets none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prices {
    pub input: Option<Money>,
    pub output: Option<Money>,
}

impl Prices {
    pub fn is_set(&self) -> bool {
        self.input.is_some() || self.output.is_some()
    }

    /// The cost of `input` and `output` tokens (a price not set counts as zero), rounded to
    /// the nanodollar; saturates instead of overflowing.
    pub fn cost(&self, input: i64, output: i64) -> Money {
        fn part(tokens: i64, price: Option<Money>) -> i128 {
            let per_million = i128::from(price.map_or(0, Money::nanos));
            (i128::from(tokens.max(0)) * per_million + 500_000) / 1_000_000
        }
        let nanos = part(input, self.input) + part(output, self.output);
        Money::from_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
    }
}

/// Governance of one end user, identified by the caller's `user_id`.
#[derive(Debug, Clone)]
pub struct User {
    pub user_id: String,
    pub limits: Limits,
    pub created_at: Micros,
    pub updated_at: Micros,
}
