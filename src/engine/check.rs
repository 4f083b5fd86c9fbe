//! The check (`docs/semantics.md`): may this request go out? Visits the limits in order —
//! required headers, mandatory key, provider and model limits, user, then the key's own
//! gates and its rate-limit and budget hierarchies — and reports every limit it evaluated.

use std::borrow::Cow;
use std::sync::Arc;

pub use super::decision::{
    CheckInput, CheckPolicy, Decision, EntityRef, LimitCheck, Target, Verdict,
};
use uuid::Uuid;

use super::counter::{Counter, CounterView};
use super::entities::{Budget, Limits, ModelConfig, Prices, ProviderConfig, RateLimit, VirtualKey};
use super::level::{Level, LimitKind};
use super::store::{ResolvedKey, Snapshot};
use crate::domain::{Micros, Money, WindowRule};

/// `used`, with what holds set aside when there is any (`5 used + 3 held`).
fn usage_text(used: i64, held: i64, show: impl Fn(i64) -> String) -> String {
    if held == 0 {
        show(used)
    } else {
        format!("{} used + {} held", show(used), show(held))
    }
}

/// Request types that carry no model, so the model filter does not apply.
const MODELLESS_REQUEST_TYPES: &[&str] = &["list_models", "mcp_tool_execution"];

struct Evaluator<'a> {
    now: Micros,
    /// Whether any hold is live: otherwise every counter's `held` is 0 and is not read.
    held: bool,
    targets: Option<Vec<Target<'a>>>,
    checks: Vec<LimitCheck<'a>>,
    failure: Option<(Verdict, Cow<'static, str>, Option<Micros>)>,
}

impl<'a> Evaluator<'a> {
    fn fail(&mut self, verdict: Verdict, message: String, retry_at: Option<Micros>) {
        if self.failure.is_none() {
            self.failure = Some((verdict, Cow::Owned(message), retry_at));
        }
    }

    fn rate_limit(&mut self, level: Level, id: EntityRef<'a>, rl: &'a RateLimit) {
        let mut tokens = None;
        let mut requests = None;
        if let Some(max) = rl.spec.tokens.max {
            let rule = rl.token_rule();
            let v = rl.tokens.view_with(rule, self.now, self.held);
            let exceeded = self.push(level, id, LimitKind::Tokens, v, max);
            self.target(rl.id, &rl.tokens, rule);
            tokens = exceeded.then_some((v, max));
        }
        if let Some(max) = rl.spec.requests.max {
            let rule = rl.request_rule();
            let v = rl.requests.view_with(rule, self.now, self.held);
            let exceeded = self.push(level, id, LimitKind::Requests, v, max);
            self.target(rl.id, &rl.requests, rule);
            requests = exceeded.then_some((v, max));
        }
        let label = level.label();
        match (tokens, requests) {
            (None, None) => {}
            (Some((t, m)), None) => self.fail(
                Verdict::TokenLimited,
                format!(
                    "Rate limit exceeded: {label} token limit exceeded: {} >= {m} tokens",
                    usage_text(t.used, t.held, |n| n.to_string())
                ),
                Some(t.resets_at),
            ),
            (None, Some((r, m))) => self.fail(
                Verdict::RequestLimited,
                format!(
                    "Rate limit exceeded: {label} request limit exceeded: {} >= {m} requests",
                    usage_text(r.used, r.held, |n| n.to_string())
                ),
                Some(r.resets_at),
            ),
            (Some((t, tm)), Some((r, rm))) => self.fail(
                Verdict::RateLimited,
                format!(
                    "Rate limit exceeded: {label} token and request limits exceeded: \
                     {} >= {tm} tokens, {} >= {rm} requests",
                    usage_text(t.used, t.held, |n| n.to_string()),
                    usage_text(r.used, r.held, |n| n.to_string())
                ),
                Some(t.resets_at.max(r.resets_at)),
            ),
        }
    }

    fn budget(&mut self, level: Level, id: EntityRef<'a>, b: &'a Budget) {
        let v = b.counter.view_with(&b.rule, self.now, self.held);
        let max = b.spec.max.nanos();
        let exceeded = self.push(level, id, LimitKind::Budget, v, max);
        self.target(b.id, &b.counter, &b.rule);
        if exceeded {
            self.fail(
                Verdict::BudgetExceeded,
                format!(
                    "Budget exceeded: {} budget exceeded: {} >= {} dollars",
                    level.label(),
                    usage_text(v.used, v.held, |n| Money::from_nanos(n).to_string()),
                    b.spec.max
                ),
                Some(v.resets_at),
            );
        }
    }

    /// Records one evaluated counter; whether it is exhausted (held capacity counts as used).
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        level: Level,
        id: EntityRef<'a>,
        kind: LimitKind,
        v: CounterView,
        max: i64,
    ) -> bool {
        let exceeded = v.used.saturating_add(v.held) >= max;
        self.checks.push(LimitCheck {
            level,
            id,
            kind,
            used: v.used,
            held: v.held,
            max,
            resets_at: v.resets_at,
            exceeded,
        });
        exceeded
    }

    /// With a reserve: the counter of the check just pushed.
    fn target(&mut self, limit: Uuid, counter: &'a Arc<Counter>, rule: &'a WindowRule) {
        if let Some(targets) = &mut self.targets {
            targets.push(Target {
                limit,
                counter,
                rule,
            });
        }
    }

    fn rate_limit_of(&mut self, level: Level, id: EntityRef<'a>, limits: &'a Limits) {
        if let Some(rl) = &limits.rate_limit {
            self.rate_limit(level, id, rl);
        }
    }

    fn budget_of(&mut self, level: Level, id: EntityRef<'a>, limits: &'a Limits) {
        if let Some(b) = &limits.budget {
            self.budget(level, id, b);
        }
    }
}

/// The levels of a key's hierarchy for a provider, in order: its provider configs for that
/// provider, the key, its team, the team's customer, the key's own customer.
pub fn hierarchy<'a>(
    key: &'a ResolvedKey,
    provider: &'a str,
) -> impl Iterator<Item = (Level, EntityRef<'a>, &'a Limits)> {
    let configs = key
        .key
        .provider_configs
        .iter()
        .filter(move |pc| !provider.is_empty() && pc.provider == provider)
        .map(|pc| (Level::ProviderConfig, EntityRef::Id(pc.id), &pc.limits));
    let vk: &VirtualKey = &key.key;
    configs
        .chain(std::iter::once((
            Level::VirtualKey,
            EntityRef::Id(vk.id),
            &vk.limits,
        )))
        .chain(
            key.team
                .iter()
                .map(|t| (Level::Team, EntityRef::Id(t.id), &t.limits)),
        )
        .chain(
            key.team_customer
                .iter()
                .chain(key.customer.iter())
                .map(|c| (Level::Customer, EntityRef::Id(c.id), &c.limits)),
        )
}

/// The model configs of `model` on `provider`: the provider-specific one, then the global one.
fn configs_of<'a>(
    s: &'a Snapshot,
    model: &str,
    provider: &str,
) -> impl Iterator<Item = &'a ModelConfig> {
    let entry = if model.is_empty() {
        None
    } else {
        s.models.get(model)
    };
    let specific = entry.and_then(|e| {
        if provider.is_empty() {
            None
        } else {
            e.by_provider.get(provider)
        }
    });
    specific
        .into_iter()
        .chain(entry.and_then(|e| e.global.as_ref()))
        .map(|m| &**m)
}

/// The model configs that govern `model` on `provider`: the provider-specific one, then the
/// global one.
pub fn model_configs<'a>(
    s: &'a Snapshot,
    model: &'a str,
    provider: &'a str,
) -> impl Iterator<Item = (EntityRef<'a>, &'a Limits)> {
    configs_of(s, model, provider).map(|m| (EntityRef::Id(m.id), &m.limits))
}

/// The prices that apply to `model` on `provider`: the provider's own model config when it
/// sets a price, else the model's config for every provider; `None` when neither does.
pub fn prices_for(s: &Snapshot, model: &str, provider: &str) -> Option<Prices> {
    configs_of(s, model, provider)
        .map(|m| m.prices)
        .find(Prices::is_set)
}

/// Runs a check against one snapshot.
pub fn check<'a>(
    s: &'a Snapshot,
    policy: &CheckPolicy,
    input: &CheckInput<'a>,
    header_names: &[&str],
    now: Micros,
) -> Decision<'a> {
    let key = input
        .virtual_key
        .filter(|v| !v.is_empty())
        .map(|v| s.keys_by_hash.get(&VirtualKey::hash_value(v)));
    let resolved = key.flatten();
    let decision = |verdict, message: String, checks| Decision {
        verdict,
        message: Cow::Owned(message),
        key: resolved,
        include_only_key_ids: &[],
        checks,
        retry_at: None,
        hold: None,
        targets: Vec::new(),
    };

    // 1. Required headers.
    let missing: Vec<&str> = policy
        .required_headers
        .iter()
        .filter(|h| !header_names.iter().any(|n| n.eq_ignore_ascii_case(h)))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return decision(
            Verdict::MissingRequiredHeaders,
            format!("Missing required headers: {}", missing.join(", ")),
            Vec::new(),
        );
    }
    // 2. Mandatory virtual key.
    let user_id = input.user_id.filter(|u| !u.is_empty());
    if policy.require_virtual_key && resolved.is_none() && user_id.is_none() {
        return decision(
            Verdict::VirtualKeyRequired,
            "Virtual key required: send a known virtual_key (or a user_id)".to_owned(),
            Vec::new(),
        );
    }

    let mut ev = Evaluator {
        now,
        held: input.holds,
        targets: input.reserve.then(|| Vec::with_capacity(16)),
        checks: Vec::with_capacity(16),
        failure: None,
    };
    // 3. Provider and model limits, with or without a key.
    let (provider, model) = (input.provider, input.model);
    if let Some(p) = (!provider.is_empty())
        .then(|| s.providers.get(provider))
        .flatten()
    {
        ev.rate_limit_of(Level::Provider, EntityRef::Name(&p.name), &p.limits);
        ev.budget_of(Level::Provider, EntityRef::Name(&p.name), &p.limits);
    }
    for (id, limits) in model_configs(s, model, provider) {
        ev.rate_limit_of(Level::Model, id, limits);
    }
    for (id, limits) in model_configs(s, model, provider) {
        ev.budget_of(Level::Model, id, limits);
    }
    // 4. User.
    if let Some(u) = user_id.and_then(|u| s.users.get(u)) {
        ev.rate_limit_of(Level::User, EntityRef::Name(&u.user_id), &u.limits);
        ev.budget_of(Level::User, EntityRef::Name(&u.user_id), &u.limits);
    }
    // 5. The virtual key.
    let mut include_only_key_ids: &[String] = &[];
    if let Some(found) = key {
        match found {
            None => ev.fail(
                Verdict::VirtualKeyNotFound,
                "Virtual key not found".to_owned(),
                None,
            ),
            Some(r) if !r.key.is_active => ev.fail(
                Verdict::VirtualKeyBlocked,
                "Virtual key is blocked (inactive)".to_owned(),
                None,
            ),
            Some(r) => {
                let first: Option<&ProviderConfig> = r
                    .key
                    .provider_configs
                    .iter()
                    .find(|pc| pc.provider == provider)
                    .map(Arc::as_ref);
                let request_has_model = !model.is_empty()
                    && !input
                        .request_type
                        .is_some_and(|t| MODELLESS_REQUEST_TYPES.contains(&t));
                if !provider.is_empty() && !r.key.provider_configs.is_empty() && first.is_none() {
                    ev.fail(
                        Verdict::ProviderBlocked,
                        format!("Provider '{provider}' is not allowed for this virtual key"),
                        None,
                    );
                } else if let Some(pc) = first.filter(|pc| {
                    request_has_model
                        && !pc.allowed_models.is_empty()
                        && !pc.allowed_models.iter().any(|m| m == model)
                }) {
                    ev.fail(
                        Verdict::ModelBlocked,
                        format!(
                            "Model '{model}' is not allowed for this virtual key on provider '{}'",
                            pc.provider
                        ),
                        None,
                    );
                }
                if let Some(pc) = first {
                    include_only_key_ids = &pc.key_ids;
                }
                for (level, id, limits) in hierarchy(r, provider) {
                    ev.rate_limit_of(level, id, limits);
                }
                for (level, id, limits) in hierarchy(r, provider) {
                    ev.budget_of(level, id, limits);
                }
            }
        }
    }

    let (verdict, message, retry_at) =
        ev.failure
            .unwrap_or((Verdict::Allow, Cow::Borrowed("Request allowed"), None));
    Decision {
        verdict,
        message,
        key: resolved,
        include_only_key_ids,
        checks: ev.checks,
        retry_at,
        hold: None,
        targets: ev.targets.unwrap_or_default(),
    }
}
