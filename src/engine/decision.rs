//! What a check is asked and what it answers: the input, the policy of the configuration,
//! the verdicts, and the decision with every limit it evaluated.

use std::borrow::Cow;

use uuid::Uuid;

use super::level::{Level, LimitKind};
use std::sync::Arc;

use super::counter::Counter;
use super::holds::Hold;
use super::store::ResolvedKey;
use crate::domain::{Micros, WindowRule};

/// What a gateway asks about.
#[derive(Debug, Default, Clone, Copy)]
pub struct CheckInput<'a> {
    pub virtual_key: Option<&'a str>,
    pub provider: &'a str,
    pub model: &'a str,
    pub user_id: Option<&'a str>,
    pub request_type: Option<&'a str>,
    /// The check will reserve: it also collects the counters a hold would take
    /// ([`Decision::targets`]).
    pub reserve: bool,
    /// Whether any hold is live (this process's or another's it knows): only then does the
    /// check read what holds set aside. A hold placed after this was read is one the check
    /// ran before.
    pub holds: bool,
}

/// Check settings from the configuration.
#[derive(Debug, Clone, Default)]
pub struct CheckPolicy {
    pub require_virtual_key: bool,
    /// Lower-case header names every check must carry.
    pub required_headers: Vec<String>,
}

/// The outcome type, with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    MissingRequiredHeaders,
    VirtualKeyRequired,
    VirtualKeyNotFound,
    VirtualKeyBlocked,
    ProviderBlocked,
    ModelBlocked,
    RateLimited,
    TokenLimited,
    RequestLimited,
    BudgetExceeded,
}

impl Verdict {
    pub fn code(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::MissingRequiredHeaders => "missing_required_headers",
            Verdict::VirtualKeyRequired => "virtual_key_required",
            Verdict::VirtualKeyNotFound => "virtual_key_not_found",
            Verdict::VirtualKeyBlocked => "virtual_key_blocked",
            Verdict::ProviderBlocked => "provider_blocked",
            Verdict::ModelBlocked => "model_blocked",
            Verdict::RateLimited => "rate_limited",
            Verdict::TokenLimited => "token_limited",
            Verdict::RequestLimited => "request_limited",
            Verdict::BudgetExceeded => "budget_exceeded",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            Verdict::Allow => 200,
            Verdict::MissingRequiredHeaders => 400,
            Verdict::VirtualKeyRequired => 401,
            Verdict::BudgetExceeded => 402,
            Verdict::VirtualKeyNotFound
            | Verdict::VirtualKeyBlocked
            | Verdict::ProviderBlocked
            | Verdict::ModelBlocked => 403,
            Verdict::RateLimited | Verdict::TokenLimited | Verdict::RequestLimited => 429,
        }
    }
}

/// The id of the entity a limit belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntityRef<'a> {
    Id(Uuid),
    Name(&'a str),
}

/// One limit the check evaluated.
#[derive(Debug, Clone)]
pub struct LimitCheck<'a> {
    pub level: Level,
    pub id: EntityRef<'a>,
    pub kind: LimitKind,
    /// Nano-dollars for budgets, tokens or requests otherwise.
    pub used: i64,
    /// Set aside by holds, in the same unit.
    pub held: i64,
    pub max: i64,
    pub resets_at: Micros,
    pub exceeded: bool,
}

/// A counter a check evaluated, as a reserve would hold it.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The budget's or rate limit's id.
    pub limit: Uuid,
    pub counter: &'a Arc<Counter>,
    pub rule: &'a WindowRule,
}

/// The answer to a check.
#[derive(Debug, Clone)]
pub struct Decision<'a> {
    pub verdict: Verdict,
    pub message: Cow<'static, str>,
    pub key: Option<&'a Arc<ResolvedKey>>,
    /// The key ids the first provider config of the request's provider restricts to.
    pub include_only_key_ids: &'a [String],
    pub checks: Vec<LimitCheck<'a>>,
    /// When the blocking window ends (429 and 402).
    pub retry_at: Option<Micros>,
    /// The hold a reserve placed (or found placed already).
    pub hold: Option<Arc<Hold>>,
    /// With [`CheckInput::reserve`]: the counters of `checks`, one for one.
    pub targets: Vec<Target<'a>>,
}
