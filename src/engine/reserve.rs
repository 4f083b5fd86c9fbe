//! A check that reserves: the hold placed on every counter the decision evaluated, or the
//! refusal of the counter without room.

use std::borrow::Cow;

use super::holds::{Amounts, Holds, Reserved, Want};
use crate::domain::{Micros, Money};
use crate::engine::decision::{Decision, Verdict};
use crate::engine::level::LimitKind;

/// Reserves `reserved` for an allowed decision on every counter it evaluated. Without room on
/// one of them the decision becomes the refusal that counter gives (402 for a budget, 429 for
/// a rate limit) and nothing is held. The same request and attempt reserved again keeps the
/// hold it has. True when a new hold was placed.
pub fn place(
    holds: &Holds,
    decision: &mut Decision<'_>,
    request_id: &str,
    attempt: u64,
    reserved: Amounts,
    expires_at: Micros,
    now: Micros,
) -> bool {
    if decision.verdict != Verdict::Allow {
        return false;
    }
    debug_assert_eq!(
        decision.targets.len(),
        decision.checks.len(),
        "a check that reserves"
    );
    let wants: Vec<Want<'_>> = decision
        .checks
        .iter()
        .zip(&decision.targets)
        .map(|(c, t)| Want {
            kind: c.kind,
            limit: t.limit,
            counter: t.counter,
            rule: t.rule,
            max: c.max,
        })
        .collect();
    match holds.reserve(request_id, attempt, reserved, expires_at, &wants, now) {
        Reserved::Placed(hold) => {
            decision.hold = Some(hold);
            true
        }
        Reserved::Existing(hold) => {
            decision.hold = Some(hold);
            false
        }
        Reserved::NoRoom(i) => {
            drop(wants);
            let c = &mut decision.checks[i];
            let t = decision.targets[i];
            let v = t.counter.view(t.rule, now);
            c.used = v.used;
            c.held = v.held;
            c.exceeded = true;
            let label = c.level.label();
            let amount = reserved.of(c.kind);
            let (verdict, message) = match c.kind {
                LimitKind::Budget => (
                    Verdict::BudgetExceeded,
                    format!(
                        "Budget exceeded: {label} budget has no room for the reservation: {} \
                         used + {} held + {} reserved > {} dollars",
                        Money::from_nanos(v.used),
                        Money::from_nanos(v.held),
                        Money::from_nanos(amount),
                        Money::from_nanos(c.max)
                    ),
                ),
                LimitKind::Tokens => (
                    Verdict::TokenLimited,
                    format!(
                        "Rate limit exceeded: {label} token limit has no room for the \
                         reservation: {} used + {} held + {amount} reserved > {} tokens",
                        v.used, v.held, c.max
                    ),
                ),
                LimitKind::Requests => (
                    Verdict::RequestLimited,
                    format!(
                        "Rate limit exceeded: {label} request limit has no room for the \
                         reservation: {} used + {} held + {amount} reserved > {} requests",
                        v.used, v.held, c.max
                    ),
                ),
            };
            decision.verdict = verdict;
            decision.message = Cow::Owned(message);
            decision.retry_at = Some(v.resets_at);
            false
        }
    }
}
